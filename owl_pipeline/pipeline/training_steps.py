"""The training steps: the base LLM (the embedded default's stand-in for a pretrained one), stage 1 and
stage 2. Each trains with the one loop (train/loop.py), resumes from its checkpoints, and is one MLflow run
carrying the config as params and lineage tags when tracking is on.

The model stack (torch, transformers, peft) is imported inside the functions that train or load a model: reading
the steps' table (a data step's process, Dagster's code server, `dg check defs`) then costs no second of it."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lance

from owl_pipeline import constants as C
from owl_pipeline.config import LLMConfig, OwlConfig, StageConfig, VisionConfig
from owl_pipeline.files import link_or_copy_tree, sha256_of
from owl_pipeline.manifest import MANIFEST_FILE, verify_manifest
from owl_pipeline.pipeline.lineage import folder_hash
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.ranks import is_main_process, wait_for_everyone
from owl_pipeline.pipeline.steps import GROUP_TRAINING, TRAINING_CODE, TRAINING_POOL, pipeline_step
from owl_pipeline.pipeline.training_runs import (TrainingResult, in_mlflow_run, stage_figures, start_fresh_if_changed,
                                                 write_history)

if TYPE_CHECKING:
    from owl_pipeline.data.loader import CaptionPairDataset, ConversationDataset
    from owl_pipeline.train.loop import Tracker


Log = Callable[[str], None]


def _augmentation(project: Project) -> dict:
    """The processor's train-time picture changes. Shapes-world captions and questions name every object and its
    column: a crop can cut an object out or shift it to another column, a mirror swaps left and right, and either
    would make the text wrong."""
    return dict(train_hflip=False, train_crop_scale=(1.0, 1.0)) if project.generated else {}


# --- base LLM -----------------------------------------------------------------------------------------------
def _pretrained_model_files(project: Project) -> list[Path]:
    """The local pretrained LLM's and vision tower's manifests or configs (a retrained bundled model reruns
    base_llm and what follows)."""
    names = [project.config.model.llm.pretrained, project.config.model.vision.pretrained]
    folders = [Path(project.resolve_pretrained(name)) for name in names if name]
    return [path for folder in folders for path in (folder / C.PRETRAIN_MANIFEST_FILE, folder / "config.json")]


@pipeline_step(C.ASSET_BASE_LLM, reads=(C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS), params=("model", "base_llm"),
               writes=lambda p: p.base_llm / C.MODEL_DIR,
               description="The LLM the stages build on: shapes world's shipped one, your pretrained LLM, a "
                           "converted mPLUG-Owl checkpoint, or a tiny one trained here",
               group=GROUP_TRAINING, kinds=("pytorch",), trains=True, tracked=True, pool=TRAINING_POOL,
               metrics=("final_loss",),
               external=_pretrained_model_files, code=(*TRAINING_CODE, "data/text_corpus.py", "model/convert.py"),
               result=TrainingResult)
def base_llm(project: Project, log: Log = print, tracking=None) -> TrainingResult:
    """The LLM every later stage builds on, saved as a whole Owl model (vision and abstractor freshly built).

    With ``model.llm.pretrained`` set: that LLM and its tokenizer, loaded as they are. Otherwise (the embedded
    default): a tokenizer and a tiny LLM trained here on the corpus text, with the same training loop.
    """
    inputs = (C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS)
    if project.config.model.pretrained_official:
        return in_mlflow_run(C.ASSET_BASE_LLM, project, tracking, inputs, lambda *_: _official_base(project, log))
    if project.config.model.llm.pretrained:
        return in_mlflow_run(C.ASSET_BASE_LLM, project, tracking, inputs, lambda *_: _pretrained_base_llm(project))
    return in_mlflow_run(C.ASSET_BASE_LLM, project, tracking, inputs,
                          functools.partial(_train_base_llm, project, log))


def _checked_pretrained(project: Project, name: str, remake: str) -> tuple[str, dict | None]:
    """A pretrained model's name resolved (a folder, a bundled one, or a hub id) and, for a folder with a
    manifest (the shipped ones), the manifest after checking every file against it."""
    resolved = project.resolve_pretrained(name)
    manifest = Path(resolved) / MANIFEST_FILE
    return resolved, verify_manifest(manifest.parent, remake) if manifest.is_file() else None


def _model_config(project: Project) -> tuple[OwlConfig, dict[str, Any]]:
    """The model section with its pretrained vision tower resolved and checked, and what to record of it."""
    config = copy.deepcopy(project.config.model)
    if not config.vision.pretrained:
        return config, {}
    config.vision.pretrained, checked = _checked_pretrained(project, config.vision.pretrained, "owl pretrain-vision")
    metadata = {"vision": config.vision.pretrained}
    if checked:
        metadata.update(vision_manifest_sha256=sha256_of(Path(config.vision.pretrained) / MANIFEST_FILE),
                        vision_held_out=checked.get("held_out"), vision_pretraining_seconds=checked.get("seconds"))
    return config, metadata


def _with_real_sizes(model) -> None:
    """Record the sizes of the loaded pretrained parts in ``owl_config.json`` (not the preset's)."""
    if model.config.vision.pretrained:
        vision = model.vision.clip.config.to_dict()
        model.config.vision = VisionConfig.from_hf_dict(vision, model.config.vision.pretrained)
    if model.config.llm.pretrained:
        model.config.llm = LLMConfig.from_hf_dict(model.llm.config.to_dict(), model.config.llm.pretrained)


def _pretrained_base_llm(project: Project) -> TrainingResult:
    """The LLM named by ``model.llm.pretrained`` (a folder, a bundled one such as the embedded default's
    ``shapes-world-llm``, or a hub id), loaded as it is; a folder with a manifest is checked against it."""
    import torch
    from transformers import AutoTokenizer

    from owl_pipeline.model.builders import build_model, processor_config_for, save_pretrained
    from owl_pipeline.model.processor import OwlProcessor
    from owl_pipeline.model.tokenizer import prepare_tokenizer

    config, vision_metadata = _model_config(project)
    config.llm.pretrained, checked = _checked_pretrained(project, config.llm.pretrained, "owl pretrain-llm")
    torch.manual_seed(project.config.base_llm.train.seed)
    processor = OwlProcessor(prepare_tokenizer(AutoTokenizer.from_pretrained(config.llm.pretrained)),
                             processor_config_for(config, **_augmentation(project)))
    model = build_model(config, processor)
    _with_real_sizes(model)
    if is_main_process():
        save_pretrained(model, processor, project.base_llm / C.MODEL_DIR)
    wait_for_everyone()
    figures = {"llm": config.llm.pretrained, "trained_here": False, **vision_metadata}
    if checked:
        figures.update(manifest_sha256=sha256_of(Path(config.llm.pretrained) / MANIFEST_FILE),
                       text_lookup=checked.get("text_lookup"), pretraining_seconds=checked.get("seconds"))
    return TrainingResult(name=C.ASSET_BASE_LLM, outputs={"model": str(project.base_llm / C.MODEL_DIR)}, **figures)


OFFICIAL_RECORD = "official.json"


def _official_base(project: Project, log: Log) -> TrainingResult:
    """A released mPLUG-Owl checkpoint, converted into our layout once per content (model/convert.py)."""
    from owl_pipeline.model.convert import official_to_owl

    source = Path(project.config.model.pretrained_official)
    if not source.is_dir():
        raise FileNotFoundError(f"model.pretrained_official: {source} is not a folder (an official mPLUG-Owl "
                                "checkpoint: config.json, weights, tokenizer)")
    digest, output = folder_hash(source), project.base_llm / C.MODEL_DIR
    record = project.base_llm / OFFICIAL_RECORD
    known = json.loads(record.read_text()) if record.is_file() else {}
    if known.get("dvc_md5") == digest and (output / C.OWL_CONFIG_FILE).is_file():
        log(f"base_llm: {source} is already converted (md5 {digest[:12]})")
    elif is_main_process():
        shutil.rmtree(output, ignore_errors=True)
        official_to_owl(source, output, log=log, settings=project.config.model)
        record.write_text(json.dumps({"source": str(source), "dvc_md5": digest}))
    wait_for_everyone()
    return TrainingResult(name=C.ASSET_BASE_LLM, outputs={"model": str(output)}, converted_from=str(source),
                          source_md5=digest, trained_here=False)


def pass_through(source: Path, output: Path) -> Path:
    """``output`` becomes the model in ``source`` without training (hard links where it can)."""
    if is_main_process():
        link_or_copy_tree(source, output)
    wait_for_everyone()
    return output


def _train_base_llm(project: Project, log: Log, tracker: Tracker | None, run_url: str | None) -> TrainingResult:
    import torch

    from owl_pipeline.data.loader import ConversationDataset
    from owl_pipeline.data.text_corpus import build_text_corpus, tokenizer_texts
    from owl_pipeline.model.builders import build_model, processor_config_for
    from owl_pipeline.model.processor import OwlProcessor
    from owl_pipeline.model.tokenizer import train_bpe_tokenizer
    from owl_pipeline.train.loop import train_stage

    (config, vision_metadata), settings = _model_config(project), project.config.base_llm
    torch.manual_seed(settings.train.seed)
    if is_main_process():
        build_text_corpus(str(project.curated_pairs), str(project.instructions), str(project.text_corpus))
    wait_for_everyone()
    rows = lance.dataset(str(project.text_corpus)).count_rows()
    tokenizer = train_bpe_tokenizer(tokenizer_texts(str(project.text_corpus)), settings.vocab_size)
    processor = OwlProcessor(tokenizer, processor_config_for(config, **_augmentation(project)))
    model = build_model(config, processor)
    _with_real_sizes(model)
    log(f"base_llm: tokenizer of {len(tokenizer)} tokens; training a {config.name} LLM on {rows} conversations")
    dataset = ConversationDataset(project.text_corpus, processor, train=True, seed=settings.train.seed)
    start_fresh_if_changed(project.base_llm, {"data_version": lance.dataset(str(project.text_corpus)).version,
                                               "base_llm": dataclasses.asdict(settings),
                                               "model": config.to_dict()}, log)
    result = train_stage(model, processor, C.STAGE_BASE_LLM, dataset, settings.train, project.base_llm,
                         tracker=tracker, log=log)
    write_history(project.history_path(C.ASSET_BASE_LLM), result.history)
    return TrainingResult(name=C.ASSET_BASE_LLM, outputs={"model": str(result.model_dir)},
                          **stage_figures(result, run_url), vocab_size=len(tokenizer), text_rows=rows,
                          trained_here=True, **vision_metadata)


# --- stages 1 and 2 -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageRun:
    """Stage 1 or 2 as a step runs it: train ``stage`` from the model saved under ``previous`` on ``data``, with
    ``config``, into ``output``; reported as asset ``name``."""

    name: str
    stage: int
    dataset_cls: type[CaptionPairDataset] | type[ConversationDataset]
    data: Path
    config: StageConfig
    previous: Path
    output: Path


def _stage_run(project: Project, stage: int) -> StageRun:
    from owl_pipeline.data.loader import CaptionPairDataset, ConversationDataset

    if stage == C.STAGE_PRETRAIN:
        return StageRun(C.ASSET_STAGE1, stage, CaptionPairDataset, project.curated_pairs, project.config.stage1,
                        project.base_llm, project.stage1)
    return StageRun(C.ASSET_STAGE2, stage, ConversationDataset, project.instructions, project.config.stage2,
                    project.stage1, project.stage2)


def _train_from(run: StageRun, project: Project, log: Log, tracker: Tracker | None,
                run_url: str | None) -> TrainingResult:
    """Train the stage; with ``max_steps: 0`` the model is passed on untrained (e.g. to evaluate a released
    checkpoint as it is)."""
    from owl_pipeline.model.builders import from_pretrained
    from owl_pipeline.train.loop import train_stage

    previous, config = run.previous / C.MODEL_DIR, run.config
    if config.max_steps == 0:
        log(f"{run.name}: max_steps is 0; passing on {previous} untrained")
        model_dir = pass_through(previous, run.output / C.MODEL_DIR)
        return TrainingResult(name=run.name, outputs={"model": str(model_dir)}, steps=0, passed_through=str(previous))
    source = previous / C.OWL_CONFIG_FILE
    model, processor = from_pretrained(previous)
    train = run.dataset_cls(run.data, processor, train=True, seed=config.seed)
    evaluation = run.dataset_cls(run.data, processor, train=False, seed=config.seed) if config.eval_every else None
    start_fresh_if_changed(run.output, {"input": project.relative(source), "input_mtime": source.stat().st_mtime_ns,
                                         "data_version": lance.dataset(str(run.data)).version,
                                         "stage": dataclasses.asdict(config),
                                         "model": project.config.model.to_dict()}, log)
    result = train_stage(model, processor, run.stage, train, config, run.output, eval_data=evaluation,
                         tracker=tracker, log=log)
    write_history(project.history_path(run.name), result.history)
    return TrainingResult(name=run.name, outputs={"model": str(result.model_dir)}, **stage_figures(result, run_url))


@pipeline_step(C.ASSET_STAGE1, reads=(C.ASSET_BASE_LLM, C.ASSET_CURATED_PAIRS), params=("model", "stage1"),
               writes=lambda p: p.stage1 / C.MODEL_DIR, description="Stage 1: vision + abstractor trained, LLM frozen",
               group=GROUP_TRAINING, kinds=("pytorch",), trains=True, tracked=True, metrics=("final_loss",),
               pool=TRAINING_POOL, code=TRAINING_CODE, result=TrainingResult)
def stage1_model(project: Project, log: Log = print, tracking=None) -> TrainingResult:
    """Stage 1: vision encoder + abstractor learn to caption curated pairs through the frozen LLM. A released
    mPLUG-Owl checkpoint (``model.pretrained_official``) has been through it already: passed on as it is."""
    if project.config.model.pretrained_official:
        log("stage1_model: the released checkpoint is pretrained already; passing it on")
        model_dir = pass_through(project.base_llm / C.MODEL_DIR, project.stage1 / C.MODEL_DIR)
        return TrainingResult(name=C.ASSET_STAGE1, outputs={"model": str(model_dir)}, steps=0,
                              passed_through="official")
    return in_mlflow_run(C.ASSET_STAGE1, project, tracking, (C.ASSET_CURATED_PAIRS,),
                          functools.partial(_train_from, _stage_run(project, C.STAGE_PRETRAIN), project, log))


@pipeline_step(C.ASSET_STAGE2, reads=(C.ASSET_STAGE1, C.ASSET_INSTRUCTIONS), params=("recipe", "model", "stage2"),
               writes=lambda p: p.stage2 / C.MODEL_DIR,
               description="Stage 2: LoRA on the LLM with the mixed instructions",
               group=GROUP_TRAINING, kinds=("pytorch",), trains=True, tracked=True, metrics=("final_loss",),
               pool=TRAINING_POOL, code=TRAINING_CODE, result=TrainingResult)
def stage2_model(project: Project, log: Log = print, tracking=None) -> TrainingResult:
    """Stage 2: LoRA on the LLM learns the mixed text-only and multimodal instructions."""
    return in_mlflow_run(C.ASSET_STAGE2, project, tracking, (C.ASSET_INSTRUCTIONS,),
                          functools.partial(_train_from, _stage_run(project, C.STAGE_INSTRUCT), project, log))
