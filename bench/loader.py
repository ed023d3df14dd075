"""Loader throughput: curated pairs in Lance -> train transform at 224 px -> collated batches, samples/s with
0, 1 and 2 spawn workers.

    python bench/loader.py [--pairs 3000] [--batch-size 32] [--batches 30]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from owl_pipeline.config import SyntheticConfig  # noqa: E402
from owl_pipeline.data.ingest import find_shards, ingest  # noqa: E402
from owl_pipeline.data.loader import CaptionPairDataset, ResumableSampler, make_loader  # noqa: E402
from owl_pipeline.data.synthetic import generate_corpus  # noqa: E402
from owl_pipeline.model.processor import OwlProcessor, ProcessorConfig  # noqa: E402
from owl_pipeline.model.tokenizer import train_bpe_tokenizer  # noqa: E402


def quiet(*_):
    pass


def samples_per_second(dataset, batch_size: int, batches: int, workers: int) -> float:
    loader = make_loader(dataset, batch_size, ResumableSampler(len(dataset), seed=0), num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # workers started and warm
    start = time.perf_counter()
    for _ in itertools.islice(iterator, batches):
        pass
    rate = batches * batch_size / (time.perf_counter() - start)
    del iterator, loader  # stop the workers before the next configuration starts its own
    gc.collect()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "corpus"
        generate_corpus(root, SyntheticConfig(num_pairs=args.pairs, image_size=256, num_instruction_images=1,
                                              num_text_only=1, num_eval_images=1), log=quiet)
        ingest(find_shards(root / "shards"), Path(folder) / "pairs.lance", log=quiet)
        tokenizer = train_bpe_tokenizer(["a red circle on the left and a blue square"] * 10, vocab_size=300)
        processor = OwlProcessor(tokenizer, ProcessorConfig(image_size=224, num_image_tokens=65))
        dataset = CaptionPairDataset(Path(folder) / "pairs.lance", processor, train=True)
        print(f"256 px JPEGs -> RandomResizedCrop 224 + flip, batch {args.batch_size}, {os.cpu_count()} cores")
        print(f"{'workers':>8}{'samples/s':>12}")
        for workers in (0, 1, 2):
            print(f"{workers:>8}{samples_per_second(dataset, args.batch_size, args.batches, workers):>12,.0f}")


if __name__ == "__main__":
    main()
