"""The conversation template's turns, as text: a list of Human and AI turns rendered into the mPLUG-Owl
template and parsed back from it. Plain Python (no torch, no tokenizer), so the data steps read and write
conversations without loading the model stack; model/processor.py tokenizes what this renders."""

from __future__ import annotations

from dataclasses import dataclass

from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, SYSTEM_PROMPT

HUMAN, AI = "human", "ai"


@dataclass(frozen=True)
class Turn:
    role: str  # HUMAN or AI
    text: str  # a human turn may be, or contain, IMAGE_TOKEN

    def __post_init__(self) -> None:
        if self.role not in (HUMAN, AI):
            raise ValueError(f"turn role must be {HUMAN!r} or {AI!r}, got {self.role!r}")


def render_conversation(turns: list[Turn]) -> tuple[str, list[tuple[int, int]]]:
    """The template's text (without EOS) and the character span of each answer (after ``AI: ``)."""
    text = SYSTEM_PROMPT
    spans = []
    for turn in turns:
        if turn.role == HUMAN:
            text += "\n" + HUMAN_PREFIX + turn.text
        else:
            text += "\n" + AI_PREFIX
            start = len(text)
            text += turn.text
            spans.append((start, len(text)))
    return text, spans


def parse_conversation(text: str) -> list[Turn]:
    """The inverse of ``render_conversation``: mPLUG-Owl instruction text -> turns.

    Lines before the first ``Human:`` (the system prompt) are dropped; a line that starts neither ``Human:`` nor
    ``AI:`` continues the turn before it.
    """
    turns: list[Turn] = []
    for line in text.split("\n"):
        stripped = line.strip()
        for role, prefix in ((HUMAN, HUMAN_PREFIX.strip()), (AI, AI_PREFIX.strip())):
            if stripped.startswith(prefix):
                turns.append(Turn(role, stripped[len(prefix):].strip()))
                break
        else:
            if turns:
                turns[-1] = Turn(turns[-1].role, f"{turns[-1].text}\n{line}")
    return turns
