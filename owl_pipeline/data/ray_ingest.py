"""Ingestion on Ray (``engine: {raw_pairs: ray}``): every shard read by a Ray task with the local path's own
reader (``ingest.read_shard``), the rows written to Lance from the cluster by lance-ray.

What stays as the local path has it: planning (which shards are new), the lock, the record of ingested shards
(``ingest.ingest`` does all three and calls ``write_shards`` here), the skipped-and-counted reasons, and the
rule for a key seen twice in a shard (the first one is kept). A sample is its shard and key, so that rule needs
nothing beyond the shard's own task.
"""

from __future__ import annotations

import time
from pathlib import Path

import lance
import pyarrow as pa

from owl_pipeline.config import RayConfig
from owl_pipeline.data.images import DEFAULT_MAX_PIXELS
from owl_pipeline.data.ingest import (MAX_PROBLEM_EXAMPLES, PAIR_SCHEMA, IngestReport, ingest, log_written,
                                      read_shard)
from owl_pipeline.data.lance_io import EmptyDatasetError
from owl_pipeline.data.ray_session import ray_session


def _read_shard_task(path: str, shard: str, max_pixels: int) -> tuple[pa.Table, IngestReport]:
    """One shard as a table, and its own report."""
    report = IngestReport(max_pixels=max_pixels)
    return pa.Table.from_batches(list(read_shard(Path(path), shard, report)), PAIR_SCHEMA), report


def _merge(total: IngestReport, part: IngestReport) -> None:
    total.skipped.update(part.skipped)
    total.failed_shards.update(part.failed_shards)
    total.incomplete_shards.update(part.incomplete_shards)
    total.problems.extend(part.problems[:MAX_PROBLEM_EXAMPLES - len(total.problems)])


def write_shards_ray(ray_config: RayConfig):
    """The ``write_shards`` of ``ingest.ingest`` that reads each shard in a Ray task."""

    def write(shards: list[Path], names: dict[Path, str], output: Path, report: IngestReport, append: bool,
              log) -> lance.LanceDataset:
        import lance_ray

        start = time.perf_counter()
        with ray_session(ray_config, log) as ray:
            task = ray.remote(_read_shard_task).options(num_returns=2)
            refs = [task.remote(str(p), names[Path(p)], report.max_pixels) for p in shards]
            tables, parts = [r[0] for r in refs], ray.get([r[1] for r in refs])
            for path, part in zip(shards, parts):
                _merge(report, part)
                log(f"ingest (ray): shard {Path(path).name} read, {sum(part.skipped.values())} samples skipped"
                    + (f", failed: {part.failed_shards}" if part.failed_shards else ""))
            rows = ray.data.from_arrow_refs(tables).materialize()
            report.rows_written = rows.count()
            if report.rows_written == 0:
                raise EmptyDatasetError(f"no rows to write to {output}: every input was skipped (see the report)")
            mode = "append" if append else ("overwrite" if (output / "_versions").exists() else "create")
            lance_ray.write_lance(rows, str(output), schema=PAIR_SCHEMA, mode=mode)  # in shard order (ray_session)
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

