"""What the registration gate may be shown (issue 42, items 3 and 5): a report whose score is not finite, or that
covers less than the eval set, is refused by the blocking check's findings."""

import json

from owl_pipeline.eval.owleval import load_eval_set
from owl_pipeline.eval.report import GROUND_TRUTH_FILE, OwlEvalReport, Scorers, build_report

TYPES = ["color", "color", "position", "position", "count"]


def eval_set(folder):
    (folder / "answer").mkdir(parents=True)
    questions = [{"image": f"{i}.jpg", "question_id": i, "question": f"q{i}", "ability": "a",
                  "question_type": kind} for i, kind in enumerate(TYPES)]
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "answer" / GROUND_TRUTH_FILE).write_text(
        "".join(json.dumps({"question_id": i, "answer": "red"}) + "\n" for i in range(len(TYPES))))
    return load_eval_set(folder)


def report(questions, answered_ids) -> OwlEvalReport:
    answers = [{"question_id": i, "answer": "red"} for i in answered_ids]
    return OwlEvalReport(build_report(questions, answers, "ours", Scorers(), log=lambda line: None))


def test_a_whole_report_goes_before_the_gate(tmp_path):
    questions = eval_set(tmp_path)
    whole = report(questions, range(len(TYPES)))
    assert whole.coverage_problem(questions) is None and whole.gate_problems("accuracy", questions, True) == []


def test_a_report_without_the_position_questions_is_refused_with_the_reason(tmp_path):
    questions = eval_set(tmp_path)
    partial = report(questions, [0, 1, 4])
    assert partial.scores()["accuracy"] == 1.0  # higher than the whole set's would be: it must not promote
    problem = partial.coverage_problem(questions)
    assert problem == "the report covers 3 of the eval set's 5 questions (missing: 2 position)"
    assert partial.gate_problems("accuracy", questions, True) == [problem]


def test_a_nan_score_fails_the_blocking_check(tmp_path):
    questions = eval_set(tmp_path)
    document = report(questions, range(len(TYPES))).document
    next(m for m in document["models"] if m["ours"])["scores"]["all"]["accuracy"] = float("nan")
    reread = OwlEvalReport(json.loads(json.dumps(document)))  # report.json holds NaN as Python's json writes it
    assert reread.gate_problems("accuracy", questions, True) == ["the 'accuracy' score is nan, not finite"]


def test_a_model_id_with_terminal_escapes_is_shown_escaped(tmp_path):
    questions = eval_set(tmp_path)
    (tmp_path / "answer" / "evil_answer.jsonl").write_text(
        json.dumps({"question_id": 0, "answer": "", "model_id": "\x1b[2J\x1b[31mevil"}) + "\n")
    lines = []
    document = build_report(questions, [], "ours", Scorers(), log=lines.append)
    shown = [line for line in lines + document["problems"] if "evil" in line]
    assert shown and all("\x1b" not in line and "\\x1b[31mevil" in line for line in shown)
