"""Training stages on Ray Train (``launcher: ray``): the step's own function runs in each worker of a
TorchTrainer, whose torch process group accelerate picks up (RANK / WORLD_SIZE / MASTER_ADDR), so the loop,
its checkpoints and its data sharding are the ones of a torchrun launch.

Rank 0 writes the files and tracks to MLflow as in any distributed launch, and leaves the step's result in
``assets/.ray_train/<step>.result.json`` for the driver. When a worker dies, Ray Train restarts the group (up to
``ray.max_failures`` times) and the loop resumes from the stage's newest checkpoint. On a multi-node cluster the
project folder must be shared storage (NFS, a mounted bucket), as checkpoints and results are read back from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from owl_pipeline.data.ray_session import ray_session
from owl_pipeline.files import atomic_write_json, read_json_or_none
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult
from owl_pipeline.pipeline.steps import registered_step

RAY_TRAIN_DIR = ".ray_train"  # under assets/: Ray Train's run folders and the steps' results


def result_file(project: Project, name: str) -> Path:
    return project.assets / RAY_TRAIN_DIR / f"{name}.result.json"


def _print(line: str) -> None:
    print(line, flush=True)


def train_worker(config: dict) -> None:
    """One Ray Train worker: the training step ``config["step"]`` of the project, as one rank of the group."""
    import ray.train

    from owl_pipeline.pipeline.graph import step
    from owl_pipeline.registry.tracking import tracking_for

    project = Project(config["pipeline"], config["root"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    tracking = None
    if rank0 and config["tracking_uri"]:
        tracking = tracking_for(project.root, config["tracking_uri"], config["ui_url"])
    result = step(config["step"]).run(project, log=_print if rank0 else (lambda _: None), tracking=tracking)
    if rank0:
        atomic_write_json(Path(config["result_file"]), {"outputs": result.outputs, "metadata": result.metadata()})


def train_on_ray(name: str, project: Project, tracking=None, log=print,
                 worker: Callable[[dict], None] = train_worker) -> StepResult:
    """Run training step ``name`` on ``ray.train_workers`` Ray Train workers; its result, as rank 0 left it."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    settings = project.config.ray
    output = result_file(project, name)
    output.unlink(missing_ok=True)
    config = {"root": str(project.root), "pipeline": project.config, "step": name,
              "result_file": str(output), "tracking_uri": getattr(tracking, "tracking_uri", None),
              "ui_url": getattr(tracking, "ui_url", None)}
    with ray_session(settings, log):
        log(f"{name}: training on Ray Train, {settings.train_workers} workers"
            + (" with a GPU each" if settings.use_gpu else " on CPU (gloo)"))
        TorchTrainer(worker, train_loop_config=config,
                     scaling_config=ScalingConfig(num_workers=settings.train_workers, use_gpu=settings.use_gpu),
                     run_config=RunConfig(name=name, storage_path=str(project.assets / RAY_TRAIN_DIR),
                                          failure_config=FailureConfig(max_failures=settings.max_failures))).fit()
    data = read_json_or_none(output, warn=log)
    if not isinstance(data, dict):
        raise RuntimeError(f"{name}: Ray Train finished but rank 0 left no result in {output}")
    metadata = {**data["metadata"], "launcher": "ray", "ray_train_workers": settings.train_workers}
    return registered_step(name).result.from_metadata(name, metadata, data["outputs"], reused=False)
