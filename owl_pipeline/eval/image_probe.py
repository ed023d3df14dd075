"""Rung 2 of the embedded default: does the picture reach the LLM? After stage 1 the frozen LLM should say a
held-out scene's caption from the image alone, and the abstractor's output tokens should hold each object's
kind, color and column (a linear probe decodes them).

Caption accuracy is scored on the description (the LAION-style template around it is not in the picture):
exact match, and per attribute of each object in the caption (color, kind, column).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

import numpy as np
import torch

from owl_pipeline.data import scenes
from owl_pipeline.model.processor import HUMAN, OwlProcessor, Turn

_TEMPLATE_WRAPPERS = (re.compile(r"^a picture of (.*)$"), re.compile(r"^an image with (.*)$"),
                      re.compile(r"^(.*), drawn on a plain background$"))
_OBJECT = re.compile(r"an? (\w+) (\w+) (?:on the (left|right)|in the (center))")


@dataclass(frozen=True)
class SceneObject:
    color: str
    kind: str
    column: str


def fresh_scenes(count: int = 100, seed: int = 321) -> list[scenes.Scene]:
    rng = np.random.default_rng(seed)
    return [scenes.random_scene(rng) for _ in range(count)]


def strip_template(caption: str) -> str:
    for wrapper in _TEMPLATE_WRAPPERS:
        match = wrapper.match(caption)
        if match:
            return match.group(1)
    return caption


def parse_objects(caption: str) -> dict[str, SceneObject]:
    """column -> object, as a caption names them."""
    return {m.group(3) or m.group(4): SceneObject(m.group(1), m.group(2), m.group(3) or m.group(4))
            for m in _OBJECT.finditer(caption)}


def truth_objects(scene: scenes.Scene) -> dict[str, SceneObject]:
    return {scenes.COLUMNS[s.column]: SceneObject(s.color, s.kind, scenes.COLUMNS[s.column]) for s in scene.shapes}


@torch.no_grad()
def caption_accuracy(model, processor: OwlProcessor, scene_list: list[scenes.Scene], image_size: int = 64,
                     batch_size: int = 50) -> dict[str, float]:
    """Greedy captions from the image alone, scored against each scene's caption: exact match of the
    description, and accuracy per attribute over all objects (a missing object counts wrong)."""
    model.eval()
    scores: dict[str, list[bool]] = collections.defaultdict(list)
    for start in range(0, len(scene_list), batch_size):
        chunk = scene_list[start:start + batch_size]
        prompts = [processor.encode_turns_prompt([Turn(HUMAN, "<image>")], [scenes.render(s, image_size, image_size)])
                   for s in chunk]
        batch = processor.collate(prompts, padding_side="left")
        for scene, tokens in zip(chunk, model.generate(**batch, max_new_tokens=40)):
            said = strip_template(processor.decode(tokens))
            scores["exact"].append(said == scenes.caption(scene))
            found = parse_objects(said)
            for column, truth in truth_objects(scene).items():
                guess = found.get(column)
                scores["color"].append(guess is not None and guess.color == truth.color)
                scores["kind"].append(guess is not None and guess.kind == truth.kind)
                scores["column"].append(guess is not None)
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}


@torch.no_grad()
def abstractor_features(model, processor: OwlProcessor, scene_list: list[scenes.Scene],
                        image_size: int = 64) -> np.ndarray:
    """The abstractor's output tokens for each scene's picture, flattened: (scenes, tokens x width)."""
    model.eval()
    pixels = torch.stack([processor.eval_transform(scenes.render(s, image_size, image_size)) for s in scene_list])
    return model.encode_images(pixels).flatten(1).float().numpy()


@torch.no_grad()
def tower_features(vision, scene_list: list[scenes.Scene], image_size: int = 64, patch_size: int = 4,
                   jpeg: bool = True) -> np.ndarray:
    """What a linear probe reads from a vision tower alone: each column's mean patch token beside the CLS token
    (normed, as the abstractor sees them), concatenated: (scenes, (columns + 1) x width)."""
    from owl_pipeline.data.scene_stream import jpeg_round_trip
    from owl_pipeline.model.processor import ImageTransform
    from owl_pipeline.model.shapes_clip import column_pooling

    transform = ImageTransform(size=image_size, train=False)
    pictures = [scenes.render(s, image_size, image_size) for s in scene_list]
    pixels = torch.stack([transform(jpeg_round_trip(p) if jpeg else p) for p in pictures])
    tokens = vision.eval()(pixels)  # (N, 1 + P, D)
    columns = torch.einsum("cp,npd->ncd", column_pooling(image_size, patch_size, len(scenes.COLUMNS)), tokens[:, 1:])
    return torch.cat([tokens[:, :1], columns], dim=1).flatten(1).numpy()


def linear_probe(train_x: np.ndarray, train_scenes: list[scenes.Scene], test_x: np.ndarray,
                 test_scenes: list[scenes.Scene]) -> dict[str, float]:
    """Held-out accuracy of logistic regressions reading, for each column, the kind (or none) and the color
    (or none) of the object there from the abstractor's (or a tower's) tokens; ``*_of_objects`` counts only the
    columns that hold an object (chance: 1/4 for kind, 1/6 for color)."""
    from sklearn.linear_model import LogisticRegression

    def labels(scene_list, column, attribute):
        return [getattr(truth_objects(s).get(column), attribute, "none") for s in scene_list]

    scores = collections.defaultdict(list)
    for column in scenes.COLUMNS:
        for attribute in ("kind", "color"):
            target, truth = labels(train_scenes, column, attribute), labels(test_scenes, column, attribute)
            if len(set(target)) < 2:
                continue
            predicted = LogisticRegression(max_iter=2000, C=0.5).fit(train_x, target).predict(test_x)
            truth = np.array(truth)
            scores[attribute].append(float(np.mean(predicted == truth)))
            scores[f"{attribute}_of_objects"].append(float(np.mean((predicted == truth)[truth != "none"])))
            if attribute == "kind":  # whether there is an object in this column at all
                scores["column"].append(float(np.mean((predicted != "none") == (truth != "none"))))
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}
