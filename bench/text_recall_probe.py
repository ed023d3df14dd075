"""Rung 1 of the embedded default: what the base LLM answers from a scene's description alone (400 questions,
one of each type on 100 fresh scenes, greedy, exact match). Stages 1 and 2 cannot beat this.

    python bench/text_recall_probe.py                 # the bundled base LLM (owl_pipeline/bundled/shapes-world-llm)
    python bench/text_recall_probe.py --model DIR     # any base LLM folder (HF format)
    python bench/text_recall_probe.py --retrain       # train it again from the seed (owl pretrain-llm), printing
                                                      # the probe's learning curve against steps

Prints accuracy per question type, and the in-place lookups (the key word right before its answer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from owl_pipeline.config import LLMPretrainConfig  # noqa: E402
from owl_pipeline.data.scenes import QUESTION_TYPES  # noqa: E402
from owl_pipeline.eval.text_probe import lookup_in_place, probe_items, text_recall  # noqa: E402
from owl_pipeline.model.processor import OwlProcessor, ProcessorConfig  # noqa: E402
from owl_pipeline.pipeline.project import BUNDLED  # noqa: E402
from owl_pipeline.train.pretrain_llm import MANIFEST_FILE, pretrain_base_llm  # noqa: E402


def table(rows: list[dict]) -> None:
    columns = [*QUESTION_TYPES, "in_place_shape", "in_place_color", "in_place_position"]
    print(f"{'step':>6}" + "".join(f"{c:>18}" for c in columns))
    for row in rows:
        print(f"{row.get('step', '-'):>6}" + "".join(f"{row.get(c, float('nan')):>18.3f}" for c in columns))


def probe_folder(folder: Path) -> dict:
    llm = AutoModelForCausalLM.from_pretrained(folder)
    processor = OwlProcessor(AutoTokenizer.from_pretrained(folder), ProcessorConfig(image_size=64, num_image_tokens=65))
    return {**text_recall(llm, processor, probe_items()),
            **{f"in_place_{k}": v for k, v in lookup_in_place(llm, processor).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED / "shapes-world-llm"))
    parser.add_argument("--retrain", action="store_true", help="train from the seed first (about 25 min here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.retrain:
        with tempfile.TemporaryDirectory() as folder:
            result = pretrain_base_llm(Path(folder) / "llm", LLMPretrainConfig(seed=args.seed), log=lambda *_: None)
            print(f"retrained from seed {args.seed} in {result.seconds / 60:.1f} min; the probe against steps:")
            table(result.curve + [{"step": "final", **probe_folder(result.folder)}])
        return
    manifest = json.loads((Path(args.model) / MANIFEST_FILE).read_text()) if (Path(args.model) / MANIFEST_FILE
                                                                              ).is_file() else {}
    if manifest.get("curve"):
        print(f"{args.model}: trained from seed {manifest['seed']} in {manifest['seconds'] / 60:.1f} min; "
              "its probe against steps:")
        table(manifest["curve"])
    print(f"\n{args.model} now (400 fresh questions, 180 in-place lookups per kind):")
    table([{"step": "now", **probe_folder(Path(args.model))}])


if __name__ == "__main__":
    main()
