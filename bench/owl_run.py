"""Wall time and peak memory of `owl run` on the embedded default: from a clean folder (with each training
step's own time), then again with nothing changed (every step should reuse its last result).

    python bench/owl_run.py [--params params.yaml] [--seed N] [--keep DIR]

``--seed N`` sets ``synthetic.seed``, ``stage1.seed`` and ``stage2.seed`` (another corpus, eval set and run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed_run(project: Path) -> tuple[float, float, str]:
    """Seconds, peak RSS in MiB of the `owl run` process (children's max so far), and its summary lines."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "owl_pipeline.cli", "run", "--project", str(project)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"owl run failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = done.stdout[done.stdout.index("owl run:"):] if "owl run:" in done.stdout else ""
    return seconds, peak, summary


def step_seconds(project: Path) -> dict[str, float]:
    """The training steps' own seconds, from their records."""
    seconds = {}
    for name in ("base_llm", "stage1_model", "stage2_model"):
        record = project / "assets" / "reports" / f"{name}.json"
        if record.is_file():
            value = json.loads(record.read_text()).get("metadata", {}).get("seconds")
            if value is not None:
                seconds[name] = float(value)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--keep", help="project folder to keep (default: a temporary one)")
    parser.add_argument("--seed", type=int, help="the corpus's and both stages' seed (default: the params')")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        project = Path(args.keep or folder)
        project.mkdir(parents=True, exist_ok=True)
        params = yaml.safe_load(Path(args.params).read_text())
        if args.seed is not None:
            for section in ("synthetic", "stage1", "stage2"):
                params.setdefault(section, {})["seed"] = args.seed
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        first = timed_run(project)
        steps = step_seconds(project)
        second = timed_run(project)
    print(first[2])
    title = 'owl run' + (f' (seed {args.seed})' if args.seed is not None else '')
    print(f"{title:<28}{'seconds':>9}{'peak RSS MiB':>14}")
    print(f"{'clean folder':<28}{first[0]:>9.1f}{first[1]:>14.0f}")
    for name, seconds in steps.items():
        print(f"{'  ' + name:<28}{seconds:>9.1f}")
    print(f"{'again, nothing changed':<28}{second[0]:>9.1f}{second[1]:>14.0f}  (peak is the max over both runs)")


if __name__ == "__main__":
    main()
