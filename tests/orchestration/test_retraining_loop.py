"""The retraining loop on a real Dagster instance (the project's own, on disk): shards dropped in the inbox become
``raw_pairs`` partitions through the inbox sensor, each partition's run ingests only its shard, the curated set
follows eagerly, and the training chain starts after its cron tick only once enough new curated rows are in; a
failed training run moves nothing. The test plays the daemon: it applies what the real sensor returns and
executes the runs the real condition evaluation requests, in this process."""

import datetime
import math
import shutil

import dagster as dg
import lance
import pytest
import yaml

from owl_pipeline.config import SyntheticConfig
from owl_pipeline.data.synthetic import generate_corpus
from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import ingest_job, new_shards_sensor
from owl_pipeline.orchestration.conditions import (TRAINING_CHAIN, AutomationSettingError, curated_rows_now,
                                                   curated_rows_trained_on, min_new_rows, retrain_condition,
                                                   retrain_cron)
from owl_pipeline.orchestration.partitions import SHARD_DROPS
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource, TrainingLauncher
from owl_pipeline.orchestration.run import materialize_pipeline

from ..test_pipeline import TINY_PARAMS

CRON = "0 3 * * 1"  # Mondays 03:00 UTC
MONDAY = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
STAGE1 = dg.AssetKey("stage1_model")


def definitions(root, min_rows: int) -> dg.Definitions:
    """The pipeline's assets with the retraining threshold this test sets (the shipped one reads
    OWL_RETRAIN_MIN_NEW_ROWS when the definitions load)."""
    condition = retrain_condition(CRON, min_rows)
    assets = dg.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition)
                                if spec.key.to_user_string() in TRAINING_CHAIN else spec, ALL_ASSETS)
    resources = {"project": ProjectResource(root=str(root)), "mlflow": MlflowResource(),
                 "launcher": TrainingLauncher()}
    return dg.Definitions(assets=assets, jobs=[ingest_job], sensors=[new_shards_sensor], resources=resources)


def drop_shards(folder) -> list:
    """Three shards of another shapes world (another seed), as a user's new downloads: the last three shards of a
    corpus of 1050."""
    config = SyntheticConfig(seed=7, num_pairs=1050, shard_size=150, num_instruction_images=4, num_text_only=0,
                             num_eval_images=2)
    generate_corpus(folder, config, log=lambda _: None)
    return sorted((folder / "shards").glob("*.tar"))[-3:]


class Daemon:
    """What the Dagster daemon would do with this instance: sensor ticks and automation ticks, whose requested
    runs execute here."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, root):
        self.defs, self.instance, self.root = defs, instance, root
        self.sensor_cursor, self.automation_cursor = None, None

    def sensor_tick(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, cursor=self.sensor_cursor,
                                     resources={"project": ProjectResource(root=str(self.root))}) as context:
            result = new_shards_sensor(context)
            self.sensor_cursor = context.cursor
        if isinstance(result, dg.SkipReason):
            return []
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for request in result.run_requests:
            run = self.defs.resolve_job_def(ingest_job.name).execute_in_process(
                instance=self.instance, partition_key=request.partition_key, tags=request.tags)
            assert run.success
        return result.run_requests

    def automation_tick(self, when: datetime.datetime) -> tuple[set[str], bool]:
        """Evaluate every condition at ``when`` and run what it requests: (the assets requested, run success)."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, evaluation_time=when,
                                                   cursor=self.automation_cursor)
        self.automation_cursor = result.cursor
        requested = {key.to_user_string() for key in self.defs.resolve_asset_graph().get_all_asset_keys()
                     if result.get_num_requested(key)}
        if not requested:
            return requested, True
        run = self.defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=self.instance, asset_selection=[dg.AssetKey(k) for k in requested], raise_on_error=False)
        return requested, run.success

    def drop(self, shard, name: str, when: datetime.datetime) -> None:
        """A whole shard lands in the inbox: the sensor's partition run, then the eager refiltering."""
        shutil.copy(shard, self.root / "inbox" / name)
        (self.root / "inbox" / f"{name}.done").touch()
        assert [r.partition_key for r in self.sensor_tick()] == [f"inbox/{name}"]
        assert self.automation_tick(when) == ({"curated_pairs"}, True)


