"""Speed options of the training loop that change no result: the loop and bench/train_step.py apply them alike.

- Frozen Linear weights stored in the autocast dtype (bf16 on GPU): autocast casts every Linear's weight to
  bf16 before its matmul anyway, so storing it so gives the same products without re-casting ~1B frozen
  weights each step, and halves their memory. Trained weights stay fp32 (the optimizer's master copy);
  embeddings and norms, which autocast does not cast, stay as they are, so the residual stream keeps its dtype.
- Regional ``torch.compile``: each repeated layer (LLM decoder, vision encoder, abstractor layers) compiled
  once and reused, which fuses their elementwise work (norms, rotary, activations) at a fraction of the
  compile time of the whole model; the model's own control flow (image scatter, loss) stays eager.
"""

from __future__ import annotations

import torch
from torch import nn

from owl_pipeline.model.builders import enable_activation_checkpointing

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def frozen_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers none of whose parameters train, except one that shares its weight with an embedding
    (a tied LM head): casting it would change the embedding's output dtype, which autocast does not cast."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and not any(p.requires_grad for p in m.parameters())
            and id(m.weight) not in embedding_weights]


def store_frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> dict[nn.Linear, torch.dtype]:
    """Cast the frozen Linear layers' parameters to ``dtype`` in place; returns each one's previous dtype."""
    previous = {}
    for linear in frozen_linears(model):
        previous[linear] = linear.weight.dtype
        linear.to(dtype)
    return previous


def restore_dtypes(previous: dict[nn.Linear, torch.dtype]) -> None:
    """Give the layers their previous dtype back (before saving: the saved layout keeps its dtypes; the values
    are the rounded ones the training computed with, exact for weights that came from a bf16 checkpoint)."""
    for linear, dtype in previous.items():
        linear.to(dtype)


def repeated_layers(model: nn.Module) -> list[nn.Module]:
    """The members of every ModuleList whose members are all of one class: the layer stacks."""
    layers = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            layers.extend(module)
    return layers


def compile_repeated_layers(model: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` each layer of each stack in place (``nn.Module.compile``); returns how many."""
    layers = repeated_layers(model)
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


def resolve_compile(setting: bool | str, device_type: str) -> bool:
    """``auto``: compile when training on CUDA (where the measured gain is), not on CPU; true/false force it."""
    return device_type == "cuda" if setting == "auto" else bool(setting)


def apply_speed_options(model: nn.Module, precision: str, compile: bool = False,
                        activation_checkpointing: bool = False) -> dict[nn.Linear, torch.dtype]:
    """What the training loop does to a model whose trainable parameters are already chosen (set_trainable):
    activation checkpointing if asked, frozen Linears in the autocast dtype of ``precision`` ("bf16"/"fp16"; "no"
    changes nothing), then regional compilation if asked. Returns what ``restore_dtypes`` needs before saving."""
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    previous = store_frozen_linears_in(model, AUTOCAST_DTYPES[precision]) if precision in AUTOCAST_DTYPES else {}
    if compile:
        compile_repeated_layers(model)
    return previous
