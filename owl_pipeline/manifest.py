"""The manifest beside a model folder that owl-pipeline trained and ships (owl_pipeline/bundled/): how it was
made (seed, settings, time, learning curve, scores) and the sha256 of every file, checked before it loads."""

from __future__ import annotations

import json
from pathlib import Path

from owl_pipeline.constants import PRETRAIN_MANIFEST_FILE as MANIFEST_FILE
from owl_pipeline.files import atomic_write_json, sha256_of


class ManifestMismatchError(ValueError):
    """A shipped model folder whose files are not the ones its manifest lists."""


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_of(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


def write_manifest(folder: Path, record: dict) -> dict:
    """``record`` plus the files' sha256, written last: a folder without a manifest was never finished."""
    manifest = {**record, "sha256": folder_hashes(folder)}
    atomic_write_json(Path(folder) / MANIFEST_FILE, manifest)
    return manifest


def verify_manifest(folder: Path, remake: str = "owl pretrain-llm") -> dict:
    """The manifest of ``folder`` after checking every file's sha256 (``remake``: the command that rebuilds it)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    actual = folder_hashes(folder)
    wrong = sorted(name for name, digest in manifest["sha256"].items() if actual.get(name) != digest)
    if wrong:
        raise ManifestMismatchError(f"{folder}: {', '.join(wrong)} do not match {MANIFEST_FILE} (damaged or "
                                    f"changed by hand); restore them from git or retrain with `{remake}`")
    return manifest
