"""The pipeline's steps, one function per asset: what Dagster assets, DVC stages and the CLI all call.

Each step reads its inputs from the project's ``assets/`` folder, writes its output there (and a JSON report
under ``assets/reports/``), and returns a StepResult whose metadata is what a user wants to see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import torch

from owl_pipeline import constants as C
from owl_pipeline.config import PipelineConfig, StageConfig
from owl_pipeline.data.filters import filter_pairs
from owl_pipeline.data.ingest import find_shards, ingest
from owl_pipeline.data.instructions import InstructionSource, build_instruction_table
from owl_pipeline.data.loader import CaptionPairDataset, ConversationDataset
from owl_pipeline.data.synthetic import generate_corpus
from owl_pipeline.data.text_corpus import build_text_corpus, tokenizer_texts
from owl_pipeline.model.builders import build_model, from_pretrained, processor_config_for, save_pretrained
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.model.tokenizer import prepare_tokenizer, train_bpe_tokenizer
from owl_pipeline.train.loop import CHECKPOINT_DIR, MODEL_DIR, StageResult, Tracker, train_stage

Log = Callable[[str], None]


@dataclass
class StepResult:
    name: str
    outputs: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)


class Project:
    """Where every asset of one pipeline lives, from the config and the project folder."""

    def __init__(self, config: PipelineConfig, root: str | Path = "."):
        self.config, self.root = config, Path(root).resolve()
        self.assets = self._path(config.assets_dir)
        self.raw_shards = self._path(config.raw_shards) if config.raw_shards else self.assets / C.ASSET_RAW_SHARDS
        self.raw_pairs = self.assets / f"{C.ASSET_RAW_PAIRS}.lance"
        self.curated_pairs = self.assets / f"{C.ASSET_CURATED_PAIRS}.lance"
        self.instructions = self.assets / f"{C.ASSET_INSTRUCTIONS}.lance"
        self.text_corpus = self.assets / C.ASSET_BASE_LLM / "text.lance"
        self.base_llm = self.assets / C.ASSET_BASE_LLM
        self.stage1 = self.assets / C.ASSET_STAGE1
        self.stage2 = self.assets / C.ASSET_STAGE2
        self.reports = self.assets / "reports"
        self.inbox = self.root / "inbox"  # new shards dropped here are ingested with the rest

    def asset_paths(self) -> dict[str, Path]:
        """Each asset's dataset or folder: what its DVC stage declares as ``outs`` (registered_model has none)."""
        return {C.ASSET_RAW_SHARDS: self.raw_shards, C.ASSET_RAW_PAIRS: self.raw_pairs,
                C.ASSET_CURATED_PAIRS: self.curated_pairs, C.ASSET_INSTRUCTIONS: self.instructions,
                C.ASSET_BASE_LLM: self.base_llm, C.ASSET_STAGE1: self.stage1, C.ASSET_STAGE2: self.stage2,
                C.ASSET_OWLEVAL: self.assets / C.ASSET_OWLEVAL}

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    @property
    def generated(self) -> bool:
        return self.config.raw_shards is None

    def shard_folder(self) -> Path:
        return self.raw_shards / "shards" if self.generated else self.raw_shards

    def instruction_sources(self) -> list[InstructionSource]:
        if self.config.instructions is None:
            folder = self.raw_shards / "instructions"
            return [InstructionSource("alpaca", folder / "alpaca.json"),
                    InstructionSource("llava", folder / "llava.json"), InstructionSource("owl", folder / "owl.jsonl")]
        return [InstructionSource(f.format, self._path(f.path), self._path(f.image_root) if f.image_root else None)
                for f in self.config.instructions]

    def owleval_dir(self) -> Path:
        return self._path(self.config.owleval_dir) if self.config.owleval_dir else self.raw_shards / "owleval"

    def read_report(self, name: str) -> dict:
        path = self.reports / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_report(self, name: str, data: dict) -> Path:
        path = self.reports / f"{name}.json"
        if is_main_process():
            self.reports.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, default=str))
        return path


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` / ``torchrun`` job, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the processes of a distributed launch; nothing to do in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def lance_version(path: Path) -> int:
    return lance.dataset(str(path)).version


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- data ---------------------------------------------------------------------------------------------------
def raw_shards(project: Project, log: Log = print) -> StepResult:
    """Generate shapes world, or check that the configured folder holds shards."""
    if project.generated:
        manifest = generate_corpus(project.raw_shards, project.config.synthetic, log=log)
        metadata = {"pairs": len(manifest.faults), "shards": len(manifest.shards), "injected_faults": manifest.counts}
    else:
        shards = find_shards(project.shard_folder())
        if not shards:
            raise FileNotFoundError(f"no .tar or .parquet shards in {project.shard_folder()} (raw_shards in params)")
        metadata = {"shards": len(shards), "megabytes": round(sum(p.stat().st_size for p in shards) / 1e6, 1)}
    return StepResult(C.ASSET_RAW_SHARDS, {"folder": str(project.raw_shards)}, metadata)


def raw_pairs(project: Project, log: Log = print) -> StepResult:
    shards = find_shards(project.shard_folder()) + (find_shards(project.inbox) if project.inbox.is_dir() else [])
    report = ingest(shards, project.raw_pairs, log=log)
    metadata = {"rows": lance.dataset(str(project.raw_pairs)).count_rows(), "rows_added": report.rows_written,
                "mode": report.mode, "shards_read": report.shards,
                "shards_already_ingested": report.shards_already_ingested, "skipped": dict(report.skipped),
                "failed_shards": report.failed_shards, "lance_version": report.lance_version,
                "images_per_s": round(report.rows_written / report.seconds) if report.seconds else None}
    return StepResult(C.ASSET_RAW_PAIRS, {"lance": str(project.raw_pairs)}, metadata)


def curated_pairs(project: Project, log: Log = print) -> StepResult:
    histogram = project.reports / "filter_histograms.png"
    report = filter_pairs(project.raw_pairs, project.curated_pairs, project.config.filters, log=log,
                          histogram_path=histogram)
    data = {**report.to_dict(), "source_version": lance_version(project.raw_pairs)}
    return StepResult(C.ASSET_CURATED_PAIRS, {"lance": str(project.curated_pairs), "histogram": str(histogram)},
                      data)


def instruction_data(project: Project, log: Log = print) -> StepResult:
    report = build_instruction_table(project.instruction_sources(), project.instructions, log=log)
    return StepResult(C.ASSET_INSTRUCTIONS, {"lance": str(project.instructions)}, report.to_dict())


# --- models -------------------------------------------------------------------------------------------------
def _tags(project: Project, inputs: dict[str, Path]) -> dict[str, Any]:
    tags = {f"input.{name}.lance_version": lance_version(path) for name, path in inputs.items()
            if path.suffix == ".lance"}
    tags.update({f"input.{name}": str(path) for name, path in inputs.items()})
    return {**tags, "git_commit": git_commit(project.root), "config_hash": config_hash(project.config.to_dict())}


def _recent_mean(history: list[dict], key: str, digits: int) -> float | None:
    """Mean of ``key`` over the last 20 steps (the first steps include start-up); steps resumed from a
    checkpoint of an older version may lack it."""
    values = [h[key] for h in history[-20:] if key in h]
    return round(sum(values) / len(values), digits) if values else None


def _stage_metadata(result: StageResult, run_url: str | None) -> dict[str, Any]:
    first = result.history[0]["loss"] if result.history else None
    metadata = {"steps": result.steps, "first_loss": first, "final_loss": result.final_loss,
                "eval_loss": result.eval_loss, "seconds": round(result.seconds, 1),
                "resumed_from_step": result.resumed_from_step,
                "samples_per_s": _recent_mean(result.history, "samples_per_s", 1),
                "model_tflops_per_s": _recent_mean(result.history, "model_tflops_per_s", 4),
                "data_wait_share": _recent_mean(result.history, "data_wait_share", 3), "mlflow_run": run_url}
    mfu = _recent_mean(result.history, "mfu", 3)  # only where the card's peak is known (not on a CPU)
    return metadata if mfu is None else {**metadata, "mfu": mfu}


def base_llm(project: Project, tracker: Tracker | None = None, log: Log = print, run_url: str | None = None
             ) -> StepResult:
    """The LLM every later stage builds on, saved as a whole Owl model (vision and abstractor freshly built).

    With ``model.llm.pretrained`` set: that LLM and its tokenizer, loaded as they are. Otherwise (the embedded
    default): a tokenizer and a tiny LLM trained here on the corpus text, with the same training loop.
    """
    config = project.config.model_config()
    torch.manual_seed(project.config.base_llm.train.seed)
    if config.llm.pretrained:
        from transformers import AutoTokenizer

        processor = OwlProcessor(prepare_tokenizer(AutoTokenizer.from_pretrained(config.llm.pretrained)),
                                 processor_config_for(config, train_hflip=_hflip(project)))
        model = build_model(config, processor)
        if is_main_process():
            save_pretrained(model, processor, project.base_llm / MODEL_DIR)
        wait_for_everyone()
        metadata = {"llm": config.llm.pretrained, "trained_here": False}
        return StepResult(C.ASSET_BASE_LLM, {"model": str(project.base_llm / MODEL_DIR)}, metadata)
    if is_main_process():
        build_text_corpus(str(project.curated_pairs), str(project.instructions), str(project.text_corpus))
    wait_for_everyone()
    rows = lance.dataset(str(project.text_corpus)).count_rows()
    _start_fresh_if_changed(project.base_llm, {"data_version": lance_version(project.text_corpus),
                                               "base_llm": dataclasses.asdict(project.config.base_llm),
                                               "model": project.config.model}, log)
    tokenizer = train_bpe_tokenizer(tokenizer_texts(str(project.text_corpus)), project.config.base_llm.vocab_size)
    processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=_hflip(project)))
    model = build_model(config, processor)
    log(f"base_llm: tokenizer of {len(tokenizer)} tokens; training a {config.name} LLM on {rows} conversations")
    dataset = ConversationDataset(project.text_corpus, processor, train=True, seed=project.config.base_llm.train.seed)
    result = train_stage(model, processor, C.STAGE_BASE_LLM, dataset, project.config.base_llm.train,
                         project.base_llm, tracker=tracker, log=log)
    metadata = {**_stage_metadata(result, run_url), "vocab_size": len(tokenizer), "text_rows": rows,
                "trained_here": True}
    return StepResult(C.ASSET_BASE_LLM, {"model": str(result.model_dir)}, metadata)


def _hflip(project: Project) -> bool:
    # Shapes world asks left/right questions: a mirrored picture would change the right answer.
    return not project.generated


FINGERPRINT_FILE = "fingerprint.json"


def _start_fresh_if_changed(output: Path, fingerprint: dict, log: Log) -> None:
    """Checkpoints in ``output`` from a run with other inputs or settings are discarded, so a resume only ever
    continues the same run; the fingerprint of this run is recorded."""
    if is_main_process():
        digest = config_hash(fingerprint)
        marker = output / FINGERPRINT_FILE
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != digest:
            log(f"{output.name}: inputs or settings changed since the last run; starting over")
            shutil.rmtree(output / CHECKPOINT_DIR, ignore_errors=True)
        output.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": digest, **fingerprint}, default=str))
    wait_for_everyone()


def _train_from(previous: Path, name: str, stage: int, dataset_cls, data: Path, config: StageConfig, output: Path,
                project: Project, tracker: Tracker | None, log: Log, run_url: str | None) -> StepResult:
    """Train ``stage`` starting from the model saved in ``previous``; report it as asset ``name``."""
    source = previous / MODEL_DIR / C.OWL_CONFIG_FILE
    _start_fresh_if_changed(output, {"input": str(source), "input_mtime": source.stat().st_mtime_ns,
                                     "data_version": lance_version(data), "stage": dataclasses.asdict(config),
                                     "model": project.config.model}, log)
    model, processor = from_pretrained(previous / MODEL_DIR)
    train = dataset_cls(data, processor, train=True, seed=config.seed)
    evaluation = dataset_cls(data, processor, train=False, seed=config.seed) if config.eval_every else None
    result = train_stage(model, processor, stage, train, config, output, eval_data=evaluation, tracker=tracker,
                         log=log)
    metadata = _stage_metadata(result, run_url)
    return StepResult(name, {"model": str(result.model_dir)}, metadata)


def stage1_model(project: Project, tracker: Tracker | None = None, log: Log = print, run_url: str | None = None
                 ) -> StepResult:
    """Stage 1: vision encoder + abstractor learn to caption curated pairs through the frozen LLM."""
    return _train_from(project.base_llm, C.ASSET_STAGE1, C.STAGE_PRETRAIN, CaptionPairDataset, project.curated_pairs,
                       project.config.stage1, project.stage1, project, tracker, log, run_url)


def stage2_model(project: Project, tracker: Tracker | None = None, log: Log = print, run_url: str | None = None
                 ) -> StepResult:
    """Stage 2: LoRA on the LLM learns the mixed text-only and multimodal instructions."""
    return _train_from(project.stage1, C.ASSET_STAGE2, C.STAGE_INSTRUCT, ConversationDataset, project.instructions,
                       project.config.stage2, project.stage2, project, tracker, log, run_url)


DATA_STEPS = {C.ASSET_RAW_SHARDS: raw_shards, C.ASSET_RAW_PAIRS: raw_pairs, C.ASSET_CURATED_PAIRS: curated_pairs,
              C.ASSET_INSTRUCTIONS: instruction_data}
TRAINING_STEPS = {C.ASSET_BASE_LLM: base_llm, C.ASSET_STAGE1: stage1_model, C.ASSET_STAGE2: stage2_model}
TRAINING_INPUTS = {C.ASSET_BASE_LLM: ("curated_pairs", "instructions"), C.ASSET_STAGE1: ("curated_pairs",),
                   C.ASSET_STAGE2: ("instructions",)}


def run_training_step(name: str, project: Project, tracking=None, log: Log = print) -> StepResult:
    """A training step inside an MLflow run (when ``tracking`` is given) carrying params and lineage tags."""
    step = TRAINING_STEPS[name]
    if tracking is None:
        return step(project, log=log)
    inputs = {key: getattr(project, key) for key in TRAINING_INPUTS[name]}
    params = project.config.to_dict()
    started = time.perf_counter()
    with tracking.run(name, params=params, tags=_tags(project, inputs)) as run:
        run.log_dict(params, "config.json")
        result = step(project, tracker=run, log=log, run_url=run.url)
        run.set_tags({"output": result.outputs.get("model", ""), "seconds": round(time.perf_counter() - started, 1)})
        run.log_artifact(Path(result.outputs["model"]), "model")
    return result


# --- evaluation and registration ---------------------------------------------------------------------------
def owleval_report(project: Project, log: Log = print) -> StepResult:
    """Answer the eval set with the stage-2 model; score it beside the published answers (eval.report)."""
    from owl_pipeline.eval.evaluate import evaluate_answers
    from owl_pipeline.eval.owleval import answer_eval_set, load_eval_set, write_answers
    from owl_pipeline.eval.report import headline

    settings = project.config.evaluation
    folder = project.assets / C.ASSET_OWLEVAL
    model, processor = from_pretrained(project.stage2 / MODEL_DIR)
    eval_set = load_eval_set(project.owleval_dir())
    model_id = f"owl-{project.config.model_config().name}"
    answers = answer_eval_set(model, processor, eval_set, model_id=model_id,
                              max_new_tokens=settings.max_new_tokens, log=log)
    answers_path = write_answers(answers, folder / "answers.jsonl")
    files = evaluate_answers(eval_set, answers, model_id, settings, folder, log=log)
    metadata: dict[str, Any] = {"questions": len(eval_set.questions), **headline(files.report),
                                "problems": files.report["problems"]}
    log("owleval: " + ", ".join(f"{k} {v:.3f}" for k, v in metadata.items() if isinstance(v, float)))
    return StepResult(C.ASSET_OWLEVAL, {"answers": str(answers_path), "report": str(files.json),
                                        "html": str(files.html), "rating_sheet": str(files.rating_sheet)}, metadata)


def _run_id(url: str | None) -> str | None:
    return url.rstrip("/").rsplit("/runs/", 1)[-1] if url and "/runs/" in url else None


def registered_model(project: Project, tracking=None, log: Log = print) -> StepResult:
    """Register the stage-2 model in the MLflow registry: alias ``candidate``, ``champion`` if the gate passes."""
    from owl_pipeline.eval.report import our_scores
    from owl_pipeline.registry.registration import register_model

    if tracking is None:
        log("registered_model: tracking is off (--no-tracking); nothing registered")
        return StepResult(C.ASSET_REGISTERED, {}, {"registered": False})
    settings = project.config.registry
    report = json.loads((project.assets / C.ASSET_OWLEVAL / "report.json").read_text())
    scores = {k: v for k, v in our_scores(report).items() if v is not None}
    parents = {f"parent_run.{name}": _run_id(project.read_report(name).get("metadata", {}).get("mlflow_run"))
               for name in TRAINING_STEPS}
    tags = {**_tags(project, {"curated_pairs": project.curated_pairs, "instructions": project.instructions}),
            **{k: v for k, v in parents.items() if v}, "eval_set": report["eval_set"]}
    registration = register_model(tracking, project.stage2 / MODEL_DIR, settings.model_name, scores,
                                  settings.metric, settings.tolerance, settings.floor, tags=tags, log=log)
    metadata = {"registered": True, "model_uri": registration.model_uri, "version": registration.version,
                "aliases": ["candidate", "champion"] if registration.promoted else ["candidate"],
                "promoted": registration.promoted, "gate_reason": registration.reason,
                "gate_metric": settings.metric, "score": scores.get(settings.metric),
                "mlflow_run": f"{tracking.ui_url.rstrip('/')}/#/experiments/{tracking.experiment_id}/runs/"
                              f"{registration.run_id}"}
    return StepResult(C.ASSET_REGISTERED, {"model_uri": registration.model_uri}, metadata)


PIPELINE_ORDER = (*DATA_STEPS, *TRAINING_STEPS, C.ASSET_OWLEVAL, C.ASSET_REGISTERED)


# --- running a step, or reusing its last result -------------------------------------------------------------
def _file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()]


def _model_stamp(folder: Path) -> int | None:
    marker = folder / MODEL_DIR / C.OWL_CONFIG_FILE
    return marker.stat().st_mtime_ns if marker.is_file() else None


def _version_or_none(path: Path) -> int | None:
    return lance_version(path) if (path / "_versions").is_dir() else None


def step_inputs(name: str, project: Project) -> tuple[dict, list[Path]]:
    """What a step's output depends on, and the outputs that must exist to reuse it."""
    config = project.config
    asdict = dataclasses.asdict
    if name == C.ASSET_RAW_SHARDS:
        inputs = {"synthetic": asdict(config.synthetic)} if project.generated else {
            "shards": _file_stats(find_shards(project.shard_folder()))}
        return inputs, [project.raw_shards / "manifest.json"] if project.generated else []
    if name == C.ASSET_RAW_PAIRS:
        inbox = find_shards(project.inbox) if project.inbox.is_dir() else []
        return {"shards": _file_stats(find_shards(project.shard_folder()) + inbox)}, [project.raw_pairs]
    if name == C.ASSET_CURATED_PAIRS:
        return {"source": _version_or_none(project.raw_pairs), "filters": asdict(config.filters)}, [
            project.curated_pairs]
    if name == C.ASSET_INSTRUCTIONS:
        return {"files": _file_stats([s.path for s in project.instruction_sources()])}, [project.instructions]
    common = {"model": config.model}
    if name == C.ASSET_BASE_LLM:
        return {**common, "curated": _version_or_none(project.curated_pairs), "base_llm": asdict(config.base_llm),
                "instructions": _version_or_none(project.instructions)}, [project.base_llm / MODEL_DIR]
    if name == C.ASSET_STAGE1:
        return {**common, "base": _model_stamp(project.base_llm), "stage": asdict(config.stage1),
                "curated": _version_or_none(project.curated_pairs)}, [project.stage1 / MODEL_DIR]
    if name == C.ASSET_STAGE2:
        return {**common, "stage1": _model_stamp(project.stage1), "stage": asdict(config.stage2),
                "instructions": _version_or_none(project.instructions)}, [project.stage2 / MODEL_DIR]
    if name == C.ASSET_OWLEVAL:
        return {"stage2": _model_stamp(project.stage2), "evaluation": asdict(config.evaluation),
                "questions": _file_stats([project.owleval_dir() / "questions.jsonl"])}, [
            project.assets / C.ASSET_OWLEVAL / "report.json"]
    if name == C.ASSET_REGISTERED:
        report = project.assets / C.ASSET_OWLEVAL / "report.json"
        return {"stage2": _model_stamp(project.stage2), "report": _file_stats([report]),
                "registry": asdict(config.registry)}, [report]
    raise ValueError(f"unknown step {name!r}; steps: {', '.join(PIPELINE_ORDER)}")


def run_step(name: str, project: Project, tracking=None, log: Log = print, force: bool = False) -> StepResult:
    """Run step ``name``; or, unless ``force``, reuse its last result when its inputs and settings are the
    same as then and its outputs still exist (a second `owl run` with nothing changed redoes nothing)."""
    inputs, outputs = step_inputs(name, project)
    digest = config_hash(inputs)
    last = project.read_report(name)
    registered = last.get("metadata", {}).get("registered", True)  # a skipped registration is retried
    if not force and last.get("inputs_digest") == digest and all(p.exists() for p in outputs) and registered:
        log(f"{name}: inputs and settings unchanged since the last run; reusing its result")
        return StepResult(name, last.get("outputs", {}), {**last.get("metadata", {}), "reused": True})
    if name in DATA_STEPS:
        result = DATA_STEPS[name](project, log=log)
    elif name in TRAINING_STEPS:
        result = run_training_step(name, project, tracking, log=log)
    elif name == C.ASSET_OWLEVAL:
        result = owleval_report(project, log=log)
    else:
        result = registered_model(project, tracking, log=log)
    project.write_report(name, {"metadata": result.metadata, "outputs": result.outputs, "inputs_digest": digest})
    return result
