"""Time one training step on this machine (CPU), stage 1 and stage 2, for each number of abstractor queries and
each precision asked for.

    python bench/model_step.py [--batch-sizes 16 64] [--steps 5] [--threads N]
    python bench/model_step.py --params params.yaml --batch-sizes 32 --queries 64 32 16 --precision fp32 bf16

Without ``--params`` the model is the plain tiny preset; with it, the params file's model section as the pipeline
builds it (the embedded default: the shipped LLM and CLIP, patch 4, the tower frozen and its outputs remembered).
Prints a table: stage, queries, precision, batch, sequence length, trainable parameters, median ms/step, samples/s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the shipped CLIP checkpoint holds its text tower too
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from owl_pipeline.config import OwlConfig  # noqa: E402
from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, IMAGE_TOKEN, SYSTEM_PROMPT  # noqa: E402
from owl_pipeline.data import scenes  # noqa: E402
from owl_pipeline.model.builders import (build_model, processor_config_for, set_trainable,  # noqa: E402
                                         trainable_parameters)
from owl_pipeline.model.owl import OwlModel  # noqa: E402
from owl_pipeline.model.processor import AI, HUMAN, OwlProcessor, Turn  # noqa: E402
from owl_pipeline.model.tokenizer import prepare_tokenizer, train_bpe_tokenizer  # noqa: E402
from owl_pipeline.pipeline.project import load_project  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def demo_model(seed: int = 0, preset: str = "tiny", queries: int | None = None,
               config: OwlConfig | None = None) -> tuple[OwlModel, OwlProcessor]:
    """The preset's model (or ``config``'s) with a tokenizer trained on shapes-world text."""
    rng = np.random.default_rng(seed)
    texts = [SYSTEM_PROMPT, HUMAN_PREFIX, AI_PREFIX] * 20  # the template compresses to a few tokens
    for _ in range(200):
        scene = scenes.random_scene(rng)
        texts.append(scenes.caption(scene))
        texts += [f"{qa.question} {qa.answer}" for qa in scenes.questions(scene, rng)]
    config = config or OwlConfig.from_name(preset)
    if queries:
        config.abstractor.num_queries = queries
    tokenizer = train_bpe_tokenizer(texts, vocab_size=config.llm.vocab_size)
    processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=False))
    torch.manual_seed(seed)
    return build_model(config, processor), processor


def demo_batch(processor: OwlProcessor, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One image and one question per sample, answers labelled."""
    rng = np.random.default_rng(seed + 1)
    size = processor.config.image_size
    samples = []
    for _ in range(batch_size):
        scene = scenes.random_scene(rng)
        qa = scenes.questions(scene, rng)[int(rng.integers(4))]
        turns = [Turn(HUMAN, IMAGE_TOKEN), Turn(HUMAN, qa.question), Turn(AI, qa.answer)]
        samples.append(processor.encode(turns, [scenes.render(scene, size, size)], train=True, rng=rng))
    return processor.collate(samples)


def params_model(params: str, queries: int | None = None, seed: int = 0) -> tuple[OwlModel, OwlProcessor]:
    """The params file's model section as the pipeline builds it: pretrained parts resolved (the shipped ones
    for the embedded default), the abstractor fresh."""
    from transformers import AutoTokenizer

    project = load_project(ROOT, params)
    config = copy.deepcopy(project.config.model)
    for part in (config.vision, config.llm):
        if part.pretrained:
            part.pretrained = project.resolve_pretrained(part.pretrained)
    if not config.llm.pretrained:  # an LLM built here: a tokenizer trained here too
        return demo_model(seed, queries=queries, config=config)
    if queries:
        config.abstractor.num_queries = queries
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(config.llm.pretrained))
    processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=False))
    torch.manual_seed(seed)
    return build_model(config, processor), processor


@dataclass
class StepTiming:
    stage: int
    batch_size: int
    seq_len: int
    trainable: int
    median_s: float
    first_loss: float
    last_loss: float

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.median_s


def time_training_steps(model: OwlModel, batch: dict[str, torch.Tensor], stage: int, steps: int = 5,
                        warmup: int = 1, lr: float = 1e-3, precision: str = "fp32") -> StepTiming:
    """Forward + backward + AdamW step on ``batch`` for the parameters ``stage`` trains; median seconds. A frozen
    tower's outputs are remembered, as the training loop does (so its forward runs in the warm-up step only)."""
    set_trainable(model, stage)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    frozen_tower = not any(p.requires_grad for p in model.vision.parameters())
    memo = model.vision.remembering_outputs(1 << 30) if frozen_tower else contextlib.nullcontext()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    durations, losses = [], []
    with memo:
        for step in range(warmup + steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            if step >= warmup:
                durations.append(time.perf_counter() - start)
            losses.append(loss.item())
    return StepTiming(stage=stage, batch_size=batch["input_ids"].shape[0], seq_len=batch["input_ids"].shape[1],
                      trainable=trainable_parameters(model), median_s=statistics.median(durations),
                      first_loss=losses[0], last_loss=losses[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--params", help="build the model as this params file's model section says (default: tiny)")
    parser.add_argument("--queries", type=int, nargs="+", default=[0],
                        help="abstractor queries (0: the config's own)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="bf16: the forward under CPU bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()
    print(f"{args.params or 'tiny preset'}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'stage':>5} {'queries':>8} {'precision':>9} {'batch':>6} {'seq':>5} {'trainable':>10} {'ms/step':>9} "
          f"{'samples/s':>10}")
    for batch_size in args.batch_sizes:
        for stage in (1, 2):
            for queries in args.queries:
                for precision in args.precision:
                    model, processor = (params_model(args.params, queries) if args.params
                                        else demo_model(queries=queries))
                    batch = demo_batch(processor, batch_size)
                    t = time_training_steps(model, batch, stage=stage, steps=args.steps, precision=precision)
                    print(f"{stage:>5} {model.config.abstractor.num_queries:>8} {precision:>9} {batch_size:>6} "
                          f"{t.seq_len:>5} {t.trainable:>10,} {t.median_s * 1000:>9.1f} {t.samples_per_s:>10.1f}")


if __name__ == "__main__":
    main()
