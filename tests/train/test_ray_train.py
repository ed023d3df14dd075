"""`launcher: ray`: stage 1 on two Ray Train workers (CPU, gloo) follows the single-process loss curve, and a
worker killed mid-run is restarted by Ray Train and the stage resumes from its newest checkpoint."""

import os
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

from owl_pipeline.cli import main
from owl_pipeline.pipeline.ray_train import train_worker
from owl_pipeline.pipeline.records import StepRecord
from owl_pipeline.train.checkpoint import list_checkpoints

from ..test_pipeline import TINY_PARAMS
from .test_distributed import stage1_history, stage1_state

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves these out

# The killing worker below is defined here: Ray must ship it by value (workers cannot import tests/).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

STAGE1 = {"max_steps": 10, "warmup_steps": 0, "eval_every": 0, "save_every": 10, "log_every": 1, "lr": 0.001,
          "vision_lr_scale": 1.0}
RAY = {"train_workers": 2, "max_failures": 1}


def prepared_project(root: Path, stage1: dict, **extra) -> None:
    """The steps before stage 1, run here (the base LLM too: its Ray Train run is the Dagster test's), then
    params.yaml with ``extra`` (the launcher is not an input of a step: nothing is rerun for it)."""
    base_llm = {**TINY_PARAMS["base_llm"], "train": {**TINY_PARAMS["base_llm"]["train"], "max_steps": 40}}
    params = {**TINY_PARAMS, "base_llm": base_llm, "stage1": stage1}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for step in ("raw_shards", "raw_pairs", "curated_pairs", "instruction_data", "base_llm"):
        assert main(["step", step, "--project", str(root), "--no-tracking"]) == 0
    (root / "params.yaml").write_text(yaml.safe_dump({**params, **extra}))


def test_two_ray_train_workers_follow_the_single_process_loss_curve(local_ray, tmp_path):
    prepared_project(tmp_path, {**STAGE1, "batch_size": 8})
    assert main(["train", "--stage", "1", "--project", str(tmp_path), "--no-tracking"]) == 0
    single, consumed = stage1_history(tmp_path), stage1_state(tmp_path)["position"]

    prepared_project(tmp_path, {**STAGE1, "batch_size": 4}, launcher="ray", ray=RAY)
    assert main(["train", "--stage", "1", "--project", str(tmp_path), "--no-tracking", "--force"]) == 0
    double = stage1_history(tmp_path)
    assert stage1_state(tmp_path)["position"] == consumed  # 4 samples a step on each of two workers
    assert abs(double[0] - single[0]) < 0.05 * single[0]
    assert abs(sum(double[-3:]) - sum(single[-3:])) < 0.15 * sum(single[-3:])
    record = StepRecord.read(tmp_path / "assets/reports/stage1_model.json")
    assert record.metadata["launcher"] == "ray" and record.metadata["steps"] == 10


def worker_killed_once(config: dict) -> None:
    """Rank 1 of the first attempt exits hard as soon as the stage has written a checkpoint."""
    import ray.train

    marker = Path(config["root"]) / "killed-once"
    if ray.train.get_context().get_world_rank() == 1 and not marker.exists():
        marker.touch()
        checkpoints = Path(config["root"]) / "assets/stage1_model/checkpoints"

        def kill_after_first_checkpoint():
            while not list_checkpoints(checkpoints):
                time.sleep(0.02)
            os._exit(1)

        threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
    train_worker(config)


def test_a_killed_worker_is_restarted_and_the_stage_resumes_from_its_checkpoint(local_ray, tmp_path):
    from owl_pipeline.pipeline.project import load_project
    from owl_pipeline.pipeline.ray_train import train_on_ray

    prepared_project(tmp_path, {**STAGE1, "max_steps": 30, "save_every": 2, "batch_size": 4}, launcher="ray", ray=RAY)
    result = train_on_ray("stage1_model", load_project(tmp_path), log=print, worker=worker_killed_once)
    assert (tmp_path / "killed-once").exists()
    assert result.resumed_from_step and 0 < result.resumed_from_step < 30 and result.launcher == "ray"
    assert [h["step"] for h in stage1_state(tmp_path)["history"]] == list(range(1, 31))
