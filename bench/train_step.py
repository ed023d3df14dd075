"""Training-step throughput of our model against the HF transformers LLaVA peer, both stages, one run.

    python bench/train_step.py                 # owl-1b size (CLIP ViT-L/14@224 + TinyLlama shape), on the GPU
    python bench/train_step.py --variants default eager ckpt whole-loss   # ours several ways, one peer row
    python bench/train_step.py --sweep-memory-gib 70   # and the largest micro-batch whose peak fits 70 GiB
    python bench/train_step.py --tiny          # the tiny preset on CPU, seconds (exercised by a test)

``default`` is what the training loop does with the committed settings and no flags (StageConfig's defaults,
resolved on this device as train/loop.py resolves them: compile "auto" = on for CUDA, the LM head and loss in
chunks of loss_chunk_positions, frozen Linears in bf16 on a GPU, fused AdamW, logits only where a label
follows). A variant changes it by "+"-joined options: eager (compile off), compile (compile on, also on a CPU),
ckpt (activation checkpointing), fp32-frozen (frozen weights left fp32, as autocast alone), whole-loss (the LM
head and loss in one piece). The peer runs as a user would run it: bf16 autocast, SDPA, fused AdamW.

Regimes (ARCHITECTURE.md section 8): stage 1 = LLM frozen, batch 64, 64 text tokens; stage 2 = LoRA r8 on q/v,
batch 16, 512 text tokens. Both models are randomly initialized at the same vision and LLM sizes; ours feeds
65 tokens per image to the LLM, LLaVA 256. Model FLOPs (train/flops.py, what the training loop logs) count 6N
per token through trained weights, 4N through frozen weights that still pass gradients, 2N through forward-only
weights (embedding lookups and attention scores not counted); MFU against --peak-tflops (989: H100/H200 bf16).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

VARIANT_OPTIONS = ("eager", "compile", "ckpt", "fp32-frozen", "whole-loss")
DEFAULT_NAMES = ("default", "base")  # "base": its name before compile defaulted to auto


def variant_options(variant: str) -> set[str]:
    options = set() if variant in DEFAULT_NAMES else set(variant.split("+"))
    if options - set(VARIANT_OPTIONS):
        raise SystemExit(f"unknown variant option(s) {sorted(options - set(VARIANT_OPTIONS))} in {variant!r}; "
                         f"join any of {VARIANT_OPTIONS} with '+', or say 'base'")
    return options


def parse_arguments() -> argparse.Namespace:
    """The options, with ``variants`` as {variant: its options}; a bad variant (or sweep variant) exits here."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset and small batches, for a CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100/H200)")
    parser.add_argument("--variants", nargs="+", default=["default"],
                        help=f"ours these ways: default, or options joined by '+' from {VARIANT_OPTIONS}")
    parser.add_argument("--sweep-memory-gib", type=float, default=None,
                        help="then double the default path's micro-batch until its peak memory passes this (or OOM)")
    parser.add_argument("--sweep-max-batch", type=int, default=None, help="the largest micro-batch the sweep tries")
    parser.add_argument("--sweep-variant", default="default",
                        help="the path the sweep measures (eager: no minute of compiling per batch size; compiled "
                             "kernels take no more memory than eager ones, so its answer is on the safe side)")
    args = parser.parse_args()
    args.variants = {variant: variant_options(variant) for variant in args.variants}
    variant_options(args.sweep_variant)
    return args


# Read before the imports below, which take seconds: a mistyped variant is an error at once.
ARGUMENTS = parse_arguments() if __name__ == "__main__" else None

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from owl_pipeline.config import OwlConfig, StageConfig  # noqa: E402
from owl_pipeline.model.abstractor import VisualAbstractor  # noqa: E402
from owl_pipeline.model.builders import build_llm, build_vision, set_train_modes, set_trainable  # noqa: E402
from owl_pipeline.model.owl import OwlModel  # noqa: E402
from owl_pipeline.model.vision import clip_config_from  # noqa: E402
from owl_pipeline.train.flops import flops_per_token, step_flops  # noqa: E402
from owl_pipeline.train.optim import build_optimizer  # noqa: E402
from owl_pipeline.train.speed import apply_speed_options, resolve_compile  # noqa: E402


@dataclass
class Regime:
    stage: int
    batch: int
    text_tokens: int


def parts(name: str, model) -> list[torch.nn.Module]:
    """Vision tower, connector and LLM (output head included), in forward order, for the FLOP count."""
    if name == "ours":
        return [model.vision, model.abstractor, model.llm]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = torch.nn.ModuleList([inner.model.language_model, inner.lm_head])
    return [inner.model.vision_tower, inner.model.multi_modal_projector, language]


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
    """Model FLOPs per sample (train/flops.py, as the training loop logs them): vision tokens, the tokens the
    connector outputs (ours: its queries), LLM tokens."""
    connector_tokens = config.abstractor.num_queries if name == "ours" else image_tokens
    tokens = [config.vision.num_tokens, connector_tokens, image_tokens + regime.text_tokens]
    return step_flops(flops_per_token(parts(name, model)), tokens)


