"""The embedded default's base-LLM curriculum: text in the Owl template that teaches a small LLM to answer
questions about a described scene by looking the answer up in the description.

Why these tasks (measured with bench/text_recall_probe.py; the issue on the embedded default has the study):
- ``described``: the target itself, a scene's description then its four questions. Alone it never gets past
  naming *an* attribute of the asked kind that the description mentions: that shortcut is learned in a
  hundred steps and leaves almost no gradient toward binding one object's color, kind and place.
- ``inplace``: the same lookups with the key word right before its answer ("red circle blue square", "circle
  red", "circle left"): retrieval with the query at the current token, the induction-head form that small
  attention models learn (a 3-layer model gets all three to 100% in ~1.2k steps at lr 1e-3, where 2 layers or
  lr 3e-3 with cosine decay stall). Learned first, it gives the question form the circuit to reuse.
- ``echo``: name a word of the last question ("Say the circle.") trains the head that carries the question's
  key word to the answer position, the other half of answering a question.
- ``colorq``: color questions only, the slowest lookup (attend to the kind, read the word before it).
- ``shapeq``: shape questions only, the last to reach 0.95 (0.86 after the first three phases).
- ``copy``: say the description back, what stage 1 asks the frozen LLM to do from image tokens.
Every description uses the shapes-world captions (with the LAION-style templates), every answer one word.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from owl_pipeline.data import scenes
from owl_pipeline.data.instructions import CONVERSATION_SCHEMA
from owl_pipeline.model.conversation import AI, HUMAN, Turn

Task = Callable[[np.random.Generator], list[Turn]]
_TEMPLATES = ("{}", "{}", "a picture of {}", "an image with {}", "{}, drawn on a plain background")


def description(scene: scenes.Scene, rng: np.random.Generator) -> str:
    """Mostly the bare caption (what the probe and the questions use), sometimes in a LAION-style template."""
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(scenes.caption(scene))


def scene_with(rng: np.random.Generator, shapes: int) -> scenes.Scene:
    while True:
        scene = scenes.random_scene(rng)
        if len(scene.shapes) == shapes:
            return scene


def described(rng: np.random.Generator) -> list[Turn]:
    scene = scenes.random_scene(rng)
    qas = scenes.questions(scene, rng)
    turns = [Turn(HUMAN, description(scene, rng))]
    for index in rng.permutation(len(qas)):
        turns += [Turn(HUMAN, qas[index].question), Turn(AI, qas[index].answer)]
    return turns


INPLACE = {"shape": ("Name the shape of each color.", lambda s: s.color, lambda s: s.kind),
           "color": ("Name the color of each shape.", lambda s: s.kind, lambda s: s.color),
           "position": ("Name the place of each shape.", lambda s: s.kind, lambda s: scenes.COLUMNS[s.column])}


def inplace(rng: np.random.Generator) -> list[Turn]:
    scene = scenes.random_scene(rng)
    request, key, value = INPLACE[list(INPLACE)[int(rng.integers(len(INPLACE)))]]
    order = [scene.shapes[int(i)] for i in rng.permutation(len(scene.shapes))]
    return [Turn(HUMAN, description(scene, rng)), Turn(HUMAN, request),
            Turn(AI, " ".join(f"{key(s)} {value(s)}" for s in order))]


def echo(rng: np.random.Generator) -> list[Turn]:
    scene = scenes.random_scene(rng)
    turns = [Turn(HUMAN, description(scene, rng))]
    for _ in range(3):
        shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
        if rng.random() < 0.5:
            turns += [Turn(HUMAN, f"Say the {shape.kind}."), Turn(AI, shape.kind)]
        else:
            turns += [Turn(HUMAN, f"Say the {shape.color} one."), Turn(AI, shape.color)]
    return turns


def colorq(rng: np.random.Generator) -> list[Turn]:
    scene = scene_with(rng, int(rng.integers(2, 4)))
    turns = [Turn(HUMAN, description(scene, rng))]
    for index in rng.integers(len(scene.shapes), size=3):  # with replacement: nothing to answer by elimination
        shape = scene.shapes[int(index)]
        turns += [Turn(HUMAN, f"What color is the {shape.kind}?"), Turn(AI, shape.color)]
    return turns


def shapeq(rng: np.random.Generator) -> list[Turn]:
    scene = scene_with(rng, int(rng.integers(2, 4)))
    turns = [Turn(HUMAN, description(scene, rng))]
    for index in rng.integers(len(scene.shapes), size=3):
        shape = scene.shapes[int(index)]
        turns += [Turn(HUMAN, f"What shape is the {shape.color} object?"), Turn(AI, shape.kind)]
    return turns


def say_back(rng: np.random.Generator) -> list[Turn]:
    text = description(scenes.random_scene(rng), rng)
    return [Turn(HUMAN, text), Turn(AI, text)]


TASKS: dict[str, Task] = {"described": described, "inplace": inplace, "echo": echo, "colorq": colorq,
                          "copy": say_back, "shapeq": shapeq}
_TOKENIZER_TASKS = ("described", "inplace", "echo", "colorq", "copy")  # fixed: the shipped LLM's tokenizer


def curriculum_rows(mix: dict[str, float], rows: int, seed: int) -> pa.Table:
    """``rows`` conversations drawn from the tasks in proportion to ``mix`` (CONVERSATION_SCHEMA, text only)."""
    unknown = set(mix) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown curriculum tasks {sorted(unknown)}; known: {sorted(TASKS)}")
    names = list(mix)
    weights = np.array([mix[name] for name in names], dtype=float)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(names), size=rows, p=weights / weights.sum())
    records = []
    for number, index in enumerate(chosen):
        turns = TASKS[names[index]](rng)
        records.append({"id": f"{names[index]}-{number}", "format": "curriculum", "task_type": names[index],
                        "turns": [{"role": t.role, "text": t.text} for t in turns], "images": [], "image_refs": []})
    return pa.Table.from_pylist(records, schema=CONVERSATION_SCHEMA)


def tokenizer_texts(seed: int = 0, conversations: int = 3000) -> list[str]:
    """Every kind of text the base LLM will meet in the pipeline: the curriculum's turns and the pipeline's
    own sentences (caption templates, instruction questions, the Owl template's fixed strings)."""
    from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, SYSTEM_PROMPT
    from owl_pipeline.data.synthetic import english_caption

    rng = np.random.default_rng([seed, 7])
    texts = []
    for _ in range(conversations):
        for name in _TOKENIZER_TASKS:
            texts += [turn.text for turn in TASKS[name](rng)]
        scene = scenes.random_scene(rng)
        texts += [english_caption(scene, rng), f"Answer the question about this picture: {scenes.caption(scene)}.",
                  "Describe the image."]
    return texts + [SYSTEM_PROMPT, HUMAN_PREFIX, AI_PREFIX] * 50
