"""Training-step throughput of our model against the HF transformers LLaVA peer, both stages, one run.

    python bench/train_step.py                 # owl-1b size (CLIP ViT-L/14@224 + TinyLlama shape), on the GPU
    python bench/train_step.py --tiny          # the tiny preset on CPU, seconds (exercised by a test)

Regimes (DESIGN.md section 8): stage 1 = LLM frozen, batch 64, 64 text tokens; stage 2 = LoRA r8 on q/v,
batch 16, 512 text tokens. Both models are randomly initialized at the same vision and LLM sizes; ours feeds
65 tokens per image to the LLM, LLaVA 256. Model FLOPs count 6N per token through trained weights, 4N through
frozen weights that still pass gradients, 2N through forward-only weights (attention scores not counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from owl_pipeline.config import OwlConfig  # noqa: E402
from owl_pipeline.model.abstractor import VisualAbstractor  # noqa: E402
from owl_pipeline.model.builders import (build_llm, build_vision, enable_activation_checkpointing,  # noqa: E402
                                         set_trainable)
from owl_pipeline.model.owl import OwlModel  # noqa: E402
from owl_pipeline.model.vision import clip_config_from  # noqa: E402


@dataclass
class Regime:
    stage: int
    batch: int
    text_tokens: int


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def components(name: str, model) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """Vision tower, connector, and the LLM parameters a token goes through as matmuls (all but the input
    embedding, which is a lookup; the output head included)."""
    if name == "ours":
        llm = model.llm
        return model.vision, model.abstractor, numel(llm) - llm.get_input_embeddings().weight.numel()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = inner.model.language_model
    llm_params = numel(language) - language.get_input_embeddings().weight.numel() + numel(inner.lm_head)
    return inner.model.vision_tower, inner.model.multi_modal_projector, llm_params


def build_ours(config: OwlConfig, stage: int) -> OwlModel:
    vocab = config.llm.vocab_size
    llm = build_llm(config.llm, vocab_size=vocab)
    model = OwlModel(build_vision(config.vision), VisualAbstractor(config.abstractor, llm.config.hidden_size), llm,
                     image_token_id=vocab - 1, config=config)
    return set_trainable(model, stage)


def build_llava(config: OwlConfig, stage: int) -> LlavaForConditionalGeneration:
    llm = build_llm(config.llm, vocab_size=config.llm.vocab_size)
    llava_config = LlavaConfig(vision_config=clip_config_from(config.vision).to_dict(),
                               text_config=llm.config.to_dict(), image_token_index=config.llm.vocab_size - 1,
                               image_seq_length=config.vision.num_tokens - 1)
    llava_config._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(llava_config)
    model.requires_grad_(False)
    if stage == 1:
        model.model.vision_tower.requires_grad_(True)
        model.model.multi_modal_projector.requires_grad_(True)
        return model
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    return get_peft_model(model, lora)


def batch_for(image_tokens: int, image_token_id: int, regime: Regime, config: OwlConfig, device) -> dict:
    size = config.vision.image_size
    text = torch.randint(1, image_token_id - 1, (regime.batch, regime.text_tokens), device=device)
    images = torch.full((regime.batch, image_tokens), image_token_id, device=device)
    input_ids = torch.cat([images, text], dim=1)
    labels = torch.cat([torch.full_like(images, -100), text], dim=1)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values": torch.randn(regime.batch, 3, size, size, device=device)}


def flops_per_sample(name: str, model, config: OwlConfig, regime: Regime, image_tokens: int) -> float:
    vision, connector, llm_params = components(name, model)
    connector_tokens = config.abstractor.num_queries if name == "ours" else image_tokens
    trained = regime.stage == 1
    vision_factor = 6 if trained else 2  # stage 2: the vision tower runs forward only
    connector_factor = 6 if trained or (name == "ours" and config.train_abstractor_in_stage2) else 2
    return (vision_factor * numel(vision) * config.vision.num_tokens + connector_factor * numel(connector)
            * connector_tokens + 4 * llm_params * (image_tokens + regime.text_tokens))


def time_steps(model, batch: dict, steps: int, warmup: int, device) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset and small batches, for a CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100/H200)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="ours with activation checkpointing (memory for compute)")
    parser.add_argument("--compile", action="store_true", help="ours through torch.compile")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = OwlConfig.from_name("tiny" if args.tiny else "owl-1b")
    regimes = [Regime(1, 4, 16), Regime(2, 2, 32)] if args.tiny else [Regime(1, 64, 64), Regime(2, 16, 512)]
    name_of_device = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"{config.name} on {name_of_device}; {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'stage':>5} {'model':<6}{'batch':>6}{'samples/s':>11}{'LLM tok/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>9}{'ours/peer':>10}")
    for regime in regimes:
        rates = {}
        for name, builder, image_tokens in (("ours", build_ours, config.abstractor.num_output_tokens),
                                            ("llava", build_llava, config.vision.num_tokens - 1)):
            torch.manual_seed(0)
            model = builder(config, regime.stage).to(device)
            model.train()
            if name == "ours" and args.activation_checkpointing:
                enable_activation_checkpointing(model)
            if name == "ours" and args.compile:
                model = torch.compile(model)
            batch = batch_for(image_tokens, config.llm.vocab_size - 1, regime, config, device)
            seconds, peak = time_steps(model, batch, args.steps, args.warmup, device)
            rates[name] = regime.batch / seconds
            tflops = flops_per_sample(name, model, config, regime, image_tokens) * rates[name] / 1e12
            llm_tokens = rates[name] * (image_tokens + regime.text_tokens)
            ratio = f"{rates['ours'] / rates['llava']:.2f}" if name == "llava" else ""
            print(f"{regime.stage:>5} {name:<6}{regime.batch:>6}{rates[name]:>11.1f}{llm_tokens:>11.0f}"
                  f"{tflops:>9.3g}{tflops / args.peak_tflops:>7.3f}{peak:>9.1f}{ratio:>10}")
            del model, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
