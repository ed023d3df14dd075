"""The served model: an MLflow pyfunc that answers a question about an image, saved as "models from code"
(this file is the model's code; no pickle), with the saved Owl folder as its one artifact.

Input: a DataFrame with ``image`` (base64-encoded image bytes), ``question``, and optionally ``history``
(JSON: [[question, answer], ...] of earlier turns on the same image, or the same as role/content messages:
[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]). Output: one answer per row.

What it accepts (``ServingLimits``, fixed when the model is logged: registry.serve_* in params.yaml):
- images as base64 bytes only; a file path only when the model was logged with an ``image_root`` and the
  path resolves inside it. Every image that cannot be used gets the same message (it never tells whether a
  path exists), and errors carry no traceback;
- images up to ``max_image_pixels`` by their header (checked before decoding), 1 to ``max_rows`` rows per
  request, ``max_new_tokens`` up to its limit, questions up to ``max_question_tokens``; more is a 400;
- a history of at most ``max_history_turns`` turns and ``max_history_tokens`` tokens, and never more than the
  prompt has room for: the *oldest* turns are dropped, never the question or its ``AI: ``;
- every malformed request is the same plain 400 (no traceback). The request body's size is capped in front of
  the model (README "Serving": a reverse proxy's body limit, e.g. nginx ``client_max_body_size``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS
from owl_pipeline.data.images import ImageRejected, decode_rgb

OWL_ARTIFACT = "owl_model"
MAX_NEW_TOKENS_PARAM = "max_new_tokens"


@dataclass
class ServingLimits:
    image_root: str | None = None  # files under this folder may be named by path; None: base64 only
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_rows: int = 16
    max_new_tokens: int = 256
    max_question_tokens: int = 512
    max_history_turns: int = 8
    max_history_tokens: int = 512

    @classmethod
    def from_config(cls, config: dict | None) -> ServingLimits:
        known = {k: v for k, v in (config or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_config(self) -> dict:
        return asdict(self)


def rejected(message: str) -> MlflowException:
    """A 400 with ``message`` and nothing else (no traceback, no local paths)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load_image(value: str, limits: ServingLimits):
    """The picture in ``value``: base64 image bytes, or (where allowed) a path under the image root."""
    problem = "image must be base64-encoded image bytes" + (
        " or the path of a file under the model's image root" if limits.image_root else "")
    try:
        return decode_rgb(_image_bytes(value, limits), limits.max_image_pixels)
    except ImageRejected as error:
        if error.reason == "too_many_pixels":
            raise rejected(f"image has more than {limits.max_image_pixels} pixels") from None
        raise rejected(problem) from None
    except (binascii.Error, ValueError, OSError):
        raise rejected(problem) from None


def _image_bytes(value: str, limits: ServingLimits) -> bytes:
    if limits.image_root and len(value) < 4096:
        root = Path(limits.image_root).resolve()
        path = (root / value).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path.read_bytes()
    return base64.b64decode(value, validate=True)


HISTORY_TURN_TOKENS = 8  # the "Human: " / "AI: " prefixes, newlines and the answer's end token of one turn
HISTORY_FORMAT = ('history must be JSON: [[question, answer], ...] or [{"role": "user", "content": question}, '
                  '{"role": "assistant", "content": answer}, ...], with texts')
_ASKED, _ANSWERED = {"user", "human"}, {"assistant", "ai", "gpt"}


def _as_pairs(turns) -> list[tuple[str, str]] | None:
    """The turns as (question, answer) pairs, from either accepted form; None if they are neither."""
    if not isinstance(turns, list):
        return None
    if all(isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in turns):
        return [(q, a) for q, a in turns]
    messages = [(t.get("role"), t.get("content")) if isinstance(t, dict) else (None, None) for t in turns]
    if len(messages) % 2 or not all(isinstance(text, str) for _, text in messages):
        return None
    asked, answered = messages[0::2], messages[1::2]
    if not all(role in _ASKED for role, _ in asked) or not all(role in _ANSWERED for role, _ in answered):
        return None
    return [(question, answer) for (_, question), (_, answer) in zip(asked, answered)]


def parse_history(value) -> list[tuple[str, str]]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return []
    try:
        turns = json.loads(value) if isinstance(value, str) else value
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise rejected(HISTORY_FORMAT) from None
    pairs = _as_pairs(turns)
    if pairs is None:
        raise rejected(HISTORY_FORMAT)
    return pairs


class OwlChatModel(PythonModel):
    def load_context(self, context) -> None:
        from owl_pipeline.model.builders import from_pretrained

        self.model, self.processor = from_pretrained(context.artifacts[OWL_ARTIFACT])
        self.model.eval()
        self.limits = ServingLimits.from_config(getattr(context, "model_config", None))

    def _question(self, text) -> str:
        question, cut = self.processor.cap_tokens(str(text), self.limits.max_question_tokens)
        if cut:
            raise rejected(f"question is longer than {self.limits.max_question_tokens} tokens")
        return question

    def _tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _kept_history(self, turns: list[tuple[str, str]], room: int) -> list[tuple[str, str]]:
        """The newest turns that fit the history limits and ``room`` tokens; older ones dropped whole."""
        budget, kept = min(self.limits.max_history_tokens, room), []
        for question, answer in reversed(turns[-self.limits.max_history_turns:]):
            if any(self.processor.cap_tokens(text, budget)[1] for text in (question, answer)):
                break  # either one alone is over the budget (only a window of it is tokenized)
            cost = self._tokens(question) + self._tokens(answer) + HISTORY_TURN_TOKENS
            if cost > budget:
                break
            budget -= cost
            kept.append((question, answer))
        return kept[::-1]

    def _prompt(self, row):
        question, images = self._question(row["question"]), [load_image(str(row["image"]), self.limits)]
        alone = len(self.processor.encode_prompt(question, images).input_ids)
        history = self._kept_history(parse_history(row.get("history")), self.processor.config.max_length - alone)
        return self.processor.encode_prompt(question, images, history=history)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        import torch

        limits = self.limits
        if not 0 < len(model_input) <= limits.max_rows:
            raise rejected(f"1 to {limits.max_rows} rows per request, got {len(model_input)}")
        missing = {"image", "question"} - set(model_input.columns)
        if missing:
            raise rejected(f"the request lacks the column(s) {sorted(missing)}")
        try:
            max_new_tokens = int((params or {}).get(MAX_NEW_TOKENS_PARAM, 64))
        except (TypeError, ValueError):
            raise rejected(f"{MAX_NEW_TOKENS_PARAM} must be an integer") from None
        if not 0 < max_new_tokens <= limits.max_new_tokens:
            raise rejected(f"max_new_tokens must be within 1..{limits.max_new_tokens}, got {max_new_tokens}")
        prompts = [self._prompt(row) for _, row in model_input.iterrows()]
        batch = self.processor.collate(prompts, padding_side="left")
        with torch.no_grad():
            tokens = self.model.generate(**batch, max_new_tokens=max_new_tokens)
        return [self.processor.decode(t) for t in tokens]


mlflow.models.set_model(OwlChatModel())
