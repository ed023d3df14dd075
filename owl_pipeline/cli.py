"""`owl` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads at run time unless the user opts in


def _load_config(args):
    from owl_pipeline.config import OwlConfig

    return OwlConfig.from_yaml(args.config) if args.config else OwlConfig.from_name(args.preset)


def cmd_info(args) -> int:
    """Parameter counts of a preset or config, per component."""
    from owl_pipeline.model.builders import count_parameters

    config = _load_config(args)
    counts = count_parameters(config)
    print(f"{'component':<12}{'parameters':>16}")
    for name, count in counts.items():
        print(f"{name:<12}{count:>16,}")
    return 0


def cmd_run(args) -> int:
    """The main job. Today: build the tiny model and train it for a few real steps of each stage.

    The data, training, evaluation and registration steps join here as they land (issues 3-6).
    """
    from owl_pipeline.demo import demo_batch, demo_model
    from owl_pipeline.train.timing import time_training_steps

    model, processor = demo_model(seed=args.seed)
    batch = demo_batch(processor, batch_size=args.batch_size, seed=args.seed)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()):,} parameters; batch {args.batch_size}")
    for stage in (1, 2):
        t = time_training_steps(model, batch, stage=stage, steps=args.steps)
        print(f"stage {stage}: {t.trainable:,} trainable, {t.median_s * 1000:.0f} ms/step, "
              f"loss {t.first_loss:.3f} -> {t.last_loss:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="owl", description="mPLUG-Owl training pipeline")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameter counts of a model preset or config")
    info.add_argument("--preset", default="tiny", help="tiny | owl-1b | owl-7b")
    info.add_argument("--config", help="a model YAML (overrides --preset)")
    info.set_defaults(func=cmd_info)

    run = sub.add_parser("run", help="run the main job on the embedded default")
    run.add_argument("--steps", type=int, default=10)
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"owl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
