"""Metadata-only filtering throughput on a LAION-format parquet, one core.

    python bench/filter_metadata.py [--rows 1000000]

Writes a synthetic LAION-5B-style parquet (URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark),
then times reading it, mapping it to the normalized schema and every metadata rule. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from owl_pipeline.config import FilterConfig  # noqa: E402
from owl_pipeline.data.filters import combine, metadata_masks  # noqa: E402
from owl_pipeline.data.ingest import LAION, normalize  # noqa: E402

WORDS = np.array("a the photo of red blue dog cat on in beautiful house car tree with and small large white black "
                 "city street man woman old new".split())


def laion_table(rows: int, seed: int = 0) -> pa.Table:
    """LAION-multilingual columns (LANGUAGE included): mostly unique captions and URLs, a few exact repeats,
    half the rows English."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 16, rows)
    words = WORDS[rng.integers(0, len(WORDS), (rows, 15))]
    captions = [" ".join(row[:n]) + f" {i % 9973}" for i, (row, n) in enumerate(zip(words, lengths))]
    return pa.table({
        "URL": pa.array([f"https://img.example/{i}.jpg" for i in rng.integers(0, rows, rows)]),
        "TEXT": pa.array(captions, pa.string()),
        "LANGUAGE": pa.array(np.where(rng.random(rows) < 0.5, "en", "de")),
        "WIDTH": rng.integers(32, 2048, rows).astype(np.float64),
        "HEIGHT": rng.integers(32, 2048, rows).astype(np.float64),
        "similarity": rng.uniform(0.1, 0.45, rows), "hash": rng.integers(-2**62, 2**62, rows),
        "punsafe": rng.uniform(0, 1, rows).astype(np.float32), "pwatermark": rng.uniform(0, 1, rows).astype(np.float32),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "laion.parquet"
        pq.write_table(laion_table(args.rows), path)
        timings = {}
        start = time.perf_counter()
        table = pq.read_table(path)
        timings["read parquet"] = time.perf_counter() - start
        start = time.perf_counter()
        normalized = pa.table(normalize(table, LAION))
        timings["map LAION -> normalized"] = time.perf_counter() - start
        config = FilterConfig()
        start = time.perf_counter()
        masks = metadata_masks(normalized, config)
        keep, counts = combine(masks, normalized.num_rows)
        timings["all metadata rules"] = time.perf_counter() - start
        for rule in masks:  # each rule alone, for the breakdown
            only = {name: False for name in masks}
            only[rule] = True
            single = FilterConfig(**{**config.__dict__, **_disable_all_but(rule)})
            start = time.perf_counter()
            metadata_masks(normalized, single)
            timings[f"  rule {rule}"] = time.perf_counter() - start
    total = timings["read parquet"] + timings["map LAION -> normalized"] + timings["all metadata rules"]
    print(f"metadata-only filtering, {args.rows:,} LAION rows, 1 thread; kept {counts.rows_out:,}")
    print(f"{'step':<32}{'seconds':>10}{'rows/s':>16}")
    for step, seconds in timings.items():
        print(f"{step:<32}{seconds:>10.3f}{args.rows / seconds:>16,.0f}")
    print(f"{'total (read + map + rules)':<32}{total:>10.3f}{args.rows / total:>16,.0f}")


def _disable_all_but(rule: str) -> dict:
    off = dict(min_similarity=None, min_caption_chars=None, min_caption_words=None, max_caption_words=None,
               english_only=False, max_nsfw=None, max_watermark=None, min_side=None, max_aspect=None,
               min_image_bytes=None, max_caption_repeats=None, dedup_url_text=False, dedup_image_text=False)
    on = {"caption_chars": ["min_caption_chars"], "caption_words": ["min_caption_words", "max_caption_words"],
          "english": ["english_only"], "similarity": ["min_similarity"], "nsfw": ["max_nsfw"],
          "watermark": ["max_watermark"], "min_side": ["min_side"], "aspect": ["max_aspect"],
          "image_bytes": ["min_image_bytes"], "caption_repeats": ["max_caption_repeats"],
          "dup_url_text": ["dedup_url_text"], "dup_image_text": ["dedup_image_text"]}[rule]
    defaults = FilterConfig()
    return {**off, **{name: getattr(defaults, name) for name in on}}


if __name__ == "__main__":
    main()
