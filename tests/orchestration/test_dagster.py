"""Real Dagster: Definitions load, the whole graph materializes at tiny size, checks block, automation fires."""

import json
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from owl_pipeline.pipeline import graph as steps
from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import new_shards_sensor, retrain_automation
from owl_pipeline.orchestration.checks import ALL_CHECKS
from owl_pipeline.orchestration.definitions import defs
from owl_pipeline.orchestration.partitions import SHARD_DROPS, every_drop_tags
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource, TrainingLauncher

from ..test_pipeline import TINY_PARAMS


def materialize(root, assets=ALL_ASSETS, launch_with=None, **params_overrides):
    (root / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, **params_overrides}))
    resources = {"project": ProjectResource(root=str(root)), "mlflow": MlflowResource(),
                 "launcher": launch_with or TrainingLauncher()}
    keys = {a.key for a in assets}
    checks = [c for c in ALL_CHECKS if c.check_key.asset_key in keys]
    with dg.instance_for_test() as instance:  # over every raw_pairs partition, as `owl run`
        tags = every_drop_tags(instance, resources["project"].project())
        return dg.materialize([*assets, *checks], resources=resources, instance=instance, raise_on_error=False,
                              tags=tags)


def test_definitions_load_with_every_asset_job_schedule_and_sensor():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == set(steps.PIPELINE_ORDER)
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"retrain", "ingest_new_shards"}
    assert {s.name for s in defs.sensors} == {"new_shards_sensor", "retrain_automation"}
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("raw_pairs")).partitions_def == SHARD_DROPS
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def}
    assert partitioned == {"raw_pairs"}  # the rest read every partition
    conditions = {k.to_user_string(): graph.get(k).automation_condition for k in graph.get_all_asset_keys()}
    assert "refilter: eager, or raw_pairs newer than what was filtered" in conditions["curated_pairs"].get_label()
    assert "cron 0 3 * * 1 and >= 1000 new curated rows" in conditions["stage1_model"].get_label()
    assert conditions["raw_shards"] is None and conditions["instruction_data"] is None


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("dagster_project")
    return root, materialize(root)


def test_the_whole_graph_materializes_with_ui_metadata(materialized):
    root, result = materialized
    assert result.success
    events = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()
              for e in [e.event_specific_data.materialization]}
    assert set(events) == set(steps.PIPELINE_ORDER)
    curated = events["curated_pairs"].metadata
    assert curated["rows_out"].value > 100 and "rows removed per rule" in curated
    assert events["stage1_model"].metadata["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
    assert "accuracy per question type" in events["owleval_report"].metadata
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"curated_pairs_ready": True, "instruction_data_ready": True, "owleval_scored": True,
                      "candidate_serves": True}


def test_materializations_record_the_dvc_hash_and_lance_version(materialized, tmp_path):
    """The hash on a materialization is the one `dvc add` records for the same folder (real DVC, real git)."""
    root, result = materialized
    events = {e.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    curated = events["curated_pairs"]
    read = events["stage1_model"].metadata["read_versions"].value
    assert read["curated_pairs"]["dvc_md5"] == curated.metadata["written_dvc_md5"].value
    assert read["curated_pairs"]["lance_version"] == int(curated.metadata["written_lance_version"].value)
    assert curated.tags["dagster/data_version"] == curated.metadata["written_dvc_md5"].value
    repo = tmp_path / "repo"
    shutil.copytree(root / "assets" / "curated_pairs.lance", repo / "curated_pairs.lance")
    dvc = [sys.executable, "-m", "dvc"]
    for command in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "add", "-q", "curated_pairs.lance"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    recorded = yaml.safe_load((repo / "curated_pairs.lance.dvc").read_text())["outs"][0]["md5"]
    assert recorded == curated.metadata["written_dvc_md5"].value and recorded.endswith(".dir")


def test_a_failed_blocking_check_stops_training(tmp_path):
    result = materialize(tmp_path, min_curated_rows=10**6)
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "curated_pairs" in materialized and "base_llm" not in materialized and "stage1_model" not in materialized
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "curated_pairs_ready")
    assert not check.passed and "fewer than min_curated_rows" in json.dumps(check.metadata["problems"].value)


