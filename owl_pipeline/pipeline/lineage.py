"""Lineage: the DVC hash (and Lance version) of what each step wrote and of what it read. The written hash is
recorded when the step runs; a reused step and downstream readers use the record instead of hashing again."""

from __future__ import annotations

from owl_pipeline.data.versions import data_version
from owl_pipeline.files import atomic_write_json, read_json_or_none
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import REUSED, StepResult


def recorded_version(project: Project, asset: str, recompute: bool) -> dict:
    """The asset's version as recorded when its step last ran; hashed (and recorded) only when ``recompute``
    or nothing readable is recorded, so a folder is read once per change, not once per downstream step."""
    record = project.lineage_record_path(asset)
    if not recompute:
        known = read_json_or_none(record)
        if isinstance(known, dict):
            return known
    version = data_version(project.asset_paths()[asset])
    atomic_write_json(record, version)
    return version


def step_lineage(project: Project, result: StepResult) -> tuple[dict, dict[str, dict]]:
    """(version of what the step wrote, {asset read: its version}); the first is empty for a step that
    writes no data (registered_model)."""
    from owl_pipeline.pipeline.graph import step  # the graph imports the steps, which import this module

    paths = project.asset_paths()
    rerun = not result.metadata.get(REUSED, False)
    written = recorded_version(project, result.name, recompute=rerun) if result.name in paths else {}
    read = {asset: recorded_version(project, asset, recompute=False) for asset in step(result.name).reads
            if asset in paths}
    return written, read
