"""The whole pipeline at tiny size through the CLI: real Lance, a real MLflow sqlite store, real training."""

import json
import re
from pathlib import Path

import lance
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from owl_pipeline.cli import main
from owl_pipeline.registry.tracking import local_tracking_uri

TINY_STAGE = {"max_steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "save_every": 2, "log_every": 2}
TINY_PARAMS = {
    "synthetic": {"num_pairs": 600, "shard_size": 200, "num_instruction_images": 40, "num_text_only": 40,
                  "num_eval_images": 4},
    "filters": {"min_side": 32, "min_image_bytes": None},
    "model": {"preset": "tiny"},
    "base_llm": {"vocab_size": 400, "train": {**TINY_STAGE, "lr": 0.003}},
    "stage1": {**TINY_STAGE, "lr": 0.001},
    "stage2": {**TINY_STAGE, "lr": 0.001},
    "registry": {"model_name": "owl-tiny-test", "floor": 0.0},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    assert main(["run", "--project", str(root)]) == 0
    return root


def test_run_writes_every_asset_and_a_summary(project, capsys):
    assets = project / "assets"
    for name in ("raw_shards/manifest.json", "raw_pairs.lance", "curated_pairs.lance", "instruction_data.lance",
                 "base_llm/model/owl_config.json", "stage1_model/model/owl_config.json",
                 "stage2_model/model/adapter/adapter_model.safetensors", "owleval_report/answers.jsonl",
                 "reports/filter_histograms.png"):
        assert (assets / name).exists(), name
    report = json.loads((assets / "reports/owleval_report.json").read_text())["metadata"]
    assert report["questions"] == 4 * 4 + 2 and 0.0 <= report["accuracy"] <= 1.0
    assert set(report["accuracy_by_type"]) == {"color", "shape", "count", "position"}
    assert 0.0 <= report["similarity"] <= 1.0
    full = json.loads((assets / "owleval_report/report.json").read_text())
    assert len(full["rows"]) == report["questions"] and (assets / "owleval_report/report.html").is_file()


def test_the_run_registers_the_model_as_champion(project, capsys):
    client = MlflowClient(local_tracking_uri(project))
    champion = client.get_model_version_by_alias("owl-tiny-test", "champion")
    assert str(champion.version) == "1" and champion.tags["gate.decision"] == "promoted"
    assert str(client.get_model_version_by_alias("owl-tiny-test", "candidate").version) == "1"
    assert {"parent_run.stage2_model", "eval.accuracy", "git_commit"} <= set(champion.tags)
    stage2 = client.get_run(champion.tags["parent_run.stage2_model"])
    assert stage2.info.run_name == "stage2_model"


def test_every_training_step_is_an_mlflow_run_with_params_metrics_and_the_model(project, tmp_path):
    client = MlflowClient(local_tracking_uri(project))
    experiment = client.get_experiment_by_name("owl-pipeline")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"base_llm", "stage1_model", "stage2_model"}  # the model is registered from stage 2's
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["stage1.lr"] == "0.001" and run.data.params["model.preset"] == "tiny"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
        assert {"samples_per_s", "tokens_per_s", "data_wait_share", "grad_norm", "lr"} <= set(run.data.metrics)
        assert run.data.tags["git_commit"] and run.data.tags["config_hash"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        # the run's model is a reference to the DVC-versioned folder, not a second copy of the weights
        assert {"model_reference.json", "loss_curve.png", "config.json"} <= artifacts and "model" not in artifacts
        (tmp_path / name).mkdir()
        reference = client.download_artifacts(run.info.run_id, "model_reference.json", str(tmp_path / name))
        reference = json.loads(Path(reference).read_text())
        assert reference["owl_config"]["config"]["llm"] and reference["path"].endswith(f"{name}/model"), name
    assert runs["stage1_model"].data.tags["input.curated_pairs.lance_version"] == "1"
    # MLflow stores the weights once, in the registered version's LoggedModel, with only the code it runs
    stored = project / "mlruns" / "artifacts"
    stage2_weights = sorted(p.name for p in (project / "assets/stage2_model/model").rglob("*.safetensors"))
    assert sorted(p.name for p in stored.rglob("*.safetensors")) == stage2_weights
    assert not list(stored.rglob("bundled")) and list(stored.rglob("pyfunc_model.py"))


def test_a_second_run_reuses_what_did_not_change(project, capfd):
    assert main(["run", "--project", str(project)]) == 0
    out = "".join(capfd.readouterr())  # step logs go through Dagster's logger to stderr
    for name in ("raw_pairs", "curated_pairs", "base_llm", "stage1_model", "stage2_model", "owleval_report",
                 "registered_model"):
        assert f"{name}: inputs and settings unchanged since the last run; reusing its result" in out, name


def test_a_copied_project_reuses_every_step_resumes_training_and_appends_a_drop(project, tmp_path, capfd):
    """A project folder copied elsewhere (times kept, as cp -a, rsync -a or shutil do): its records, fingerprints
    and ingested-shards record name paths inside it relative to it, so nothing is redone (issue 42, item 9)."""
    import shutil

    copy = shutil.copytree(project, tmp_path / "elsewhere" / "project", symlinks=True)
    capfd.readouterr()
    assert main(["run", "--project", str(copy), "--no-tracking"]) == 0
    out = "".join(capfd.readouterr())
    for name in ("raw_pairs", "curated_pairs", "base_llm", "stage1_model", "stage2_model", "owleval_report"):
        assert f"{name}: inputs and settings unchanged since the last run; reusing its result" in out, name
    assert main(["train", "--stage", "2", "--project", str(copy), "--no-tracking", "--force"]) == 0
    assert "resuming from step-0000004" in capfd.readouterr().out
    assert not list((copy / "assets" / "stage2_model").glob("checkpoints.superseded-*"))
    (copy / "inbox").mkdir()
    shards = sorted((copy / "assets" / "raw_shards" / "shards").glob("*.tar"))
    shutil.copy(shards[0], copy / "inbox" / "drop-1.tar")
    rows = lance.dataset(str(copy / "assets" / "raw_pairs.lance")).count_rows()
    assert main(["step", "raw_pairs", "--project", str(copy), "--no-tracking"]) == 0
    assert "ingest (append)" in "".join(capfd.readouterr())
    added = lance.dataset(str(copy / "assets" / "raw_pairs.lance")).count_rows() - rows
    assert added == lance.dataset(str(project / "assets" / "raw_pairs.lance")).to_table(
        filter="shard = '00000.tar'").num_rows


def test_forcing_a_finished_stage_resumes_from_its_last_checkpoint(project, capsys):
    assert main(["train", "--stage", "2", "--project", str(project), "--no-tracking", "--force"]) == 0
    out = capsys.readouterr().out
    assert "resuming from step-0000004" in out and "stage 2: 4 steps" in out


def test_unknown_step_is_a_clear_error(project, capsys):
    assert main(["step", "nope", "--project", str(project)]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err


def test_a_pretrained_llm_is_loaded_through_the_same_builder(tmp_path, model, tokenizer):
    from owl_pipeline.config import PipelineConfig
    from owl_pipeline.model.builders import from_pretrained
    from owl_pipeline.pipeline.project import Project
    from owl_pipeline.pipeline.training_steps import base_llm

    model.llm.save_pretrained(tmp_path / "my-llm")
    tokenizer.save_pretrained(tmp_path / "my-llm")
    config = PipelineConfig(model={"preset": "tiny", "llm": {"pretrained": str(tmp_path / "my-llm")}})
    result = base_llm(Project(config, tmp_path), log=lambda *_: None)
    assert result.metadata() == {"llm": str(tmp_path / "my-llm"), "trained_here": False}
    loaded, processor = from_pretrained(result.outputs["model"])
    for key, value in model.llm.state_dict().items():
        assert torch.equal(value, loaded.llm.state_dict()[key]), key
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()


def test_owl_run_prints_one_compact_line_per_message_and_no_debug(project, capfd):
    assert main(["run", "--project", str(project)]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(re.match(r"^\d\d:\d\d:\d\d \S+\s+\| ", line) for line in lines), lines[:5]
    assert "DEBUG" not in err and "Telemetry" not in err and "FutureWarning" not in err
    assert (project / "dagster_home" / "dagster.yaml").is_file()


def test_owl_run_is_a_run_of_the_retrain_job(project):
    import dagster as dg

    with dg.DagsterInstance.from_config(str(project / "dagster_home")) as instance:
        runs = instance.get_run_records(dg.RunsFilter(job_name="retrain"))
    assert runs and all(r.dagster_run.tags.get("owl/launched_by") == "owl run" for r in runs)


def test_mlflow_sees_model_development_with_sources_datasets_and_the_model_from_its_training_run(project):
    client = MlflowClient(local_tracking_uri(project))
    experiment = client.get_experiment_by_name("owl-pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    runs = {}
    for run in client.search_runs([experiment.experiment_id]):  # newest first: keep each step's newest run
        runs.setdefault(run.info.run_name, run)
    stage2 = runs["stage2_model"]
    assert {"mlflow.source.name", "mlflow.source.type", "mlflow.user", "mlflow.source.git.commit"} <= set(
        stage2.data.tags)
    inputs = {d.dataset.name: d for d in stage2.inputs.dataset_inputs}
    assert set(inputs) == {"instruction_data"}
    recorded = json.loads((project / "assets/reports/data_versions/instruction_data.json").read_text())
    assert recorded["dvc_md5"].startswith(inputs["instruction_data"].dataset.digest)
    assert inputs["instruction_data"].dataset.source.endswith("instruction_data.lance\"}")
    assert {d.dataset.name for d in runs["stage1_model"].inputs.dataset_inputs} == {"curated_pairs"}
    # Version 1, from the first `owl run` (later tests retrain stage 2 without tracking, whose registration
    # then needs a run of its own).
    first = client.get_model_version("owl-tiny-test", "1")
    trained_by = client.get_run(first.run_id)  # the stage-2 training run, not a run of its own
    assert trained_by.info.run_name == "stage2_model" and first.source.startswith("models:/")
    logged = client.get_logged_model(first.source.removeprefix("models:/"))  # the LoggedModel it came from
    assert logged.source_run_id == first.run_id and logged.name == "model"
    # ... and it names the version, so MLflow's LoggedModel page links to it (issue 43 item 9)
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "owl-tiny-test", "version": "1"}]
    assert "eval.accuracy" in trained_by.data.metrics and trained_by.inputs.dataset_inputs
    # the scores are the LoggedModel's metrics, measured on the eval set whose digest the version carries
    scored = {m.key: m for m in logged.metrics}
    assert scored["eval.accuracy"].dataset_digest == first.tags["eval_set_digest"] != ""


def test_owl_run_force_recomputes_every_step(project, capfd):  # last: it adds runs and a model version
    assert main(["run", "--project", str(project), "--force"]) == 0
    out = "".join(capfd.readouterr())
    assert "reusing its result" not in out
    assert "shapes world: written to" in out and "ingest (full)" in out and "owleval: answered" in out
    assert all(f"stage {stage}: 4 steps" in out for stage in (0, 1, 2))
    assert "registered owl-tiny-test version" in out
