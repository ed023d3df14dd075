"""Rung 2 of the embedded default, on stage-1 models already trained: the frozen LLM saying captions of fresh
scenes from the picture alone (exact match; color, kind and column per object) and a linear probe reading each
object's kind, color and column from the abstractor's tokens. Stage 1 is tuned on this number before stage 2 is
paid for.

    python bench/rung2.py PROJECT_OR_MODEL [...]      # e.g. a folder `owl run` finished in
    python bench/shapes_quality.py --until stage1_model --set model.abstractor.num_queries=16   # train, then this

Prints a row per model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from shapes_quality import rung2  # noqa: E402

COLUMNS = ("caption_exact", "caption_color", "caption_kind", "caption_column", "probe_kind", "probe_color",
           "probe_column")


def stage1_model_dir(path: Path) -> Path:
    """A project folder's stage-1 model, or the model folder itself."""
    inside = path / "assets" / "stage1_model" / "model"
    return inside if inside.is_dir() else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"{'model':<40}" + "".join(f"{c.replace('caption_', 'cap ').replace('probe_', 'probe '):>14}"
                                     for c in COLUMNS))
    for path in args.paths:
        figures = rung2(stage1_model_dir(path))
        print(f"{str(path)[-40:]:<40}" + "".join(f"{figures[c]:>14.3f}" for c in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
