"""What the base LLM can answer from text alone: the shapes-world questions asked with the scene's description
where the image would be. Stages 1 and 2 cannot beat this, so it bounds the quality bar from the LLM side.

    python bench/text_recall_probe.py [--set synthetic.num_text_only=8000 base_llm.train.max_steps=1500 ...]

Runs the data steps and the base_llm step in a temporary folder, then greedy answers to 400 questions on 100
fresh scenes; prints accuracy per question type.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from shapes_quality import apply_overrides  # noqa: E402

from owl_pipeline.pipeline.graph import DATA_STEPS  # noqa: E402
from owl_pipeline.pipeline.project import Project  # noqa: E402
from owl_pipeline.pipeline.runner import run_step  # noqa: E402
from owl_pipeline.config import PipelineConfig, from_mapping  # noqa: E402
from owl_pipeline.data import scenes  # noqa: E402
from owl_pipeline.model.builders import from_pretrained  # noqa: E402
from owl_pipeline.model.processor import HUMAN, EncodedSample, Turn, render_conversation  # noqa: E402
from owl_pipeline.train.loop import MODEL_DIR  # noqa: E402


def text_prompt(processor, description: str, question: str) -> EncodedSample:
    text, _ = render_conversation([Turn(HUMAN, description), Turn(HUMAN, question)])
    tokenizer = processor.tokenizer
    ids = tokenizer(text + "\nAI:", add_special_tokens=False)["input_ids"]
    ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
    return EncodedSample(ids, None, torch.empty(0, 3, processor.config.image_size, processor.config.image_size))


@torch.no_grad()
def probe(model_dir: Path, scenes_count: int = 100, seed: int = 123) -> dict[str, float]:
    model, processor = from_pretrained(model_dir)
    model.eval()
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(scenes_count):
        scene = scenes.random_scene(rng)
        items += [(scenes.caption(scene), qa) for qa in scenes.questions(scene, rng)]
    correct = collections.defaultdict(list)
    for start in range(0, len(items), 50):
        chunk = items[start:start + 50]
        batch = processor.collate([text_prompt(processor, d, qa.question) for d, qa in chunk], padding_side="left")
        for (_, qa), tokens in zip(chunk, model.generate(**batch, max_new_tokens=5)):
            correct[qa.kind].append(processor.decode(tokens) == qa.answer)
    return {kind: sum(v) / len(v) for kind, v in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = parser.parse_args()
    data = apply_overrides(yaml.safe_load(Path(args.params).read_text()), args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        project = Project(from_mapping(PipelineConfig, data, "params"), folder)
        start = time.perf_counter()
        for name in (*DATA_STEPS, "base_llm"):
            run_step(name, project, log=lambda *_: None)
        seconds = time.perf_counter() - start
        scores = probe(project.base_llm / MODEL_DIR)
    print(f"overrides: {' '.join(args.overrides) or '(none)'}; data + base LLM in {seconds:.0f} s")
    print("".join(f"{k:>10}" for k in scenes.QUESTION_TYPES))
    print("".join(f"{scores[k]:>10.2f}" for k in scenes.QUESTION_TYPES))


if __name__ == "__main__":
    main()
