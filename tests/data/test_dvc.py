"""The project's DVC setup, for real: our .dvc/config in a temporary git repo, add, push, lose, pull."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from owl_pipeline.config import SyntheticConfig
from owl_pipeline.data.synthetic import generate_corpus

from ..conftest import quiet

PROJECT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "owl-test", "GIT_AUTHOR_EMAIL": "owl@test", "GIT_COMMITTER_NAME": "owl-test",
                "GIT_COMMITTER_EMAIL": "owl@test"}


def run(*args, cwd):
    import os

    env = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_assets_round_trip_through_the_default_remote(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo)
    shutil.copytree(PROJECT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copy(PROJECT / ".dvcignore", repo / ".dvcignore")
    assert "analytics = false" in (repo / ".dvc/config").read_text()
    shards = repo / "assets/raw_shards"
    generate_corpus(shards, SyntheticConfig(num_pairs=40, shard_size=20, num_instruction_images=4, num_text_only=2,
                                            num_eval_images=2), log=quiet)
    before = digest(shards)
    run(DVC, "add", "-q", "assets/raw_shards", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "data", cwd=repo)
    run(DVC, "push", "-q", cwd=repo)
    assert (repo / "dvc-remote").is_dir()  # the project's default remote sits beside .dvc/
    shutil.rmtree(shards)
    shutil.rmtree(repo / ".dvc/cache")
    run(DVC, "pull", "-q", cwd=repo)
    assert digest(shards) == before
    status = run(DVC, "status", cwd=repo)
    assert "up to date" in status
