"""One run of a step at a time per project (issue 14, item 12)."""

import json
import socket
import subprocess
import sys

import pytest

from owl_pipeline.config import PipelineConfig, SyntheticConfig
from owl_pipeline.locks import LockHeldError, StepLock
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.runner import run_step

from ..conftest import SMALL


def tiny_project(tmp_path):
    return Project(PipelineConfig(synthetic=SyntheticConfig(**{**SMALL, "num_pairs": 50, "shard_size": 50})),
                   tmp_path)


def test_a_second_run_of_a_step_fails_at_once_naming_the_holder(tmp_path):
    project = tiny_project(tmp_path)
    with StepLock(project.lock_path("raw_shards"), what="the first run"):
        with pytest.raises(LockHeldError, match=r"step raw_shards of .* is already running \(process \d+ on "):
            run_step("raw_shards", project, log=lambda *_: None)
    assert not (project.raw_shards / "manifest.json").exists()  # the second run changed nothing
    run_step("raw_shards", project, log=lambda *_: None)  # released: it runs
    assert (project.raw_shards / "manifest.json").is_file() and not project.lock_path("raw_shards").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    project = tiny_project(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = project.lock_path("raw_shards")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    lines = []
    run_step("raw_shards", project, log=lines.append)
    assert any(f"left by process {int(dead.stdout)}, which is gone" in line for line in lines)
    assert (project.raw_shards / "manifest.json").is_file()
