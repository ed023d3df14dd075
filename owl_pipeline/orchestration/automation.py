"""Jobs, the retraining schedule, and the sensors that react to new data.

- ``retrain``: the whole graph; on a weekly schedule (``OWL_RETRAIN_CRON`` overrides the cron string).
- ``ingest_new_shards``: ingestion and filtering; the inbox sensor starts it when shards land in ``inbox/``
  (once each is whole: unchanged across two ticks, or a ``.done`` marker beside it).
- the growth sensor starts ``retrain`` once the curated set grew by ``OWL_RETRAIN_MIN_NEW_ROWS`` rows.

The schedule and sensors start stopped (Dagster's default: nothing runs on its own until you say so); turn
each on in the UI (Automation), or start them all running with ``OWL_AUTOMATIONS=on`` (``owl ui --automations``).
A Dagster daemon must run for them to fire: ``owl ui`` and ``dagster dev`` start one.
"""


import json
import os

import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline.data.ingest import find_shards
from owl_pipeline.orchestration.resources import ProjectResource
from owl_pipeline.pipeline.graph import step

retrain_job = dg.define_asset_job("retrain", selection=dg.AssetSelection.all(),
                                  description="The whole pipeline, from shards to the evaluated model")
ingest_job = dg.define_asset_job("ingest_new_shards",
                                 selection=dg.AssetSelection.assets(C.ASSET_RAW_PAIRS, C.ASSET_CURATED_PAIRS),
                                 description="Ingest and filter the shards, the inbox's included")

def automations_on() -> bool:
    return os.environ.get("OWL_AUTOMATIONS", "off").lower() in ("1", "on", "true", "yes")


def _default_schedule_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if automations_on() else dg.DefaultScheduleStatus.STOPPED


def _default_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automations_on() else dg.DefaultSensorStatus.STOPPED


weekly_retrain = dg.ScheduleDefinition(name="weekly_retrain", job=retrain_job,
                                       cron_schedule=os.environ.get("OWL_RETRAIN_CRON", "0 3 * * 1"),
                                       execution_timezone="UTC", default_status=_default_schedule_status())


DONE_SUFFIX = ".done"  # "<shard>.done" beside a shard: its writer says it is whole, act on it at once


def _inbox_stats(inbox) -> dict[str, list[int]]:
    """name -> [size, mtime_ns] of every shard in the inbox."""
    if not inbox.is_dir():
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in find_shards(inbox)}


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
    """One run per batch of new or replaced shard files in ``inbox/``. A file is acted on once it is whole: its
    size and modification time the same on two ticks in a row (a copy under way keeps changing them), or a
    ``<name>.done`` marker beside it. The cursor keys what was seen by name, size and time, so a shard replaced
    under the same name is seen again."""
    inbox = project.project().inbox
    current = _inbox_stats(inbox)
    seen, last_tick = _read_cursor(context.cursor, current)
    whole = {name for name, stat in current.items()
             if last_tick.get(name) == stat or (inbox / f"{name}{DONE_SUFFIX}").is_file()}
    new = sorted(name for name in whole if seen.get(name) != current[name])
    settling = sorted(name for name in current if name not in whole and seen.get(name) != current[name])
    seen.update({name: current[name] for name in new})
    context.update_cursor(json.dumps({"seen": seen, "last_tick": current}))
    if not new:
        return dg.SkipReason(f"{len(settling)} shards in {inbox} still changing (acted on once their size and time "
                             f"hold for a tick): {settling}" if settling else f"no new shards in {inbox}")
    key = ",".join(f"{name}@{current[name][0]}:{current[name][1]}" for name in new)
    return dg.RunRequest(run_key=f"shards:{key}", tags={"owl/new_shards": ",".join(new)})


@dg.sensor(job=retrain_job, minimum_interval_seconds=300,
           description="Retrain once the curated set grew by OWL_RETRAIN_MIN_NEW_ROWS rows",
           default_status=_default_sensor_status())
def curated_growth_sensor(context: dg.SensorEvaluationContext, project: ProjectResource):
    owl_project = project.project()
    curated = step(C.ASSET_CURATED_PAIRS).last_result(owl_project, warn=context.log.warning)
    if curated is None or curated.rows_out is None:
        return dg.SkipReason("curated_pairs has not been materialized yet")
    rows = int(curated.rows_out)
    trained_on = int(context.cursor) if context.cursor else 0
    needed = int(os.environ.get("OWL_RETRAIN_MIN_NEW_ROWS", "1000"))
    if rows - trained_on < needed:
        return dg.SkipReason(f"{rows - trained_on} new curated rows; retraining at {needed}")
    context.update_cursor(str(rows))
    return dg.RunRequest(run_key=f"curated_rows:{rows}", tags={"owl/curated_rows": str(rows)})


ALL_JOBS = [retrain_job, ingest_job]
ALL_SCHEDULES = [weekly_retrain]
ALL_SENSORS = [new_shards_sensor, curated_growth_sensor]
