"""Run a step, or reuse its last result: a step whose params sections, inputs (the versions of the assets it
reads and the files outside assets/ it reads), code and outputs are as at its last run is not run again.

One run of a step at a time per project: a second ``owl step``/``owl train`` of the same step fails at once
naming the holder (a lock in ``assets/.locks/``; a stale one from a dead process is taken over)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lance

from owl_pipeline import constants as C
from owl_pipeline.data.ingest import find_shards
from owl_pipeline.data.synthetic import MANIFEST_FILE
from owl_pipeline.files import atomic_write_json
from owl_pipeline.locks import StepLock
from owl_pipeline.pipeline.dvc_sync import record_stage
from owl_pipeline.pipeline.graph import Step, params_of, step
from owl_pipeline.pipeline.lineage import config_hash
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.ranks import is_main_process
from owl_pipeline.pipeline.records import StepRecord, StepResult
from owl_pipeline.pipeline.training_runs import write_history

Log = Callable[[str], None]


def _file_stats(project: Project, paths: list[Path]) -> list[tuple[str, int, int]]:
    return [(project.relative(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()]


def asset_stamp(project: Project, name: str) -> Any:
    """What changes when asset ``name`` is rewritten: a Lance dataset's version, a model's or report's file
    time, a generated corpus's manifest, or the stats of a user's shard files."""
    path = project.asset_paths()[name]
    if path.suffix == ".lance":
        return lance.dataset(str(path)).version if (path / "_versions").is_dir() else None
    for marker in (path / C.OWL_CONFIG_FILE, path / C.OWLEVAL_REPORT_JSON, path / MANIFEST_FILE):
        if marker.is_file():
            return marker.stat().st_mtime_ns
    return _file_stats(project, find_shards(path)) if path.is_dir() else None


def inputs_digest(definition: Step, project: Project) -> str:
    """A hash of everything the step's output depends on, per the table in graph.py: its settings, inputs,
    external files and code."""
    external = definition.external(project) if definition.external else []
    return config_hash({"params": params_of(project, definition.name), "code": definition.code_digest(),
                        "reads": {name: asset_stamp(project, name) for name in definition.reads},
                        "external": _file_stats(project, external),
                        **({"environment": {k: os.environ.get(k) for k in definition.environment}}
                           if definition.environment else {})})


def _reusable(definition: Step, project: Project, record: StepRecord | None, digest: str) -> StepResult | None:
    """The recorded result, if it can stand for a run now: same inputs digest, outputs still there."""
    if record is None or record.inputs_digest != digest:
        return None
    written = definition.writes(project) if definition.writes else None
    if written is not None and not written.exists():
        return None
    result = definition.result.from_metadata(definition.name, record.metadata, record.outputs_at(project.root))
    return result if result.worth_reusing() else None


def write_metrics(definition: Step, project: Project, result: StepResult) -> Path | None:
    """``metrics/<step>.json``: the step's declared metrics only (no timings, digests or paths), what
    `dvc metrics diff` and `dvc exp show` compare."""
    if not definition.metrics:
        return None
    figures = result.metadata()
    return atomic_write_json(project.metrics_path(definition.name),
                             {key: figures[key] for key in definition.metrics if key in figures})


def _write_what_dvc_expects(definition: Step, project: Project, result: StepResult) -> None:
    """The metrics and (training) history files DVC expects after the stage, where the step left none, and
    the checkpoints folder (a model passed through untrained has no checkpoints, and DVC expects the out)."""
    if definition.metrics and not project.metrics_path(definition.name).is_file():
        write_metrics(definition, project, result)
    if definition.trains and not project.history_path(definition.name).is_file():
        write_history(project.history_path(definition.name), [])
    for path, kept in definition.dvc_outs(project):
        if kept.get("cache") is False:
            path.mkdir(parents=True, exist_ok=True)


def run_step(name: str, project: Project, tracking=None, log: Log = print, force: bool = False,
             **part) -> StepResult:
    """Run step ``name``; or, unless ``force``, reuse its last result when its inputs and settings are the
    same as then and its outputs still exist (a second `owl run` with nothing changed redoes nothing).
    ``part``: keywords that make the step do part of its work (raw_pairs' ``only``: a Dagster partition run)."""
    definition = step(name)
    if not is_main_process():  # the other ranks of a distributed launch train beside rank 0, which holds the lock
        return _run_or_reuse(definition, project, tracking, log, force, part)
    with StepLock(project.lock_path(name), what=f"step {name} of {project.root}", warn=log):
        return _run_or_reuse(definition, project, tracking, log, force, part)


PARTIAL = "partial:"  # the digest of a part run: it never matches, so the next whole run does the rest


def _run_or_reuse(definition: Step, project: Project, tracking, log: Log, force: bool, part: dict) -> StepResult:
    name = definition.name
    digest = inputs_digest(definition, project)
    record = StepRecord.read(project.record_path(name), warn=log)
    reusable = None if force or part else _reusable(definition, project, record, digest)
    if reusable is not None:
        log(f"{name}: inputs and settings unchanged since the last run; reusing its result")
        if is_main_process():
            _write_what_dvc_expects(definition, project, reusable)  # a record older than metrics/ files
        return reusable
    tracking = tracking if definition.tracked else None
    if definition.trains and is_main_process():
        project.history_path(name).unlink(missing_ok=True)  # a run that trains nothing leaves an empty history
    if definition.trains and project.config.launcher == "ray":
        from owl_pipeline.pipeline.ray_train import train_on_ray

        result = train_on_ray(name, project, tracking, log)
    else:
        result = definition.run(project, log=log, tracking=tracking, **part)
    if is_main_process():
        StepRecord(result.metadata(), result.outputs, PARTIAL + digest if part else digest,
                   root=str(project.root)).write(project.record_path(name))
        write_metrics(definition, project, result)
        _write_what_dvc_expects(definition, project, result)
        if not part:  # a part run leaves other shards of its deps unread: DVC must still run the stage whole
            record_stage(project.root, name, log)  # dvc.lock agrees: `dvc repro` now skips this stage
    return result
