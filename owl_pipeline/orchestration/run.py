"""`owl run`: the ``retrain`` job (the whole asset graph and its checks) executed in this process and recorded
in the project's DAGSTER_HOME, so the run shows in `owl ui` under its job, ready to re-execute."""

import os
from pathlib import Path

import dagster as dg

from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import retrain_job
from owl_pipeline.orchestration.console import compact_console, prepare_dagster_home
from owl_pipeline.orchestration.definitions import pipeline_definitions
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource, TrainingLauncher


def materialize_pipeline(project_root: Path, params: Path | None, tracking: bool = True,
                         verbose: bool = False, force: bool = False) -> dg.ExecuteInProcessResult:
    """Every asset and check, in dependency order, as a run of the ``retrain`` job; ``force`` recomputes every
    step, even one whose inputs and settings are unchanged since its last run (each asset's run config)."""
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(project_root))
    resources = {"project": ProjectResource(root=str(project_root), params=str(params) if params else None),
                 "mlflow": MlflowResource(enabled=tracking), "launcher": TrainingLauncher()}
    definitions = pipeline_definitions(resources, loggers={"console": compact_console})
    run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}
    if force:
        run_config["ops"] = {asset.op.name: {"config": {"force": True}} for asset in ALL_ASSETS}
    with dg.DagsterInstance.get() as instance:
        return definitions.resolve_job_def(retrain_job.name).execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False, tags={"owl/launched_by": "owl run"})
