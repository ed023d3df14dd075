"""The OwlEval report on the real set: a real tiny model's answers beside the six published answer files,
scored by embedding similarity (the packaged model), the LLM judge and human ratings; the HTML page rendered
in headless Chromium."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from owl_pipeline.config import EvaluationConfig
from owl_pipeline.eval.evaluate import evaluate_answers
from owl_pipeline.eval.human import import_ratings
from owl_pipeline.eval.owleval import answer_eval_set, load_eval_set
from owl_pipeline.eval.report import GROUND_TRUTH_FILE, Scorers, build_report, our_scores

from tests.conftest import REAL_OWLEVAL, needs_real_owleval

PUBLISHED = {"MMreact", "BLIP2", "llava-13b", "mPLUG_Owl_7b:v1", "minigpt4_13b", "openflanmingo"}


@pytest.fixture(scope="module")
def owl_tiny(tokenizer):
    """One random tiny model (module scope: it answers the whole real set once)."""
    import torch

    from owl_pipeline.config import OwlConfig
    from owl_pipeline.model.builders import build_model, processor_config_for
    from owl_pipeline.model.processor import OwlProcessor

    config = OwlConfig.from_name("tiny")
    processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=False))
    torch.manual_seed(0)
    return build_model(config, processor), processor


@pytest.fixture(scope="module")
def real_answers(owl_tiny):
    eval_set = load_eval_set(REAL_OWLEVAL)
    return eval_set, answer_eval_set(*owl_tiny, eval_set, "owl-tiny", max_new_tokens=6, log=print)


@pytest.fixture(scope="module")
def real_report(real_answers, similarity, judge_says_b, tmp_path_factory):
    """Our answers and the six published answer files, scored by similarity and the (always-B) tiny judge."""
    eval_set, answers = real_answers
    config = EvaluationConfig(judge_model=str(judge_says_b))
    return evaluate_answers(eval_set, answers, "owl-tiny", config, tmp_path_factory.mktemp("report"), log=print)


@needs_real_owleval
@pytest.mark.slow  # the real report's fixture: 20 s
def test_real_owleval_report_with_published_models(real_report):
    report = real_report.report.document
    assert len(report["rows"]) == 82 and {m["model_id"] for m in report["models"]} == PUBLISHED | {"owl-tiny"}
    for model in report["models"]:  # every answer judged: B from the judge, D for an empty answer
        assert model["judge_grades"].get("B", 0) + model["judge_grades"].get("D", 0) == 82
        assert {k for k in model["scores"] if k.startswith("ability:")} == {f"ability:{c}" for c in "abcdef"}
    assert json.loads(real_report.json.read_text())["questions"] == 82


@needs_real_owleval
@pytest.mark.slow  # the real report's fixture: 20 s
def test_similarity_scores_every_model_against_the_reference(real_report):
    report = real_report.report.document
    scores = {m["model_id"]: m["scores"]["all"]["similarity"] for m in report["models"]}
    assert report["similarity_reference"] == "mPLUG_Owl_7b_answer"
    assert scores["mPLUG_Owl_7b:v1"] == pytest.approx(1.0, abs=1e-3)  # the reference against itself
    # the published models answer the same questions: closer to the reference than a random tiny model's babble
    assert min(v for k, v in scores.items() if k in PUBLISHED) > scores["owl-tiny"]
    assert all(0 <= v <= 1 for v in scores.values())


@needs_real_owleval
@pytest.mark.slow  # the real report's fixture: 20 s
def test_human_ratings_round_trip(real_answers, real_report, tmp_path):
    eval_set, answers = real_answers
    with real_report.rating_sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 * 82
    for row in rows:  # a rater: the published mPLUG-Owl gets A, ours D; one typo, one bad id; the rest blank
        row["grade"] = {"mPLUG_Owl_7b:v1": "a", "owl-tiny": "D"}.get(row["model_id"], "")
    rows[-1]["grade"], rows[-2]["grade"], rows[-2]["question_id"] = "E", "B", "x"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ratings = import_ratings(filled)
    assert len(ratings.grades) == 2 * 82 and len(ratings.problems) == 2
    report = build_report(eval_set, answers, "owl-tiny", Scorers(human=ratings))
    assert our_scores(report)["human"] == 0.0
    owl7b = next(m for m in report["models"] if m["model_id"] == "mPLUG_Owl_7b:v1")
    assert owl7b["scores"]["all"]["human"] == 1.0 and owl7b["human_grades"] == {"A": 82}
    assert sum("not one of A, B, C, D" in p for p in report["problems"]) == 1


def test_not_a_rating_sheet_is_a_clear_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a rating sheet"):
        import_ratings(path)


def test_bad_input_is_reported_not_raised(tmp_path, owl_tiny, similarity, red_image):
    folder = tmp_path / "set"
    (folder / "cases").mkdir(parents=True)
    (folder / "answer").mkdir()
    red_image.save(folder / "cases" / "1.jpg")
    (folder / "questions.jsonl").write_text(
        '{"image": "1.jpg", "question_id": 1, "question": "What is it?", "ability": "b", "category": ["single_turn"]}\n'
        '{"image": "gone.jpg", "question_id": 2, "question": "Hm?", "ability": "b,q", "category": "single_turn"}\n'
        "{broken\n")
    (folder / "answer" / "other_answer.jsonl").write_text(
        '{"question_id": 1, "answer": "", "model_id": "other"}\nnot json\n')
    eval_set = load_eval_set(folder)
    answers = answer_eval_set(*owl_tiny, eval_set, "owl-tiny", max_new_tokens=4)
    report = evaluate_answers(eval_set, answers, "owl-tiny", EvaluationConfig(), tmp_path / "out").report.document
    problems = "\n".join(report["problems"])
    for expected in ("unknown ability code(s) ['q']", "line 3: malformed", "gone.jpg not found",
                     "other_answer.jsonl line 2: malformed", "other: empty answer to question 1",
                     "no reference answers"):
        assert expected in problems
    assert len(report["rows"]) == 2


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@needs_real_owleval
@pytest.mark.slow  # the real report's fixture: 20 s
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (scripts/setup.sh installs it)")
def test_html_report_renders_all_rows_in_chromium(real_report, tmp_path):
    files = real_report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", files.html.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count('class="question-row"') == 82
    assert "OwlEval report: owl-tiny" in dom and "similarity per ability" in dom
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1400,2000", files.html.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page with tables, a chart and pictures


def test_on_the_generated_eval_set_the_report_ratings_and_page_cover_every_answer_file(
        corpus, owl_tiny, similarity, tmp_path):
    """What the real-set tests above check, on shapes world's own eval set (a bare clone has no other): our
    answers beside another answer file, scored by similarity and by a filled rating sheet, on one HTML page."""
    root, _ = corpus
    folder = tmp_path / "owleval"
    shutil.copytree(root / "owleval", folder)
    reference = (folder / "answer" / GROUND_TRUTH_FILE).read_text().splitlines()
    (folder / "answer" / "other_answer.jsonl").write_text(
        "".join(json.dumps({**json.loads(line), "model_id": "other"}) + "\n" for line in reference))
    eval_set = load_eval_set(folder)
    answers = answer_eval_set(*owl_tiny, eval_set, "owl-tiny", max_new_tokens=4)
    files = evaluate_answers(eval_set, answers, "owl-tiny", EvaluationConfig(), tmp_path / "report", log=print)
    count = len(eval_set.questions)
    scores = {m["model_id"]: m["scores"]["all"] for m in files.report.document["models"]}
    assert set(scores) == {"other", "owl-tiny"} and len(files.report.document["rows"]) == count
    assert scores["other"]["accuracy"] == 1.0 and scores["other"]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert scores["owl-tiny"]["similarity"] < scores["other"]["similarity"]

    with files.rating_sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * count
    for row in rows:
        row["grade"] = {"other": "A", "owl-tiny": "d"}[row["model_id"]]
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rated = build_report(eval_set, answers, "owl-tiny", Scorers(human=import_ratings(filled)))
    assert {m["model_id"]: m["scores"]["all"]["human"] for m in rated["models"]} == {"other": 1.0, "owl-tiny": 0.0}
    assert files.html.read_text(encoding="utf-8").count('<tr class="question-row') == count  # ' wrong' on misses
