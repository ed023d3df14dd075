"""`dvc repro` runs the whole pipeline from dvc.yaml in a fresh git repo (real DVC, the `owl step` CLI, tiny
params), records every stage in dvc.lock, skips everything on a second run, and reruns only what a changed
parameter touches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from owl_pipeline.pipeline import graph as steps
from owl_pipeline.config import PipelineConfig, SyntheticConfig, from_mapping
from owl_pipeline.data.synthetic import generate_corpus
from owl_pipeline.pipeline.dvc_yaml import render
from owl_pipeline.pipeline.project import load_project
from owl_pipeline.train.checkpoint import list_checkpoints

from .test_pipeline import TINY_PARAMS

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]


def dvc_env() -> dict[str, str]:
    # `owl` must be on PATH for the stages' commands: the venv's bin, as with the venv activated
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def dvc(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def new_dvc_project(repo: Path, model_name: str) -> None:
    """params.yaml with every section (dvc.yaml names them as stage params), the dvc.yaml the steps generate for
    it (their code lives outside this folder here, so it is named by absolute path), and an empty inbox."""
    config = from_mapping(PipelineConfig, {**TINY_PARAMS, "registry": {"model_name": model_name, "floor": 0}},
                          "params")
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
    (repo / "inbox").mkdir()
    (repo / "inbox/README.md").write_text("new shards land here\n")
    (repo / "dvc.yaml").write_text(render(load_project(repo)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvc_repro")
    new_dvc_project(repo, "repro")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return repo, dvc(repo, "repro")


def test_repro_runs_every_stage_and_locks_it(repo):
    path, output = repo
    for name in steps.PIPELINE_ORDER:
        assert f"Running stage '{name}'" in output, name
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(steps.PIPELINE_ORDER)
    assert lock["curated_pairs"]["outs"][0]["md5"].endswith(".dir")
    assert (path / "assets/stage2_model/model/owl_config.json").is_file()
    registered = json.loads((path / "assets/reports/registered_model.json").read_text())["metadata"]
    assert registered["registered"] and registered["model_uri"] == "models:/repro/1"


def test_second_repro_skips_and_a_param_change_reruns_downstream_only(repo):
    path, _ = repo
    assert "Running stage" not in dvc(path, "repro")
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["stage2"]["lr"] = 0.002
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    output = dvc(path, "repro")
    rerun = {name for name in steps.PIPELINE_ORDER if f"Running stage '{name}'" in output}
    assert rerun == {"stage2_model", "owleval_report", "registered_model"}


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=owl test", "-c", "user.email=owl@example.invalid"]  # CI may have none
    return subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_experiments_compare_their_metrics_and_loss_curves_and_never_promote(repo):
    """`dvc exp run -S` then `dvc exp show --only-changed` and `dvc plots diff`: each stage's small metrics file and
    the training stages' loss history are what DVC compares; the experiment's registration is a candidate only."""
    path, _ = repo
    metrics = json.loads((path / "metrics/stage2_model.json").read_text())
    assert set(metrics) == {"final_loss"} and set(json.loads((path / "metrics/curated_pairs.json").read_text())) == {
        "rows_in", "rows_out"}
    assert (path / "metrics/stage1_model_history.csv").read_text().startswith("step,loss,lr\n1,")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "baseline")
    dvc(path, "exp", "run", "-S", "stage2.lr=0.003", "-n", "lr3")
    shown = dvc(path, "exp", "show", "--only-changed", "--md")
    print(shown)  # the closing note's table
    assert "lr3" in shown and "stage2.lr" in shown and "metrics/stage2_model.json:final_loss" in shown, shown
    registered = json.loads((path / "metrics/registered_model.json").read_text())
    assert registered["promoted"] is False  # DVC_EXP_NAME: a candidate, never the champion
    dvc(path, "plots", "diff", "HEAD", "-o", "plots")
    page = (path / "plots" / "index.html").read_text()
    assert "stage2_model_history.csv" in page and "stage1_model_history.csv" in page


def test_a_killed_repro_resumes_from_its_checkpoint_and_caches_no_checkpoint(repo):
    """Checkpoints are a persistent, uncached out: DVC keeps them across a rerun, so `dvc repro` after a kill
    continues from the newest one instead of starting over."""
    path, _ = repo
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["stage1"].update(max_steps=60, save_every=10)  # killed at step 10: 50 steps to spare (seconds, loaded)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    checkpoints = path / "assets/stage1_model/checkpoints"
    killed = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "stage1_model"], cwd=path, env=dvc_env(),
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(c.name >= "step-0000010" for c in list_checkpoints(checkpoints)) and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint of the new run"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # a power cut: DVC and the step die at once
    killed.wait()
    saved = max(c.name for c in list_checkpoints(checkpoints))
    output = dvc(path, "repro", "stage1_model")
    assert f"stage 1: resuming from {saved}" in output, output[-3000:]
    record = json.loads((path / "assets/reports/stage1_model.json").read_text())["metadata"]
    assert record["resumed_from_step"] == int(saved.split("-")[1]) and record["steps"] == 60
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]["stage1_model"]
    assert {o["path"] for o in lock["outs"] if o["path"].startswith("assets/")} == {
        "assets/stage1_model/model", "assets/stage1_model/checkpoints"}
    manifests = [json.loads(f.read_text()) for f in (path / ".dvc/cache").rglob("*.dir")]  # cached folders
    assert manifests and not any(e["relpath"].startswith("step-") for m in manifests for e in m)  # no checkpoint


def test_a_shard_in_the_inbox_is_appended_under_repro(repo, tmp_path):
    """raw_pairs.lance is a persistent out: `dvc repro` appends a new inbox shard instead of re-reading all."""
    path, _ = repo
    rows = json.loads((path / "metrics/raw_pairs.json").read_text())["rows"]
    more = SyntheticConfig(num_pairs=700, shard_size=100, num_instruction_images=4, num_text_only=0,
                           num_eval_images=2, seed=3)  # keys 600-699 follow on from the corpus's 600
    generate_corpus(tmp_path / "more", more, log=lambda _: None)
    new_shard = sorted((tmp_path / "more/shards").glob("*.tar"))[-1]
    (path / "inbox" / "drop.tar").write_bytes(new_shard.read_bytes())
    output = dvc(path, "repro", "raw_pairs")
    assert "Running stage 'raw_pairs'" in output and "ingest (append)" in output, output[-3000:]
    metrics = json.loads((path / "metrics/raw_pairs.json").read_text())
    assert metrics["rows"] == rows + metrics["rows_added"] and metrics["rows_added"] > 50


@pytest.fixture(scope="module")
def after_owl_run(tmp_path_factory):
    """A fresh git + DVC repository where `owl run` (not `dvc repro`) made every asset."""
    from owl_pipeline.cli import main

    repo = tmp_path_factory.mktemp("owl_run_then_repro")
    new_dvc_project(repo, "after-run")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    assert main(["run", "--project", str(repo)]) == 0
    return repo


def test_dvc_repro_right_after_owl_run_runs_nothing_and_deletes_nothing(after_owl_run):
    repo = after_owl_run
    model = repo / "assets/stage2_model/model/owl_config.json"
    before = model.stat().st_mtime_ns
    output = dvc(repo, "repro")
    assert "Running stage" not in output, output[-2000:]
    assert model.stat().st_mtime_ns == before
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(steps.PIPELINE_ORDER)


def test_a_param_changed_after_owl_run_reruns_the_same_steps_in_both_tools(after_owl_run):
    from owl_pipeline.pipeline.project import load_project
    from owl_pipeline.pipeline.runner import inputs_digest
    from owl_pipeline.pipeline.graph import step
    from owl_pipeline.pipeline.records import StepRecord

    repo = after_owl_run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluation"]["max_new_tokens"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    project = load_project(repo)
    stale_for_owl = {name for name in steps.PIPELINE_ORDER
                     if StepRecord.read(project.record_path(name)).inputs_digest
                     != inputs_digest(step(name), project)}
    status = dvc(repo, "status")
    stale_for_dvc = {name for name in steps.PIPELINE_ORDER if f"{name}:" in status}
    assert stale_for_owl == stale_for_dvc == {"owleval_report"}  # the rest follows once it reruns


def test_a_partition_run_leaves_the_stage_for_dvc_to_run_whole(after_owl_run):
    """A Dagster partition run ingests some shards and defers the rest, so it does not `dvc commit` its stage:
    `dvc status` still names raw_pairs while a new inbox shard waits."""
    from owl_pipeline.pipeline.project import load_project
    from owl_pipeline.pipeline.runner import run_step

    repo = after_owl_run
    lock_before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["raw_pairs"]
    (repo / "inbox/drop.tar").write_bytes(next((repo / "assets/raw_shards/shards").glob("*.tar")).read_bytes())
    run_step("raw_pairs", load_project(repo), log=lambda _: None, only=[])  # a partition with no shard of its own
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["raw_pairs"] == lock_before
    assert "raw_pairs:" in dvc(repo, "status")
