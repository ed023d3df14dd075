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


def test_a_full_disk_leaves_no_lock_and_an_ownerless_lock_goes_stale(tmp_path, monkeypatch):
    """Issue 24 item 13: the owner is written before the lock is visible; an old lock naming no owner is stale."""
    import errno
    import os
    from pathlib import Path

    lock = tmp_path / "step.lock"
    real_write = Path.write_text

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        StepLock(lock, what="a run").__enter__()
    monkeypatch.setattr(Path, "write_text", real_write)
    assert list(tmp_path.iterdir()) == []  # neither the lock nor its draft

    lock.write_bytes(b"")  # what a crash between create and write left before
    with pytest.raises(LockHeldError):  # young: perhaps being written by an older version right now
        StepLock(lock, what="a run").__enter__()
    os.utime(lock, (0, 0))
    lines = []
    with StepLock(lock, what="a run", warn=lines.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("names no owner" in line for line in lines) and not lock.exists()
