"""`owl run`: materialize the whole asset graph in this process, recorded in the project's DAGSTER_HOME."""

import os
from pathlib import Path

import dagster as dg

from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.checks import ALL_CHECKS
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource, TrainingLauncher


def materialize_pipeline(project_root: Path, params: Path | None, tracking: bool = True) -> dg.ExecuteInProcessResult:
    """Every asset and check, in dependency order; the run shows in `owl ui` afterwards."""
    home = project_root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    resources = {"project": ProjectResource(root=str(project_root), params=str(params) if params else None),
                 "mlflow": MlflowResource(enabled=tracking), "launcher": TrainingLauncher()}
    with dg.DagsterInstance.get() as instance:
        return dg.materialize([*ALL_ASSETS, *ALL_CHECKS], resources=resources, instance=instance,
                              raise_on_error=False, tags={"owl/launched_by": "owl run"})
