"""Software-defined assets: one thin layer over each step of the pipeline's table (pipeline/graph.py).

    raw_shards -> raw_pairs -> curated_pairs -> instruction_data -> base_llm -> stage1_model -> stage2_model
    -> owleval_report -> registered_model

A step whose inputs and settings are unchanged reuses its last result; in the UI's Launchpad, run config
``ops: {<asset>: {config: {force: true}}}`` recomputes it anyway. Each asset's code_version is a hash of its
step's code (its module and the library modules it runs: ``Step.code``), so Dagster marks it stale
when the code that computes it changes. The data steps retry transient I/O (a flaky network mount, a storage
timeout) with backoff; any other error fails the step at once, as trying again would change nothing. The training
steps share the ``owl_training`` pool: a second launch waits for the first instead of failing on its lock.
``raw_pairs`` is partitioned by drop of shards (orchestration/partitions.py); the assets below it read every
partition. Assets carry their automation conditions (orchestration/conditions.py), evaluated only when the
``retrain_automation`` sensor is on.
"""

import errno

import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline.orchestration.conditions import automation_condition
from owl_pipeline.orchestration.metadata import materialization
from owl_pipeline.orchestration.partitions import SHARD_DROPS, beta_accepted, drop_keys, shards_of
from owl_pipeline.pipeline.graph import STEPS, Step
from owl_pipeline.pipeline.steps import GROUP_DATA
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult
from owl_pipeline.pipeline.runner import run_step

def _table_schema(value: dict) -> dg.MetadataValue:
    return dg.MetadataValue.table_schema(dg.TableSchema(
        columns=[dg.TableColumn(column["name"], column["type"]) for column in value["columns"]]))


_METADATA_VALUE = {"text": dg.MetadataValue.text, "int": dg.MetadataValue.int, "float": dg.MetadataValue.float,
                   "url": dg.MetadataValue.url, "json": dg.MetadataValue.json, "path": dg.MetadataValue.path,
                   "md": dg.MetadataValue.md, "table_schema": _table_schema}


def materialized(project: Project, result: StepResult) -> dg.MaterializeResult:
    """What the Dagster UI shows for a step: its figures, tables and plots, and the versions it read and wrote.
    A reused step (nothing recomputed) keeps its data version and is tagged ``owl/reused``."""
    entries, version = materialization(project, result)
    return dg.MaterializeResult(metadata={key: _METADATA_VALUE[kind](value) for key, (kind, value) in entries.items()},
                                data_version=dg.DataVersion(version) if version else None,
                                tags={"owl/reused": "true"} if result.reused else None)


class StepRunConfig(dg.Config):
    force: bool = False  # recompute even when inputs and settings are unchanged since the last run


DATA_STEP_RETRIES = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL)
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET, errno.ECONNREFUSED,
                    errno.EHOSTUNREACH, errno.ENETUNREACH}


def is_transient(error: BaseException) -> bool:
    """I/O that may well succeed when tried again; a missing file or a bad row will not."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def _resources(definition: Step) -> set[str]:
    return {"project"} | ({"mlflow"} if definition.tracked else set()) | ({"launcher"} if definition.trains else set())


def _run_retrying_only_transient_errors(definition: Step, run):
    """``run()``; a data step's non-transient error becomes a Failure its RetryPolicy does not retry."""
    if definition.group != GROUP_DATA:
        return run()
    try:
        return run()
    except Exception as error:
        if is_transient(error):
            raise
        raise dg.Failure(f"{definition.name}: {type(error).__name__}: {error}", allow_retries=False) from error


PARTITIONED = {C.ASSET_RAW_PAIRS: SHARD_DROPS}  # new data arrives as partitions of the ingested table


def part_of_step(context: dg.AssetExecutionContext, project: Project) -> dict:
    """The keywords that restrict a partitioned step to the run's partitions; none when the run covers every
    partition the project's shards make (then the step does all its work, and may reuse its last result)."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return {}
    keys = list(context.partition_keys)
    if set(drop_keys(project)) <= set(keys):
        return {}
    return {"only": shards_of(project, keys)}


def _partitioning(name: str) -> dict:
    """A partitioned asset's backfill of many partitions is one run: one pass over their shards."""
    if name not in PARTITIONED:
        return {}
    return {"partitions_def": PARTITIONED[name], "backfill_policy": dg.BackfillPolicy.single_run()}


def asset_for(definition: Step, data_retries: dg.RetryPolicy = DATA_STEP_RETRIES) -> dg.AssetsDefinition:
    """The asset of one step: run it (or reuse its result) and report it; training goes through the launcher."""
    with beta_accepted():
        return _asset(definition, data_retries)


def _asset(definition: Step, data_retries: dg.RetryPolicy) -> dg.AssetsDefinition:
    name = definition.name

    @dg.asset(name=name, deps=list(definition.reads), group_name=definition.group,
              description=definition.description, kinds=set(definition.kinds),
              required_resource_keys=_resources(definition), pool=definition.pool,
              code_version=definition.code_digest(), automation_condition=automation_condition(name),
              retry_policy=data_retries if definition.group == GROUP_DATA else None, **_partitioning(name))
    def _materialize(context: dg.AssetExecutionContext, config: StepRunConfig):
        owl_project = context.resources.project.project()
        if definition.trains and context.resources.launcher.mode == "pipes":
            return context.resources.launcher.launch(context, name, context.resources.project,
                                                     context.resources.mlflow, force=config.force)
        tracking = context.resources.mlflow.tracking(owl_project) if definition.tracked else None
        part = part_of_step(context, owl_project)
        result = _run_retrying_only_transient_errors(definition, lambda: run_step(
            name, owl_project, tracking, log=context.log.info, force=config.force, **part))
        return materialized(owl_project, result)

    return _materialize


ALL_ASSETS = [asset_for(definition) for definition in STEPS]


def asset_graph_edges() -> dict[str, set[str]]:
    """asset -> the assets it depends on, as Dagster sees them (compared with dvc.yaml in a test)."""
    edges = {}
    for definition in ALL_ASSETS:
        for key in definition.keys:
            edges[key.to_user_string()] = {dep.to_user_string() for dep in definition.asset_deps[key]}
    return edges
