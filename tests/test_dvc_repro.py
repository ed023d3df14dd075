"""`dvc repro` runs the whole pipeline from dvc.yaml in a fresh git repo (real DVC, the `owl step` CLI, tiny
params), records every stage in dvc.lock, skips everything on a second run, and reruns only what a changed
parameter touches."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from owl_pipeline.pipeline import graph as steps
from owl_pipeline.config import PipelineConfig, from_mapping

from .test_pipeline import TINY_PARAMS

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]


def dvc(repo: Path, *args: str) -> str:
    # `owl` must be on PATH for the stages' commands: the venv's bin, as with the venv activated
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvc_repro")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    # every section, as in the project's params.yaml: dvc.yaml names them as stage params
    config = from_mapping(PipelineConfig, {**TINY_PARAMS, "registry": {"model_name": "repro", "floor": 0}}, "params")
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
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


@pytest.fixture(scope="module")
def after_owl_run(tmp_path_factory):
    """A fresh git + DVC repository where `owl run` (not `dvc repro`) made every asset."""
    from owl_pipeline.cli import main

    repo = tmp_path_factory.mktemp("owl_run_then_repro")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    config = from_mapping(PipelineConfig, {**TINY_PARAMS, "registry": {"model_name": "after-run", "floor": 0}},
                          "params")
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
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
