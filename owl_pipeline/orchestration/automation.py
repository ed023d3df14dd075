"""Jobs, the sensor that turns new shard files into partitions, and the sensor that evaluates the assets'
automation conditions (orchestration/conditions.py).

- ``retrain``: the whole graph (launch it over every ``raw_pairs`` partition: `owl run` does).
- ``ingest_new_shards``: ``raw_pairs`` for one partition; ``new_shards_sensor`` adds an ``inbox/<file>`` partition
  for each shard dropped in ``inbox/`` once it is whole (unchanged across two ticks, or a ``.done`` marker beside
  it) and requests its ingestion. ``curated_pairs`` follows eagerly; the training chain waits for its cron tick
  and enough new rows.
- ``retrain_automation``: the automation condition sensor that evaluates those conditions.

The sensors start stopped (Dagster's default: nothing runs on its own until you say so); turn each on in the UI
(Automation), or start them running with ``OWL_AUTOMATIONS=on`` (``owl ui --automations``). A Dagster daemon
must run for them to fire: ``owl ui`` and ``dagster dev`` start one.
"""


import json
import os
from dataclasses import dataclass, field

import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline.data.ingest import find_shards
from owl_pipeline.orchestration.partitions import SHARD_DROPS, beta_accepted, inbox_key
from owl_pipeline.orchestration.resources import ProjectResource
from owl_pipeline.safe_text import printable

retrain_job = dg.define_asset_job("retrain", selection=dg.AssetSelection.all(),
                                  description="The whole pipeline, from shards to the evaluated model")
ingest_job = dg.define_asset_job("ingest_new_shards", selection=dg.AssetSelection.assets(C.ASSET_RAW_PAIRS),
                                 description="Ingest one drop of shards (a raw_pairs partition)")


def automations_on() -> bool:
    return os.environ.get("OWL_AUTOMATIONS", "off").lower() in ("1", "on", "true", "yes")


def _default_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automations_on() else dg.DefaultSensorStatus.STOPPED


DONE_SUFFIX = ".done"  # "<shard>.done" beside a shard: its writer says it is whole, act on it at once


# Archives img2dataset users meet that ingestion does not read: said on every tick, never passed over in silence.
UNREAD_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip")


@dataclass
class InboxListing:
    stats: dict[str, list[int]] = field(default_factory=dict)  # name -> [size, mtime_ns] of each readable shard
    unread: dict[str, str] = field(default_factory=dict)  # name -> why it is not read

    def note(self) -> str:
        return "; not read: " + ", ".join(f"{printable(n)} ({why})" for n, why in sorted(self.unread.items()))


def list_inbox(inbox) -> InboxListing:
    """The inbox's shards with their stats, and what in it cannot be read (a link to nothing, an archive that
    is not a .tar): one bad entry never hides the others."""
    listing = InboxListing()
    if not inbox.is_dir():
        return listing
    for path in find_shards(inbox):
        try:
            stat = path.stat()
        except OSError as error:
            listing.unread[path.name] = f"cannot be read: {error.strerror or error}"
            continue
        listing.stats[path.name] = [stat.st_size, stat.st_mtime_ns]
    for path in inbox.iterdir():
        if path.name.lower().endswith(UNREAD_ARCHIVES):
            listing.unread[path.name] = "a compressed archive: unpack it to .tar shards"
    return listing


def _read_cursor(cursor: str | None, current: dict[str, list[int]]) -> tuple[dict, dict]:
    """(seen, last tick's stats) from the cursor; a cursor of the old form (a list of names) counts those names
    as seen as they are now."""
    data = json.loads(cursor) if cursor else {}
    if isinstance(data, list):
        return {name: current[name] for name in data if name in current}, {}
    return data.get("seen", {}), data.get("last_tick", {})


@dg.sensor(job=ingest_job, minimum_interval_seconds=60, description="New or replaced shards in the project's inbox/",
           default_status=_default_sensor_status())
def new_shards_sensor(context: dg.SensorEvaluationContext, project: ProjectResource):
    """A partition, and a run of it, per new or replaced shard file in ``inbox/``. A file is acted on once it is
    whole: its size and modification time the same on two ticks in a row (a copy under way keeps changing them),
    or a ``<name>.done`` marker beside it. The cursor keys what was seen by name, size and time, so a shard replaced
    under the same name is seen again."""
    inbox = project.project().inbox
    listing = list_inbox(inbox)
    current = listing.stats
    if listing.unread:
        context.log.warning(f"inbox {inbox}{listing.note()}")
    seen, last_tick = _read_cursor(context.cursor, current)
    whole = {name for name, stat in current.items()
             if last_tick.get(name) == stat or (inbox / f"{name}{DONE_SUFFIX}").is_file()}
    new = sorted(name for name in whole if seen.get(name) != current[name])
    settling = sorted(name for name in current if name not in whole and seen.get(name) != current[name])
    seen.update({name: current[name] for name in new})
    context.update_cursor(json.dumps({"seen": seen, "last_tick": current}))
    if not new:
        waiting = (f"{len(settling)} shards in {inbox} still changing (acted on once their size and time hold for "
                   f"a tick): {settling}" if settling else f"no new shards in {inbox}")
        return dg.SkipReason(waiting + (listing.note() if listing.unread else ""))
    keys = [inbox_key(inbox / name) for name in new]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"shard:{name}@{current[name][0]}:{current[name][1]}", partition_key=key,
                                    tags={"owl/new_shard": name}) for name, key in zip(new, keys)],
        dynamic_partitions_requests=[SHARD_DROPS.build_add_request(keys)])  # a key known already stays as it is


with beta_accepted():
    retrain_automation = dg.AutomationConditionSensorDefinition(
        "retrain_automation", target=dg.AssetSelection.all(), use_user_code_server=True,
        minimum_interval_seconds=60, default_status=_default_sensor_status(),
        description="Evaluates the assets' automation conditions: curated_pairs eager on new partitions; the "
                    "training chain on OWL_RETRAIN_CRON once OWL_RETRAIN_MIN_NEW_ROWS new curated rows are in")


ALL_JOBS = [retrain_job, ingest_job]
ALL_SCHEDULES: list[dg.ScheduleDefinition] = []  # retraining on a cron is an automation condition now
ALL_SENSORS = [new_shards_sensor, retrain_automation]