def test_a_dangling_link_in_the_inbox_never_hides_a_new_shard_and_an_archive_is_named(tmp_path):
    from ..data.test_ingest import sample, write_tar

    root = tmp_path / "project"
    (root / "inbox").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    (root / "inbox" / "gone.tar").symlink_to(tmp_path / "nowhere.tar")
    (root / "inbox" / "download.tar.gz").write_bytes(b"\x1f\x8b")
    write_tar(root / "inbox" / "drop-1.tar", sample("a"))
    (root / "inbox" / "drop-1.tar.done").touch()
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                 resources={"project": ProjectResource(root=str(root))}) as context:
        result = new_shards_sensor(context)
        cursor = context.cursor
    assert [r.partition_key for r in result.run_requests] == ["inbox/drop-1.tar"]
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                 resources={"project": ProjectResource(root=str(root))}) as context:
        skipped = new_shards_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "no new shards" in skipped.skip_message
    assert "gone.tar (cannot be read: No such file or directory)" in skipped.skip_message
    assert "download.tar.gz (a compressed archive: unpack it to .tar shards)" in skipped.skip_message


@pytest.mark.parametrize("value", ["abc", "1e3", "-5", "0", "2.5", ""])
def test_a_bad_min_new_rows_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("OWL_RETRAIN_MIN_NEW_ROWS", value)
    with pytest.raises(AutomationSettingError, match=r"OWL_RETRAIN_MIN_NEW_ROWS='.*': expected a whole number of "
                                                     r"new curated rows, at least 1"):
        min_new_rows()


@pytest.mark.parametrize("cron", ["every monday", "61 3 * * 1", "0 3 * * 1 2026", "0 3 * * funday", "0 3 ? * 1"])
def test_a_bad_cron_setting_names_the_variable(monkeypatch, cron):
    monkeypatch.setenv("OWL_RETRAIN_CRON", cron)
    with pytest.raises(AutomationSettingError, match=r"OWL_RETRAIN_CRON='.*': .*e\.g\. '0 3 \* \* 1'"):
        retrain_cron()


def test_good_automation_settings_are_taken_as_given(monkeypatch):
    for cron in ("0 3 * * 1", "*/15 * * * mon-fri", "@daily", "0 0 1,15 * *"):
        monkeypatch.setenv("OWL_RETRAIN_CRON", cron)
        assert retrain_cron() == cron
    monkeypatch.setenv("OWL_RETRAIN_MIN_NEW_ROWS", "2500")
    assert min_new_rows() == 2500


def trained_runs(instance) -> int:
    return len(instance.fetch_materializations(STAGE1, limit=100).records)


@pytest.mark.slow
def test_drops_become_partitions_and_only_enough_new_rows_after_the_tick_retrain(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    params = {**TINY_PARAMS, "registry": {**TINY_PARAMS["registry"], "model_name": "owl-loop-test"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))  # materialize_pipeline sets it; restored after
    assert materialize_pipeline(root, None).success  # the base partition, trained once
    drops = drop_shards(tmp_path / "downloads")
    (root / "inbox").mkdir()

    week = datetime.timedelta(days=7)
    after_tick = datetime.timedelta(hours=3, minutes=10)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(SHARD_DROPS.name) == ["base"]
        trained_on = curated_rows_now(instance)
        probe = Daemon(definitions(root, min_rows=10**9), instance, root)  # measures what one drop adds
        probe.automation_tick(MONDAY)
        probe.drop(drops[0], "drop-1.tar", MONDAY + after_tick)
        first_drop = curated_rows_now(instance) - trained_on
        assert first_drop > 50
        # Two drops of this size stay under the threshold, three pass it (the drops are alike: 150 pairs each).
        threshold = math.ceil(2.5 * first_drop)
        daemon = Daemon(definitions(root, threshold), instance, root)
        daemon.sensor_cursor = probe.sensor_cursor
        assert daemon.automation_tick(MONDAY + datetime.timedelta(days=1)) == (set(), True)  # its first evaluation

        monday = MONDAY + week + after_tick
        daemon.drop(drops[1], "drop-2.tar", monday)
        second = daemon.automation_tick(monday + datetime.timedelta(minutes=1))
        growth_two = curated_rows_now(instance) - trained_on
        daemon.drop(drops[2], "drop-3.tar", monday + datetime.timedelta(minutes=2))
        broken = {**params, "stage1": {**params["stage1"], "no_such_setting": 1}}
        (root / "params.yaml").write_text(yaml.safe_dump(broken))  # the training run will fail
        third = daemon.automation_tick(monday + datetime.timedelta(minutes=3))
        growth = curated_rows_now(instance) - trained_on
        print(f"threshold {threshold} new curated rows; after drop 2: {growth_two} -> {second}; "
              f"after drop 3: {growth} -> {third}")
        assert second == (set(), True) and growth_two < threshold  # two drops: refiltered, no training
        assert third == (TRAINING_CHAIN, False) and growth >= threshold  # the third: requested; its run fails
        assert trained_runs(instance) == 1 and curated_rows_trained_on(instance) == trained_on  # nothing moved

        (root / "params.yaml").write_text(yaml.safe_dump(params))  # the cause of the failure fixed
        assert daemon.automation_tick(monday + datetime.timedelta(minutes=4)) == (set(), True)  # tick handled
        assert daemon.automation_tick(MONDAY + 2 * week + after_tick) == (TRAINING_CHAIN, True)  # the next tick
        assert trained_runs(instance) == 2 and curated_rows_trained_on(instance) == trained_on + growth
        assert daemon.automation_tick(MONDAY + 3 * week + after_tick) == (set(), True)  # nothing new since

    raw = lance.dataset(str(root / "assets/raw_pairs.lance")).to_table(columns=["shard"])
    assert len(set(raw["shard"].to_pylist())) == 3 + 3  # base's three shards and the three drops, each once


def _materialize(defs, instance, assets: list[str], partition: str | None = None) -> None:
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(a) for a in assets],
                                  partition_key=partition).success