def prepare_ours(model: OwlModel, options: set[str], device) -> torch.optim.Optimizer:
    """The training loop's preparation (train/loop.py) with the committed defaults, changed by ``options``."""
    defaults = StageConfig(lr=1e-5, weight_decay=0.0, vision_lr_scale=1.0)
    precision = "bf16" if device.type == "cuda" and "fp32-frozen" not in options else "no"
    compiled = resolve_compile(defaults.compile, device.type)
    compiled = (compiled or "compile" in options) and "eager" not in options
    apply_speed_options(model, precision, compile=compiled,
                        activation_checkpointing=defaults.activation_checkpointing or "ckpt" in options)
    model.loss_chunk_positions = None if "whole-loss" in options else defaults.loss_chunk_positions
    return build_optimizer(model, defaults)


def prepare_peer(model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, fused=all(p.is_cuda for p in params) or None)


def time_steps(model, optimizer, batch: dict, steps: int, warmup: int, device) -> tuple[float, float]:
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
    return seconds, peak_gib(device)


def peak_gib(device) -> float:
    """The step's peak memory: the CUDA allocator's since its reset; on a CPU, the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(args: argparse.Namespace) -> None:
    variants = args.variants
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = OwlConfig.from_name("tiny" if args.tiny else "owl-1b")
    regimes = [Regime(1, 4, 16), Regime(2, 2, 32)] if args.tiny else [Regime(1, 64, 64), Regime(2, 16, 512)]
    name_of_device = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"{config.name} on {name_of_device}; {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'stage':>5} {'model':<24}{'batch':>6}{'samples/s':>11}{'LLM tok/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>9}{'ours/peer':>10}")
    for regime in regimes:
        peer_rate, peer_row = time_model("llava", None, config, regime, device, args)
        print(peer_row, flush=True)
        for variant, options in variants.items():
            rate, row = time_model("ours" if variant in DEFAULT_NAMES else f"ours+{variant}", options, config,
                                   regime, device, args)
            print(f"{row}{rate / peer_rate:>10.2f}", flush=True)
    if args.sweep_memory_gib is not None:
        largest = {regime.stage: sweep(regime, config, device, args) for regime in regimes}
        print(f"largest micro-batch within {args.sweep_memory_gib:g} GiB, {args.sweep_variant} path: "
              + ", ".join(f"stage {stage} {batch}" for stage, batch in largest.items()))


def sweep(regime: Regime, config: OwlConfig, device, args) -> int | None:
    """Double the micro-batch from the regime's until the peak memory of ``--sweep-variant`` passes the budget (or
    the card runs out); one row each. The largest batch that fitted, or None."""
    limit = args.sweep_max_batch or (64 if args.tiny else 4096)
    largest, batch = None, regime.batch
    while batch <= limit:
        try:
            rate, row = time_model("ours sweep", variant_options(args.sweep_variant), config,
                                   Regime(regime.stage, batch, regime.text_tokens), device, args)
        except torch.cuda.OutOfMemoryError:
            print(f"{regime.stage:>5} {'ours sweep':<24}{batch:>6}  out of memory", flush=True)
            torch.cuda.empty_cache()
            break
        fits = float(row.split()[-1]) <= args.sweep_memory_gib
        print(f"{row}{'fits' if fits else 'over':>10}", flush=True)
        if not fits:
            break
        largest, batch = batch, batch * 2
    return largest


def time_model(label: str, options: set[str] | None, config: OwlConfig, regime: Regime, device,
               args) -> tuple[float, str]:
    """Samples/s of ours (``options`` given) or the peer in ``regime``, and its table row (ratio to come)."""
    name = "llava" if options is None else "ours"
    image_tokens = config.abstractor.num_output_tokens if name == "ours" else config.vision.num_tokens - 1
    torch.manual_seed(0)
    with device:  # random init on the device: seconds instead of a minute on the CPU at owl-1b size
        model = build_llava(config, regime.stage) if options is None else build_ours(config, regime.stage)
    if options is None:
        model.train()
        optimizer = prepare_peer(model)
    else:
        set_train_modes(model)
        optimizer = prepare_ours(model, options, device)
    batch = batch_for(image_tokens, config.llm.vocab_size - 1, regime, config, device)
    seconds, peak = time_steps(model, optimizer, batch, args.steps, args.warmup, device)
    rate = regime.batch / seconds
    tflops = flops_per_sample(name, model, config, regime, image_tokens) * rate / 1e12
    llm_tokens = rate * (image_tokens + regime.text_tokens)
    del model, optimizer, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rate, (f"{regime.stage:>5} {label:<24}{regime.batch:>6}{rate:>11.1f}{llm_tokens:>11.0f}"
                  f"{tflops:>9.3g}{tflops / args.peak_tflops:>7.3f}{peak:>9.1f}")


if __name__ == "__main__":
    main(ARGUMENTS)
