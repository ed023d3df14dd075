"""Shapes world: scenes of 1-3 colored shapes, their pictures, captions and checkable questions.

Every shape sits in its own column (left, center, right) and no kind or color repeats in a scene, so each
question has exactly one right answer.
Shapes are drawn large (about a third of the canvas) so a small ViT can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 130, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
COLUMNS = ("left", "center", "right")
NUMBER_WORDS = ("zero", "one", "two", "three")
QUESTION_TYPES = ("color", "shape", "count", "position")


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    column: int  # index into COLUMNS
    y_frac: float  # vertical center as a fraction of the height
    size_frac: float  # side as a fraction of the column width


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: int = 0  # seed of the textured gray background

    def describe(self, shape: Shape) -> str:
        return f"{shape.color} {shape.kind}"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str  # one of QUESTION_TYPES


def random_scene(rng: np.random.Generator, max_shapes: int = 3) -> Scene:
    """1..max_shapes shapes in distinct columns with distinct kinds and colors, so references are unique."""
    count = int(rng.integers(1, max_shapes + 1))
    columns = sorted(rng.choice(len(COLUMNS), size=count, replace=False).tolist())
    kinds = rng.choice(len(SHAPES), size=count, replace=False)
    colors = rng.choice(len(COLORS), size=count, replace=False)
    names = list(COLORS)
    shapes = tuple(Shape(SHAPES[int(k)], names[int(c)], column, y_frac=float(rng.uniform(0.35, 0.65)),
                         size_frac=float(rng.uniform(0.75, 0.95)))
                   for column, k, c in zip(columns, kinds, colors))
    return Scene(shapes, background=int(rng.integers(2**31)))


def background(seed: int, width: int, height: int) -> Image.Image:
    """A smooth gray texture (three random plane waves), unique per seed.

    Real photos are not flat; a flat background would make distinct scenes look alike to perceptual hashes.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    wave = sum(np.cos(2 * np.pi * (fx * x + fy * y) + phase)
               for fx, fy, phase in zip(*rng.uniform(-2.5, 2.5, (2, 3)), rng.uniform(0, 2 * np.pi, 3)))
    gray = np.clip(190 + 15 * wave, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))


def render(scene: Scene, width: int = 64, height: int = 64) -> Image.Image:
    image = background(scene.background, width, height)
    draw = ImageDraw.Draw(image)
    column_width = width / len(COLUMNS)
    for shape in scene.shapes:
        side = shape.size_frac * column_width
        cx, cy = (shape.column + 0.5) * column_width, shape.y_frac * height
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
        else:  # diamond
            draw.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=fill)
    return image


def caption(scene: Scene) -> str:
    parts = [f"a {scene.describe(s)} on the {COLUMNS[s.column]}" if s.column != 1
             else f"a {scene.describe(s)} in the center" for s in scene.shapes]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """One question of each type, answers of one word, each about a different shape where the scene has
    enough of them: asked together in one dialogue, no question names another question's answer (so the
    answers must come from the picture, not from the earlier turns)."""
    order = [scene.shapes[int(i)] for i in rng.permutation(len(scene.shapes))]
    color_target, shape_target, position_target = (order[i % len(order)] for i in (0, 1, 2 if len(order) == 3 else 0))
    return [
        QA(f"What color is the {color_target.kind}?", color_target.color, "color"),
        QA(f"What shape is the {shape_target.color} object?", shape_target.kind, "shape"),
        QA("How many shapes are there?", NUMBER_WORDS[len(scene.shapes)], "count"),
        QA(f"Where is the {position_target.kind}?", COLUMNS[position_target.column], "position"),
    ]


def follow_up(target: Shape) -> list[QA]:
    """A two-turn exchange whose second question refers back to the first one's shape ("it")."""
    return [QA(f"What color is the {target.kind}?", target.color, "color"),
            QA("Where is it?", COLUMNS[target.column], "position")]