@pytest.mark.slow  # a project's data steps, two drops and three filterings: 30 s
def test_a_drop_that_lands_while_the_curated_set_is_refiltered_is_filtered_next(tmp_path, monkeypatch):
    """Drop 2 starts a refilter; drop 3 is ingested while it runs (after it read the table); the refilter ends
    after drop 3's partition run. The next evaluation must refilter again: eager alone had forgotten drop 3."""
    import threading

    from owl_pipeline.pipeline import data_steps

    root = tmp_path / "project"
    (root / "inbox").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    (root / "dagster_home").mkdir()
    drops = drop_shards(tmp_path / "downloads")
    filtered, drop_ingested = threading.Event(), threading.Event()
    real_filter = data_steps.filter_pairs

    def filter_then_wait(*args, **kwargs):  # the refilter reads and writes, then ends after drop 3 is in
        report = real_filter(*args, **kwargs)
        filtered.set()
        drop_ingested.wait(120)
        return report

    with dg.DagsterInstance.get() as instance:
        daemon = Daemon(definitions(root, min_rows=10**9), instance, root)
        instance.add_dynamic_partitions(SHARD_DROPS.name, ["base"])
        _materialize(daemon.defs, instance, ["raw_shards"])
        _materialize(daemon.defs, instance, ["raw_pairs"], partition="base")
        _materialize(daemon.defs, instance, ["curated_pairs"])
        daemon.automation_tick(MONDAY)  # the first evaluation, right after the base was filtered

        monkeypatch.setattr(data_steps, "filter_pairs", filter_then_wait)
        shutil.copy(drops[1], root / "inbox" / "drop-2.tar")  # drop 2 starts this refilter
        (root / "inbox" / "drop-2.tar.done").touch()
        assert [r.partition_key for r in daemon.sensor_tick()] == ["inbox/drop-2.tar"]
        result = {}
        refilter = threading.Thread(target=lambda: result.update(ticked=daemon.automation_tick(
            MONDAY + datetime.timedelta(minutes=2))))
        refilter.start()
        assert filtered.wait(120)
        shutil.copy(drops[2], root / "inbox" / "drop-3.tar")  # drop 3 lands while it runs, after it read the table
        (root / "inbox" / "drop-3.tar.done").touch()
        assert [r.partition_key for r in daemon.sensor_tick()] == ["inbox/drop-3.tar"]
        assert daemon.automation_tick(MONDAY + datetime.timedelta(minutes=3)) == (set(), True)  # one is running
        drop_ingested.set()
        refilter.join(120)
        assert result["ticked"] == ({"curated_pairs"}, True)
        monkeypatch.setattr(data_steps, "filter_pairs", real_filter)
        assert daemon.automation_tick(MONDAY + datetime.timedelta(minutes=4)) == ({"curated_pairs"}, True)
        assert daemon.automation_tick(MONDAY + datetime.timedelta(minutes=5)) == (set(), True)  # nothing left

    curated = lance.dataset(str(root / "assets/curated_pairs.lance")).to_table(columns=["shard"])
    assert {"drop-2.tar", "drop-3.tar"} <= set(curated["shard"].to_pylist())
