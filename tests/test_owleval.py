"""The OwlEval reader on the real set (../shared/data/owleval) and on bad input."""

from pathlib import Path

from owl_pipeline.eval.owleval import dialogues, load_eval_set, read_answers, reference_accuracy

REAL = Path(__file__).resolve().parents[2] / "shared/data/owleval"


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


def test_reference_accuracy_normalizes_and_groups():
    eval_set = load_eval_set(REAL)
    first = eval_set.questions[:2]
    eval_set.questions = first
    refs = [{"question_id": q.question_id, "answer": "A Red, circle."} for q in first]
    answers = [{"question_id": first[0].question_id, "answer": "a red circle"},
               {"question_id": first[1].question_id, "answer": "blue"}]
    accuracy = reference_accuracy(eval_set, answers, refs)
    assert accuracy.overall == 0.5 and accuracy.count == 2
