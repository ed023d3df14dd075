"""What the three training steps share: their result type, the MLflow run around a training, and the fingerprint
that keeps a resume to the same run (checkpoints of a run with other inputs are moved aside, never continued)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from owl_pipeline import constants as C
from owl_pipeline.files import atomic_write_json, atomic_write_text, read_json_or_none
from owl_pipeline.pipeline.lineage import config_hash, dataset_inputs, lineage_tags
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.ranks import is_main_process, wait_for_everyone
from owl_pipeline.pipeline.records import StepResult

if TYPE_CHECKING:  # annotations only: the steps' table is read without loading torch
    from owl_pipeline.train.loop import StageResult, Tracker

Log = Callable[[str], None]
MODEL_REFERENCE_FILE = "model_reference.json"
FINGERPRINT_FILE = "fingerprint.json"


@dataclass(kw_only=True)
class TrainingResult(StepResult):
    """What a training step (base_llm, stage1_model, stage2_model) reports; unset fields do not apply to it."""

    steps: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    seconds: float | None = None
    resumed_from_step: int | None = None
    samples_per_s: float | None = None  # means over the last 20 steps (the first include start-up)
    model_tflops_per_s: float | None = None
    data_wait_share: float | None = None
    mfu: float | None = None  # only where the card's bf16 peak is known
    mlflow_run: str | None = None  # the training run's URL
    mlflow_run_id: str | None = None  # what the registration logs the model into
    passed_through: str | None = None  # max_steps 0, or a released checkpoint: the model passed on untrained
    launcher: str | None = None  # "ray": trained on Ray Train
    ray_train_workers: int | None = None
    # base_llm: where the LLM (and vision tower) came from
    trained_here: bool | None = None
    llm: str | None = None
    vocab_size: int | None = None
    text_rows: int | None = None
    manifest_sha256: str | None = None  # a shipped LLM's manifest, checked
    text_lookup: dict | None = None
    pretraining_seconds: float | None = None
    converted_from: str | None = None  # a released mPLUG-Owl checkpoint
    source_md5: str | None = None  # its folder's DVC md5: converted again only when it changes
    vision: str | None = None
    vision_manifest_sha256: str | None = None
    vision_held_out: dict | None = None
    vision_pretraining_seconds: float | None = None


def _recent_mean(history: list[dict], key: str, digits: int) -> float | None:
    """Mean of ``key`` over the last 20 steps (the first steps include start-up); steps resumed from a
    checkpoint of an older version may lack it."""
    values = [h[key] for h in history[-20:] if key in h]
    return round(sum(values) / len(values), digits) if values else None


def write_history(path: Path, history: list[dict]) -> Path | None:
    """``step,loss,lr`` of every logged step as CSV: DVC's ``plots:`` (x: step) for `dvc plots show/diff`."""
    if not is_main_process():
        return None
    rows = [f"{h['step']},{h['loss']:.6g},{h['lr']:.6g}" for h in history if "loss" in h and "lr" in h]
    return atomic_write_text(path, "\n".join(["step,loss,lr", *rows]) + "\n")


def stage_figures(result: StageResult, run_url: str | None) -> dict[str, Any]:
    """TrainingResult's fields for a run of the loop."""
    return dict(steps=result.steps, first_loss=result.history[0]["loss"] if result.history else None,
                final_loss=result.final_loss, eval_loss=result.eval_loss, seconds=round(result.seconds, 1),
                resumed_from_step=result.resumed_from_step,
                samples_per_s=_recent_mean(result.history, "samples_per_s", 1),
                model_tflops_per_s=_recent_mean(result.history, "model_tflops_per_s", 4),
                data_wait_share=_recent_mean(result.history, "data_wait_share", 3),
                mfu=_recent_mean(result.history, "mfu", 3), mlflow_run=run_url)


def in_mlflow_run(name: str, project: Project, tracking, inputs: tuple[str, ...],
                   train: Callable[[Tracker | None, str | None], TrainingResult]) -> TrainingResult:
    """``train(tracker, run_url)`` inside an MLflow run with the config as params, lineage tags and the input
    datasets, the model folder logged as an artifact; without tracking, just ``train(None, None)``."""
    if tracking is None:
        return train(None, None)
    params = project.config.to_dict()
    started = time.perf_counter()
    with tracking.run(name, params=params, tags=lineage_tags(project, inputs),
                      inputs=dataset_inputs(project, inputs), system_metrics=True) as run:
        run.log_dict(params, "config.json")
        result = train(run, run.url)
        result.mlflow_run_id = run.run_id
        run.set_tags({"output": result.outputs.get("model", ""), "seconds": round(time.perf_counter() - started, 1)})
        log_model_reference(run, Path(result.outputs["model"]))
    return result


def log_model_reference(run, model_dir: Path) -> None:
    """The run's ``model_reference.json``: where the model is (its folder, versioned by DVC) and its
    owl_config.json, not a copy of the weights. The registered version holds the one copy MLflow stores."""
    config = model_dir / C.OWL_CONFIG_FILE
    reference = {"path": str(model_dir.resolve()), "versioned_by": "DVC: this step's outs in dvc.lock",
                 "load": "owl_pipeline.model.builders.from_pretrained(path)",
                 "owl_config": json.loads(config.read_text()) if config.is_file() else None}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / MODEL_REFERENCE_FILE
        path.write_text(json.dumps(reference, indent=1))
        run.log_artifact(path)


SUPERSEDED = f"{C.CHECKPOINT_DIR}.superseded-"
KEEP_SUPERSEDED = 1  # set-aside checkpoint folders kept per stage, the newest (GBs each on a GPU); older ones go


def _set_aside_name(output: Path) -> Path:
    """A new dated name (a second set-aside within the same second gets a counter)."""
    stem = output / f"{SUPERSEDED}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside, number = stem, 1
    while aside.exists():
        number += 1
        aside = stem.with_name(f"{stem.name}-{number}")
    return aside


def _drop_old_set_asides(output: Path, log: Log) -> None:
    folders = sorted(output.glob(f"{SUPERSEDED}*"), key=lambda path: (path.stat().st_mtime_ns, path.name))
    for old in folders[:-KEEP_SUPERSEDED]:
        shutil.rmtree(old)
        log(f"{output.name}: deleted {old.name}, the oldest set-aside checkpoints (KEEP_SUPERSEDED is "
            f"{KEEP_SUPERSEDED})")


def start_fresh_if_changed(output: Path, fingerprint: dict, log: Log) -> None:
    """Checkpoints in ``output`` from a run with other inputs or settings are moved aside under a dated name, so a
    resume only ever continues the same run; the newest ``KEEP_SUPERSEDED`` set-aside folders are kept, older ones
    deleted (each said in the log). The fingerprint of this run is recorded. Called once everything the run needs
    is built: a run that cannot start moves nothing."""
    if is_main_process():
        digest = config_hash(fingerprint)
        marker = output / FINGERPRINT_FILE
        known = read_json_or_none(marker, warn=log)
        checkpoints = output / C.CHECKPOINT_DIR
        if checkpoints.is_dir() and (not isinstance(known, dict) or known.get("fingerprint") != digest):
            aside = _set_aside_name(output)
            checkpoints.rename(aside)
            log(f"{output.name}: inputs or settings changed since the last run; starting over "
                f"(its checkpoints are kept in {aside.name}; the newest {KEEP_SUPERSEDED} set aside are kept)")
            _drop_old_set_asides(output, log)
        atomic_write_json(marker, {"fingerprint": digest, **fingerprint})
    wait_for_everyone()
