"""From a saved model (or its answers) to a finished report: scorers from the config, answers.jsonl, report JSON
+ HTML and a rating sheet written. The pipeline's ``owleval_report`` step and ``owl eval`` both call this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from owl_pipeline import constants as C
from owl_pipeline.config import EvaluationConfig
from owl_pipeline.eval.human import export_rating_sheet, import_ratings
from owl_pipeline.eval.judge import LLMJudge
from owl_pipeline.eval.owleval import EvalSet, answer_eval_set, load_eval_set, write_answers
from owl_pipeline.eval.report import OwlEvalReport, Scorers, build_report, write_report_json
from owl_pipeline.eval.report_html import write_report_html
from owl_pipeline.eval.similarity import SimilarityScorer


@dataclass
class ReportFiles:
    report: OwlEvalReport
    json: Path
    html: Path
    rating_sheet: Path
    answers: Path | None = None


def scorers_for(config: EvaluationConfig, folder: Path, similarity: bool = True) -> Scorers:
    """Similarity always (unless turned off), the judge and human ratings where the config names them."""
    judge = (LLMJudge(config.judge_model, folder / C.OWLEVAL_JUDGE_CACHE, config.judge_max_new_tokens)
             if config.judge_model else None)
    human = import_ratings(config.human_ratings) if config.human_ratings else None
    return Scorers(SimilarityScorer(config.embedding_model) if similarity else None, judge, human)


def evaluate_answers(eval_set: EvalSet, answers: list[dict], model_id: str, config: EvaluationConfig,
                     folder: Path, log: Callable[[str], None] = print, similarity: bool = True) -> ReportFiles:
    """Score ``answers`` beside the published answer files; write report.json, report.html, rating_sheet.csv."""
    scorers = scorers_for(config, folder, similarity)
    report = build_report(eval_set, answers, model_id, scorers, config.reference_answers, log=log)
    sheet = export_rating_sheet(report, folder / C.OWLEVAL_RATING_SHEET)
    json_path = write_report_json(report, folder / C.OWLEVAL_REPORT_JSON)
    html_path = write_report_html(report, eval_set.folder / "cases", folder / C.OWLEVAL_REPORT_HTML)
    log(f"owleval: report {html_path} ({len(report['problems'])} problems)")
    return ReportFiles(OwlEvalReport(report), json_path, html_path, sheet)


def evaluate_model(model_dir: str | Path, owleval_dir: str | Path, folder: Path, config: EvaluationConfig,
                   model_id: str, log: Callable[[str], None] = print,
                   max_image_pixels: int = C.DEFAULT_MAX_IMAGE_PIXELS) -> ReportFiles:
    """Answer the OwlEval folder with the model saved in ``model_dir`` (greedy, ``config.max_new_tokens``),
    write the answers in the official format, and score them beside the published ones."""
    from owl_pipeline.model.builders import from_pretrained

    model, processor = from_pretrained(model_dir)
    eval_set = load_eval_set(owleval_dir)
    answers = answer_eval_set(model, processor, eval_set, model_id=model_id, max_new_tokens=config.max_new_tokens,
                              log=log, max_question_tokens=config.max_question_tokens,
                              max_image_pixels=max_image_pixels)
    answers_path = write_answers(answers, Path(folder) / C.OWLEVAL_ANSWERS)
    files = evaluate_answers(eval_set, answers, model_id, config, Path(folder), log=log)
    files.answers = answers_path
    return files
