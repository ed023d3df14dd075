"""MLflow tracking through MlflowClient (no global active run): one experiment, one run per pipeline step.

Local default: a sqlite store in ``mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``; any tracking
URI (a server) works the same. A run is a ``Tracker`` for the training loop; metrics are sent in batches.
As MLflow's users expect: the experiment is marked as model development (the UI's ML view, not GenAI), runs
carry the source tags ``mlflow.start_run`` would set, and each run records the datasets it read as inputs
(name, digest = the DVC hash, source path), so the UI's Datasets column and lineage are filled.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

DEFAULT_EXPERIMENT = "owl-pipeline"
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
_PARAM_VALUE_LIMIT = 500  # MLflow's limit on a param value's length
SYSTEM_METRICS_SECONDS = 10.0  # MLflow's default sampling interval


class TrackingUnavailableError(ConnectionError):
    """The tracking store could not be reached; nothing was logged."""


def local_tracking_uri(project_root: Path) -> str:
    return f"sqlite:///{(project_root / 'mlruns' / 'mlflow.db').resolve()}"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"stage1.lr": "0.0001", ...}, values cut to MLflow's length limit."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            flat[name] = flat[name][:_PARAM_VALUE_LIMIT]
    return flat


def system_tags() -> dict[str, str]:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    return {"system.python": platform.python_version(), "system.torch": torch.__version__,
            "system.device": device, "system.host": platform.node()}


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a run read: its name, a digest of its content (the DVC hash) and where it lives."""

    name: str
    digest: str
    source: str
    context: str = "training"

    def as_input(self) -> DatasetInput:
        # MLflow's source type for a local folder ("local"), built from its JSON form without guessing.
        source = get_dataset_source_from_json(json.dumps({"uri": str(self.source)}), source_type="local")
        dataset = MetaDataset(source, name=self.name, digest=self.digest[:36])
        return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", self.context)])


class MlflowRun:
    """One MLflow run: the Tracker the training loop logs to."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, ui_url: str, flush_every: int = 200):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.url = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        self._pending: list[Metric] = []
        self._flush_every = flush_every

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._pending) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[start:start + 1000])
        self._pending = []

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)


class MlflowTracking:
    """Opens runs in one experiment of one tracking store."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None,
                 experiment: str = DEFAULT_EXPERIMENT, ui_url: str = "http://127.0.0.1:5000",
                 registry_uri: str | None = None):
        self.tracking_uri, self.ui_url = tracking_uri, ui_url
        self.registry_uri = registry_uri or tracking_uri  # the model registry lives in the tracking store by default
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri, registry_uri=self.registry_uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri() if artifact_root else None,
                tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
            if found and EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
        except (MlflowException, OSError) as error:
            raise TrackingUnavailableError(f"cannot reach the MLflow tracking store {tracking_uri}: {error}") from error

    @contextlib.contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
            inputs: Sequence[DatasetRef] = (), system_metrics: bool = False) -> Iterator[MlflowRun]:
        """A run that ends FINISHED; FAILED if the body raises, KILLED if it was interrupted (Ctrl-C, SIGTERM).
        ``system_metrics``: CPU, memory, disk and network (and GPU, where pynvml finds one) sampled every
        SYSTEM_METRICS_SECONDS into the run's ``system/...`` metrics by MLflow's own monitor."""
        run_tags = resolve_tags({k: str(v) for k, v in {**system_tags(), **(tags or {})}.items()})
        info = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
        run = MlflowRun(self.client, info.info.run_id, self.experiment_id, self.ui_url)
        try:
            with self._system_monitor(run.run_id) if system_metrics else contextlib.nullcontext():
                if params:
                    run.log_params(params)
                if inputs:
                    self.client.log_inputs(run.run_id, datasets=[ref.as_input() for ref in inputs])
                yield run
            run.flush()
            self.client.set_terminated(run.run_id, "FINISHED")
        except BaseException as error:
            run.flush()
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            self.client.set_terminated(run.run_id, "KILLED" if interrupted else "FAILED")
            raise

    @contextlib.contextmanager
    def _system_monitor(self, run_id: str) -> Iterator[None]:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()  # the last samples are logged before the run ends


def tracking_for(project_root: Path, tracking_uri: str | None = None,
                 ui_url: str = "http://127.0.0.1:5000") -> MlflowTracking:
    """The project's tracking: ``tracking_uri`` (a server) or the project's sqlite store, artifacts under
    ``mlruns/artifacts`` of the project for a local store."""
    uri = tracking_uri or local_tracking_uri(project_root)
    return MlflowTracking(uri, artifact_root=Path(project_root) / "mlruns" / "artifacts", ui_url=ui_url)
