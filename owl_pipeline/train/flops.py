"""Model FLOPs of a training step, and MFU: the same accounting in the training loop and bench/train_step.py.

Per token through a matmul weight of N parameters: 6N if the weight trains (forward, input gradient, weight
gradient), 4N if it is frozen but gradients pass through it to something upstream that trains (no weight
gradient), 2N if it runs forward only. Embedding lookups and attention scores are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a name fragment of torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def matmul_parameters(module: nn.Module) -> tuple[int, int]:
    """(trained, frozen) parameter counts of ``module``, embedding tables left out (lookups, not matmuls)."""
    lookups = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    trained = frozen = 0
    for param in module.parameters():
        if id(param) in lookups:
            continue
        if param.requires_grad:
            trained += param.numel()
        else:
            frozen += param.numel()
    return trained, frozen


def flops_per_token(parts: Sequence[nn.Module]) -> list[float]:
    """FLOPs per token through each part, ``parts`` in forward order (vision, connector, LLM): a frozen part
    passes gradients (4N) when it or a part before it trains."""
    factors, gradients_flow = [], False
    for part in parts:
        trained, frozen = matmul_parameters(part)
        gradients_flow = gradients_flow or trained > 0
        factors.append(6.0 * trained + (4.0 if gradients_flow else 2.0) * frozen)
    return factors


def step_flops(factors: Sequence[float], tokens: Sequence[float]) -> float:
    """Model FLOPs of a step that sent ``tokens[i]`` tokens through part i."""
    return sum(factor * count for factor, count in zip(factors, tokens, strict=True))


class OwlStepFlops:
    """Model FLOPs of a training step of an OwlModel as it is staged now (after ``set_trainable``): each image
    sends its patch tokens (+ CLS) through the vision tower and the abstractor's queries through the abstractor
    (its keys and values over the visual tokens are left out, like attention scores); the LLM sees every token."""

    def __init__(self, model: nn.Module):
        self.factors = flops_per_token([model.vision, model.abstractor, model.llm])
        vision = model.vision.clip.config
        self.vision_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        self.query_tokens = model.abstractor.query_embeds.shape[1]

    def __call__(self, images: int, llm_tokens: int) -> float:
        return step_flops(self.factors, [images * self.vision_tokens, images * self.query_tokens, llm_tokens])


def peak_tflops(device: torch.device) -> float | None:
    """The card's dense bf16 peak if it is in the table; None elsewhere (CPU, unknown cards)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS.items() if fragment in name), None)
