"""The one training loop (accelerate), used by the base LLM, stage 1 and stage 2 alike: a stage is only which
parameters train (``set_trainable``) and a StageConfig.

bf16 autocast on GPU (frozen Linears stored in bf16, optional regional compile: train/speed.py), fp32 on CPU;
gradient accumulation; clipping; fused AdamW with per-group learning rates; warmup + cosine; periodic
evaluation; atomic, resumable checkpoints; metrics to a tracker; progress lines.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.utils.data import Dataset

from owl_pipeline import constants as C
from owl_pipeline.config import StageConfig
from owl_pipeline.data.loader import LengthGroupedSampler, MixtureSampler, ResumableSampler, make_loader
from owl_pipeline.model.builders import save_pretrained, set_train_modes, set_trainable
from owl_pipeline.model.owl import OwlModel
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.train.checkpoint import (CheckpointDamaged, TrainerState, list_checkpoints, load_checkpoint,
                                          read_checkpoint, save_checkpoint)
from owl_pipeline.train.flops import OwlStepFlops, peak_tflops
from owl_pipeline.train.optim import build_optimizer, build_scheduler
from owl_pipeline.train.speed import apply_speed_options, resolve_compile, restore_dtypes

MODEL_DIR, CHECKPOINT_DIR = C.MODEL_DIR, C.CHECKPOINT_DIR  # named here too: the loop's callers import them
LOSS_CURVE = C.LOSS_CURVE
LENGTH_GROUP_BATCHES = 64  # group_by_length sorts windows of this many (global) batches


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the optimizer was not stepped on it."""


