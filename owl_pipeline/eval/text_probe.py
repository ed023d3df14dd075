"""What an LLM answers from a scene's description alone: the shapes-world questions asked in the Owl template
with the description where the image would be (greedy, exact match). Stages 1 and 2 cannot beat what the
frozen LLM reads from text, so this bounds the embedded default's quality from the LLM side."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from owl_pipeline.data import scenes
from owl_pipeline.model.processor import HUMAN, OwlProcessor, Turn


@dataclass(frozen=True)
class ProbeItem:
    description: str
    qa: scenes.QA
    shapes: int


def probe_items(scenes_count: int = 100, seed: int = 123) -> list[ProbeItem]:
    """Four questions (one per type) on each of ``scenes_count`` fresh scenes: 400 by default."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(scenes_count):
        scene = scenes.random_scene(rng)
        items += [ProbeItem(scenes.caption(scene), qa, len(scene.shapes)) for qa in scenes.questions(scene, rng)]
    return items


@torch.no_grad()
def text_recall(llm, processor: OwlProcessor, items: list[ProbeItem], batch_size: int = 100) -> dict[str, float]:
    """Accuracy per question type of ``llm`` (an HF causal LM) answering ``items`` greedily."""
    was_training = llm.training
    llm.eval()
    tokenizer = processor.tokenizer
    correct: dict[str, list[bool]] = collections.defaultdict(list)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [processor.encode_turns_prompt([Turn(HUMAN, item.description), Turn(HUMAN, item.qa.question)],
                                                 []) for item in chunk]
        batch = processor.collate(prompts, padding_side="left")
        generated = llm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=4, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        for item, tokens in zip(chunk, generated[:, batch["input_ids"].shape[1]:]):
            correct[item.qa.kind].append(processor.decode(tokens) == item.qa.answer)
    llm.train(was_training)
    return {kind: round(sum(values) / len(values), 4) for kind, values in sorted(correct.items())}


@torch.no_grad()
def lookup_in_place(llm, processor: OwlProcessor, scenes_count: int = 60, seed: int = 5) -> dict[str, float]:
    """Teacher-forced accuracy of the curriculum's in-place lookups ("red circle", "circle red", "circle
    left"): the value after each key, per lookup; the part of the circuit that needs no question."""
    from owl_pipeline.data.lookup_curriculum import INPLACE
    from owl_pipeline.model.processor import AI

    was_training = llm.training
    llm.eval()
    rng = np.random.default_rng(seed)
    correct: dict[str, list[bool]] = collections.defaultdict(list)
    for _ in range(scenes_count):
        scene = scenes.random_scene(rng)
        for kind, (request, key, value) in INPLACE.items():
            order = [scene.shapes[int(i)] for i in rng.permutation(len(scene.shapes))]
            turns = [Turn(HUMAN, scenes.caption(scene)), Turn(HUMAN, request),
                     Turn(AI, " ".join(f"{key(s)} {value(s)}" for s in order))]
            sample = processor.encode(turns, [])
            predicted = llm(torch.tensor([sample.input_ids])).logits[0].argmax(-1)
            answer = [i for i, label in enumerate(sample.labels) if label != -100]
            correct[kind] += [bool(predicted[answer[j] - 1] == sample.input_ids[answer[j]])
                              for j in range(1, len(answer) - 1, 2)]  # the values, one token each
    llm.train(was_training)
    return {kind: round(sum(values) / len(values), 4) for kind, values in correct.items()}
