"""The report as one self-contained HTML page: a score table, a per-ability bar chart, and one row per question
with its picture, our answer and every published model's answer with their scores. Images are embedded as
small JPEG thumbnails, so the page can be attached to an MLflow run or mailed as one file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


from owl_pipeline.constants import SCORE_METRICS as METRICS
from owl_pipeline.data.images import ImageRejected, decode_rgb
from owl_pipeline.eval.owleval import ABILITIES, case_image_path

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours td { background: #eef6ff; font-weight: 600; }
img.case { max-width: 200px; }
.answer { margin: 0 0 6px 0; } .model { color: #555; font-size: 12px; } .problem { color: #a00; }
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


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _score_table(report: dict) -> str:
    header = "".join(f"<th>{m}</th>" for m in METRICS)
    rows = []
    for model in report["models"]:
        overall = model["scores"].get("all", {})
        cells = "".join(f'<td class="num">{_format(overall.get(m))}</td>' for m in METRICS)
        grades = ", ".join(f"{k}:{v}" for k, v in sorted(model["judge_grades"].items())) or "–"
        rows.append(f'<tr class="{"ours" if model["ours"] else ""}"><td>{html.escape(model["model_id"])}</td>'
                    f"{cells}<td>{html.escape(grades)}</td></tr>")
    return f"<table><tr><th>model</th>{header}<th>judge grades</th></tr>{''.join(rows)}</table>"


def _answer_cell(row: dict, report: dict) -> str:
    parts = []
    for model in report["models"]:
        scored = row["answers"].get(model["model_id"])
        if scored is None:
            continue
        scores = " · ".join(f"{m} {_format(scored.get(m))}" for m in METRICS if scored.get(m) is not None)
        label = html.escape(model["model_id"]) + (" (ours)" if model["ours"] else "")
        parts.append(f'<p class="answer"><span class="model">{label}{" — " + scores if scores else ""}</span><br>'
                     f"{html.escape(scored['answer']) or '<span class=problem>(empty)</span>'}</p>")
    return "".join(parts)


def render_html(report: dict, cases: Path) -> str:
    charts = []
    for metric in METRICS:
        png = ability_chart_png(report, metric)
        if png:
            charts.append(f"<h3>{metric} per ability</h3><img alt='{metric} per ability' "
                          f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    thumbnails: dict[str, str] = {}
    rows = []
    for row in report["rows"]:
        if row["image"] not in thumbnails:
            path = case_image_path(cases.parent, row["image"])  # never a file outside cases/
            thumbnails[row["image"]] = _thumbnail(path) if path else '<span class="problem">refused name</span>'

        truth = f"<br><b>expected:</b> {html.escape(row['ground_truth'])}" if row.get("ground_truth") else ""
        rows.append(f'<tr class="question-row" id="q{row["question_id"]}"><td>{row["question_id"]}</td>'
                    f"<td>{thumbnails[row['image']]}</td><td>{', '.join(row['ability'])}</td>"
                    f"<td>{html.escape(row['question'])}{truth}</td><td>{_answer_cell(row, report)}</td></tr>")
    problems = "".join(f"<li class='problem'>{html.escape(p)}</li>" for p in report["problems"]) or "<li>none</li>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>OwlEval report: "
            f"{html.escape(report['our_model'])}</title><style>{_STYLE}</style></head><body>"
            f"<h1>OwlEval report: {html.escape(report['our_model'])}</h1>"
            f"<p>{report['questions']} questions from {html.escape(report['eval_set'])}; similarity reference: "
            f"{html.escape(str(report['similarity_reference']))}; judge: {html.escape(str(report['judge']))}</p>"
            f"<h2>Scores</h2>{_score_table(report)}{''.join(charts)}"
            f"<h2>Questions</h2><table id='questions'><tr><th>id</th><th>image</th><th>ability</th><th>question</th>"
            f"<th>answers</th></tr>{''.join(rows)}</table><h2>Problems</h2><ul>{problems}</ul></body></html>")


def write_report_html(report: dict, cases: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, cases), encoding="utf-8")
    return path