class Tracker(Protocol):
    """Where metrics go (registry/tracking.py implements it with MLflow)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class StageResult:
    stage: int
    steps: int
    final_loss: float
    eval_loss: float | None
    seconds: float
    model_dir: Path
    resumed_from_step: int | None = None
    history: list[dict] = field(default_factory=list)


def resolve_precision(setting: str) -> str:
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return setting


def resolve_num_workers(setting: int | None, gpu: bool, processes: int, cores: int | None) -> int:
    """Loader processes per training process. Unset: none without a GPU (the model's step needs every core),
    else up to 8, leaving one core per process to drive its GPU. A worker decodes and augments ~370 samples/s
    at 224 px (bench/loader.py), so 8 keep ahead of any step rate measured in bench/train_step.py."""
    if setting is not None:
        return setting
    if not gpu:
        return 0
    return max(0, min(8, (cores or 1) // processes - 1))


def storage_precision(precision: str, distributed_type: DistributedType) -> str:
    """The precision frozen weights are stored in: the autocast one, except under FSDP (it flattens each
    layer's parameters into one tensor, which must have one dtype) and DeepSpeed (it casts the model itself)."""
    return "no" if distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) else precision


def _allow_new_precision(precision: str) -> None:
    """accelerate keeps one mixed-precision setting per process and refuses another; stages run one after the
    other in one process (``owl run``) may differ, so forget the setting (not the process group) between them."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


class _Trainer:
    def __init__(self, model: OwlModel, stage: int, config: StageConfig, output_dir: Path,
                 log: Callable[[str], None]):
        self.stage, self.config, self.output_dir = stage, config, output_dir
        precision = resolve_precision(config.mixed_precision)
        _allow_new_precision(precision)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
        set_trainable(model, stage)
        optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(optimizer, config)
        self.state = TrainerState()
        self.resumed_from = None
        # Dropout masks: a fresh run follows its seed, a resumed one the RNG state in its checkpoint.
        torch.manual_seed(config.seed)
        self._resume(model, optimizer, log)
        self.compiled = resolve_compile(config.compile, self.accelerator.device.type)
        self.frozen_dtypes = apply_speed_options(
            model, storage_precision(precision, self.accelerator.distributed_type), compile=self.compiled,
            activation_checkpointing=config.activation_checkpointing)
        self.step_flops = OwlStepFlops(model)
        self.peak_tflops = peak_tflops(self.accelerator.device)
        model.image_side_every_step = self.accelerator.num_processes > 1  # every rank runs the same graph
        model.loss_chunk_positions = config.loss_chunk_positions
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _resume(self, model: OwlModel, optimizer, log: Callable[[str], None]) -> None:
        """From the newest intact checkpoint; a damaged one (altered, truncated, not finite) is skipped with a
        warning naming it, and left where it is for a person to look at."""
        for checkpoint in reversed(list_checkpoints(self.output_dir / CHECKPOINT_DIR)):
            try:
                self.state = load_checkpoint(checkpoint, model, optimizer, self.scheduler)
            except CheckpointDamaged as damage:
                log(f"warning: stage {self.stage}: not resuming from damaged checkpoint {checkpoint}: {damage}")
                continue
            self.resumed_from = self.state.step
            log(f"stage {self.stage}: resuming from {checkpoint.name}")
            return

    @property
    def unwrapped(self) -> OwlModel:
        return self.accelerator.unwrap_model(self.model)

    def batches(self, dataset: Dataset, shuffle: bool, epoch: int, position: int):
        common = dict(seed=self.config.seed, epoch=epoch, position=position,
                      num_replicas=self.accelerator.num_processes, rank=self.accelerator.process_index)
        if shuffle and self.config.text_only_fraction is not None:
            if not hasattr(dataset, "text_only_rows"):
                raise ValueError("text_only_fraction applies to conversation data (stage 2) only")
            sampler = MixtureSampler(dataset.text_only_rows(), self.config.text_only_fraction, **common)
        elif shuffle and self.config.group_by_length:
            if not hasattr(dataset, "approximate_lengths"):
                raise ValueError("group_by_length applies to conversation data (stage 2) only")
            window = LENGTH_GROUP_BATCHES * self.config.batch_size * self.accelerator.num_processes
            sampler = LengthGroupedSampler(dataset.approximate_lengths(), window, **common)
        else:
            sampler = ResumableSampler(len(dataset), shuffle=shuffle, **common)
        workers = resolve_num_workers(self.config.num_workers, torch.cuda.is_available(),
                                      self.accelerator.num_processes, os.cpu_count())
        loader = make_loader(dataset, self.config.batch_size, sampler, workers,
                             pad_to_multiple_of=self.config.pad_to_multiple_of if self.compiled else None)
        for batch in loader:
            yield {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batches) -> dict[str, float]:
        start = time.perf_counter()
        losses, counts, data_wait = [], {"samples": 0, "images": 0, "tokens": 0}, 0.0
        for micro in range(self.config.grad_accum):
            asked = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - asked
            sync = micro == self.config.grad_accum - 1
            context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
            with context, self.accelerator.autocast():
                loss = self.model(**batch).loss
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"stage {self.stage}: loss is {loss.item()} at step {self.state.step + 1}; the optimizer was "
                        f"not stepped. Last good checkpoint: {self.last_checkpoint() or 'none'}. Lower the lr, "
                        "check the data (every label masked?), or use fp32")
                self.accelerator.backward(loss / self.config.grad_accum)
            losses.append(loss.item())
            counts["tokens"] += int(batch["attention_mask"].sum())
            counts["samples"] += batch["input_ids"].shape[0]
            counts["images"] += batch["pixel_values"].shape[0]
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        return {"loss": sum(losses) / len(losses), "lr": max(self.scheduler.get_last_lr()), "grad_norm": grad_norm,
                **self._throughput(counts, seconds), "data_wait_share": data_wait / seconds,
                "samples": counts["samples"] * self.accelerator.num_processes}

    def _throughput(self, counts: dict[str, int], seconds: float) -> dict[str, float]:
        """Samples, LLM tokens and model FLOPs per second over all processes (train/flops.py), and MFU where
        the card's peak is known."""
        world = self.accelerator.num_processes
        tokens = counts["tokens"]
        flops = self.step_flops(counts["images"], tokens)
        rates = {"samples_per_s": counts["samples"] * world / seconds, "tokens_per_s": tokens * world / seconds,
                 "model_tflops_per_s": flops * world / seconds / 1e12}
        if self.peak_tflops:
            rates["mfu"] = rates["model_tflops_per_s"] / self.peak_tflops
        return rates

    def _clip(self) -> float:
        if self.config.grad_clip is not None:
            return float(self.accelerator.clip_grad_norm_(self.params, self.config.grad_clip))
        grads = [p.grad.norm() for p in self.params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> float:
        self.model.eval()
        total, count = 0.0, 0
        batches = self.batches(dataset, shuffle=False, epoch=0, position=0)
        for _ in range(min(self.config.eval_batches, math.ceil(len(dataset) / self.config.batch_size))):
            with self.accelerator.autocast():
                out = self.model(**next(batches))
            total += out.loss.item() * out.num_target_tokens
            count += out.num_target_tokens
        set_train_modes(self.unwrapped)
        return total / max(count, 1)

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint that checks out (hashes, finite weights)."""
        for checkpoint in reversed(list_checkpoints(self.output_dir / CHECKPOINT_DIR)):
            try:
                read_checkpoint(checkpoint)
            except CheckpointDamaged:
                continue
            return checkpoint
        return None

    def save(self) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(self.output_dir / CHECKPOINT_DIR, self.unwrapped, self.optimizer, self.scheduler,
                            self.state, self.config.keep_last)
        self.accelerator.wait_for_everyone()


def _progress(stage: int, step: int, total: int, metrics: dict[str, float], started: float, first_step: int) -> str:
    done = step - first_step
    eta = (time.perf_counter() - started) / max(done, 1) * (total - step)
    mfu = f", MFU {metrics['mfu']:.0%}" if "mfu" in metrics else ""
    return (f"stage {stage} step {step}/{total} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
            f"grad {metrics['grad_norm']:.2f} | {metrics['samples_per_s']:.0f} samples/s{mfu}, "
            f"{metrics['data_wait_share']:.0%} waiting for data | ETA {eta:.0f}s")


def train_stage(model: OwlModel, processor: OwlProcessor, stage: int, train_data: Dataset, config: StageConfig,
                output_dir: str | Path, eval_data: Dataset | None = None, tracker: Tracker | None = None,
                log: Callable[[str], None] = print,
                on_step_end: Callable[[int], None] | None = None) -> StageResult:
    """Train ``stage`` of ``model`` to ``config.max_steps``, resuming from the newest checkpoint in
    ``output_dir`` if there is one; write the final model to ``output_dir/model`` (the one saved layout)."""
    output_dir = Path(output_dir)
    tracker = tracker or NullTracker()
    trainer = _Trainer(model, stage, config, output_dir, log)
    state = trainer.state
    first_step, started = state.step, time.perf_counter()
    batches = trainer.batches(train_data, shuffle=True, epoch=state.epoch, position=state.position)
    sampler_start = ResumableSampler(len(train_data), epoch=state.epoch, position=state.position)
    consumed = 0
    set_train_modes(trainer.unwrapped)
    metrics: dict[str, float] = {}
    with _vision_memo(trainer.unwrapped, processor, config, log):
        while state.step < config.max_steps:
            step_started = time.perf_counter()
            metrics = trainer.train_step(batches)
            state.step += 1
            if trainer.compiled and state.step == first_step + 1:  # torch.compile compiles on the first call
                metrics["compile_seconds"] = time.perf_counter() - step_started
                log(f"stage {stage}: compiled the repeated layers in the first step, "
                    f"{metrics['compile_seconds']:.0f} s")
            consumed += int(metrics.pop("samples"))
            position = sampler_start.state_after(consumed)
            state.epoch, state.position = position["epoch"], position["position"]
            if config.eval_every and eval_data is not None and state.step % config.eval_every == 0:
                metrics["eval_loss"] = trainer.evaluate(eval_data)
            state.history.append({"step": state.step, **metrics})
            tracker.log_metrics(metrics, step=state.step)
            if state.step % config.log_every == 0 or state.step in (first_step + 1, config.max_steps):
                log(_progress(stage, state.step, config.max_steps, metrics, started, first_step))
            if state.step % config.save_every == 0 or state.step == config.max_steps:
                trainer.save()
            if on_step_end is not None:
                on_step_end(state.step)
    eval_loss = trainer.evaluate(eval_data) if eval_data is not None else None
    model_dir = output_dir / MODEL_DIR
    restore_dtypes(trainer.frozen_dtypes)
    if trainer.accelerator.is_main_process:
        save_pretrained(trainer.unwrapped, processor, model_dir)
        _write_loss_curve(state.history, output_dir / LOSS_CURVE, stage)
        tracker.log_artifact(output_dir / LOSS_CURVE)
    trainer.accelerator.wait_for_everyone()
    final_loss = state.history[-1]["loss"] if state.history else float("nan")
    log(f"stage {stage}: {state.step} steps, final loss {final_loss:.4f}"
        + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "") + f" -> {model_dir}")
    return StageResult(stage=stage, steps=state.step, final_loss=final_loss, eval_loss=eval_loss,
                       seconds=time.perf_counter() - started, model_dir=model_dir,
                       resumed_from_step=trainer.resumed_from, history=state.history)


def _vision_memo(model: OwlModel, processor: OwlProcessor, config: StageConfig, log):
    """The frozen tower's outputs remembered per picture where that changes no result (the same losses to float
    rounding: a picture first encoded in another batch may differ in the last bits) and pays: a frozen tower,
    pictures that give the same pixels each time, a memo allowed."""
    frozen = not any(p.requires_grad for p in model.vision.parameters())
    if not (frozen and processor.config.train_pixels_repeat and config.vision_memo_mib):
        return contextlib.nullcontext()
    log(f"vision tower frozen: its outputs are remembered per picture (up to {config.vision_memo_mib} MiB)")
    return model.vision.remembering_outputs(config.vision_memo_mib << 20)

def _write_loss_curve(history: list[dict], path: Path, stage: int) -> None:
    from owl_pipeline.train.plots import plot_loss_curve

    plot_loss_curve(history, path, title=f"stage {stage}")
