"""When the pipeline runs on its own: Dagster declarative automation (evaluated by the ``retrain_automation``
sensor, which starts stopped unless `owl ui --automations`).

- ``curated_pairs`` is eager: a new ``raw_pairs`` partition (a shard dropped in the inbox) refilters the set;
  and whenever ``raw_pairs`` has a newer Lance version than the one last filtered, it refilters once nothing
  writing either runs (a drop that lands while a refilter runs is not forgotten).
- The training chain (every step downstream of ``curated_pairs``: base_llm, stage1, stage2, evaluation,
  registration) runs after a tick of ``OWL_RETRAIN_CRON`` (default Monday 03:00 UTC), once the curated set has
  at least ``OWL_RETRAIN_MIN_NEW_ROWS`` (default 1000) rows more than the set stage 1 was last trained on. Both
  counts are Dagster's own ``dagster/row_count`` on curated_pairs' materializations: the newest, and the one whose
  content (its DVC hash) stage 1's last materialization read. A failed run materializes nothing, so it moves no
  baseline: the next tick tries again."""

import os
import re

import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline.pipeline.graph import STEPS
from owl_pipeline.safe_text import printable

DEFAULT_CRON = "0 3 * * 1"
DEFAULT_MIN_NEW_ROWS = 1000
TRAINED_ON = C.ASSET_STAGE1  # the step whose last training defines "the data the model was trained on"
RECENT_MATERIALIZATIONS = 500  # how far back the curated set stage 1 read is looked for


CRON_ENV, MIN_NEW_ROWS_ENV = "OWL_RETRAIN_CRON", "OWL_RETRAIN_MIN_NEW_ROWS"
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7))
_CRON_NAMES = {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
               "sun", "mon", "tue", "wed", "thu", "fri", "sat"}
_CRON_ALIASES = {"@hourly", "@daily", "@weekly", "@monthly"}
_CRON_PART = re.compile(r"^(\*|[0-9a-z]+(-[0-9a-z]+)?)(/[0-9]+)?$")


class AutomationSettingError(ValueError):
    """An automation setting from the environment is not valid; the message names the variable."""


def _cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a five-field cron string (or one of Dagster's @hourly ... @monthly), or None."""
    if cron.strip().lower() in _CRON_ALIASES:
        return None
    fields = cron.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, not the five of minute hour day-of-month month day-of-week"
    for text, (name, low, high) in zip(fields, _CRON_FIELDS):
        for part in text.lower().split(","):
            numbers = [int(n) for n in re.findall(r"(?<![/0-9])[0-9]+", part)]
            words = set(re.findall(r"[a-z]+", part))
            if not _CRON_PART.match(part) or words - _CRON_NAMES or any(not low <= n <= high for n in numbers):
                return f"the {name} field {text!r} is not a cron field ({low}-{high}, *, a-b, */n, lists)"
    return None


def retrain_cron() -> str:
    cron = os.environ.get(CRON_ENV, DEFAULT_CRON)
    problem = _cron_problem(cron)
    if problem:
        raise AutomationSettingError(f"{CRON_ENV}='{printable(cron, limit=80)}': {problem}; e.g. "
                                     f"{DEFAULT_CRON!r} (Mondays 03:00 UTC)")
    return cron


def min_new_rows() -> int:
    text = os.environ.get(MIN_NEW_ROWS_ENV, str(DEFAULT_MIN_NEW_ROWS)).strip()
    if not re.fullmatch(r"[0-9]{1,12}", text) or int(text) < 1:
        raise AutomationSettingError(f"{MIN_NEW_ROWS_ENV}='{printable(text, limit=80)}': expected a whole number "
                                     f"of new curated rows, at least 1 (default {DEFAULT_MIN_NEW_ROWS})")
    return int(text)


def _metadata_value(materialization: dg.AssetMaterialization | None, key: str):
    """One value of a Dagster materialization's metadata (what the UI shows), None where it is absent."""
    dagster_metadata = materialization.metadata if materialization is not None else {}
    entry = dagster_metadata.get(key)
    return None if entry is None else entry.value


def curated_rows_now(instance: dg.DagsterInstance) -> int | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(C.ASSET_CURATED_PAIRS))
    return _metadata_value(event.asset_materialization if event else None, "dagster/row_count")


