"""One truth of "this step is up to date" for DVC too: after a step runs outside `dvc repro` (`owl run`, a
Dagster materialization, `owl step`), its stage is recorded in dvc.lock as DVC records a stage it ran
(`dvc commit`: the hashes of its deps, params and outs, the outs cached), so `dvc repro` right after runs
nothing and deletes nothing; a changed param then reruns exactly the downstream stages in both tools.
Inside `dvc repro` (DVC_STAGE is set) DVC records the stage itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


def dvc_stages(project_root: Path) -> set[str]:
    """The stages of the project's dvc.yaml; none when the project is not a DVC repository."""
    dvc_yaml = project_root / "dvc.yaml"
    if not (project_root / ".dvc").is_dir() or not dvc_yaml.is_file():
        return set()
    return set((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


def record_stage(project_root: Path, stage: str, log: Callable[[str], None] = print) -> bool:
    """`dvc commit` of ``stage``; False (with a warning when DVC failed) when nothing was recorded."""
    if os.environ.get("DVC_STAGE") or stage not in dvc_stages(project_root):
        return False
    done = subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", stage], cwd=project_root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        log(f"warning: `dvc commit {stage}` failed, so `dvc repro` will run it again: "
            f"{(done.stderr or done.stdout).strip()[-500:]}")
        return False
    return True
