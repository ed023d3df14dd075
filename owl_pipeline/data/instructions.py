"""Instruction data in the three common formats -> one Lance table of conversations with their images.

    Alpaca     {instruction, input, output}                                 text-only
    LLaVA      {id, image, conversations: [{from: human|gpt, value}]}       <image> inside the first question
    mPLUG-Owl  {image: [...], text: "...Human: <image>\\nHuman: ...\\nAI: ...", task_type}

Every conversation is stored in the Owl template's shape: images as separate ``Human: <image>`` turns first,
then alternating questions and answers. Invalid records are skipped and counted by (format, reason).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from owl_pipeline.constants import IMAGE_TOKEN
from owl_pipeline.data.images import DEFAULT_MAX_PIXELS, ImageRejected, image_size
from owl_pipeline.data.lance_io import write_lance
from owl_pipeline.model.conversation import AI, HUMAN, Turn, parse_conversation

TURN_TYPE = pa.struct([("role", pa.string()), ("text", pa.string())])
CONVERSATION_SCHEMA = pa.schema([
    ("id", pa.string()), ("format", pa.string()), ("task_type", pa.string()),
    ("turns", pa.list_(TURN_TYPE)), ("images", pa.list_(pa.binary())), ("image_refs", pa.list_(pa.string())),
])
FORMATS = ("alpaca", "llava", "owl")


class InvalidRecord(ValueError):
    """A record that cannot become a conversation; the message is the reason it is counted under."""


@dataclass
class InstructionSource:
    format: str  # one of FORMATS
    path: Path
    image_root: Path | None = None  # image paths in the records are relative to this (default: the file's folder)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"instruction format must be one of {FORMATS}, got {self.format!r}")
        self.path = Path(self.path)
        self.image_root = Path(self.image_root) if self.image_root else self.path.parent


@dataclass
class InstructionReport:
    rows_written: int = 0
    rows_by_format: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # "format: reason" -> count
    seconds: float = 0.0
    lance_version: int | None = None

    def to_dict(self) -> dict:
        return {"rows_written": self.rows_written, "rows_by_format": dict(self.rows_by_format),
                "skipped": dict(self.skipped), "seconds": self.seconds, "lance_version": self.lance_version}


# --- one record -> (turns, image refs) --------------------------------------------------------------------
def _text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord(f"missing_{name}")
    return value.strip()


def alpaca_turns(record: dict) -> tuple[list[Turn], list[str]]:
    instruction, output = _text(record.get("instruction"), "instruction"), _text(record.get("output"), "output")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise InvalidRecord("bad_input")
    question = f"{instruction}\n{extra.strip()}" if extra.strip() else instruction
    return [Turn(HUMAN, question), Turn(AI, output)], []


def _images_first(turns: list[Turn]) -> list[Turn]:
    """Move every <image> marker into its own leading ``Human: <image>`` turn, as the Owl template has them."""
    markers = sum(t.text.count(IMAGE_TOKEN) for t in turns)
    rest = [Turn(t.role, t.text.replace(IMAGE_TOKEN, "").strip()) for t in turns]
    rest = [t for t in rest if t.text or t.role == AI]
    return [Turn(HUMAN, IMAGE_TOKEN)] * markers + rest


def _check_dialogue(turns: list[Turn], images: list[str]) -> list[Turn]:
    markers = sum(t.text.count(IMAGE_TOKEN) for t in turns)
    if markers != len(images):
        raise InvalidRecord("image_count_mismatch")
    while turns and turns[-1].role != AI:
        turns = turns[:-1]  # a trailing unanswered question teaches nothing
    if not any(t.role == AI and t.text for t in turns):
        raise InvalidRecord("no_answer")
    return turns


def _image_refs(record: dict) -> list[str]:
    """A record's ``image``: one path or a list of paths (absent or null: none)."""
    image = record.get("image")
    if image is None:
        return []
    refs = [image] if isinstance(image, str) else image
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise InvalidRecord("bad_image_reference")  # a number, an object, a list holding either
    return refs


def llava_turns(record: dict) -> tuple[list[Turn], list[str]]:
    roles = {"human": HUMAN, "gpt": AI}
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise InvalidRecord("missing_conversations")
    if not all(isinstance(m, dict) and m.get("from") in roles and isinstance(m.get("value"), str)
               for m in conversation):
        raise InvalidRecord("bad_turn")
    turns = [Turn(roles[m["from"]], m["value"]) for m in conversation]
    images = _image_refs(record)
    return _images_first(_check_dialogue(turns, images)), images


