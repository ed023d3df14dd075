"""A tiny model and a shapes-world batch built in memory: what `owl run` and bench/model_step.py train on
before any data asset exists."""

from __future__ import annotations

import numpy as np
import torch

from owl_pipeline.config import OwlConfig
from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, IMAGE_TOKEN, SYSTEM_PROMPT
from owl_pipeline.data import scenes
from owl_pipeline.model.builders import build_model, processor_config_for
from owl_pipeline.model.owl import OwlModel
from owl_pipeline.model.processor import AI, HUMAN, OwlProcessor, Turn
from owl_pipeline.model.tokenizer import train_bpe_tokenizer


def demo_model(seed: int = 0, preset: str = "tiny") -> tuple[OwlModel, OwlProcessor]:
    """The preset's model with a tokenizer trained on shapes-world text."""
    rng = np.random.default_rng(seed)
    texts = [SYSTEM_PROMPT, HUMAN_PREFIX, AI_PREFIX] * 20  # the template compresses to a few tokens
    for _ in range(200):
        scene = scenes.random_scene(rng)
        texts.append(scenes.caption(scene))
        texts += [f"{qa.question} {qa.answer}" for qa in scenes.questions(scene, rng)]
    config = OwlConfig.from_name(preset)
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
