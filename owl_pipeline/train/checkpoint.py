"""Training checkpoints: trainable weights, optimizer and RNG state as safetensors, the rest as JSON.

    checkpoints/step-000100/
      trainable.safetensors   the parameters this stage trains (the frozen rest comes from the stage's input)
      optimizer.safetensors   AdamW moments and step counts, keyed by parameter name
      rng.safetensors         torch CPU (and CUDA) generator states
      trainer_state.json      step, data position, scheduler, loss history; written last

A checkpoint is written under a temporary name and renamed when complete, so a crash mid-write leaves no
folder that looks complete; only the newest ``keep_last`` are kept.

Promises: ``trainer_state.json`` records the sha256 of every other file; a checkpoint is read whole and
checked (hashes, parseable files, finite tensors) before anything is loaded into the model, so a truncated,
zeroed or shuffled file raises ``CheckpointDamaged`` and leaves the model untouched (the loop then falls back
to the newest intact checkpoint). Non-finite weights are never written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from owl_pipeline.files import sha256_of
from owl_pipeline.model.owl import OwlModel

STATE_FILE = "trainer_state.json"
TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")
_PREFIX = "step-"


class CheckpointDamaged(ValueError):
    """A checkpoint whose files are missing, unreadable, altered since written, or not finite."""


class NonFiniteWeightsError(RuntimeError):
    """The weights about to be saved hold NaN or infinity; nothing was written."""


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0  # data position: the sampler resumes here
    position: int = 0
    scheduler: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _trainable(model: OwlModel) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(model: OwlModel, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): name for name, p in _trainable(model).items()}
    tensors = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"{names[id(param)]}::{key}"] = value.detach().cpu().contiguous()
    return tensors


def save_checkpoint(folder: Path, model: OwlModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainerState, keep_last: int) -> Path:
    weights = {k: v.detach().cpu().contiguous() for k, v in _trainable(model).items()}
    bad = _non_finite(weights)
    if bad:
        raise NonFiniteWeightsError(f"step {state.step}: {len(bad)} trained tensors hold NaN or infinity "
                                    f"(e.g. {bad[0]}); not saved. Lower the lr or check the data")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{_PREFIX}{state.step:07d}"
    staging = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(weights, str(staging / "trainable.safetensors"))
    save_file(_optimizer_tensors(model, optimizer), str(staging / "optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(staging / "rng.safetensors"))
    state.scheduler = scheduler.state_dict()
    record = {**asdict(state), "files": {name: sha256_of(staging / name) for name in TENSOR_FILES}}
    (staging / STATE_FILE).write_text(json.dumps(record))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in list_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file())


@dataclass
class CheckpointContents:
    state: TrainerState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]


def read_checkpoint(path: Path) -> CheckpointContents:
    """Every file of a checkpoint, checked against the hashes its state recorded and for finite values;
    ``CheckpointDamaged`` naming the file otherwise. Nothing is loaded anywhere yet."""
    try:
        record = json.loads((path / STATE_FILE).read_text())
        hashes = record.pop("files", None)
        state = TrainerState(**record)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointDamaged(f"{path / STATE_FILE} cannot be read: {error}") from None
    if hashes is None:
        raise CheckpointDamaged(f"{path / STATE_FILE} records no file hashes (written by an older version)")
    tensors = {}
    for name in TENSOR_FILES:
        file = path / name
        if not file.is_file() or sha256_of(file) != hashes.get(name):
            raise CheckpointDamaged(f"{file} is missing or was altered after it was written (sha256 differs)")
        try:
            tensors[name] = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointDamaged(f"{file} cannot be read: {error}") from None
    bad = _non_finite(tensors["trainable.safetensors"]) + _non_finite(tensors["optimizer.safetensors"])
    if bad:
        raise CheckpointDamaged(f"{path} holds NaN or infinity in {bad[:3]}")
    return CheckpointContents(state, tensors["trainable.safetensors"], tensors["optimizer.safetensors"],
                              tensors["rng.safetensors"])


def load_checkpoint(path: Path, model: OwlModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainerState:
    """Restore everything ``save_checkpoint`` wrote into a model/optimizer/scheduler built the same way;
    ``CheckpointDamaged`` (model untouched) when the checkpoint does not check out."""
    contents = read_checkpoint(path)
    params = _trainable(model)
    if set(contents.weights) != set(params):
        raise ValueError(f"{path} holds other trainable parameters than this model trains "
                         f"({len(contents.weights)} vs {len(params)}): was it written by another stage or config?")
    with torch.no_grad():
        for name, value in contents.weights.items():
            params[name].copy_(value)
    for key, value in contents.optimizer.items():
        name, slot = key.split("::")
        param = params[name]
        optimizer.state[param][slot] = value.to(param.device) if slot != "step" or value.is_cuda else value
    rng = contents.rng
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available() and "cuda_0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in rng])
    state = contents.state
    scheduler.load_state_dict(state.scheduler)
    # The scheduler sets the optimizer's lr only when it steps: put the resumed lr in place for the next step.
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
    return state
