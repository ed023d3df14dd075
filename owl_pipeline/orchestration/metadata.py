"""A step's materialization metadata as {key: (type, value)}, with dagster-pipes' type names.

No Dagster import here: the Dagster process (assets.py) and a training subprocess that reports back through
dagster-pipes (``owl step --dagster-pipes``) describe a step the same way, lineage included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from owl_pipeline import constants as C
from owl_pipeline.pipeline.lineage import step_lineage
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult
from owl_pipeline.train.loop import LOSS_CURVE

Entries = dict[str, tuple[str, Any]]


def _typed(value: Any) -> tuple[str, Any]:
    """Numbers as numbers, links as links, structures as JSON, the rest as text."""
    if isinstance(value, bool) or value is None:
        return "text", str(value)
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, str) and value.startswith("http"):
        return "url", value
    if isinstance(value, (dict, list)):
        return "json", value
    return "text", str(value)


def _markdown_table(header: tuple[str, str], rows: dict[str, Any], number: str = "{}") -> tuple[str, str]:
    lines = "\n".join(f"| {key} | {number.format(value)} |" for key, value in rows.items())
    return "md", f"| {header[0]} | {header[1]} |\n|---|---|\n{lines}"


def step_entries(result: StepResult) -> Entries:
    entries = {key: _typed(value) for key, value in result.metadata.items()}
    entries.update({f"path_{name}": ("path", path) for name, path in result.outputs.items()})
    if "removed" in result.metadata:
        entries["removed_per_rule"] = _markdown_table(("rule", "rows removed"), result.metadata["removed"])
    if C.ACCURACY_BY_TYPE in result.metadata:
        entries["accuracy_table"] = _markdown_table(("question type", "accuracy"),
                                                    result.metadata[C.ACCURACY_BY_TYPE], "{:.3f}")
    if "model" in result.outputs and (Path(result.outputs["model"]).parent / LOSS_CURVE).is_file():
        entries["loss_curve"] = ("path", str(Path(result.outputs["model"]).parent / LOSS_CURVE))
    return entries


def lineage_entries(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    """DVC hash (and Lance version) of what the step wrote and of what it read; the written hash is also the
    Dagster data version, so the UI shows when the bytes really changed."""
    written, read = step_lineage(project, result)
    entries: Entries = {f"written_{key}": ("text", str(value)) for key, value in written.items()}
    entries["read_versions"] = ("json", read)
    return entries, written.get("dvc_md5")


def materialization(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    lineage, version = lineage_entries(project, result)
    return {**step_entries(result), **lineage}, version


def pipes_metadata(entries: Entries) -> dict[str, dict[str, Any]]:
    """The entries in the form dagster-pipes' report_asset_materialization takes."""
    return {key: {"raw_value": value, "type": kind} for key, (kind, value) in entries.items()}
