"""Ingest throughput: webdataset tars (img2dataset layout) -> Lance, images/s, at two image sizes.

    python bench/ingest.py [--pairs 4000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from owl_pipeline.config import SyntheticConfig  # noqa: E402
from owl_pipeline.data.ingest import find_shards, ingest  # noqa: E402
from owl_pipeline.data.synthetic import generate_corpus  # noqa: E402


def quiet(*_):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    args = parser.parse_args()
    print(f"{'image px':>9}{'rows in':>9}{'written':>9}{'MB of tars':>12}{'seconds':>9}{'images/s':>10}")
    for size in (64, 224):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "corpus"
            config = SyntheticConfig(num_pairs=args.pairs, shard_size=1000, image_size=size,
                                     num_instruction_images=1, num_text_only=1, num_eval_images=1)
            generate_corpus(root, config, log=quiet)
            shards = find_shards(root / "shards")
            megabytes = sum(p.stat().st_size for p in shards) / 1e6
            report = ingest(shards, Path(folder) / "pairs.lance", log=quiet)
            print(f"{size:>9}{args.pairs:>9}{report.rows_written:>9}{megabytes:>12.1f}{report.seconds:>9.2f}"
                  f"{report.rows_written / report.seconds:>10,.0f}")


if __name__ == "__main__":
    main()
