"""Ingestion on Ray (``engine: {raw_pairs: ray}``): every shard read by a Ray task with the local path's own
reader (``ingest.read_shard``), the rows written to Lance from the cluster by lance-ray.

What stays as the local path has it: planning (which shards are new), the lock, the record of ingested shards
(``ingest.ingest`` does all three and calls ``write_shards`` here), the skipped-and-counted reasons, and the
rule for a key seen twice (the first one in shard order is kept, a key already in the dataset wins over an
appended one). That rule is the one set-wide step: keys are grouped on the cluster, and only the keys that occur
more than once come back to the driver.
"""

from __future__ import annotations

import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

from owl_pipeline.config import RayConfig
from owl_pipeline.data.images import DEFAULT_MAX_PIXELS
from owl_pipeline.data.ingest import (MAX_PROBLEM_EXAMPLES, PAIR_SCHEMA, IngestReport, ingest, log_written,
                                      read_shard)
from owl_pipeline.data.lance_io import EmptyDatasetError
from owl_pipeline.data.ray_session import ray_session, shuffle_partitions

EXISTING = -1  # the shard order of rows already in the dataset (append mode): they come first


def _read_shard_task(path: str, shard: str, order: int, max_pixels: int) -> tuple[pa.Table, IngestReport]:
    """One shard as a table (plus its place in the shard order) and its own report."""
    report = IngestReport(max_pixels=max_pixels)
    table = pa.Table.from_batches(list(read_shard(Path(path), shard, report)), PAIR_SCHEMA)
    return table.append_column("shard_order", pa.array(np.full(table.num_rows, order, dtype=np.int64))), report


def _merge(total: IngestReport, part: IngestReport) -> None:
    total.skipped.update(part.skipped)
    total.failed_shards.update(part.failed_shards)
    total.incomplete_shards.update(part.incomplete_shards)
    total.problems.extend(part.problems[:MAX_PROBLEM_EXAMPLES - len(total.problems)])


def _repeated_keys(ray, rows, output: Path, append: bool, partitions: int) -> dict[str, int]:
    """key -> the shard order whose row is kept, for the keys seen more than once (few, or none)."""
    from ray.data.aggregate import Count, Min
    from ray.data.expressions import col

    keys = rows.select_columns(["key", "shard_order"])
    if append:
        existing = ray.data.read_lance(str(output), columns=["key"]).map_batches(
            lambda batch: batch.append_column("shard_order", pa.array(np.full(batch.num_rows, EXISTING))),
            batch_format="pyarrow")
        keys = existing.union(keys)
    groups = keys.groupby("key", num_partitions=partitions).aggregate(Count(alias_name="n"),
                                                                       Min("shard_order", alias_name="first"))
    repeated = groups.filter(expr=col("n") > 1).take_all()
    return {row["key"]: int(row["first"]) for row in repeated}


def _drop_repeats(batch: pa.Table, first: dict[str, int]) -> pa.Table:
    keys, orders = batch["key"].to_pylist(), batch["shard_order"].to_numpy()
    keep = np.array([first.get(k, order) == order for k, order in zip(keys, orders)], dtype=bool)
    return batch.filter(pa.array(keep)).drop_columns(["shard_order"])


def write_shards_ray(ray_config: RayConfig):
    """The ``write_shards`` of ``ingest.ingest`` that reads each shard in a Ray task."""

    def write(shards: list[Path], names: dict[Path, str], output: Path, report: IngestReport, append: bool,
              log) -> lance.LanceDataset:
        import lance_ray

        start = time.perf_counter()
        with ray_session(ray_config, log) as ray:
            task = ray.remote(_read_shard_task).options(num_returns=2)
            refs = [task.remote(str(p), names[Path(p)], order, report.max_pixels) for order, p in enumerate(shards)]
            tables, parts = [r[0] for r in refs], ray.get([r[1] for r in refs])
            for path, part in zip(shards, parts):
                _merge(report, part)
                log(f"ingest (ray): shard {Path(path).name} read, {sum(part.skipped.values())} samples skipped"
                    + (f", failed: {part.failed_shards}" if part.failed_shards else ""))
            rows = ray.data.from_arrow_refs(tables).materialize()
            read = rows.count()
            first = _repeated_keys(ray, rows, output, append, shuffle_partitions(ray, ray_config))
            kept = rows.map_batches(_drop_repeats, batch_format="pyarrow", fn_kwargs=dict(first=first)).materialize()
            report.rows_written = kept.count()
            if read > report.rows_written:
                report.skipped["duplicate_key"] += read - report.rows_written
            if report.rows_written == 0:
                raise EmptyDatasetError(f"no rows to write to {output}: every input was skipped (see the report)")
            mode = "append" if append else ("overwrite" if (output / "_versions").exists() else "create")
            lance_ray.write_lance(kept, str(output), schema=PAIR_SCHEMA, mode=mode)  # in shard order (ray_session)
        dataset = lance.dataset(str(output))
        report.lance_version, report.seconds = dataset.version, time.perf_counter() - start
        log_written(report, output, log)
        return dataset

    return write


def ingest_ray(shards: list[Path], output: str | Path, ray_config: RayConfig, log=print, incremental: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> IngestReport:
    """``ingest.ingest`` with the shards read by Ray tasks."""
    return ingest(shards, output, log=log, incremental=incremental, max_pixels=max_pixels,
                  write_shards=write_shards_ray(ray_config))

