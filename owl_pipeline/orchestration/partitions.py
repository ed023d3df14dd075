"""New data as Dagster partitions: ``raw_pairs`` has one partition per drop of shards.

- ``base``: the shards of the configured folder (``raw_shards`` in params, or the generated shapes world);
- ``inbox/<file>``: each shard file dropped in the project's ``inbox/``, added by the inbox sensor once whole.

A run of some partitions ingests only their shards into the one table (the rest stay as they are); a run of
every partition (``owl run``, a backfill of all) brings the table up to date with every shard. Downstream assets
are not partitioned: they read the whole table, every partition."""

import contextlib
import warnings
from pathlib import Path

import dagster as dg

from owl_pipeline.data.ingest import find_shards
from owl_pipeline.pipeline.data_steps import shard_files
from owl_pipeline.pipeline.project import Project

SHARD_DROPS = dg.DynamicPartitionsDefinition(name="shard_drops")
# Dagster's run tags for a run over a range of partitions (what a single-run backfill sets)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
BASE_DROP = "base"
INBOX_PREFIX = "inbox/"


def inbox_key(shard: Path) -> str:
    return f"{INBOX_PREFIX}{shard.name}"


def drop_keys(project: Project) -> list[str]:
    """The partitions the project's shard files make now: ``base``, then one per inbox shard."""
    inbox = find_shards(project.inbox) if project.inbox.is_dir() else []
    return [BASE_DROP, *(inbox_key(shard) for shard in inbox)]


def shards_of(project: Project, keys: list[str]) -> list[Path]:
    """The shard files of partitions ``keys``; a partition whose file has gone names no file."""
    wanted = set(keys)
    base = set(find_shards(project.shard_folder())) if BASE_DROP in wanted else set()
    return [shard for shard in shard_files(project)
            if shard in base or (shard.parent == project.inbox and inbox_key(shard) in wanted)]


def add_drops(instance: dg.DagsterInstance, project: Project) -> list[str]:
    """Add the partitions of the project's shard files that the instance does not know yet; the keys added."""
    known = set(instance.get_dynamic_partitions(SHARD_DROPS.name))
    new = [key for key in drop_keys(project) if key not in known]
    if new:
        instance.add_dynamic_partitions(SHARD_DROPS.name, new)
    return new


def every_drop_tags(instance: dg.DagsterInstance, project: Project) -> dict[str, str]:
    """Run tags for one run over every partition (the ones of the shard files now included): what `owl run`
    launches, so ``raw_pairs`` ingests everything in one pass."""
    add_drops(instance, project)
    keys = instance.get_dynamic_partitions(SHARD_DROPS.name)
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


@contextlib.contextmanager
def beta_accepted():
    """Dagster 1.13 marks two features we rely on as beta: single-run backfills (one Lance write for many
    partitions) and automation sensors that evaluate our own condition class; we accept that, so no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        yield
