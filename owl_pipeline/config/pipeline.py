"""The pipeline's configuration (``params.yaml`` is a PipelineConfig): evaluation, the registry gate, the Ray
engines, and the whole that holds every section. Relative paths are relative to the project folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from owl_pipeline.config.data import FilterConfig, InstructionFile, SyntheticConfig
from owl_pipeline.config.loading import from_mapping, read_yaml, require
from owl_pipeline.config.model import PRESETS, OwlConfig
from owl_pipeline.config.recipes import with_recipe
from owl_pipeline.config.training import BaseLLMConfig, StageConfig
from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class EvaluationConfig:
    """How OwlEval answers are produced and scored (owl_pipeline.eval)."""

    max_new_tokens: int = 64
    max_question_tokens: int = 512  # a longer question is cut to this many tokens (reported as a problem)
    reference_answers: str = "mPLUG_Owl_7b"  # answer/<this>_answer.jsonl: the reference for similarity scoring
    embedding_model: str | None = None  # a sentence-transformers folder; None: all-MiniLM-L6-v2 from its wheel
    judge_model: str | None = None  # a local causal LM (path or hub id) grading A-D; None: no judge
    judge_max_new_tokens: int = 8
    human_ratings: str | None = None  # a filled rating sheet (CSV) to fold into the report

    def __post_init__(self) -> None:
        require(min(self.max_new_tokens, self.judge_max_new_tokens, self.max_question_tokens) > 0,
                "evaluation: token limits must be > 0")


@dataclass
class RegistryConfig:
    """Registration in the MLflow model registry and the gate that promotes a version to ``champion``."""

    model_name: str = "owl-shapes-world"
    metric: str = "accuracy"  # a score of the evaluation report: accuracy | similarity | judge | human
    min_delta: float = 0.0  # promoted when metric >= champion's metric + min_delta (0: never worse) ...
    floor: float = 0.3  # ... and metric >= floor
    # false: every version is a candidate only, champion never moves (so is every run under `dvc exp run`)
    promote: bool = True
    # What the served model accepts (registry/pyfunc_model.py ServingLimits), fixed when it is registered:
    serve_image_root: str | None = None  # image paths under this folder are accepted; None: base64 images only
    serve_max_rows: int = 16  # rows per request
    serve_max_new_tokens: int = 256  # the largest max_new_tokens a request may ask for

    def __post_init__(self) -> None:
        require(self.metric in ("accuracy", "similarity", "judge", "human"),
                f"registry.metric must be accuracy, similarity, judge or human, not {self.metric!r}")
        require(self.min_delta >= 0, "registry.min_delta must be >= 0: a gate that lets a worse model through "
                                     "lets quality slide a little with every promotion")
        require(self.serve_max_rows > 0 and self.serve_max_new_tokens > 0,
                "registry.serve_max_rows and serve_max_new_tokens must be > 0")


ENGINE_STEPS = ("raw_pairs", "curated_pairs")  # the data steps that can run on Ray
ENGINES = ("local", "ray")


@dataclass
class RayConfig:
    """Where the steps set to ``engine: ray`` (and stages with ``launcher: ray``) find Ray."""

    address: str = ""  # "": start a local Ray with this machine's cores; "auto" or "ray://HOST:10001": a cluster
    num_cpus: int | None = None  # a local Ray's CPUs; None: every core
    partitions: int | None = None  # shuffle partitions of the set-wide rules; None: 2 per CPU of the cluster
    clip_actors: int = 1  # CLIP scoring actors (one model each; one GPU each when the cluster has GPUs)
    train_workers: int = 2  # Ray Train workers of a stage (launcher: ray), one process each
    use_gpu: bool = False  # one GPU per training worker
    max_failures: int = 1  # times a stage restarts its workers after one died (it resumes from its checkpoint)

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus > 0, f"ray.num_cpus must be > 0, got {self.num_cpus}")
        require(self.train_workers > 0, f"ray.train_workers must be > 0, got {self.train_workers}")
        require(self.max_failures >= 0, f"ray.max_failures must be >= 0, got {self.max_failures}")
        require(self.partitions is None or self.partitions > 0, "ray.partitions must be > 0")
        require(self.clip_actors > 0, f"ray.clip_actors must be > 0, got {self.clip_actors}")


def _local_engines() -> dict[str, str]:
    return {step: "local" for step in ENGINE_STEPS}



@dataclass
class PipelineConfig:
    """The whole pipeline (``params.yaml``). Relative paths are relative to the project folder."""

    assets_dir: str = "assets"
    recipe: str | None = None  # a named recipe under this file's sections (config/recipes.py): official-stage2
    raw_shards: str | None = None  # a folder of img2dataset shards; None generates shapes world
    instructions: list[InstructionFile] | None = None  # None uses shapes world's three files
    owleval_dir: str | None = None  # None uses shapes world's eval set
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    filters: FilterConfig = field(default_factory=FilterConfig.for_shapes_world)
    model: OwlConfig = field(default_factory=lambda: OwlConfig.from_name("tiny"))
    base_llm: BaseLLMConfig = field(default_factory=BaseLLMConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig.stage2_recipe)
    min_curated_rows: int = 100
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images (by their header) are skipped and counted
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    engine: dict[str, str] = field(default_factory=_local_engines)  # data step -> local | ray
    launcher: str = "local"  # training stages: local (this process, or torchrun/accelerate) | ray (Ray Train)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        require(self.launcher in ENGINES, f"launcher must be local or ray, got {self.launcher!r}")
        unknown = set(self.engine) - set(ENGINE_STEPS)
        require(not unknown, f"engine: {sorted(unknown)} cannot run on Ray; the steps that can: {list(ENGINE_STEPS)}")
        bad = {step: engine for step, engine in self.engine.items() if engine not in ENGINES}
        require(not bad, f"engine: {bad}; each step's engine is local or ray")
        self.engine = {**_local_engines(), **self.engine}
        if isinstance(self.model, dict):  # as the YAML spells it: a preset and overrides
            self.model = OwlConfig.from_dict(self.model, base=OwlConfig.from_name("tiny"))
        if self.instructions is not None:
            self.instructions = [f if isinstance(f, InstructionFile) else
                                 from_mapping(InstructionFile, f, f"instructions[{i}]")
                                 for i, f in enumerate(self.instructions)]
        require(self.min_curated_rows >= 0, f"min_curated_rows must be >= 0, got {self.min_curated_rows}")
        require(self.max_image_pixels > 0, f"max_image_pixels must be > 0, got {self.max_image_pixels}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        return from_mapping(cls, with_recipe(read_yaml(path), "params"), "params")

    def to_dict(self) -> dict[str, Any]:
        """Every value, the model section with its preset named (as params.yaml spells it)."""
        data = dataclasses.asdict(self)
        if self.model.name in PRESETS:
            data["model"] = {"preset": self.model.name, **data["model"]}
        return data
