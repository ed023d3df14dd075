"""Named recipes: a partial params.yaml shipped in code, selected by ``recipe: NAME`` at the top of params.yaml.
The recipe's sections lie under the file's own: a key written beside the recipe overrides it (so do `dvc exp run
-S` settings). ARCHITECTURE.md section 3 gives each setting with the official file and line it comes from."""

from __future__ import annotations

from typing import Any

from owl_pipeline.config.loading import ConfigError, shown

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # mPLUG-Owl's stage 2 as scripts/train_it.sh runs it through pipeline/train.py and the transformers 4.28 Trainer
    "official-stage2": {
        "stage2": {"lr": 2e-5, "warmup_steps": 50, "lr_schedule": "linear", "optimizer": "adamw_hf",
                   "weight_decay": 1e-4, "grad_clip": 1.0, "betas": [0.9, 0.999], "batch_size": 4, "grad_accum": 1,
                   "max_steps": 4236, "activation_checkpointing": True, "mixed_precision": "auto",
                   "vision_lr_scale": 1.0, "eval_every": 50, "save_every": 500},
        "model": {"train_abstractor_in_stage2": False},  # LoRA only: the official code freezes the abstractor
    },
}


def with_recipe(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` (a params mapping) on top of the recipe it names, if any; section by section, key by key."""
    name = values.get("recipe")
    if name is None:
        return values
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"{where}.recipe: {shown(name)} is not a recipe; known: {', '.join(sorted(RECIPES))}")
    merged = dict(values)
    for section, settings in RECIPES[name].items():
        own = values.get(section)
        if own is not None and not isinstance(own, dict):
            raise ConfigError(f"{where}.{section}: expected a mapping, got {type(own).__name__}")
        merged[section] = {**settings, **(own or {})}
    return merged
