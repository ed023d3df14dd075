"""The fast training path against the plain fp32 path, on this machine's accelerator (or the CPU).

    python bench/fast_path_check.py [--preset tiny] [--steps 5] [--stages 1 2] [--no-compile]

Same model, same batch, same optimizer steps: once in fp32 without autocast, once as the loop runs on a GPU
(bf16 autocast, frozen Linears stored in bf16, every repeated layer compiled, fused AdamW). Dropout is off in
both, so the only difference is arithmetic. Prints the losses per step and the largest relative difference;
exits 1 if it exceeds the bf16 tolerance (2e-2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from train_step import Regime, batch_for, build_ours  # noqa: E402

from owl_pipeline.config import OwlConfig, StageConfig  # noqa: E402
from owl_pipeline.train.optim import build_optimizer  # noqa: E402
from owl_pipeline.train.speed import apply_speed_options  # noqa: E402

BF16_TOLERANCE = 2e-2


def losses(config: OwlConfig, regime: Regime, steps: int, fast: bool, compile: bool, device) -> list[float]:
    torch.manual_seed(0)
    with device:
        model = build_ours(config, regime.stage)
    model.eval()  # no dropout: compiled and eager kernels draw their masks differently
    apply_speed_options(model, "bf16" if fast else "no", compile=fast and compile)
    optimizer = build_optimizer(model, StageConfig(lr=1e-4, weight_decay=0.0, vision_lr_scale=1.0))
    torch.manual_seed(1)
    batch = batch_for(config.abstractor.num_output_tokens, config.llm.vocab_size - 1, regime, config, device)
    history = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(loss.item())
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-compile", action="store_true", help="the fast path without torch.compile")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = OwlConfig.from_name(args.preset)
    worst = 0.0
    print(f"{args.preset} on {device}: fp32 vs bf16 autocast + bf16 frozen Linears"
          f"{'' if args.no_compile else ' + compiled layers'}")
    print(f"{'stage':>5}{'step':>5}{'fp32 loss':>12}{'fast loss':>12}{'rel diff':>10}")
    for stage in args.stages:
        regime = Regime(stage, batch=4, text_tokens=32)
        plain = losses(config, regime, args.steps, fast=False, compile=False, device=device)
        fast = losses(config, regime, args.steps, fast=True, compile=not args.no_compile, device=device)
        for step, (a, b) in enumerate(zip(plain, fast, strict=True), start=1):
            worst = max(worst, abs(b - a) / abs(a))
            print(f"{stage:>5}{step:>5}{a:>12.5f}{b:>12.5f}{abs(b - a) / abs(a):>10.2e}")
    verdict = "within" if worst <= BF16_TOLERANCE else "OUTSIDE"
    print(f"largest relative difference {worst:.2e}: {verdict} the bf16 tolerance {BF16_TOLERANCE}")
    sys.exit(0 if worst <= BF16_TOLERANCE else 1)


if __name__ == "__main__":
    main()
