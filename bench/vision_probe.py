"""Rung 1 of the embedded default: does the pretrained vision tower see? A linear probe on the frozen tower's
tokens (each column's mean patch token and CLS) names each column's kind and color (or none) on held-out
renders, beside the same tower at random init; and zero-shot, the CLIP picks a picture's caption over the same
caption with one kind swapped (chance 0.5).

    python bench/vision_probe.py [--clip owl_pipeline/bundled/shapes-world-clip] [--train 1500 --test 500]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, CLIPModel, CLIPVisionModel  # noqa: E402

from owl_pipeline.data.scene_stream import scene_batch  # noqa: E402
from owl_pipeline.eval.image_probe import fresh_scenes, linear_probe, tower_features  # noqa: E402
from owl_pipeline.model.processor import ImageTransform  # noqa: E402
from owl_pipeline.model.vision import VisionEncoder  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "owl_pipeline" / "bundled" / "shapes-world-clip"


def probe(vision: VisionEncoder, train, test, patch: int) -> dict[str, float]:
    return linear_probe(tower_features(vision, train, patch_size=patch), train,
                        tower_features(vision, test, patch_size=patch), test)


@torch.no_grad()
def swap_retrieval(folder: Path, count: int = 500) -> float:
    """How often the CLIP scores a picture's caption above the same caption with one kind swapped."""
    clip, tokenizer = CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    batch = scene_batch(np.random.default_rng(4242), count)
    transform = ImageTransform(size=clip.config.vision_config.image_size, train=False)
    images = clip.get_image_features(pixel_values=torch.stack([transform(i) for i in batch.images]))
    texts = clip.get_text_features(**tokenizer(batch.captions + batch.swapped_captions, padding=True,
                                               return_tensors="pt"))
    images = torch.nn.functional.normalize(getattr(images, "pooler_output", images), dim=-1)
    true, swapped = torch.nn.functional.normalize(getattr(texts, "pooler_output", texts), dim=-1).chunk(2)
    return float(((images * true).sum(-1) > (images * swapped).sum(-1)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=BUNDLED)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    pretrained = VisionEncoder(CLIPVisionModel.from_pretrained(args.clip))
    random = VisionEncoder(CLIPVisionModel(pretrained.clip.config))
    patch = pretrained.clip.config.patch_size
    train, test = fresh_scenes(args.train, seed=777), fresh_scenes(args.test, seed=778)
    rows = [("random init", probe(random, train, test, patch)), (args.clip.name, probe(pretrained, train, test, patch))]
    print(f"linear probe on the frozen tower, {args.train} train / {args.test} held-out renders (JPEG q90)")
    print("| tower | kind (objects) | color (objects) | kind or none | color or none | column |")
    print("|---|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['kind_of_objects']:.3f} | {s['color_of_objects']:.3f} | {s['kind']:.3f} "
              f"| {s['color']:.3f} | {s['column']:.3f} |")
    retrieval = swap_retrieval(args.clip)
    print(f"zero-shot: caption over the one-kind-swapped caption, 500 scenes: {retrieval:.3f} (chance 0.5)")


if __name__ == "__main__":
    main()
