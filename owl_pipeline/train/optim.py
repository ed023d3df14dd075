"""AdamW with per-group learning rates, and warmup + cosine to a floor (transformers' schedule)."""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from owl_pipeline.config import StageConfig
from owl_pipeline.model.owl import OwlModel


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


def build_optimizer(model: OwlModel, config: StageConfig) -> torch.optim.AdamW:
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("no trainable parameters: call set_trainable(model, stage) first")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine down to ``min_lr`` at ``max_steps`` (transformers'
    schedule, as the HF Trainer's ``cosine_with_min_lr``); every group keeps its ratio to ``lr``."""
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps,
                                                       min_lr_rate=config.min_lr / config.lr if config.lr else 0.0)