def curated_rows_trained_on(instance: dg.DagsterInstance) -> int:
    """Rows of the curated set stage 1 last read; 0 when it never trained (or that set is no longer on record)."""
    trained = instance.get_latest_materialization_event(dg.AssetKey(TRAINED_ON))
    read = _metadata_value(trained.asset_materialization if trained else None, "read_versions") or {}
    digest = (read.get(C.ASSET_CURATED_PAIRS) or {}).get("dvc_md5")
    if digest is None:
        return 0
    history = instance.fetch_materializations(dg.AssetKey(C.ASSET_CURATED_PAIRS), limit=RECENT_MATERIALIZATIONS)
    for record in history.records:
        if _metadata_value(record.asset_materialization, "written_dvc_md5") == digest:
            return int(_metadata_value(record.asset_materialization, "dagster/row_count") or 0)
    return 0


class CuratedSetGrew(dg.AutomationCondition):
    """True when the curated set has at least ``min_rows`` rows more than the set stage 1 was trained on."""

    def __init__(self, min_rows: int):
        self.min_rows = min_rows

    @property
    def name(self) -> str:
        return "curated_set_grew"

    @property
    def description(self) -> str:
        return f"curated_pairs has >= {self.min_rows} rows more than stage 1 was trained on"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        now = curated_rows_now(instance)
        grew = now is not None and now - curated_rows_trained_on(instance) >= self.min_rows
        return dg.AutomationResult(context=context,
                                   true_subset=context.candidate_subset if grew else context.get_empty_subset())


def _latest_metadata(instance: dg.DagsterInstance, asset: str, key: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return _metadata_value(event.asset_materialization if event else None, key)


class FilteredAnOlderTable(dg.AutomationCondition):
    """True when raw_pairs' newest materialization wrote a Lance version newer than the one curated_pairs last
    filtered, and came after the last curated_pairs run was started. Eager's "since last handled" is reset by a
    refilter that ends after a drop landed, though that refilter read the table before the drop: this asks what
    was filtered, so no drop waits for good. A refilter that failed on the newest table is not tried again
    until the table changes (as eager does)."""

    @property
    def name(self) -> str:
        return "filtered_an_older_raw_pairs"

    @property
    def description(self) -> str:
        return "raw_pairs has a newer version than curated_pairs last filtered, written after its last run began"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        raw = instance.get_latest_materialization_event(dg.AssetKey(C.ASSET_RAW_PAIRS))
        written = _metadata_value(raw.asset_materialization if raw else None, "lance_version")
        filtered = _latest_metadata(instance, C.ASSET_CURATED_PAIRS, "source_version")
        older = written is not None and (filtered is None or int(filtered) < int(written))
        return dg.AutomationResult(context=context, true_subset=context.candidate_subset
                                   if older and _after_last_refilter(instance, raw.timestamp)
                                   else context.get_empty_subset())


def _after_last_refilter(instance: dg.DagsterInstance, timestamp: float) -> bool:
    """Whether ``timestamp`` is later than the creation of the last run planned to write curated_pairs."""
    planned = instance.get_latest_planned_materialization_info(dg.AssetKey(C.ASSET_CURATED_PAIRS))
    record = instance.get_run_record_by_id(planned.run_id) if planned else None
    return record is None or record.create_timestamp.timestamp() < timestamp


def _busy() -> dg.AutomationCondition:
    return dg.AutomationCondition.in_progress() | dg.AutomationCondition.any_deps_in_progress()


def refilter_condition() -> dg.AutomationCondition:
    """Eager, and besides: whenever raw_pairs holds rows the curated set has not filtered, once nothing that
    writes either is running."""
    return (dg.AutomationCondition.eager() | (FilteredAnOlderTable() & ~_busy())).with_label(
        "refilter: eager, or raw_pairs newer than what was filtered")


def retrain_condition(cron: str, min_rows: int) -> dg.AutomationCondition:
    """After a cron tick (until the chain is requested), once the curated set grew enough, unless a run of it
    or of an input is under way."""
    tick = dg.AutomationCondition.cron_tick_passed(cron, cron_timezone="UTC").since_last_handled()
    return (tick.with_label(f"a tick of {cron} passed") & CuratedSetGrew(min_rows) & ~_busy()).with_label(
        f"retrain: cron {cron} and >= {min_rows} new curated rows")


def downstream_of(name: str) -> set[str]:
    below, grew = set(), True
    while grew:
        found = {s.name for s in STEPS if {name, *below} & set(s.reads)} - below
        grew, below = bool(found), below | found
    return below


TRAINING_CHAIN = downstream_of(C.ASSET_CURATED_PAIRS)


def automation_condition(name: str) -> dg.AutomationCondition | None:
    """The condition of asset ``name``: eager filtering, the retraining chain's cron-and-growth, or none."""
    if name == C.ASSET_CURATED_PAIRS:
        return refilter_condition()
    if name in TRAINING_CHAIN:
        return retrain_condition(retrain_cron(), min_new_rows())
    return None
