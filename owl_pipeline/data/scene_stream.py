"""An unlimited stream of fresh shapes-world scenes for pretraining the vision tower, from a seed stream of its
own: the corpus draws from ``default_rng([seed, 1..4])`` (data/synthetic.py) and the rung probes from fixed seeds
(eval/image_probe.py), so no pretraining scene is a training, instruction or evaluation scene.

Each scene comes as the picture (through a JPEG round trip, as the shards store pictures), its caption, the
same caption with one object's kind swapped for a kind the scene does not have (a hard negative: only a model
that binds kinds to objects tells the two apart), and the kind and color in each column (or none).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from owl_pipeline.data import scenes
from owl_pipeline.data.synthetic import CAPTION_TEMPLATES

VISION_PRETRAIN_STREAM = 1000  # the second word of the stream's seed; the corpus uses 1-4
NONE = 0  # label of an empty column; kinds and colors are numbered from 1
KINDS = ("none", *scenes.SHAPES)
COLORS = ("none", *scenes.COLORS)


@dataclass
class SceneBatch:
    images: list[Image.Image]
    captions: list[str]
    swapped_captions: list[str]  # one object's kind replaced by a kind absent from the scene
    kinds: np.ndarray  # (B, columns) index into KINDS
    colors: np.ndarray  # (B, columns) index into COLORS


def column_labels(scene: scenes.Scene) -> tuple[list[int], list[int]]:
    kinds, colors = [NONE] * len(scenes.COLUMNS), [NONE] * len(scenes.COLUMNS)
    for shape in scene.shapes:
        kinds[shape.column] = KINDS.index(shape.kind)
        colors[shape.column] = COLORS.index(shape.color)
    return kinds, colors


def swap_one_kind(scene: scenes.Scene, rng: np.random.Generator) -> scenes.Scene:
    """The scene with one object's kind changed to one no object in it has (so its caption is wrong)."""
    target = int(rng.integers(len(scene.shapes)))
    unused = [k for k in scenes.SHAPES if k not in {s.kind for s in scene.shapes}]
    changed = tuple(s if i != target else scenes.Shape(str(rng.choice(unused)), s.color, s.column, s.y_frac,
                                                       s.size_frac) for i, s in enumerate(scene.shapes))
    return scenes.Scene(changed, scene.background)


def jpeg_round_trip(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def pretraining_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, VISION_PRETRAIN_STREAM])


def scene_batch(rng: np.random.Generator, size: int, image_size: int = 64) -> SceneBatch:
    """``size`` fresh scenes drawn from ``rng`` (a ``pretraining_rng``)."""
    drawn = [scenes.random_scene(rng) for _ in range(size)]
    labels = [column_labels(scene) for scene in drawn]
    templates = [CAPTION_TEMPLATES[int(i)] for i in rng.integers(len(CAPTION_TEMPLATES), size=size)]  # as the corpus
    swapped = [swap_one_kind(s, rng) for s in drawn]
    return SceneBatch(images=[jpeg_round_trip(scenes.render(s, image_size, image_size)) for s in drawn],
                      captions=[t.format(scenes.caption(s)) for t, s in zip(templates, drawn)],
                      swapped_captions=[t.format(scenes.caption(s)) for t, s in zip(templates, swapped)],
                      kinds=np.array([k for k, _ in labels]), colors=np.array([c for _, c in labels]))
