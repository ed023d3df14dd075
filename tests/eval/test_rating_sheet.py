"""The rating sheet against hostile answers (issue 24 item 9): no cell a spreadsheet would run as a formula, no
answer too long to read back."""

import csv

from owl_pipeline.eval.human import MAX_CELL_CHARS, export_rating_sheet, import_ratings


def _report(answers: dict[str, str]) -> dict:
    rows = [{"question_id": i, "image": "1.jpg", "question": "What is it?",
             "answers": {model: {"answer": answer}}} for i, (model, answer) in enumerate(answers.items(), 1)]
    return {"models": [{"model_id": model} for model in answers], "rows": rows}


def test_formula_starts_are_defused_and_long_answers_cut_and_the_sheet_reads_back(tmp_path):
    answers = {"a": '=HYPERLINK("http://evil","x")', "b": "+cmd|' /C calc'!A0", "c": "@SUM(1+1)", "d": "-2+3",
               "=model": "fine", "long": "x" * 150_000}
    sheet = export_rating_sheet(_report(answers), tmp_path / "sheet.csv")
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert not [cell for row in rows for cell in row.values() if cell.startswith(("=", "+", "-", "@"))]
    assert rows[0]["answer"] == "'" + answers["a"] and rows[4]["model_id"] == "'=model"
    assert len(rows[5]["answer"]) < MAX_CELL_CHARS + 100 and "the whole answer is in answers.jsonl" in rows[5]["answer"]
    for row in rows:
        row["grade"] = "B"
    with sheet.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ratings = import_ratings(sheet)
    assert ratings.grades[("=model", 5)] == "B" and len(ratings.grades) == 6 and not ratings.problems


def test_a_sheet_with_an_answer_longer_than_the_csv_default_limit_is_read(tmp_path):
    path = tmp_path / "filled.csv"
    path.write_text("model_id,question_id,answer,grade\nm,1," + "y" * 200_000 + ",A\n", encoding="utf-8")
    before = csv.field_size_limit()
    assert import_ratings(path).grades == {("m", 1): "A"}
    assert csv.field_size_limit() == before  # the process-wide limit is put back