def test_the_inbox_sensor_adds_a_partition_and_asks_for_its_ingestion_once_each_shard_is_whole(tmp_path):
    """A file still being copied is left alone; a whole one (unchanged for a tick, or marked .done) becomes a
    raw_pairs partition with one run; a shard replaced under the same name runs again (its partition stays)."""
    import os

    resources = {"project": ProjectResource(root=str(tmp_path))}
    shard = tmp_path / "inbox/00042.tar"
    with dg.build_sensor_context(resources=resources) as context:
        assert isinstance(new_shards_sensor(context), dg.SkipReason)
        shard.parent.mkdir()
        shard.write_bytes(b"x" * 100)  # a copy under way: it grows between ticks
        assert "still changing" in new_shards_sensor(context).skip_message
        with shard.open("ab") as grows:
            grows.write(b"x" * 100)
        assert "still changing" in new_shards_sensor(context).skip_message
        result = new_shards_sensor(context)  # unchanged since the last tick: whole
        stat = shard.stat()
        assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
            ("inbox/00042.tar", f"shard:00042.tar@200:{stat.st_mtime_ns}")]
        assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["inbox/00042.tar"]]
        assert result.dynamic_partitions_requests[0].partitions_def_name == SHARD_DROPS.name
        assert isinstance(new_shards_sensor(context), dg.SkipReason)  # seen already
        shard.write_bytes(b"y" * 300)  # replaced under the same name
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert isinstance(new_shards_sensor(context), dg.SkipReason)
        assert new_shards_sensor(context).run_requests[0].run_key.startswith("shard:00042.tar@300:")
        (tmp_path / "inbox/00043.tar").write_bytes(b"z")
        (tmp_path / "inbox/00043.tar.done").write_bytes(b"")  # its writer says it is whole: no waiting
        assert new_shards_sensor(context).run_requests[0].partition_key == "inbox/00043.tar"


