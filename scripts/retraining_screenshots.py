"""The retraining loop as a user sees it, on a real Dagster daemon, captured by headless Chromium into docs/.

    .venv/bin/python scripts/retraining_screenshots.py [--workdir /tmp/owl-loop] [--out docs/retraining]

A tiny shapes-world project is run once (`owl run`), then `owl ui --automations` serves it with the cron set to
every minute and a small row threshold, and shards are dropped in its inbox one by one. The daemon's sensor adds
each as a partition and ingests it, curated_pairs follows, and the training chain starts once enough new rows
are in. Each stage is photographed. Takes about ten minutes (the sensors tick once a minute)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from owl_pipeline.config import SyntheticConfig  # noqa: E402
from owl_pipeline.data.synthetic import generate_corpus  # noqa: E402
from tests.test_pipeline import TINY_PARAMS  # noqa: E402

DAGSTER = "http://127.0.0.1:3000"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MIN_NEW_ROWS = 250  # two drops of 150 pairs stay under it, three pass it (about 110 rows kept per drop)


def screenshot(url: str, path: Path, scratch: Path) -> None:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={scratch / 'chromium'}", "--window-size=1600,1000",
                    "--virtual-time-budget=15000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"  {path.name}: {url}")


def graphql(query: str) -> dict:
    request = urllib.request.Request(f"{DAGSTER}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


def partitions() -> list[str]:
    data = graphql('{ assetNodeOrError(assetKey: {path: ["raw_pairs"]}) { ... on AssetNode { partitionKeys } } }')
    return data["assetNodeOrError"]["partitionKeys"]


def runs_succeeded_with(asset: str) -> int:
    data = graphql('{ runsOrError(filter: {statuses: [SUCCESS]}) { ... on Runs { results { assetSelection '
                   '{ path } } } } }')
    return sum(any(key["path"] == [asset] for key in run["assetSelection"] or [])
               for run in data["runsOrError"]["results"])


def wait_for(what: str, ready, timeout: float = 600.0) -> None:
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(5)
    print(f"{what}: after {time.monotonic() - start:.0f} s")


def prepare(workdir: Path) -> tuple[Path, list[Path]]:
    project = workdir / "project"
    shutil.rmtree(workdir, ignore_errors=True)
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, "registry": {
        **TINY_PARAMS["registry"], "model_name": "owl-loop"}}))
    subprocess.run([str(ROOT / ".venv/bin/owl"), "run", "--project", str(project)], check=True)
    # keys that follow on from the base corpus's 600 (ingestion keeps the first row of a key)
    generate_corpus(workdir / "downloads", SyntheticConfig(seed=7, num_pairs=1050, shard_size=150,
                                                           num_instruction_images=4, num_text_only=0,
                                                           num_eval_images=2), log=lambda _: None)
    return project, sorted((workdir / "downloads/shards").glob("*.tar"))[-3:]


def drop(project: Path, shard: Path, name: str) -> None:
    (project / "inbox").mkdir(exist_ok=True)
    shutil.copy(shard, project / "inbox" / f".{name}.part")
    (project / "inbox" / f".{name}.part").rename(project / "inbox" / name)  # atomic: never seen half-copied
    (project / "inbox" / f"{name}.done").touch()
    print(f"dropped {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/owl-loop")
    parser.add_argument("--out", default=str(ROOT / "docs/retraining"))
    args = parser.parse_args(argv)
    workdir, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    project, shards = prepare(workdir)
    env = {**os.environ, "OWL_RETRAIN_CRON": "* * * * *",  # a tick every minute, so the loop shows in minutes
           "OWL_RETRAIN_MIN_NEW_ROWS": str(MIN_NEW_ROWS)}
    ui = subprocess.Popen([str(ROOT / ".venv/bin/owl"), "ui", "--automations", "--project", str(project)], env=env)
    try:
        wait_for("the Dagster UI", lambda: _up(f"{DAGSTER}/server_info"), timeout=180)
        curated_before, trained_before = runs_succeeded_with("curated_pairs"), runs_succeeded_with("stage1_model")
        for number, shard in enumerate(shards, 1):
            drop(project, shard, f"drop-{number}.tar")
            wait_for(f"partition inbox/drop-{number}.tar",
                     lambda n=number: f"inbox/drop-{n}.tar" in partitions())
            wait_for(f"curated_pairs refiltered ({number})",
                     lambda n=number: runs_succeeded_with("curated_pairs") >= curated_before + n)
        wait_for("the training chain started by the automation",
                 lambda: runs_succeeded_with("stage1_model") > trained_before)
        graphql("mutation { setNuxSeen }")  # the UI's one-time "join the community" dialog, answered
        for name, url in (("1-partitions.png", f"{DAGSTER}/assets/raw_pairs?view=partitions"),
                          ("2-automation-stage1.png", f"{DAGSTER}/assets/stage1_model?view=automation"),
                          ("3-runs.png", f"{DAGSTER}/runs"),
                          ("4-registered-model.png", f"{DAGSTER}/assets/registered_model")):
            screenshot(url, out / name, workdir)
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    return 0


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
