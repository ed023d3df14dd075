"""A step's materialization metadata as {key: (type, value)}, with dagster-pipes' type names.

No Dagster import here: the Dagster process (assets.py) and a training subprocess that reports back through
dagster-pipes (``owl step --dagster-pipes``) describe a step the same way, lineage included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from owl_pipeline import constants as C
from owl_pipeline.steps import Project, StepResult

# What each asset reads: the Dagster graph's edges (dvc.yaml's deps are tested against them).
ASSET_DEPS: dict[str, list[str]] = {
    C.ASSET_RAW_SHARDS: [], C.ASSET_RAW_PAIRS: [C.ASSET_RAW_SHARDS], C.ASSET_CURATED_PAIRS: [C.ASSET_RAW_PAIRS],
    C.ASSET_INSTRUCTIONS: [C.ASSET_RAW_SHARDS], C.ASSET_BASE_LLM: [C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS],
    C.ASSET_STAGE1: [C.ASSET_BASE_LLM, C.ASSET_CURATED_PAIRS], C.ASSET_STAGE2: [C.ASSET_STAGE1, C.ASSET_INSTRUCTIONS],
    C.ASSET_OWLEVAL: [C.ASSET_STAGE2, C.ASSET_RAW_SHARDS], C.ASSET_REGISTERED: [C.ASSET_STAGE2, C.ASSET_OWLEVAL],
}

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
    if "accuracy_by_type" in result.metadata:
        entries["accuracy_table"] = _markdown_table(("question type", "accuracy"),
                                                    result.metadata["accuracy_by_type"], "{:.3f}")
    if "model" in result.outputs and (Path(result.outputs["model"]).parent / "loss_curve.png").is_file():
        entries["loss_curve"] = ("path", str(Path(result.outputs["model"]).parent / "loss_curve.png"))
    return entries


def _version_record(project: Project, name: str) -> Path:
    return project.reports / "data_versions" / f"{name}.json"  # one file per asset: parallel steps never race


def _data_version(project: Project, name: str, recompute: bool) -> dict:
    """The asset's version as recorded when its step last ran; hashed (and recorded) only when ``recompute``
    or nothing is recorded, so a folder is read once per change, not once per downstream step."""
    from owl_pipeline.data.versions import data_version

    record = _version_record(project, name)
    if not recompute and record.is_file():
        return json.loads(record.read_text())
    version = data_version(project.asset_paths()[name])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(version))
    return version


def lineage_entries(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    """DVC hash (and Lance version) of what the step wrote and of what it read; the written hash is also the
    Dagster data version, so the UI shows when the bytes really changed."""
    paths = project.asset_paths()
    reran = not result.metadata.get("reused", False)
    written = _data_version(project, result.name, recompute=reran) if result.name in paths else {}
    entries: Entries = {f"written_{key}": ("text", str(value)) for key, value in written.items()}
    entries["read_versions"] = ("json", {dep: _data_version(project, dep, recompute=False)
                                         for dep in ASSET_DEPS[result.name] if dep in paths})
    return entries, written.get("dvc_md5")


def materialization(project: Project, result: StepResult) -> tuple[Entries, str | None]:
    lineage, version = lineage_entries(project, result)
    return {**step_entries(result), **lineage}, version


def pipes_metadata(entries: Entries) -> dict[str, dict[str, Any]]:
    """The entries in the form dagster-pipes' report_asset_materialization takes."""
    return {key: {"raw_value": value, "type": kind} for key, (kind, value) in entries.items()}
