"""A step's materialization metadata as {key: (type, value)}, with dagster-pipes' type names.

No Dagster import here: the Dagster process (assets.py) and a training subprocess that reports back through
dagster-pipes (``owl step --dagster-pipes``) describe a step the same way, lineage included.

For reading in the UI: one entry per fact under a clear name, numbers rounded, rule counts and scores as
tables (abilities by name), plots (loss curve, filter histograms) as images in the page, and Dagster's
standard ``dagster/row_count`` and ``dagster/column_schema`` on the Lance datasets. A reused step says so and
carries none of the old run's timings.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import lance

from owl_pipeline import constants as C
from owl_pipeline.pipeline.graph import step
from owl_pipeline.pipeline.lineage import step_lineage
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult

# Figures of one run that a reuse must not repeat as if they were fresh.
_RUN_FIGURES = {"seconds", "samples_per_s", "model_tflops_per_s", "data_wait_share", "mfu", "images_per_s",
                "first_loss", "resumed_from_step"}
# Metadata shown as a table instead of raw JSON: key -> (entry name, header, number format).
_TABLES = {"removed": ("rows removed per rule", ("rule (first that removes the row)", "rows"), "{}"),
           "failed": ("rows failing each rule alone", ("rule", "rows"), "{}"),
           C.ACCURACY_BY_TYPE: ("accuracy per question type", ("question type", "accuracy"), "{:.3f}"),
           C.ACCURACY_BY_ABILITY: ("accuracy per ability", ("ability", "accuracy"), "{:.3f}")}

Entries = dict[str, tuple[str, Any]]


def _rounded(value: float) -> float:
    """Four significant digits: 0.4494796693325043 -> 0.4495, 1234.567 -> 1235.0."""
    return float(f"{value:.4g}")


def _typed(value: Any) -> tuple[str, Any]:
    """Numbers as numbers (rounded for reading), links as links, structures as JSON, the rest as text."""
    if isinstance(value, bool) or value is None:
        return "text", str(value)
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", _rounded(value)
    if isinstance(value, str) and value.startswith("http"):
        return "url", value
    if isinstance(value, (dict, list)):
        return "json", value
    return "text", str(value)


def _markdown_table(header: tuple[str, str], rows: dict[str, Any], number: str = "{}") -> tuple[str, str]:
    lines = "\n".join(f"| {key} | {number.format(value)} |" for key, value in rows.items())
    return "md", f"| {header[0]} | {header[1]} |\n|---|---|\n{lines}"


def _image(title: str, path: Path) -> tuple[str, str]:
    """A PNG shown in the asset page (a markdown image with the picture inline), with its path below."""
    data = base64.b64encode(path.read_bytes()).decode()
    return "md", f"![{title}](data:image/png;base64,{data})\n\n`{path}`"


def _named_abilities(scores: dict[str, float]) -> dict[str, float]:
    return {f"{code}: {C.OWLEVAL_ABILITIES.get(code, code)}": value for code, value in scores.items()}


def step_entries(result: StepResult) -> Entries:
    metadata = result.metadata()
    if result.reused:
        metadata = {k: v for k, v in metadata.items() if k not in _RUN_FIGURES}
    if C.ACCURACY_BY_ABILITY in metadata:
        metadata[C.ACCURACY_BY_ABILITY] = _named_abilities(metadata[C.ACCURACY_BY_ABILITY])
    entries = {}
    for key, value in metadata.items():
        if key in _TABLES and isinstance(value, dict):
            name, header, number = _TABLES[key]
            entries[name] = _markdown_table(header, value, number)
        else:
            entries[key] = _typed(value)
    entries.update({f"path_{name}": ("path", path) for name, path in result.outputs.items()})
    plots = {"loss curve": Path(result.outputs["model"]).parent / C.LOSS_CURVE if "model" in result.outputs else None,
             "filter histograms": Path(result.outputs["histogram"]) if "histogram" in result.outputs else None}
    entries.update({title: _image(title, path) for title, path in plots.items() if path and path.is_file()})
    return entries


def dataset_entries(project: Project, result: StepResult) -> Entries:
    """Dagster's standard row count and column schema for a step that writes a Lance dataset."""
    path = project.asset_paths().get(result.name)
    if path is None or path.suffix != ".lance" or not (path / "_versions").is_dir():
        return {}
    dataset = lance.dataset(str(path))
    columns = [{"name": field.name, "type": str(field.type)} for field in dataset.schema]
    return {"dagster/row_count": ("int", dataset.count_rows()),
            "dagster/column_schema": ("table_schema", {"columns": columns})}


def lineage_entries(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    """DVC hash (and Lance version) of what the step wrote and of what it read; the written hash is also the
    Dagster data version, so the UI shows when the bytes really changed."""
    written, read = step_lineage(project, result, step(result.name).reads)
    entries: Entries = {f"written_{key}": ("text", str(value)) for key, value in written.items()}
    entries["read_versions"] = ("json", read)
    return entries, written.get("dvc_md5")


def materialization(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    lineage, version = lineage_entries(project, result)
    return {**step_entries(result), **dataset_entries(project, result), **lineage}, version


def pipes_metadata(entries: Entries) -> dict[str, dict[str, Any]]:
    """The entries in the form dagster-pipes' report_asset_materialization takes."""
    return {key: {"raw_value": value, "type": kind} for key, (kind, value) in entries.items()}