def owl_turns(record: dict) -> tuple[list[Turn], list[str]]:
    turns = parse_conversation(_text(record.get("text"), "text"))
    images = _image_refs(record)
    return _images_first(_check_dialogue(turns, images)), images


_READERS = {"alpaca": alpaca_turns, "llava": llava_turns, "owl": owl_turns}


# --- files -> rows ----------------------------------------------------------------------------------------
def _records(source: InstructionSource, report: InstructionReport) -> Iterator[dict]:
    """Records of a .json list or a .jsonl file; a malformed jsonl line is skipped and counted."""
    text = source.path.read_text(encoding="utf-8")
    if source.path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except (json.JSONDecodeError, RecursionError):  # RecursionError: nested past the parser's depth
                    report.skipped[f"{source.format}: malformed_line"] += 1
        return
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{source.path}: nested too deeply to read (a record inside it is malformed); "
                         "as .jsonl one malformed line would be skipped instead") from None
    if not isinstance(data, list):
        raise ValueError(f"{source.path}: expected a JSON list of records, got {type(data).__name__}")
    yield from data


def _image_bytes(root: Path, ref, max_pixels: int) -> bytes:
    """The bytes of image ``ref`` under ``root``, checked to decode within the pixel cap."""
    if not isinstance(ref, str) or not ref:
        raise InvalidRecord("bad_image_reference")
    path = (root / ref).resolve()
    if not path.is_relative_to(root.resolve()):
        raise InvalidRecord("image_outside_root")
    if not path.is_file():
        raise InvalidRecord("missing_image")
    data = path.read_bytes()
    try:
        image_size(data, max_pixels)
    except ImageRejected as rejected:
        raise InvalidRecord(rejected.reason) from None
    return data


def _rows(source: InstructionSource, report: InstructionReport, max_pixels: int) -> Iterator[dict]:
    read = _READERS[source.format]
    for index, record in enumerate(_records(source, report)):
        try:
            if not isinstance(record, dict):
                raise InvalidRecord("not_an_object")
            turns, refs = read(record)
            images = [_image_bytes(source.image_root, ref, max_pixels) for ref in refs]
        except InvalidRecord as reason:
            report.skipped[f"{source.format}: {reason}"] += 1
            continue
        report.rows_by_format[source.format] += 1
        yield {"id": str(record.get("id", f"{source.path.stem}-{index}")), "format": source.format,
               "task_type": str(record.get("task_type", "text_only" if not refs else "multimodal")),
               "turns": [{"role": t.role, "text": t.text} for t in turns], "images": images, "image_refs": refs}


def build_instruction_table(sources: list[InstructionSource], output: str | Path, log=print,
                            batch_rows: int = 1024, max_pixels: int = DEFAULT_MAX_PIXELS) -> InstructionReport:
    """Convert every source and write one Lance table of conversations (a new version of ``output``)."""
    report = InstructionReport()
    start = time.perf_counter()

    def batches() -> Iterator[pa.RecordBatch]:
        for source in sources:
            if not source.path.is_file():
                raise FileNotFoundError(f"instruction file not found: {source.path}")
            pending = []
            for row in _rows(source, report, max_pixels):
                pending.append(row)
                if len(pending) == batch_rows:
                    yield pa.RecordBatch.from_pylist(pending, schema=CONVERSATION_SCHEMA)
                    pending = []
            if pending:
                yield pa.RecordBatch.from_pylist(pending, schema=CONVERSATION_SCHEMA)
            log(f"instructions: {source.format} {source.path.name}: {report.rows_by_format[source.format]} rows")

    dataset = write_lance(batches(), CONVERSATION_SCHEMA, output, message=f"instructions from {len(sources)} files")
    report.rows_written = sum(report.rows_by_format.values())
    report.lance_version = dataset.version
    report.seconds = time.perf_counter() - start
    log(f"instructions: {report.rows_written} conversations -> {output}; skipped {dict(report.skipped)}")
    return report


def turns_of(row: dict) -> list[Turn]:
    return [Turn(t["role"], t["text"]) for t in row["turns"]]
