"""The report as one self-contained HTML page (templates/report.html.j2): a score table, our accuracy per
question type, our scores per ability (an ability without questions says so), per-ability bar charts, and one
row per question with its picture, our answer and every published model's answer with their scores, with a
switch to show only our wrong answers. Images are embedded as small JPEG thumbnails, so the page can be
attached to an MLflow run or mailed as one file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import jinja2

from owl_pipeline import constants as C
from owl_pipeline.constants import SCORE_METRICS as METRICS
from owl_pipeline.data.images import ImageRejected, decode_rgb
from owl_pipeline.eval.owleval import ABILITIES, case_image_path
from owl_pipeline.files import atomic_write_text

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours td { background: #eef6ff; font-weight: 600; }
img.case { max-width: 200px; }
.answer { margin: 0 0 6px 0; } .model { color: #555; font-size: 12px; } .problem { color: #a00; }
#questions.only-wrong tr.question-row:not(.wrong) { display: none; }
"""


def _thumbnail(path: Path, size: int = 256) -> str:
    if not path.is_file():
        return '<span class="problem">image missing</span>'
    try:
        image = decode_rgb(path.read_bytes())
    except ImageRejected:
        return '<span class="problem">image not usable</span>'
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return f'<img class="case" alt="{html.escape(path.name)}" src="data:image/jpeg;base64,' \
           f'{base64.b64encode(buffer.getvalue()).decode()}">'


def ability_chart_png(report: dict, metric: str) -> bytes | None:
    """Grouped bars: ``metric`` per ability (a-f) for every model; None when no model has that score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [f"ability:{code}" for code in ABILITIES]
    models = [m for m in report["models"] if any(m["scores"].get(g, {}).get(metric) is not None for g in groups)]
    if not models:
        return None
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        values = [model["scores"].get(g, {}).get(metric) or 0.0 for g in groups]
        axis.bar([i + index * width for i in range(len(groups))], values, width,
                 label=model["model_id"] + (" (ours)" if model["ours"] else ""))
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))],
                    [f"{code}: {name}" for code, name in ABILITIES.items()], fontsize=7)
    axis.set_ylabel(metric)
    axis.legend(fontsize=7, ncol=len(models), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _score(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _counts(report: dict, key) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in report["rows"]:
        for value in key(row):
            counts[value] = counts.get(value, 0) + 1
    return counts


def _ours(report: dict) -> dict:
    return next(m for m in report["models"] if m["ours"])


def _by_type(report: dict) -> list[tuple[str, int, float | None]]:
    """(question type, questions, our accuracy) where the set has types and ground truth."""
    scores = _ours(report)["scores"]
    counts = _counts(report, lambda row: [row["question_type"]] if row.get("question_type") else [])
    return [(kind, count, scores.get(f"type:{kind}", {}).get(C.METRIC_ACCURACY))
            for kind, count in sorted(counts.items()) if scores.get(f"type:{kind}", {}).get(C.METRIC_ACCURACY)
            is not None]


def _by_ability(report: dict) -> list[tuple[str, str, int, dict]]:
    """Every ability a-f: (code, name, questions, our scores); an ability without questions has count 0."""
    scores = _ours(report)["scores"]
    counts = _counts(report, lambda row: row["ability"])
    return [(code, name, counts.get(code, 0), scores.get(f"ability:{code}", {})) for code, name in ABILITIES.items()]


def _row(row: dict, report: dict, thumbnails: dict[str, str], cases: Path) -> dict:
    if row["image"] not in thumbnails:
        path = case_image_path(cases.parent, row["image"])  # never a file outside cases/
        thumbnails[row["image"]] = _thumbnail(path) if path else '<span class="problem">refused name</span>'
    answers = []
    for model in report["models"]:
        scored = row["answers"].get(model["model_id"])
        if scored is not None:
            answers.append({"label": model["model_id"] + (" (ours)" if model["ours"] else ""),
                            "scores": " · ".join(f"{m} {_score(scored.get(m))}" for m in METRICS
                                                 if scored.get(m) is not None),
                            "text": scored["answer"]})
    ours = row["answers"].get(report["our_model"], {})
    return {**row, "thumbnail": thumbnails[row["image"]], "answers": answers,
            "wrong": ours.get(C.METRIC_ACCURACY) is False}


def render_html(report: dict, cases: Path) -> str:
    """The page, from templates/report.html.j2 (autoescaped: answers and questions are shown, never run)."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("owl_pipeline.eval", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["score"] = _score
    charts = [(metric, base64.b64encode(png).decode()) for metric in METRICS
              if (png := ability_chart_png(report, metric))]
    thumbnails: dict[str, str] = {}
    rows = [_row(row, report, thumbnails, cases) for row in report["rows"]]
    has_truth = any(row.get("ground_truth") is not None for row in report["rows"])
    return environment.get_template("report.html.j2").render(
        report=report, style=_STYLE, metrics=METRICS, charts=charts, rows=rows, by_type=_by_type(report),
        by_ability=_by_ability(report), wrong_count=sum(r["wrong"] for r in rows) if has_truth else None)


def write_report_html(report: dict, cases: Path, path: Path) -> Path:
    return atomic_write_text(path, render_html(report, cases))  # a full disk leaves the last page, never a part
