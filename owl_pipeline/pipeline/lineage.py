"""Provenance in one room: the DVC hash (and Lance version) of what each step wrote and of what it read, the
config's hash, the git commit, and the MLflow tags and dataset inputs made of them. The written hash is recorded
when the step runs; a reused step and downstream readers use the record instead of hashing again."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import lance

from owl_pipeline.data.versions import data_version, dvc_md5
from owl_pipeline.files import atomic_write_json, read_json_or_none
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult


def config_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage_tags(project: Project, inputs: tuple[str, ...]) -> dict[str, Any]:
    """Run tags naming the input assets (and their Lance versions), the git commit and the config's hash."""
    paths = project.asset_paths()
    tags = {f"input.{name}.lance_version": lance.dataset(str(paths[name])).version for name in inputs
            if paths[name].suffix == ".lance"}
    tags.update({f"input.{name}": str(paths[name]) for name in inputs})
    commit = git_commit(project.root)
    return {**tags, "git_commit": commit, "mlflow.source.git.commit": commit,
            "config_hash": config_hash(project.config.to_dict())}


def dataset_inputs(project: Project, inputs: tuple[str, ...]) -> list:
    """The input assets as MLflow dataset inputs, their digest the DVC hash recorded when they were written."""
    from owl_pipeline.registry.tracking import DatasetRef

    paths = project.asset_paths()
    return [DatasetRef(name, str(recorded_version(project, name, recompute=False).get("dvc_md5")), str(paths[name]))
            for name in inputs]


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


def folder_hash(path: Path) -> str:
    """The one content hash of a folder (or file) the pipeline uses: DVC's md5, as ``dvc.lock`` records it."""
    digest = dvc_md5(path)
    if digest is None:
        raise FileNotFoundError(f"{path} does not exist")
    return digest


def step_lineage(project: Project, result: StepResult, reads: tuple[str, ...]) -> tuple[dict, dict[str, dict]]:
    """(version of what the step wrote, {asset read: its version}); the first is empty for a step that
    writes no data (registered_model)."""
    paths = project.asset_paths()
    rerun = not result.reused
    written = recorded_version(project, result.name, recompute=rerun) if result.name in paths else {}
    read = {asset: recorded_version(project, asset, recompute=False) for asset in reads if asset in paths}
    return written, read
