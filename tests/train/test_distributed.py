"""Two processes on CPU (torchrun, gloo) train stage 1 like one process does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from owl_pipeline.cli import main
from owl_pipeline.train.checkpoint import list_checkpoints

from ..test_pipeline import TINY_PARAMS

pytestmark = pytest.mark.slow  # a torchrun launch of two processes: 17 s


def stage1_state(project: Path) -> dict:
    return json.loads((list_checkpoints(project / "assets/stage1_model/checkpoints")[-1] / "trainer_state.json")
                      .read_text())


def stage1_history(project: Path) -> list[float]:
    return [h["loss"] for h in stage1_state(project)["history"]]


def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    stage1 = {"max_steps": 10, "warmup_steps": 0, "eval_every": 0, "save_every": 10, "log_every": 1, "lr": 0.001,
              "vision_lr_scale": 1.0}
    # A base LLM that has learned the captions, so stage 1 has something to move.
    base_llm = {**TINY_PARAMS["base_llm"], "train": {**TINY_PARAMS["base_llm"]["train"], "max_steps": 40}}
    params = {**TINY_PARAMS, "base_llm": base_llm, "stage1": {**stage1, "batch_size": 8}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for step in ("raw_shards", "raw_pairs", "curated_pairs", "instruction_data", "base_llm"):
        assert main(["step", step, "--project", str(tmp_path), "--no-tracking"]) == 0
    assert main(["train", "--stage", "1", "--project", str(tmp_path), "--no-tracking"]) == 0
    single = stage1_history(tmp_path)
    consumed = {key: stage1_state(tmp_path)[key] for key in ("epoch", "position")}
    shutil.rmtree(tmp_path / "assets/stage1_model")

    # Two processes of 4 samples each: the same global batch of 8.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "stage1": {**stage1, "batch_size": 4}}))
    # torchrun: `accelerate launch --cpu --num_processes 2` starts one process (multi-CPU needs MPI there).
    # --standalone: a free rendezvous port of its own, not the default another launch here may hold.
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "owl_pipeline.cli", "train", "--stage", "1", "--project", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    double = stage1_history(tmp_path)
    # Where the data order stands: 80 samples in, so both processes drew their 4 a step.
    assert {key: stage1_state(tmp_path)[key] for key in ("epoch", "position")} == consumed
    assert len(double) == len(single) == 10
    start, end = (lambda h: sum(h[:3]) / 3), (lambda h: sum(h[-3:]) / 3)
    assert end(single) < 0.9 * start(single) and end(double) < 0.9 * start(double)
    assert abs(end(double) - end(single)) < 0.15 * end(single)
    assert abs(double[0] - single[0]) < 0.05 * single[0]  # step 1: the same 8 samples, split over two processes
    assert (tmp_path / "assets/stage1_model/model/owl_config.json").is_file()
