"""The step registry. A step is a function declared once, beside its code, with ``@pipeline_step(...)``: what it
reads, which params sections its result depends on, what it writes, the code it runs. The table (graph.py), the
Dagster assets, the reuse digests, the lineage records and the dvc.yaml check all derive from the registry."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from owl_pipeline import constants as C
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepRecord, StepResult

GROUP_DATA, GROUP_TRAINING, GROUP_EVAL = "data", "training", "evaluation"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
INGEST_POOL = "owl_ingest"  # dagster_home/dagster.yaml limits every pool to one at a time
TRAINING_POOL = "owl_training"  # a second launch of a training step waits for the first (one trainer a machine)

# The library modules steps run (paths under owl_pipeline/), named once for the steps that share them.
LOADER_CODE = ("data/loader.py", "data/images.py")
MODEL_CODE = ("model/owl.py", "model/vision.py", "model/abstractor.py", "model/processor.py", "model/conversation.py",
              "model/builders.py", "model/tokenizer.py")
TRAINING_CODE = ("pipeline/training_runs.py", "train/loop.py", "train/optim.py", "train/checkpoint.py",
                 "train/speed.py", *MODEL_CODE, *LOADER_CODE)
EVALUATION_CODE = ("eval/evaluate.py", "eval/owleval.py", "eval/report.py", "eval/report_html.py",
                   "eval/similarity.py", "eval/judge.py", "eval/human.py", *MODEL_CODE, "data/images.py")


@dataclass(frozen=True)
class Step:
    name: str  # the asset key, the DVC stage, the folder under assets/
    run: Callable[..., StepResult]  # (project, log=..., tracking=...) -> StepResult
    reads: tuple[str, ...]  # the assets it reads (the graph's edges)
    params: tuple[str, ...]  # the params.yaml sections its result depends on
    writes: Callable[[Project], Path] | None  # its dataset or folder (DVC's outs); None: it writes no data
    description: str
    group: str
    kinds: tuple[str, ...]  # Dagster's kinds (the UI's icons): the tools the step runs on
    trains: bool = False  # a training step: an MLflow run, launched where the launcher says
    tracked: bool = False  # needs the MLflow tracking resource
    external: Callable[[Project], list[Path]] | None = None  # files outside assets/ it reads (their stats count)
    metrics: tuple[str, ...] = ()  # result fields that are its metrics (metrics/<step>.json, DVC's metrics)
    pool: str | None = None  # a Dagster concurrency pool: runs of the step across Dagster runs, one at a time
    code: tuple[str, ...] = ()  # the library modules it runs, besides its own (paths under owl_pipeline/)
    result: type[StepResult] = StepResult  # what it returns: its own dataclass, declared beside it
    environment: tuple[str, ...] = ()  # environment variables its result depends on (part of its inputs digest)
    persistent: bool = False  # its output is appended to, so a rerun must find it (DVC's persist: true)
    watches: Callable[[Project], list[Path]] | None = None  # folders it reads whole (DVC deps), e.g. the inbox

    def code_files(self, package_root: Path = PACKAGE_ROOT) -> list[Path]:
        own = Path(inspect.getsourcefile(self.run)).resolve().relative_to(PACKAGE_ROOT)
        return [package_root / own, *(package_root / module for module in self.code)]

    def code_digest(self, package_root: Path = PACKAGE_ROOT) -> str:
        """A hash of the source the step runs: Dagster's code_version, and part of the reuse digest, so editing
        ``train/loop.py`` reruns (and, in the UI, marks stale) the training steps and nothing else."""
        digest = hashlib.sha256()
        for path in self.code_files(package_root):
            if not path.is_file():
                raise FileNotFoundError(f"step {self.name} declares code {path}, which does not exist")
            digest.update(path.relative_to(package_root).as_posix().encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:16]

    def dvc_outs(self, project: Project) -> list[tuple[Path, dict]]:
        """What its DVC stage declares as outs, by lifetime: the data or model (cached; kept across reruns when
        the step appends to it), and a training step's checkpoints (kept across reruns so a killed run resumes,
        never cached or pushed: they are a means, the model is the result)."""
        written = self.writes(project) if self.writes else None
        if written is None:
            return []
        outs = [(written, {"persist": True} if self.persistent else {})]
        if self.trains:
            outs.append((written.parent / C.CHECKPOINT_DIR, {"persist": True, "cache": False}))
        return outs

    def dvc_deps(self, project: Project, package_root: Path = PACKAGE_ROOT) -> list[Path]:
        """What its DVC stage declares as deps: the outputs it reads, the folders it watches (or else the files
        outside assets/ it reads, those that exist), and the code it runs."""
        read = [registered_step(name).writes(project) for name in self.reads if registered_step(name).writes]
        if self.watches is not None:
            outside = self.watches(project)
        else:
            files = self.external(project) if self.external else []
            outside = [path for path in files
                       if path.exists() and not path.resolve().is_relative_to(project.assets.resolve())]
        return [*(path for path in read if path is not None), *outside, *self.code_files(package_root)]

    def last_result(self, project: Project, warn: Callable[[str], None] = print) -> StepResult | None:
        """The step's last result as its record in ``assets/reports/`` holds it (typed); None if it never ran."""
        record = StepRecord.read(project.record_path(self.name), warn=warn)
        return None if record is None else self.result.from_metadata(self.name, record.metadata,
                                                                       record.outputs_at(project.root))


_REGISTERED: dict[str, Step] = {}


def pipeline_step(name: str, **declaration) -> Callable[[Callable[..., StepResult]], Callable[..., StepResult]]:
    """Register the decorated function as step ``name`` (the other fields of ``Step`` as keywords); the
    function itself is returned unchanged."""
    def register(run: Callable[..., StepResult]) -> Callable[..., StepResult]:
        if name in _REGISTERED and _REGISTERED[name].run is not run:
            raise ValueError(f"step {name!r} is declared twice")
        _REGISTERED[name] = Step(name=name, run=run, **declaration)
        return run

    return register


def registered_step(name: str) -> Step:
    """The step declared as ``name`` (a step module may read another step's result without importing it)."""
    if name not in _REGISTERED:
        raise KeyError(f"no step named {name!r}; the steps: {list(_REGISTERED)}")
    return _REGISTERED[name]


def registered_steps() -> tuple[Step, ...]:
    """Every declared step, in the order the step modules declared them (graph.py imports them in order)."""
    return tuple(_REGISTERED.values())
