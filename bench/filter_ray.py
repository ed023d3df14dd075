"""The filter rules on the local path vs Ray Data with 1 and 2 workers (CPUs of a local Ray), and ingestion of
generated shards the same way. Prints a table.

    python bench/filter_ray.py [--rows 1000000] [--pairs 4000]

Filter: ``--rows`` LAION metadata rows (bench/filter_metadata.py's generator), every metadata rule, the kept
rows checked equal between the paths. Ingestion: ``--pairs`` shapes-world pairs in shards of 250, images/s.
Each Ray measurement runs in a fresh process with its own local Ray (its start-up is not counted; the
shuffles' fixed costs are).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from filter_metadata import laion_table  # noqa: E402
from owl_pipeline.config import FilterConfig, RayConfig, SyntheticConfig  # noqa: E402
from owl_pipeline.data.filters import combine, metadata_masks  # noqa: E402
from owl_pipeline.data.ingest import LAION, find_shards, ingest, normalize  # noqa: E402


def metadata_rows(path: Path, rows: int) -> None:
    table = pa.table(normalize(laion_table(rows), LAION))
    pq.write_table(table.append_column("row", pa.array(np.arange(rows, dtype=np.int64))), path)


def filter_local(path: Path) -> dict:
    start = time.perf_counter()
    table = pq.read_table(path)
    keep, counts = combine(metadata_masks(table, FilterConfig()), table.num_rows)
    return {"seconds": time.perf_counter() - start, "rows": table.num_rows, "kept": int(keep.sum()),
            "kept_sum": int(table["row"].to_numpy()[keep].sum())}


def filter_ray(path: Path, cpus: int) -> dict:
    from ray.data.expressions import col

    from owl_pipeline.data.ray_filters import metadata_rule_masks, rule_counts
    from owl_pipeline.data.ray_session import ray_session

    with ray_session(RayConfig(num_cpus=cpus), log=lambda *_: None) as ray:
        start = time.perf_counter()
        rows = ray.data.read_parquet(str(path), override_num_blocks=4 * cpus)
        masks = metadata_rule_masks(rows, FilterConfig(), partitions=2 * cpus, with_digests=False)
        counts = rule_counts(masks)
        kept = masks.filter(expr=col("keep")).select_columns(["row"])
        kept_sum = sum(int(t["row"].to_numpy().sum()) for t in ray.get(kept.to_arrow_refs()))
        return {"seconds": time.perf_counter() - start, "rows": counts.rows_in, "kept": counts.rows_out,
                "kept_sum": kept_sum}


def ingest_local(shards: Path, out: Path) -> dict:
    report = ingest(find_shards(shards), out, log=lambda *_: None, incremental=False)
    return {"seconds": report.seconds, "rows": report.rows_written}


def ingest_ray(shards: Path, out: Path, cpus: int) -> dict:
    from owl_pipeline.data.ray_ingest import ingest_ray as run

    report = run(find_shards(shards), out, RayConfig(num_cpus=cpus), log=lambda *_: None)
    return {"seconds": report.seconds, "rows": report.rows_written}


def _in_fresh_process(kind: str, *args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", kind, *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


MEASURES = {"filter_local": lambda p: filter_local(Path(p)), "filter_ray": lambda p, c: filter_ray(Path(p), int(c)),
            "ingest_local": lambda s, o: ingest_local(Path(s), Path(o)),
            "ingest_ray": lambda s, o, c: ingest_ray(Path(s), Path(o), int(c))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(MEASURES[args.measure[0]](*args.measure[1:])))
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        metadata_rows(folder / "laion.parquet", args.rows)
        local = _in_fresh_process("filter_local", folder / "laion.parquet")
        results.append(("filter, local (1 process)", local, "rows"))
        for cpus in (1, 2):
            ray_run = _in_fresh_process("filter_ray", folder / "laion.parquet", cpus)
            assert (ray_run["kept"], ray_run["kept_sum"]) == (local["kept"], local["kept_sum"]), (ray_run, local)
            results.append((f"filter, ray ({cpus} worker{'s' * (cpus > 1)})", ray_run, "rows"))
        from owl_pipeline.data.synthetic import generate_corpus

        generate_corpus(folder / "shapes", SyntheticConfig(num_pairs=args.pairs, shard_size=250), log=lambda *_: None)
        shards = folder / "shapes" / "shards"
        results.append(("ingest, local", _in_fresh_process("ingest_local", shards, folder / "local.lance"), "images"))
        for cpus in (1, 2):
            results.append((f"ingest, ray ({cpus} worker{'s' * (cpus > 1)})",
                            _in_fresh_process("ingest_ray", shards, folder / f"ray{cpus}.lance", cpus), "images"))
    print(f"filter: {args.rows:,} LAION metadata rows, every metadata rule (kept rows equal on every path); "
          f"ingest: {args.pairs:,} shapes-world pairs")
    print(f"{'path':<28}{'rows':>12}{'seconds':>10}{'per second':>14}")
    for name, result, unit in results:
        print(f"{name:<28}{result['rows']:>12,}{result['seconds']:>10.2f}{result['rows'] / result['seconds']:>14,.0f} "
              f"{unit}")


if __name__ == "__main__":
    main()
