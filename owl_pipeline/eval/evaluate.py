"""One call from answers to a finished report: scorers from the config, JSON + HTML + a rating sheet written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from owl_pipeline.config import EvaluationConfig
from owl_pipeline.eval.human import export_rating_sheet, import_ratings
from owl_pipeline.eval.judge import LLMJudge
from owl_pipeline.eval.owleval import EvalSet
from owl_pipeline.eval.report import Scorers, build_report, write_report_json
from owl_pipeline.eval.report_html import write_report_html
from owl_pipeline.eval.similarity import SimilarityScorer

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
RATING_SHEET, JUDGE_CACHE = "rating_sheet.csv", "judge_cache.jsonl"


@dataclass
class ReportFiles:
    report: dict
    json: Path
    html: Path
    rating_sheet: Path


def scorers_for(config: EvaluationConfig, folder: Path, similarity: bool = True) -> Scorers:
    """Similarity always (unless turned off), the judge and human ratings where the config names them."""
    judge = (LLMJudge(config.judge_model, folder / JUDGE_CACHE, config.judge_max_new_tokens)
             if config.judge_model else None)
    human = import_ratings(config.human_ratings) if config.human_ratings else None
    return Scorers(SimilarityScorer(config.embedding_model) if similarity else None, judge, human)


def evaluate_answers(eval_set: EvalSet, answers: list[dict], model_id: str, config: EvaluationConfig,
                     folder: Path, log: Callable[[str], None] = print, similarity: bool = True) -> ReportFiles:
    """Score ``answers`` beside the published answer files; write report.json, report.html, rating_sheet.csv."""
    scorers = scorers_for(config, folder, similarity)
    report = build_report(eval_set, answers, model_id, scorers, config.reference_answers, log=log)
    sheet = export_rating_sheet(report, folder / RATING_SHEET)
    json_path = write_report_json(report, folder / REPORT_JSON)
    html_path = write_report_html(report, eval_set.folder / "cases", folder / REPORT_HTML)
    log(f"owleval: report {html_path} ({len(report['problems'])} problems)")
    return ReportFiles(report, json_path, html_path, sheet)
