"""Build an OwlModel (random init or pretrained parts), choose what each stage trains, save and load it.

The one layout of a saved model folder:

    owl_config.json          OwlConfig + image token id + whether an adapter is present
    vision/                  CLIPVisionModel.save_pretrained (config.json + model.safetensors)
    abstractor.safetensors   VisualAbstractor weights
    llm/                     the base LLM, save_pretrained (LoRA merged in when exported merged)
    adapter/                 the peft LoRA adapter (stage 2), adapter_config.json + adapter_model.safetensors
    processor/               tokenizer files + processor_config.json
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from owl_pipeline.config import ConfigError, LLMConfig, OwlConfig, VisionConfig
from owl_pipeline.constants import (ABSTRACTOR_WEIGHTS_FILE, ADAPTER_DIR, LLM_DIR, OWL_CONFIG_FILE, PROCESSOR_DIR,
                                    STAGE_BASE_LLM, STAGE_PRETRAIN, STAGES, VISION_DIR)
from owl_pipeline.model.abstractor import VisualAbstractor
from owl_pipeline.model.owl import OwlModel
from owl_pipeline.model.processor import OwlProcessor, ProcessorConfig
from owl_pipeline.model.vision import VisionEncoder, clip_config_from

_LAYOUT_VERSION = 1


# --- building ---------------------------------------------------------------------------------------------
def build_vision(cfg: VisionConfig) -> VisionEncoder:
    """A CLIP ViT from ``cfg.pretrained`` (local path or hub id, a full CLIP or a vision-only checkpoint)."""
    if cfg.pretrained:
        return VisionEncoder(CLIPVisionModel.from_pretrained(cfg.pretrained, attn_implementation="sdpa"))
    clip_config = clip_config_from(cfg)
    clip_config._attn_implementation = "sdpa"
    return VisionEncoder(CLIPVisionModel(clip_config))


def build_llm(cfg: LLMConfig, vocab_size: int) -> PreTrainedModel:
    """Any HF causal LM from ``cfg.pretrained``; otherwise a Llama of the configured size, random init."""
    if cfg.pretrained:
        return AutoModelForCausalLM.from_pretrained(cfg.pretrained, attn_implementation="sdpa")
    llama = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, attention_bias=cfg.attention_bias,
        initializer_range=cfg.init_std,
    )
    llama._attn_implementation = "sdpa"
    return LlamaForCausalLM(llama)


def build_model(config: OwlConfig, processor: OwlProcessor) -> OwlModel:
    """Vision + abstractor + LLM for ``config``, wired to ``processor``'s tokenizer and image token."""
    tokenizer = processor.tokenizer
    vision = build_vision(config.vision)
    if vision.hidden_size != config.abstractor.hidden_size:
        raise ConfigError(f"the vision encoder is {vision.hidden_size} wide but abstractor.hidden_size is "
                          f"{config.abstractor.hidden_size}; set abstractor.hidden_size to match")
    llm = build_llm(config.llm, vocab_size=len(tokenizer))
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    abstractor = VisualAbstractor(config.abstractor, llm_hidden_size=llm.config.hidden_size)
    if abstractor.num_output_tokens != processor.config.num_image_tokens:
        raise ConfigError(f"the processor expands <image> to {processor.config.num_image_tokens} tokens but the "
                          f"abstractor makes {abstractor.num_output_tokens}; build the processor with "
                          "processor_config_for(config)")
    return OwlModel(vision, abstractor, llm, image_token_id=processor.image_token_id, config=config)


def processor_config_for(config: OwlConfig, **overrides) -> ProcessorConfig:
    """The processor settings that must agree with the model: image size and tokens per image."""
    base = dict(image_size=config.vision.image_size, num_image_tokens=config.abstractor.num_output_tokens)
    return ProcessorConfig(**{**base, **overrides})


