"""Writing Lance datasets so that a failed write never leaves a dataset looking complete.

Lance commits a new version only when a write finishes: if the batch iterator raises (a bug, or no rows at
all), the previous version stays the latest and readers never see a partial one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import lance
import pyarrow as pa


class EmptyDatasetError(ValueError):
    """Every input row was skipped; nothing worth a new dataset version."""


def write_lance(batches: Iterable[pa.RecordBatch], schema: pa.Schema, uri: str | Path,
                message: str = "", append: bool = False) -> lance.LanceDataset:
    """Write ``batches`` as the new version of ``uri`` (created, overwritten, or appended to), atomically."""
    uri = Path(uri)
    exists = (uri / "_versions").exists()
    mode = ("append" if append else "overwrite") if exists else "create"
    source = _CheckedBatches(batches, uri)
    reader = pa.RecordBatchReader.from_batches(schema, source)
    try:
        return lance.write_dataset(reader, str(uri), schema=schema, mode=mode, commit_message=message or None)
    except OSError:
        # Lance reports an exception raised by our iterator as an OSError; raise the original instead.
        if source.error is not None:
            raise source.error from None
        raise


class _CheckedBatches:
    """Passes batches through, keeps the exception the source raised, and refuses to end with no rows."""

    def __init__(self, batches: Iterable[pa.RecordBatch], uri: Path):
        self.batches, self.uri, self.error = batches, uri, None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        rows = 0
        try:
            for batch in self.batches:
                rows += batch.num_rows
                if batch.num_rows:
                    yield batch
            if rows == 0:
                raise EmptyDatasetError(f"no rows to write to {self.uri}: every input was skipped (see the report)")
        except Exception as error:
            self.error = error
            raise
