"""Shapes world's CLIP as the LAION similarity scorer: the cosine similarity it gives each caption pair of a
generated corpus, clean captions against the injected mismatched ones (another scene's caption), as a histogram,
and the threshold that separates them best (the midpoint of the widest gap, else the balanced-error minimum).
`filters.min_similarity` in params.yaml is set from it.

    python bench/clip_similarity.py [--clip owl_pipeline/bundled/shapes-world-clip] [--pairs 2000] [--seed 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from owl_pipeline.config import SyntheticConfig  # noqa: E402
from owl_pipeline.data.clip_score import ClipScorer  # noqa: E402
from owl_pipeline.data.synthetic import CLEAN, make_pair_rows  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "owl_pipeline" / "bundled" / "shapes-world-clip"
MISMATCHED = "mismatched_caption"
BINS = np.round(np.arange(-1.0, 1.01, 0.1), 2)


def best_threshold(clean: np.ndarray, mismatched: np.ndarray) -> float:
    """The cut that misclassifies the smallest share of each group on average (balanced error)."""
    candidates = np.unique(np.concatenate([clean, mismatched]))
    errors = [(np.mean(clean < t) + np.mean(mismatched >= t)) / 2 for t in candidates]
    best = int(np.argmin(errors))
    below = candidates[best - 1] if best else candidates[best] - 0.01
    return float((below + candidates[best]) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=BUNDLED)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5, help="corpus seed (the committed corpus uses 0)")
    args = parser.parse_args()
    pairs = make_pair_rows(SyntheticConfig(seed=args.seed, num_pairs=args.pairs))
    rows = [r for r in pairs if r.fault in (CLEAN, MISMATCHED)]
    scores = ClipScorer(str(args.clip))([r.jpeg for r in rows], [r.caption for r in rows])
    groups = {name: scores[[r.fault == name for r in rows]] for name in (CLEAN, MISMATCHED)}
    print(f"CLIP similarity of {len(rows)} shapes-world pairs ({args.clip.name})")
    print("| similarity | " + " | ".join(groups) + " |\n|---|---|---|")
    for low, high in zip(BINS[:-1], BINS[1:]):
        counts = [int(((g >= low) & (g < high)).sum()) for g in groups.values()]
        print(f"| {low:+.1f} .. {high:+.1f} | " + " | ".join(map(str, counts)) + " |")
    clean, mismatched = groups[CLEAN], groups[MISMATCHED]
    threshold = best_threshold(clean, mismatched)
    print(f"clean: mean {clean.mean():.3f}, min {clean.min():.3f}; mismatched: mean {mismatched.mean():.3f}, "
          f"max {mismatched.max():.3f}")
    print(f"threshold {threshold:.3f}: keeps {np.mean(clean >= threshold):.3f} of clean, "
          f"{np.mean(mismatched >= threshold):.3f} of mismatched")


if __name__ == "__main__":
    main()
