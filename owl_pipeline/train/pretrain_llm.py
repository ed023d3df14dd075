"""`owl pretrain-llm`: the embedded default's base LLM, trained from a seed on the lookup curriculum
(data/lookup_curriculum.py) with the one training loop, phase after phase, then saved as a plain HF causal LM
folder (weights as safetensors, tokenizer) with a manifest: the seed and phases it was made with, its
training time, its text-lookup scores (eval/text_probe.py) and the sha256 of every file, which the pipeline
checks before it loads the folder."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from owl_pipeline.config import LLMPretrainConfig, OwlConfig, StageConfig
from owl_pipeline.constants import STAGE_BASE_LLM
from owl_pipeline.data.instructions import CONVERSATION_SCHEMA
from owl_pipeline.data.lance_io import write_lance
from owl_pipeline.data.loader import ConversationDataset
from owl_pipeline.data.lookup_curriculum import curriculum_rows, tokenizer_texts
from owl_pipeline.eval.text_probe import lookup_in_place, probe_items, text_recall
from owl_pipeline.manifest import MANIFEST_FILE, ManifestMismatchError, verify_manifest, write_manifest
from owl_pipeline.model.builders import build_model, processor_config_for
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.model.tokenizer import train_bpe_tokenizer
from owl_pipeline.train.loop import train_stage

__all__ = ["MANIFEST_FILE", "ManifestMismatchError", "PretrainResult", "pretrain_base_llm", "verify_manifest"]


@dataclass
class PretrainResult:
    folder: Path
    seconds: float
    scores: dict[str, float]
    losses: list[float]  # the final loss of each phase
    curve: list[dict] = dataclasses.field(default_factory=list)  # the text-lookup probe against steps


def _phase_config(phase, seed: int) -> StageConfig:
    return StageConfig(max_steps=phase.steps, batch_size=phase.batch_size, lr=phase.lr, min_lr=phase.lr,
                       warmup_steps=min(phase.warmup_steps, phase.steps), weight_decay=0.01, betas=(0.9, 0.95),
                       vision_lr_scale=1.0, eval_every=0, save_every=phase.steps, log_every=100, seed=seed)


def pretrain_base_llm(output: str | Path, config: LLMPretrainConfig | None = None,
                      log: Callable[[str], None] = print, probe_every: int = 250) -> PretrainResult:
    """Train the tokenizer and the LLM, phase by phase, and write ``output`` (HF folder + manifest). Every
    ``probe_every`` steps (0: never) the text-lookup probe is taken, giving the learning curve."""
    config = config or LLMPretrainConfig()
    output, started = Path(output), time.perf_counter()
    torch.manual_seed(config.seed)
    owl_config = OwlConfig.from_name("tiny")
    owl_config.llm = dataclasses.replace(config.llm, vocab_size=config.vocab_size)
    processor = OwlProcessor(train_bpe_tokenizer(tokenizer_texts(config.seed), config.vocab_size),
                             processor_config_for(owl_config, train_hflip=False))
    model = build_model(owl_config, processor)
    losses, curve, done = [], [], 0
    items = probe_items()

    def probe(step_in_phase: int) -> None:
        if probe_every and (done + step_in_phase) % probe_every == 0:
            point = {"step": done + step_in_phase, **text_recall(model.llm, processor, items),
                     **{f"in_place_{k}": v for k, v in lookup_in_place(model.llm, processor).items()}}
            curve.append(point)
            log(f"pretrain-llm: probe {point}")

    with tempfile.TemporaryDirectory() as work:
        for number, phase in enumerate(config.phases, 1):
            rows = curriculum_rows(phase.mix, phase.steps * phase.batch_size, seed=config.seed * 1000 + number)
            uri = Path(work) / f"phase{number}.lance"
            write_lance(rows.to_batches(max_chunksize=4096), CONVERSATION_SCHEMA, uri, message=f"phase {number}")
            log(f"pretrain-llm: phase {number}/{len(config.phases)}: {phase.steps} steps on {dict(phase.mix)}")
            dataset = ConversationDataset(uri, processor, train=True, seed=config.seed)
            result = train_stage(model, processor, STAGE_BASE_LLM, dataset, _phase_config(phase, config.seed),
                                 Path(work) / f"phase{number}", log=log, on_step_end=probe)
            losses.append(round(result.final_loss, 4))
            done += phase.steps
    scores = text_recall(model.llm, processor, probe_items())
    log(f"pretrain-llm: text lookup on 400 fresh questions: {scores}")
    output.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(output)
    processor.tokenizer.save_pretrained(output)
    seconds = time.perf_counter() - started
    write_manifest(output, {"seed": config.seed, "config": dataclasses.asdict(config), "seconds": round(seconds, 1),
                            "phase_final_losses": losses, "text_lookup": scores, "curve": curve})
    return PretrainResult(output, seconds, scores, losses, curve)
