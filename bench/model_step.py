"""Time one training step of the tiny preset on this machine (CPU, fp32), stage 1 and stage 2.

    python bench/model_step.py [--batch-sizes 16 64] [--steps 5] [--threads N]

Prints a table: stage, batch, sequence length, trainable parameters, median ms/step, samples/s.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from owl_pipeline.demo import demo_batch, demo_model  # noqa: E402
from owl_pipeline.train.timing import time_training_steps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"tiny preset, fp32, {args.threads} threads, torch {torch.__version__}")
    print(f"{'stage':>5} {'batch':>6} {'seq':>5} {'trainable':>10} {'ms/step':>9} {'samples/s':>10}")
    for batch_size in args.batch_sizes:
        for stage in (1, 2):
            model, processor = demo_model()
            batch = demo_batch(processor, batch_size)
            t = time_training_steps(model, batch, stage=stage, steps=args.steps)
            print(f"{stage:>5} {batch_size:>6} {t.seq_len:>5} {t.trainable:>10,} {t.median_s * 1000:>9.1f} "
                  f"{t.samples_per_s:>10.1f}")


if __name__ == "__main__":
    main()
