"""Concurrency and retries as Dagster users expect them: the training steps share one pool (a second launch waits
instead of failing), the data steps retry transient I/O and fail at once on anything else, a run killed hard
never keeps its pool slots, and the `dg` CLI loads the project."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from owl_pipeline.orchestration import assets
from owl_pipeline.orchestration.assets import ALL_ASSETS, asset_for
from owl_pipeline.orchestration.resources import ProjectResource
from owl_pipeline.orchestration.run import LAUNCHED_BY, release_runs_of_dead_processes
from owl_pipeline.pipeline.graph import DATA_STEPS, step
from owl_pipeline.pipeline.runner import run_step

from ..test_pipeline import TINY_PARAMS

ROOT = Path(__file__).resolve().parents[2]
TRAINING = {"base_llm", "stage1_model", "stage2_model"}


def test_training_assets_share_one_pool_and_only_data_assets_retry():
    ops = {a.key.to_user_string(): a.op for a in ALL_ASSETS}
    assert {name for name, op in ops.items() if op.pool == "owl_training"} == TRAINING
    assert {name for name, op in ops.items() if op.retry_policy is not None} == set(DATA_STEPS)
    assert ops["raw_pairs"].pool == "owl_ingest"


def _materialize_raw_shards(tmp_path, monkeypatch, failures: list[BaseException]) -> tuple[bool, int]:
    """raw_shards materialized (retries without delay) while its first calls raise ``failures``; (success, calls)."""
    calls = []

    def flaky_run_step(*args, **kwargs):
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return run_step(*args, **kwargs)

    monkeypatch.setattr(assets, "run_step", flaky_run_step)
    tmp_path.mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    asset = asset_for(step("raw_shards"), data_retries=dg.RetryPolicy(max_retries=2))
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], resources={"project": ProjectResource(root=str(tmp_path))},
                                instance=instance, raise_on_error=False)
    return result.success, len(calls)


def test_a_data_step_retries_transient_io_and_fails_at_once_on_anything_else(tmp_path, monkeypatch):
    flaky_mount = [OSError(errno.EIO, "Input/output error"), TimeoutError("storage timed out")]
    assert _materialize_raw_shards(tmp_path / "a", monkeypatch, flaky_mount) == (True, 3)
    assert _materialize_raw_shards(tmp_path / "b", monkeypatch, [FileNotFoundError("no shards")]) == (False, 1)
    assert _materialize_raw_shards(tmp_path / "c", monkeypatch, [ValueError("a bad row")]) == (False, 1)


def test_a_run_killed_hard_gives_its_pool_slots_back(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("owl_training", 1)
        job = dg.Definitions(assets=[asset_for(step("raw_shards"))], resources={
            "project": ProjectResource(root=str(tmp_path))}).resolve_implicit_global_asset_job_def()
        runs = {}
        for who, pid in (("dead", gone.pid), ("alive", os.getpid())):
            run = instance.create_run_for_job(job, tags={**LAUNCHED_BY, "owl/pid": str(pid),
                                                         "owl/host": os.uname().nodename})
            instance.handle_run_event(run.run_id, dg.DagsterEvent(
                event_type_value="PIPELINE_START", job_name=run.job_name))
            runs[who] = run.run_id
        assert storage.claim_concurrency_slot("owl_training", runs["dead"], "stage1_model").is_claimed
        assert release_runs_of_dead_processes(instance, log=lambda *_: None) == [runs["dead"]]
        assert instance.get_run_by_id(runs["dead"]).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(runs["alive"]).status == dg.DagsterRunStatus.STARTED
        assert not storage.get_concurrency_info("owl_training").claimed_slots


def test_the_dg_cli_loads_the_project(tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "dg"), "check", "defs"], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, timeout=300)
    assert done.returncode == 0 and "All definitions loaded successfully" in done.stdout + done.stderr, done.stderr
