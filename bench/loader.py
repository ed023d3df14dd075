"""Loader throughput at GPU rates: curated pairs in Lance -> the train transform at 224 px -> collated batches;
samples/s with 0, 1 and 2 spawn workers, and per worker, for pictures stored as downloaded (LAION-sized JPEGs)
and stored pre-resized (``filters.store_short_side``, the same function the filter step writes through).

    python bench/loader.py [--pairs 1000] [--source-size 640] [--store-short-side 256] [--batch-size 32]

An H100 at MFU 0.45 in stage 1 (owl-1b) takes ~430 samples/s: the per-worker rate says how many loader
processes (``num_workers``, up to 8 per GPU by default) keep it fed.
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

import lance  # noqa: E402

from owl_pipeline.config import FilterConfig, SyntheticConfig  # noqa: E402
from owl_pipeline.data.filters import stored_images  # noqa: E402
from owl_pipeline.data.ingest import PAIR_SCHEMA, find_shards, ingest  # noqa: E402
from owl_pipeline.data.loader import CaptionPairDataset, ResumableSampler, make_loader  # noqa: E402
from owl_pipeline.data.synthetic import generate_corpus  # noqa: E402
from owl_pipeline.model.processor import OwlProcessor, ProcessorConfig  # noqa: E402
from owl_pipeline.model.tokenizer import train_bpe_tokenizer  # noqa: E402

H100_STAGE1_SAMPLES_PER_S = 430


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


def pre_resized(source: Path, output: Path, short_side: int) -> Path:
    """``source`` with every picture as the filter step stores it with ``store_short_side``."""
    table = lance.dataset(str(source)).to_table()
    images = stored_images(table["image"], FilterConfig(store_short_side=short_side))
    table = table.set_column(table.schema.get_field_index("image"), "image", images).cast(PAIR_SCHEMA)
    lance.write_dataset(table, str(output), schema=PAIR_SCHEMA)  # as the filter step writes it
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--source-size", type=int, default=640, help="pictures as downloaded: this many px square")
    parser.add_argument("--store-short-side", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "corpus"
        generate_corpus(root, SyntheticConfig(num_pairs=args.pairs, image_size=args.source_size,
                                              num_instruction_images=1, num_text_only=1, num_eval_images=1), log=quiet)
        ingest(find_shards(root / "shards"), Path(folder) / "pairs.lance", log=quiet)
        tables = {f"as downloaded ({args.source_size} px)": Path(folder) / "pairs.lance",
                  f"pre-resized ({args.store_short_side} px)": pre_resized(
                      Path(folder) / "pairs.lance", Path(folder) / "small.lance", args.store_short_side)}
        tokenizer = train_bpe_tokenizer(["a red circle on the left and a blue square"] * 10, vocab_size=300)
        processor = OwlProcessor(tokenizer, ProcessorConfig(image_size=224, num_image_tokens=65))
        print(f"JPEG -> RandomResizedCrop 224 + flip, batch {args.batch_size}, {os.cpu_count()} cores; an H100 in "
              f"stage 1 takes ~{H100_STAGE1_SAMPLES_PER_S} samples/s")
        print(f"{'stored':<26}{'workers':>8}{'samples/s':>12}{'per worker':>12}{'workers for an H100':>21}")
        for name, path in tables.items():
            dataset = CaptionPairDataset(path, processor, train=True)
            for workers in args.workers:
                rate = samples_per_second(dataset, args.batch_size, args.batches, workers)
                per_worker = rate / max(workers, 1)
                needed = -(-H100_STAGE1_SAMPLES_PER_S // per_worker)
                print(f"{name:<26}{workers:>8}{rate:>12,.0f}{per_worker:>12,.0f}{needed:>21.0f}", flush=True)


if __name__ == "__main__":
    main()
