"""Human rating: a sheet (CSV) to fill in any spreadsheet, and the import of the filled sheet.

One row per (model, question); raters write A, B, C or D in the ``grade`` column (the OwlEval rubric is in the
sheet's first data row's ``comment`` and in the report). Blank grades are unrated; anything else is reported.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from owl_pipeline.eval.judge import GRADES, RUBRIC
from owl_pipeline.files import atomic_write_text
from owl_pipeline.safe_text import printable

SHEET_COLUMNS = ("model_id", "question_id", "image", "question", "answer", "grade", "comment")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula (OWASP CSV injection)
MAX_CELL_CHARS = 32_000  # under a spreadsheet's cell limit (Excel: 32,767); answers.jsonl keeps the whole answer
MAX_IMPORT_FIELD_CHARS = 1 << 24


def sheet_cell(value) -> str:
    """A value as a cell a spreadsheet shows as text: a formula start gets a leading ``'``, a long text is cut."""
    text = str(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[:MAX_CELL_CHARS] + f" ... (cut: {len(text)} characters, the whole answer is in answers.jsonl)"
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _model_id_of(cell: str) -> str:
    """The model id a cell holds: the ``'`` that ``sheet_cell`` put before a formula start taken off."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def export_rating_sheet(report: dict, path: str | Path) -> Path:
    """Every answer of every model in ``report`` (eval.report), model by model in question order, grades empty."""
    sheet = io.StringIO(newline="")
    writer = csv.DictWriter(sheet, fieldnames=SHEET_COLUMNS)
    writer.writeheader()
    rubric = RUBRIC.replace("\n", " ")
    for model in report["models"]:
        for row in report["rows"]:
            scored = row["answers"].get(model["model_id"])
            if scored is not None:
                cells = {"model_id": model["model_id"], "question_id": row["question_id"], "image": row["image"],
                         "question": row["question"], "answer": scored["answer"], "grade": "", "comment": rubric}
                writer.writerow({column: sheet_cell(value) for column, value in cells.items()})
                rubric = ""
    return atomic_write_text(path, sheet.getvalue())


@dataclass
class HumanRatings:
    grades: dict[tuple[str, int], str] = field(default_factory=dict)  # (model_id, question_id) -> A..D
    unrated: int = 0
    problems: list[str] = field(default_factory=list)


def import_ratings(path: str | Path) -> HumanRatings:
    """Read a filled sheet; bad rows are reported with their line number and skipped."""
    path = Path(path)
    limit = csv.field_size_limit(max(csv.field_size_limit(), MAX_IMPORT_FIELD_CHARS))  # a sheet of long answers
    try:
        return _read_ratings(path)
    except csv.Error as error:
        raise ValueError(f"{path}: not a readable CSV rating sheet ({error})") from None
    finally:
        csv.field_size_limit(limit)


def _read_ratings(path: Path) -> HumanRatings:
    ratings = HumanRatings()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"model_id", "question_id", "grade"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a rating sheet, columns {sorted(missing)} missing "
                             f"(export one with `owl eval --rating-sheet PATH`)")
        for line, row in enumerate(reader, 2):
            grade = (row.get("grade") or "").strip().upper()
            if not grade:
                ratings.unrated += 1
                continue
            try:
                question_id = int(row["question_id"])
            except (TypeError, ValueError):
                ratings.problems.append(printable(f"{path.name} line {line}: question_id {row['question_id']!r} is not "
                                                  "a number"))
                continue
            if grade not in GRADES:
                ratings.problems.append(printable(f"{path.name} line {line}: grade {grade!r} is not one of A, B, C, D"))
                continue
            ratings.grades[(_model_id_of(row["model_id"]), question_id)] = grade
    return ratings
