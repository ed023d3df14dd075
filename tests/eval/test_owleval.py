"""The OwlEval reader on the real set (``OWL_OWLEVAL_DIR``, default ../shared/data/owleval) and on bad input."""

from owl_pipeline.eval.owleval import dialogues, load_eval_set, read_answers
from owl_pipeline.eval.report import GROUND_TRUTH_FILE, Scorers, build_report, headline

from tests.conftest import REAL_OWLEVAL as REAL, needs_real_owleval


@needs_real_owleval
def test_the_real_set_reads_whole():
    eval_set = load_eval_set(REAL)
    assert len(eval_set.questions) == 82 and not eval_set.problems
    groups = dialogues(eval_set.questions)
    multi = [g for g in groups if len(g) > 1]
    opener = next(g for g in multi if g[0].question_id == 4)  # ["single_turn", "multi_turn"] opens a dialogue
    assert [q.question_id for q in opener][:2] == [4, 5]
    assert all(len({q.image for q in g}) == 1 and all(q.multi_turn for q in g) for g in multi)
    assert sum(len(g) for g in groups) == 82
    published, problems = read_answers(REAL / "answer/mPLUG_Owl_7b_answer.jsonl")
    assert len(published) == 82 and not problems


def test_bad_lines_and_unknown_abilities_are_reported(tmp_path):
    (tmp_path / "questions.jsonl").write_text(
        '{"image": "1.jpg", "question_id": 1, "question": "q", "ability": "b,z", "category": ["single_turn"]}\n'
        "not json\n"
        '{"image": "2.jpg", "question": "no id"}\n')
    eval_set = load_eval_set(tmp_path)
    assert [q.ability for q in eval_set.questions] == [["b"]]
    assert len(eval_set.problems) == 3 and "unknown ability code(s) ['z']" in eval_set.problems[0]


def test_accuracy_normalizes_and_groups_by_type_and_ability(tmp_path):
    (tmp_path / "answer").mkdir()
    (tmp_path / "questions.jsonl").write_text(
        '{"image": "1.jpg", "question_id": 1, "question": "Color?", "ability": "b", "question_type": "color"}\n'
        '{"image": "1.jpg", "question_id": 2, "question": "How many?", "ability": "b,e", "question_type": "count"}\n')
    (tmp_path / "answer" / GROUND_TRUTH_FILE).write_text(
        '{"question_id": 1, "answer": "A Red, circle."}\n{"question_id": 2, "answer": "two"}\n')
    answers = [{"question_id": 1, "answer": "a red circle"}, {"question_id": 2, "answer": "three"}]
    summary = headline(build_report(load_eval_set(tmp_path), answers, "mine", Scorers(), log=print))
    assert summary["accuracy"] == 0.5 and summary["accuracy_by_type"] == {"color": 1.0, "count": 0.0}
    assert summary["accuracy_by_ability"] == {"b": 0.5, "e": 0.0}


def test_malformed_question_and_answer_lines_are_problems_and_the_rest_is_scored(tmp_path):
    """Issue 24 item 8: wrong types in either file are one problem row each, never an abort."""
    import json

    (tmp_path / "answer").mkdir()
    good = {"image": "1.jpg", "question_id": 1, "question": "Color?", "ability": "b", "question_type": "color"}
    questions = [good, {**good, "question_id": 2, "image": ["1.jpg"]}, {**good, "question_id": 3, "question": {"q": 1}},
                 {**good, "question_id": 4, "question_type": ["color"]}, {**good, "question_id": True},
                 {**good, "question_id": "5"}]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    eval_set = load_eval_set(tmp_path)
    assert [q.question_id for q in eval_set.questions] == [1, 5] and len(eval_set.problems) == 4
    assert "image is ['1.jpg'], not a text" in eval_set.problems[0]
    answers = ['{"question_id": 1, "answer": "red"}', '{"question_id": "x", "answer": "red"}',
               '{"answer": "red"}', '{"question_id": null, "answer": "red"}', '"just a string"', "7",
               '{"question_id": 5, "answer": 3}', '{"question_id": 5, "answer": "blue\\u001b[2J"}']
    (tmp_path / "answer" / GROUND_TRUTH_FILE).write_text('{"question_id": 1, "answer": "red"}\n'
                                                         '{"question_id": 5, "answer": "blue"}\n')
    (tmp_path / "answer" / "other_answer.jsonl").write_text("\n".join(answers) + "\n")
    published, problems = read_answers(tmp_path / "answer" / "other_answer.jsonl")
    assert [a["question_id"] for a in published] == [1, 5] and len(problems) == 6
    assert all("\x1b" not in p for p in problems)
    report = build_report(eval_set, [{"question_id": 1, "answer": "red"}], "ours", Scorers())
    assert {m["model_id"] for m in report["models"]} == {"ours", "other"} and report["questions"] == 2
    assert sum("other_answer.jsonl line" in p for p in report["problems"]) == 6
    assert sum("questions.jsonl line" in p for p in report["problems"]) == 4
