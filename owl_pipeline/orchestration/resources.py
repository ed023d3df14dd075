"""Resources, swappable by deployment: where the project lives (assets/, params.yaml) and where MLflow is."""

from __future__ import annotations

import os

import dagster as dg

from owl_pipeline.config import PipelineConfig
from owl_pipeline.registry.tracking import MlflowTracking, local_tracking_uri
from owl_pipeline.steps import Project


class ProjectResource(dg.ConfigurableResource):
    """The project folder (``assets/``, ``mlruns/``) and its pipeline config (``params.yaml`` by default)."""

    root: str = "."
    params: str | None = None

    def project(self) -> Project:
        project_root = os.path.abspath(self.root)
        params = self.params or os.path.join(project_root, "params.yaml")
        config = PipelineConfig.from_yaml(params) if os.path.isfile(params) else PipelineConfig()
        return Project(config, project_root)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking: a server URI in production, the project's sqlite store by default."""

    tracking_uri: str | None = None
    ui_url: str = "http://127.0.0.1:5000"
    enabled: bool = True

    def tracking(self, project: Project) -> MlflowTracking | None:
        if not self.enabled:
            return None
        uri = self.tracking_uri or local_tracking_uri(project.root)
        return MlflowTracking(uri, artifact_root=project.root / "mlruns" / "artifacts", ui_url=self.ui_url)


def resources_for(deployment: str) -> dict[str, dg.ConfigurableResource]:
    """``local`` (the default): this folder and its sqlite MLflow store. ``production``: the folder and
    tracking server named by OWL_PROJECT_ROOT and MLFLOW_TRACKING_URI."""
    if deployment == "production":
        return {"project": ProjectResource(root=dg.EnvVar("OWL_PROJECT_ROOT")),
                "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))}
    if deployment != "local":
        raise ValueError(f"unknown deployment {deployment!r}: use local or production (OWL_DEPLOYMENT)")
    return {"project": ProjectResource(root=os.environ.get("OWL_PROJECT_ROOT", ".")), "mlflow": MlflowResource()}
