"""Resources, swappable by deployment: where the project lives (assets/, params.yaml), where MLflow is, and
where training runs (in-process, or a dagster-pipes subprocess under accelerate/torchrun)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dagster as dg

from owl_pipeline.pipeline.project import Project, load_project

if TYPE_CHECKING:
    from owl_pipeline.registry.tracking import MlflowTracking


class ProjectResource(dg.ConfigurableResource):
    """The project folder (``assets/``, ``mlruns/``) and its pipeline config (``params.yaml`` by default)."""

    root: str = "."
    params: str | None = None

    def project(self) -> Project:
        return load_project(self.root, self.params)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking: a server URI in production, the project's sqlite store by default."""

    tracking_uri: str | None = None
    ui_url: str = "http://127.0.0.1:5000"
    enabled: bool = True

    def tracking(self, project: Project) -> MlflowTracking | None:
        from owl_pipeline.registry.tracking import tracking_for  # mlflow: loaded by the runs that track

        return tracking_for(project.root, self.tracking_uri, self.ui_url) if self.enabled else None


class TrainingLauncher(dg.ConfigurableResource):
    """Where training steps run. ``in_process`` (the default, CPU): inside the Dagster run. ``pipes``: a
    subprocess, ``command`` + ``-m owl_pipeline.cli step NAME --dagster-pipes``, e.g. ``accelerate launch
    --multi_gpu --num_processes 8``; it reports logs and the materialization back through dagster-pipes.
    The same entry point runs under torchrun, or in a Kubernetes pod with dagster-k8s' PipesK8sClient."""

    mode: str = "in_process"
    command: list[str] = ["accelerate", "launch", "--num_processes", "1"]
    env: dict[str, str] = {}

    def launch(self, context: dg.AssetExecutionContext, name: str, project: ProjectResource,
               mlflow: MlflowResource, force: bool = False) -> dg.MaterializeResult:
        if self.mode != "pipes":
            raise ValueError(f"launcher mode {self.mode!r} does not launch subprocesses (use pipes)")
        command = [*self.command, "-m", "owl_pipeline.cli", "step", name, "--project", os.path.abspath(project.root),
                   "--dagster-pipes"]
        if project.params:
            command += ["--params", os.path.abspath(project.params)]
        if not mlflow.enabled:
            command.append("--no-tracking")
        if force:
            command.append("--force")
        env = {**self.env, **({"MLFLOW_TRACKING_URI": mlflow.tracking_uri} if mlflow.tracking_uri else {})}
        context.log.info(f"launching: {' '.join(command)}")
        return dg.PipesSubprocessClient(env=env).run(command=command, context=context).get_materialize_result()


def resources_for(deployment: str) -> dict[str, dg.ConfigurableResource]:
    """``local`` (the default): this folder, its sqlite MLflow store, training in-process. ``production``: the
    folder and tracking server named by OWL_PROJECT_ROOT and MLFLOW_TRACKING_URI; training launched through
    dagster-pipes with OWL_TRAINING_LAUNCH (default ``accelerate launch``, which reads your accelerate config)."""
    if deployment == "production":
        launch = os.environ.get("OWL_TRAINING_LAUNCH", "accelerate launch").split()
        return {"project": ProjectResource(root=dg.EnvVar("OWL_PROJECT_ROOT")),
                "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
                "launcher": TrainingLauncher(mode="pipes", command=launch)}
    if deployment != "local":
        raise ValueError(f"unknown deployment {deployment!r}: use local or production (OWL_DEPLOYMENT)")
    return {"project": ProjectResource(root=os.environ.get("OWL_PROJECT_ROOT", ".")), "mlflow": MlflowResource(),
            "launcher": TrainingLauncher()}
