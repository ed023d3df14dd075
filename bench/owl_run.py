"""`owl run` on the embedded default, one clean folder per seed: accuracy overall and per question type, each
training step's seconds, wall time and peak memory, a row per seed and the worst of them.

    python bench/owl_run.py [--params params.yaml] [--seeds 0 1 2] [--keep DIR] [--again]
    python bench/owl_run.py --params params.yaml --set model.abstractor.num_queries=16 --seeds 0 1 2

A seed sets ``synthetic.seed``, ``stage1.seed`` and ``stage2.seed`` (another corpus, eval set and run). ``--set``
overrides a params value for this bench only (dotted key, a YAML value), as ``dvc exp run -S`` does. ``--again``
runs each folder a second time with nothing changed (every step should reuse its last result) and times that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overrides import apply_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("color", "count", "position", "shape")
STEPS = ("stage1_model", "stage2_model")


@dataclass
class SeedRun:
    seed: int | None
    seconds: float
    peak_mib: float
    accuracy: float
    by_type: dict[str, float]
    step_seconds: dict[str, float] = field(default_factory=dict)
    again_seconds: float | None = None


def timed_run(project: Path) -> tuple[float, float]:
    """Seconds and peak RSS in MiB of one `owl run` (its process tree's largest process, from wait4)."""
    start = time.perf_counter()
    with (project / "owl_run.log").open("a") as log:
        child = subprocess.Popen([sys.executable, "-m", "owl_pipeline.cli", "run", "--project", str(project)],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # wait4: this child's own peak memory
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"owl run failed in {project}; its log: {project / 'owl_run.log'}")
    return seconds, usage.ru_maxrss / 1024


def step_seconds(project: Path) -> dict[str, float]:
    """Each training stage's own seconds, from its record (the rest of a run: data, evaluation, registration)."""
    seconds = {}
    for name in STEPS:
        record = project / "assets" / "reports" / f"{name}.json"
        if record.is_file():
            value = json.loads(record.read_text()).get("metadata", {}).get("seconds")
            if value is not None:
                seconds[name] = float(value)
    return seconds


def scores(project: Path) -> tuple[float, dict[str, float]]:
    """Overall accuracy and accuracy per question type, from the OwlEval report."""
    from owl_pipeline.eval.report import OwlEvalReport

    report = OwlEvalReport.read(project / "assets" / "owleval_report" / "report.json")
    headline = report.headline()
    return headline["accuracy"], headline.get("accuracy_by_type", {})


def write_params(source: Path, project: Path, seed: int | None, overrides: list[str]) -> None:
    params = apply_overrides(yaml.safe_load(source.read_text()), overrides)
    if seed is not None:
        for section in ("synthetic", "stage1", "stage2"):
            params.setdefault(section, {})["seed"] = seed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_seed(project: Path, source: Path, seed: int | None, overrides: list[str], again: bool) -> SeedRun:
    project.mkdir(parents=True, exist_ok=True)
    write_params(source, project, seed, overrides)
    seconds, peak = timed_run(project)
    accuracy, by_type = scores(project)
    run = SeedRun(seed, seconds, peak, accuracy, by_type, step_seconds(project))
    if again:
        run.again_seconds = timed_run(project)[0]
    return run


def print_table(runs: list[SeedRun]) -> None:
    print(f"{'seed':>5}{'overall':>9}" + "".join(f"{t:>10}" for t in TYPES)
          + f"{'stage 1 s':>11}{'stage 2 s':>11}{'rest s':>8}{'run s':>8}{'peak MiB':>10}")
    for run in runs:
        print(row(str(run.seed), run.accuracy, run.by_type, seconds_shown(run), run.peak_mib))
    if len(runs) > 1:
        worst_types = {t: min(r.by_type.get(t, float("nan")) for r in runs) for t in TYPES}
        worst_seconds = [max(column) for column in zip(*(seconds_shown(r) for r in runs))]
        print(row("worst", min(r.accuracy for r in runs), worst_types, worst_seconds, max(r.peak_mib for r in runs)))
    for run in runs:
        if run.again_seconds is not None:
            print(f"seed {run.seed}: again, nothing changed: {run.again_seconds:.1f} s")


def seconds_shown(run: SeedRun) -> list[float]:
    """Stage 1, stage 2, the rest (data, evaluation, registration) and the whole run."""
    stages = [run.step_seconds.get(s, float("nan")) for s in STEPS]
    return [*stages, run.seconds - sum(stages), run.seconds]


def row(label: str, accuracy: float, by_type: dict, seconds: list[float], peak: float) -> str:
    return (f"{label:>5}{accuracy:>9.3f}" + "".join(f"{by_type.get(t, float('nan')):>10.3f}" for t in TYPES)
            + "".join(f"{value:>{width}.1f}" for value, width in zip(seconds, (11, 11, 8, 8))) + f"{peak:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--keep", help="folder to keep the projects in, one per seed (default: a temporary one)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the params' own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params value, e.g. stage2.max_steps=400 (repeatable)")
    parser.add_argument("--again", action="store_true", help="run each folder again with nothing changed")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        base = Path(args.keep or folder)
        for seed in args.seeds or [None]:
            project = base / (f"seed-{seed}" if seed is not None else "params")
            runs.append(run_seed(project, Path(args.params), seed, args.set, args.again))
            print(row(str(seed), runs[-1].accuracy, runs[-1].by_type, seconds_shown(runs[-1]), runs[-1].peak_mib),
                  flush=True)
    if args.set:
        print("with " + " ".join(args.set))
    print_table(runs)


if __name__ == "__main__":
    main()
