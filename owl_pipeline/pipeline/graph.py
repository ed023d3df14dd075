"""The pipeline described once: every step, what it reads, which params sections it depends on, what it
writes. The Dagster assets (orchestration/assets.py), the reuse digests (runner.py) and the lineage records
(lineage.py) are derived from this table; dvc.yaml, which users edit, is checked against it by a test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owl_pipeline import constants as C
from owl_pipeline.pipeline import data_steps, eval_steps, training_steps
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult

GROUP_DATA, GROUP_TRAINING, GROUP_EVAL = "data", "training", "evaluation"
INGEST_POOL = "owl_ingest"  # dagster_home/dagster.yaml limits every pool to one at a time


@dataclass(frozen=True)
class Step:
    name: str  # the asset key, the DVC stage, the folder under assets/
    run: Callable[..., StepResult]  # (project, log=..., tracking=...) -> StepResult
    reads: tuple[str, ...]  # the assets it reads (the graph's edges)
    params: tuple[str, ...]  # the params.yaml sections its result depends on
    writes: Callable[[Project], Path] | None  # its dataset or folder (DVC's outs); None: it writes no data
    description: str
    group: str
    compute_kind: str
    trains: bool = False  # a training step: an MLflow run, launched where the launcher says
    tracked: bool = False  # needs the MLflow tracking resource
    external: Callable[[Project], list[Path]] | None = None  # files outside assets/ it reads (their stats count)
    metrics: tuple[str, ...] = ()  # metadata keys that are the step's results (DVC metrics: its record file)
    pool: str | None = None  # a Dagster concurrency pool: runs of the step across Dagster runs, one at a time


def _instruction_files(project: Project) -> list[Path]:
    return [source.path for source in project.instruction_sources()]


def _pretrained_model_files(project: Project) -> list[Path]:
    """The local pretrained LLM's and vision tower's manifests or configs (a retrained bundled model reruns
    base_llm and what follows)."""
    names = [project.config.model.llm.pretrained, project.config.model.vision.pretrained]
    folders = [Path(project.resolve_pretrained(name)) for name in names if name]
    return [path for folder in folders for path in (folder / C.PRETRAIN_MANIFEST_FILE, folder / "config.json")]


STEPS: tuple[Step, ...] = (
    Step(C.ASSET_RAW_SHARDS, data_steps.raw_shards, (), ("raw_shards", "synthetic"), lambda p: p.raw_shards,
         "Shapes world generated, or your img2dataset shards", GROUP_DATA, "lance",
         external=lambda p: [] if p.generated else data_steps.shard_files(p)),
    Step(C.ASSET_RAW_PAIRS, data_steps.raw_pairs, (C.ASSET_RAW_SHARDS,), ("max_image_pixels",), lambda p: p.raw_pairs,
         "Every readable pair in one Lance table", GROUP_DATA, "lance", external=data_steps.shard_files,
         metrics=("rows", "rows_added"), pool=INGEST_POOL),
    Step(C.ASSET_CURATED_PAIRS, data_steps.curated_pairs, (C.ASSET_RAW_PAIRS,), ("filters",),
         lambda p: p.curated_pairs, "Pairs that pass the LAION/COYO rules", GROUP_DATA, "lance",
         metrics=("rows_in", "rows_out"), external=data_steps.clip_model_files),
    Step(C.ASSET_INSTRUCTIONS, data_steps.instruction_data, (C.ASSET_RAW_SHARDS,), ("instructions", "max_image_pixels"),
         lambda p: p.instructions, "Instruction conversations in Lance", GROUP_DATA, "lance",
         external=_instruction_files),
    Step(C.ASSET_BASE_LLM, training_steps.base_llm, (C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS),
         ("model", "base_llm"), lambda p: p.base_llm,
         "The LLM the stages build on (trained here on the embedded default)", GROUP_TRAINING, "pytorch",
         trains=True, tracked=True, metrics=("final_loss",), external=_pretrained_model_files),
    Step(C.ASSET_STAGE1, training_steps.stage1_model, (C.ASSET_BASE_LLM, C.ASSET_CURATED_PAIRS), ("model", "stage1"),
         lambda p: p.stage1, "Stage 1: vision + abstractor trained, LLM frozen", GROUP_TRAINING, "pytorch",
         trains=True, tracked=True, metrics=("final_loss",)),
    Step(C.ASSET_STAGE2, training_steps.stage2_model, (C.ASSET_STAGE1, C.ASSET_INSTRUCTIONS), ("model", "stage2"),
         lambda p: p.stage2, "Stage 2: LoRA on the LLM with the mixed instructions", GROUP_TRAINING, "pytorch",
         trains=True, tracked=True, metrics=("final_loss",)),
    Step(C.ASSET_OWLEVAL, eval_steps.owleval_report, (C.ASSET_STAGE2, C.ASSET_RAW_SHARDS),
         ("owleval_dir", "evaluation", "max_image_pixels"), lambda p: p.owleval,
         "OwlEval answers in the official format, scored beside the published models (HTML report)", GROUP_EVAL,
         "pytorch", external=lambda p: [p.owleval_dir() / "questions.jsonl"],
         metrics=(C.METRIC_ACCURACY, C.METRIC_SIMILARITY, C.METRIC_JUDGE, C.METRIC_HUMAN)),
    Step(C.ASSET_REGISTERED, eval_steps.registered_model, (C.ASSET_STAGE2, C.ASSET_OWLEVAL), ("registry",), None,
         "The stage-2 model in the MLflow registry: alias candidate, champion if it passes the gate", GROUP_EVAL,
         "mlflow", tracked=True, metrics=("version", "promoted")),
)

PIPELINE_ORDER: tuple[str, ...] = tuple(step.name for step in STEPS)
_BY_NAME = {step.name: step for step in STEPS}
DATA_STEPS = tuple(s.name for s in STEPS if s.group == GROUP_DATA)
TRAINING_STEPS = tuple(s.name for s in STEPS if s.trains)


def step(name: str) -> Step:
    if name not in _BY_NAME:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(PIPELINE_ORDER)}")
    return _BY_NAME[name]


def edges() -> dict[str, set[str]]:
    """asset -> the assets it reads."""
    return {s.name: set(s.reads) for s in STEPS}


def params_of(project: Project, name: str) -> dict[str, Any]:
    """The params sections step ``name`` depends on, as the config holds them now."""
    values = project.config.to_dict()
    return {section: values[section] for section in step(name).params}