def count_parameters(config: OwlConfig) -> dict[str, int]:
    """Parameter counts per component, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        vision = build_vision(VisionConfig(**{**config.vision.__dict__, "pretrained": None}))
        llm = build_llm(LLMConfig(**{**config.llm.__dict__, "pretrained": None}), config.llm.vocab_size)
        abstractor = VisualAbstractor(config.abstractor, llm.config.hidden_size)
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("vision", vision), ("abstractor", abstractor), ("llm", llm))}
    counts["total"] = sum(counts.values())
    return counts


# --- what each stage trains -------------------------------------------------------------------------------
def set_trainable(model: OwlModel, stage: int) -> OwlModel:
    """Stage 1: vision (if ``train_vision_in_stage1``) + abstractor, LLM frozen. Stage 2: LoRA on the LLM
    (wrapped here on first call), vision frozen, abstractor trainable only if ``train_abstractor_in_stage2``.
    Stage 0 (the embedded default's base LLM, trained on text): the LLM alone. Returns the model."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    model.requires_grad_(False)
    if stage == STAGE_BASE_LLM:
        model.llm.requires_grad_(True)
        return model
    if stage == STAGE_PRETRAIN:
        model.vision.requires_grad_(model.config.train_vision_in_stage1)
        model.abstractor.requires_grad_(True)
        return model
    if not isinstance(model.llm, PeftModel):
        model.llm = get_peft_model(model.llm, _peft_lora_config(model.config))
    for name, param in model.llm.named_parameters():
        param.requires_grad = "lora_" in name
    model.abstractor.requires_grad_(model.config.train_abstractor_in_stage2)
    return model


def set_train_modes(model: OwlModel) -> None:
    """Train mode (dropout) only where parameters train; frozen towers run as at inference."""
    model.train()
    for part in (model.vision, model.abstractor):
        if not any(p.requires_grad for p in part.parameters()):
            part.eval()


def enable_activation_checkpointing(model: OwlModel) -> OwlModel:
    """Recompute the activations of the LLM's and the vision tower's layers during backward (non-reentrant, so
    gradients still reach a frozen LLM's inputs in stage 1): memory for large models at ~30% more compute.
    Only modules that take part in backward are affected; results are the same as without."""
    towers = [model.llm] + ([model.vision.clip] if any(p.requires_grad for p in model.vision.parameters()) else [])
    for tower in towers:
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5
            tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _peft_lora_config(config: OwlConfig) -> PeftLoraConfig:
    lora = config.lora
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- saving and loading -----------------------------------------------------------------------------------
def save_pretrained(model: OwlModel, processor: OwlProcessor, folder: str | Path, merge_lora: bool = False) -> Path:
    """Write the one model layout (module docstring). ``merge_lora`` folds the adapter into ``llm/``.

    Written into a sibling folder first and moved into place whole, ``owl_config.json`` last: a write that fails
    midway (a full disk) leaves the previous model as it was, never new weights beside old ones."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    draft = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(draft, ignore_errors=True)
    try:
        _write_layout(model, processor, draft, merge_lora)
        _replace_folder(draft, folder)
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return folder


def _replace_folder(new: Path, folder: Path) -> None:
    """``folder`` becomes ``new``: the old one moved aside, the new one renamed in, the old one removed."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _write_layout(model: OwlModel, processor: OwlProcessor, folder: Path, merge_lora: bool) -> None:
    folder.mkdir(parents=True)
    model.vision.clip.save_pretrained(folder / VISION_DIR)
    save_file({k: v.contiguous() for k, v in model.abstractor.state_dict().items()},
              str(folder / ABSTRACTOR_WEIGHTS_FILE))
    has_adapter = isinstance(model.llm, PeftModel) and not merge_lora
    if isinstance(model.llm, PeftModel):
        _save_peft_llm(model.llm, folder, merge_lora)
    else:
        model.llm.save_pretrained(folder / LLM_DIR)
    processor.save_pretrained(folder / PROCESSOR_DIR)
    meta = {"layout_version": _LAYOUT_VERSION, "config": model.config.to_dict(),
            "image_token_id": model.image_token_id, "has_adapter": has_adapter}
    (folder / OWL_CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def merged_llm(llm: torch.nn.Module) -> torch.nn.Module:
    """The LLM with its LoRA adapter folded into the base weights (a copy); an LLM without one as it is."""
    return copy.deepcopy(llm).merge_and_unload() if isinstance(llm, PeftModel) else llm


def _save_peft_llm(llm: PeftModel, folder: Path, merge_lora: bool) -> None:
    if merge_lora:
        merged_llm(llm).save_pretrained(folder / LLM_DIR)
        return
    llm.save_pretrained(folder / ADAPTER_DIR)
    # peft injects LoRA layers into the base model in place; save the base under its original names.
    base = llm.get_base_model()
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(folder / LLM_DIR, state_dict=state)


def from_pretrained(folder: str | Path, trainable_adapter: bool = False) -> tuple[OwlModel, OwlProcessor]:
    """Load a folder written by ``save_pretrained``: the model (adapter attached if present) and processor."""
    folder = Path(folder)
    meta_file = folder / OWL_CONFIG_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: {folder} is not an Owl model folder")
    meta = json.loads(meta_file.read_text())
    config = OwlConfig.from_dict(meta["config"])
    processor = OwlProcessor.from_pretrained(folder / PROCESSOR_DIR)
    vision = VisionEncoder(CLIPVisionModel.from_pretrained(folder / VISION_DIR, attn_implementation="sdpa"))
    llm = AutoModelForCausalLM.from_pretrained(folder / LLM_DIR, attn_implementation="sdpa")
    if meta["has_adapter"]:
        llm = PeftModel.from_pretrained(llm, folder / ADAPTER_DIR, is_trainable=trainable_adapter)
    abstractor = VisualAbstractor(config.abstractor, llm_hidden_size=llm.config.hidden_size)
    abstractor.load_state_dict(load_file(str(folder / ABSTRACTOR_WEIGHTS_FILE)))
    return OwlModel(vision, abstractor, llm, image_token_id=meta["image_token_id"], config=config), processor
