"""Human rating: a sheet (CSV) to fill in any spreadsheet, and the import of the filled sheet.

One row per (model, question); raters write A, B, C or D in the ``grade`` column (the OwlEval rubric is in the
sheet's first data row's ``comment`` and in the report). Blank grades are unrated; anything else is reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from owl_pipeline.eval.judge import GRADES, RUBRIC

SHEET_COLUMNS = ("model_id", "question_id", "image", "question", "answer", "grade", "comment")


def export_rating_sheet(report: dict, path: str | Path) -> Path:
    """Every answer of every model in ``report`` (eval.report), model by model in question order, grades empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        rubric = RUBRIC.replace("\n", " ")
        for model in report["models"]:
            for row in report["rows"]:
                scored = row["answers"].get(model["model_id"])
                if scored is not None:
                    writer.writerow({"model_id": model["model_id"], "question_id": row["question_id"],
                                     "image": row["image"], "question": row["question"], "answer": scored["answer"],
                                     "grade": "", "comment": rubric})
                    rubric = ""
    return path


@dataclass
class HumanRatings:
    grades: dict[tuple[str, int], str] = field(default_factory=dict)  # (model_id, question_id) -> A..D
    unrated: int = 0
    problems: list[str] = field(default_factory=list)


def import_ratings(path: str | Path) -> HumanRatings:
    """Read a filled sheet; bad rows are reported with their line number and skipped."""
    path = Path(path)
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
                ratings.problems.append(f"{path.name} line {line}: question_id {row['question_id']!r} is not a number")
                continue
            if grade not in GRADES:
                ratings.problems.append(f"{path.name} line {line}: grade {grade!r} is not one of A, B, C, D")
                continue
            ratings.grades[(row["model_id"], question_id)] = grade
    return ratings
