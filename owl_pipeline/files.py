"""Small state files written so that a crash never leaves half of one, and read so that a damaged one never
stops a run: JSON records (step reports, the ingested-shards record, lineage records); the sha256 of a file; and a
folder copied by hard links."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def name_in(root: Path, path: str | Path) -> str:
    """How records name ``path``: relative to ``root`` (resolved) where it lies inside it, so a moved or copied
    project still matches them; else its absolute path."""
    resolved = Path(path).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def update_with_file(digest, path: str | Path) -> None:
    """Feed ``path``'s bytes to a hashlib ``digest`` in 16 MiB blocks (weights can be larger than memory)."""
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            digest.update(block)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()


def link_or_copy_tree(source: Path, output: Path) -> Path:
    """``output`` becomes a copy of the folder ``source``: hard links (no second copy of the bytes), or a copy
    where the two folders are on different file systems. What was at ``output`` is removed first."""
    shutil.rmtree(output, ignore_errors=True)
    try:
        shutil.copytree(source, output, copy_function=os.link)
    except OSError:
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(source, output)
    return output


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader sees the old
    file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_json_or_none(path: str | Path, warn: Callable[[str], None] = print) -> Any:
    """The JSON in ``path``; None when it does not exist, or (with a warning naming it) cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        warn(f"warning: ignoring {path}: it cannot be read ({error}); what it recorded is redone")
        return None