@pytest.mark.slow  # an accelerate launch: 13 s
def test_training_through_dagster_pipes_under_accelerate_launch(tmp_path, capfd):
    """The pipes launcher runs the same step in a subprocess started by `accelerate launch` (CPU, one process);
    the subprocess reports its materialization, with the same metadata, back through dagster-pipes."""
    data = [a for a in ALL_ASSETS if a.key.to_user_string() in
            {"raw_shards", "raw_pairs", "curated_pairs", "instruction_data", "base_llm"}]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = materialize(tmp_path, assets=data, launch_with=TrainingLauncher(mode="pipes", command=accelerate))
    assert result.success
    event = next(e.event_specific_data.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key.to_user_string() == "base_llm")
    assert event.metadata["steps"].value == TINY_PARAMS["base_llm"]["train"]["max_steps"]
    assert event.metadata["final_loss"].value < event.metadata["first_loss"].value
    assert event.metadata["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
    assert event.tags["dagster/data_version"] == event.metadata["written_dvc_md5"].value
    log = "".join(capfd.readouterr())
    assert "accelerate.commands.launch --cpu" in log and "external process successfully opened dagster pipes" in log


def test_metadata_reads_well_in_the_ui(materialized):
    import lance

    root, result = materialized
    events = {e.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    curated = events["curated_pairs"].metadata
    rows = lance.dataset(str(root / "assets/curated_pairs.lance")).count_rows()
    assert curated["dagster/row_count"].value == rows == curated["rows_out"].value
    assert "caption" in {c.name for c in curated["dagster/column_schema"].value.columns}
    assert "removed" not in curated and "failed" not in curated  # one entry per fact, as tables
    assert curated["rows failing each rule alone"].value.startswith("| rule | rows |")
    assert "![filter histograms](data:image/png;base64," in curated["filter histograms"].value
    assert "![loss curve](data:image/png;base64," in events["stage1_model"].metadata["loss curve"].value
    owleval = events["owleval_report"].metadata
    assert "| b: visual understanding |" in owleval["accuracy per ability"].value
    floats = [v.value for e in events.values() for v in e.metadata.values() if isinstance(v, dg.FloatMetadataValue)]
    assert floats and all(f == float(f"{f:.4g}") for f in floats)  # four significant digits, for reading


def test_a_reused_step_says_so_without_old_timings(materialized):
    root, _ = materialized
    again = materialize(root)
    events = {e.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in again.get_asset_materialization_events()}
    stage1 = events["stage1_model"]
    assert stage1.tags["owl/reused"] == "true" and stage1.metadata["reused"].value == "True"
    assert "seconds" not in stage1.metadata and "samples_per_s" not in stage1.metadata


def test_the_ui_can_force_a_recompute_of_a_reused_step(materialized):
    root, _ = materialized
    resources = {"project": ProjectResource(root=str(root)), "mlflow": MlflowResource(),
                 "launcher": TrainingLauncher()}
    raw = next(a for a in ALL_ASSETS if a.key.to_user_string() == "raw_shards")
    with dg.instance_for_test() as instance:
        reused = dg.materialize([raw], resources=resources, instance=instance)
        forced = dg.materialize([raw], resources=resources, instance=instance,
                                run_config={"ops": {"raw_shards": {"config": {"force": True}}}})
    tags = [r.get_asset_materialization_events()[0].event_specific_data.materialization.tags or {}
            for r in (reused, forced)]
    assert tags[0].get("owl/reused") == "true" and "owl/reused" not in tags[1]
    from owl_pipeline.pipeline.graph import step

    # Dagster sees code changes as staleness: the version is the digest of the code the step runs (test_graph.py)
    codes = {a.key.to_user_string(): a.code_versions_by_key[a.key] for a in ALL_ASSETS}
    assert codes == {name: step(name).code_digest() for name in codes}
    assert codes["stage1_model"] == codes["stage2_model"] != codes["curated_pairs"]


def test_automations_start_stopped_unless_turned_on(monkeypatch):
    import importlib

    from owl_pipeline.orchestration import automation

    assert retrain_automation.default_status == dg.DefaultSensorStatus.STOPPED
    assert new_shards_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv("OWL_AUTOMATIONS", "on")
    reloaded = importlib.reload(automation)
    try:
        assert reloaded.retrain_automation.default_status == dg.DefaultSensorStatus.RUNNING
        assert reloaded.new_shards_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    finally:
        monkeypatch.delenv("OWL_AUTOMATIONS")
        importlib.reload(automation)


@pytest.mark.slow
def test_data_steps_and_training_on_ray_materialize_with_the_usual_metadata(local_ray, tmp_path):
    """engine: ray and launcher: ray, from Dagster: the same assets, the same metadata, MLflow from rank 0."""
    names = {"raw_shards", "raw_pairs", "curated_pairs", "instruction_data", "base_llm"}
    result = materialize(tmp_path, assets=[a for a in ALL_ASSETS if a.key.to_user_string() in names],
                         engine={"raw_pairs": "ray", "curated_pairs": "ray"}, launcher="ray",
                         ray={"partitions": 4, "train_workers": 2})
    assert result.success
    events = {e.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    curated, base = events["curated_pairs"], events["base_llm"]
    assert events["raw_pairs"].metadata["engine"].value == curated.metadata["engine"].value == "ray"
    assert curated.tags["dagster/data_version"] == curated.metadata["written_dvc_md5"].value
    assert curated.metadata["rows_out"].value > 0
    assert base.metadata["launcher"].value == "ray" and base.metadata["ray_train_workers"].value == 2
    assert base.metadata["steps"].value == TINY_PARAMS["base_llm"]["train"]["max_steps"]
    assert base.metadata["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
    assert base.tags["dagster/data_version"] == base.metadata["written_dvc_md5"].value


def test_assets_declare_kinds_not_the_deprecated_compute_kind():
    """Issue 25 item 4 (in part): `kinds=` (Dagster >= 1.10), one set per step as the step declares it."""
    from owl_pipeline.pipeline.graph import step

    for asset in ALL_ASSETS:
        spec = next(iter(asset.specs))
        assert spec.kinds == set(step(spec.key.to_user_string()).kinds) != set()
        assert "dagster/compute_kind" not in (spec.tags or {})
