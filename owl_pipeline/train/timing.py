"""Time training steps of a model on a fixed batch: the measuring stick of `owl run` and bench/model_step.py."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from owl_pipeline.model.builders import set_trainable, trainable_parameters
from owl_pipeline.model.owl import OwlModel


@dataclass
class StepTiming:
    stage: int
    batch_size: int
    seq_len: int
    trainable: int
    median_s: float
    first_loss: float
    last_loss: float

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.median_s


def time_training_steps(model: OwlModel, batch: dict[str, torch.Tensor], stage: int, steps: int = 5,
                        warmup: int = 1, lr: float = 1e-3) -> StepTiming:
    """Forward + backward + AdamW step on ``batch`` for the parameters ``stage`` trains; median seconds."""
    set_trainable(model, stage)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    durations, losses = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if step >= warmup:
            durations.append(time.perf_counter() - start)
        losses.append(loss.item())
    return StepTiming(stage=stage, batch_size=batch["input_ids"].shape[0], seq_len=batch["input_ids"].shape[1],
                      trainable=trainable_parameters(model), median_s=statistics.median(durations),
                      first_loss=losses[0], last_loss=losses[-1])
