"""The optimizer (torch's AdamW, or the AdamW transformers 4.x shipped) with per-group learning rates, and the
learning-rate schedule (transformers' own functions: warmup, then cosine to a floor, linear to 0, or constant)."""

from __future__ import annotations

import math

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from owl_pipeline.config import StageConfig
from owl_pipeline.model.owl import OwlModel

ADAM_EPS = 1e-8  # torch's default, and the HF Trainer's adam_epsilon


def parameter_groups(model: OwlModel, config: StageConfig) -> list[dict]:
    """Trainable parameters in up to four groups: vision (lr x ``vision_lr_scale``) or not, decayed or not.

    Matrices decay; biases, norms and learned vectors (queries, vit_eos) do not."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("vision."), param.ndim >= 2 and not name.endswith("query_embeds"))
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": config.lr * (config.vision_lr_scale if vision else 1.0),
             "weight_decay": config.weight_decay if decay else 0.0}
            for (vision, decay), params in sorted(groups.items())]


class AdamWHF(torch.optim.Optimizer):
    """AdamW as transformers <= 4.x shipped it (``optim="adamw_hf"``, the Trainer's default up to 4.29, so the
    official mPLUG-Owl recipe's): the bias corrections fold into the step size, so eps is added to sqrt(v) before
    they apply, and the decoupled weight decay is applied after the Adam update (torch's AdamW decays first).
    The step count is kept as a tensor, as torch's optimizers keep it, so checkpoints store it as safetensors."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = ADAM_EPS,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group, beta1, beta2)
        return loss

    def _update(self, param: torch.Tensor, group: dict, beta1: float, beta2: float) -> None:
        state = self.state[param]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(param),
                         exp_avg_sq=torch.zeros_like(param))
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].mul_(beta1).add_(param.grad, alpha=1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1.0 - beta2)
        step_size = group["lr"] * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        param.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] > 0.0:
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])


def build_optimizer(model: OwlModel, config: StageConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("no trainable parameters: call set_trainable(model, stage) first")
    if config.optimizer == "adamw_hf":
        return AdamWHF(groups, lr=config.lr, betas=config.betas)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=ADAM_EPS, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then ``config.lr_schedule`` to ``config.horizon``: "cosine" down to
    ``min_lr`` (the HF Trainer's ``cosine_with_min_lr``), "linear" down to 0 (its ``linear``, the default), or
    "constant". transformers' own schedule functions; every group keeps its ratio to ``lr``."""
    if config.lr_schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.horizon)
    if config.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, config.warmup_steps, config.horizon,
                                                       min_lr_rate=config.min_lr / config.lr if config.lr else 0.0)
