"""Versions of what a step read and wrote: the hash DVC records for a path, and a Lance dataset's version.

``dvc_md5`` is computed with DVC's own hashing (dvc-data), so it equals what ``dvc add`` / ``dvc.lock`` record
for the same file or folder ("<md5>.dir" for a folder): a Dagster materialization and a DVC commit of the same
bytes can be matched by it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def dvc_md5(path: str | Path) -> str | None:
    """DVC's hash of a file or folder; None if it does not exist."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path)
    if not path.exists():
        return None
    filesystem = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:  # dry run: nothing is copied into it
        _, _, hashed = build(HashFileDB(filesystem, scratch), str(path), filesystem, "md5", dry_run=True)
    return hashed.hash_info.value


def data_version(path: str | Path) -> dict[str, str | int | None]:
    """{"dvc_md5": ..., and "lance_version" for a Lance dataset}."""
    path = Path(path)
    version: dict[str, str | int | None] = {"dvc_md5": dvc_md5(path)}
    if path.suffix == ".lance" and (path / "_versions").is_dir():
        import lance

        version["lance_version"] = lance.dataset(str(path)).version
    return version
