"""The HTML report's breakdowns: accuracy per question type, every ability (one without questions says so),
and the switch that shows only our wrong answers."""

import re

from owl_pipeline.eval.owleval import load_eval_set
from owl_pipeline.eval.report import GROUND_TRUTH_FILE, Scorers, build_report
from owl_pipeline.eval.report_html import render_html


def report_for(tmp_path) -> dict:
    """Three questions with ground truth in ``tmp_path``, answered (one answer wrong and hostile), reported."""
    (tmp_path / "answer").mkdir()
    (tmp_path / "cases").mkdir()
    (tmp_path / "questions.jsonl").write_text(
        '{"image": "1.jpg", "question_id": 1, "question": "Color?", "ability": "b", "question_type": "color"}\n'
        '{"image": "1.jpg", "question_id": 2, "question": "How <many>?", "ability": "b,e", "question_type": "count"}\n'
        '{"image": "1.jpg", "question_id": 3, "question": "Color again?", "ability": "b", "question_type": "color"}\n')
    (tmp_path / "answer" / GROUND_TRUTH_FILE).write_text(
        '{"question_id": 1, "answer": "red"}\n{"question_id": 2, "answer": "two"}\n'
        '{"question_id": 3, "answer": "blue"}\n')
    answers = [{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": "<script>x</script>"},
               {"question_id": 3, "answer": "blue"}]
    return build_report(load_eval_set(tmp_path), answers, "mine", Scorers(), log=lambda *_: None)


def page_for(tmp_path) -> str:
    return render_html(report_for(tmp_path), tmp_path / "cases")


def cells(page: str, label: str) -> list[str]:
    row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", page, re.S).group(1)
    return [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_accuracy_per_question_type_and_per_ability(tmp_path):
    page = page_for(tmp_path)
    assert "Our accuracy per question type" in page
    assert cells(page, "color") == ["2", "1.000"] and cells(page, "count") == ["1", "0.000"]
    assert cells(page, "b: visual understanding")[:2] == ["3", "0.667"]
    assert cells(page, "c: optical character recognition") == ["0", "no questions"]
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page  # answers are shown, never run


def test_only_wrong_answers_can_be_shown(tmp_path):
    page = page_for(tmp_path)
    assert 'id="only-wrong"' in page and "(1 of 3)" in page
    assert page.count('class="question-row wrong"') == 1 and 'class="question-row wrong" id="q2"' in page
    assert "#questions.only-wrong tr.question-row:not(.wrong) { display: none; }" in page


def test_a_report_write_that_fails_midway_leaves_the_last_page_whole(tmp_path, monkeypatch):
    """Issue 24 item 15: the page, the report JSON, the answers and the rating sheet are written and renamed."""
    import errno
    import io

    import pytest

    from owl_pipeline import files
    from owl_pipeline.eval.report_html import write_report_html

    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    page.write_text("<html>the last complete page</html>")

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    report = report_for(tmp_path)
    monkeypatch.setattr(files.os, "fdopen", lambda *args, **kwargs: FullDisk())
    with pytest.raises(OSError, match="No space left"):
        write_report_html(report, tmp_path / "cases", page)
    assert page.read_text() == "<html>the last complete page</html>"
    assert [p.name for p in page.parent.iterdir()] == ["report.html"]
