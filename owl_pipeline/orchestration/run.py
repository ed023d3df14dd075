"""`owl run`: the ``retrain`` job (the whole asset graph and its checks) executed in this process and recorded
in the project's DAGSTER_HOME, so the run shows in `owl ui` under its job, ready to re-execute."""

import os
import socket
from pathlib import Path

import dagster as dg

from owl_pipeline.locks import process_alive

from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import retrain_job
from owl_pipeline.orchestration.console import compact_console, prepare_dagster_home
from owl_pipeline.orchestration.definitions import pipeline_definitions
from owl_pipeline.orchestration.partitions import every_drop_tags
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource, TrainingLauncher


LAUNCHED_BY = {"owl/launched_by": "owl run"}
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _this_process() -> dict[str, str]:
    return {"owl/pid": str(os.getpid()), "owl/host": socket.gethostname()}


def release_runs_of_dead_processes(instance: dg.DagsterInstance, log=print) -> list[str]:
    """An `owl run` killed hard (SIGKILL, a power cut) stays "started" and keeps its pool slots, and every later
    run of a step in that pool would wait for them forever. Such a run of this machine whose process is gone is
    marked failed and its slots freed; the ids of the runs released."""
    released = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags=LAUNCHED_BY)):
        pid, host = run.tags.get("owl/pid", ""), run.tags.get("owl/host")
        if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
            instance.report_run_failed(run, f"owl run: its process {pid} is gone; its pool slots are freed")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            log(f"owl run: run {run.run_id} was left by process {pid}, which is gone: marked failed, slots freed")
            released.append(run.run_id)
    return released


def materialize_pipeline(project_root: Path, params: Path | None, tracking: bool = True,
                         verbose: bool = False, force: bool = False) -> dg.ExecuteInProcessResult:
    """Every asset and check, in dependency order, as a run of the ``retrain`` job over every ``raw_pairs``
    partition (those of new shard files added first); ``force`` recomputes every step, even one whose inputs and
    settings are unchanged since its last run (each asset's run config)."""
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(project_root))
    resources = {"project": ProjectResource(root=str(project_root), params=str(params) if params else None),
                 "mlflow": MlflowResource(enabled=tracking), "launcher": TrainingLauncher()}
    definitions = pipeline_definitions(resources, loggers={"console": compact_console})
    run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}
    if force:
        run_config["ops"] = {asset.op.name: {"config": {"force": True}} for asset in ALL_ASSETS}
    with dg.DagsterInstance.get() as instance:
        release_runs_of_dead_processes(instance)
        partitions = every_drop_tags(instance, resources["project"].project())
        return definitions.resolve_job_def(retrain_job.name).execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False,
            tags={**LAUNCHED_BY, **_this_process(), **partitions})
