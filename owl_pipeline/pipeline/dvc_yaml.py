"""dvc.yaml, generated from the step registry for a project's params.yaml, so DVC sees what each step really
depends on: the outputs it reads, the folders and files outside assets/ it reads (your shards, the inbox, an
eval set, a pretrained model), the code it runs, its params sections; and its outputs by lifetime
(``Step.dvc_outs``). After changing a path in params.yaml or a step's declaration:

    python -m owl_pipeline.pipeline.dvc_yaml > dvc.yaml

A test checks the repository's dvc.yaml against this output for its params.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from owl_pipeline import constants as C
from owl_pipeline.pipeline.graph import STEPS, Step
from owl_pipeline.pipeline.project import Project, load_project

HEADER = """\
# Generated from the step registry by `python -m owl_pipeline.pipeline.dvc_yaml > dvc.yaml`: edit the steps'
# declarations (@pipeline_step) or params.yaml, then generate it again (a test checks that it is current).
# Run it with .venv activated: `. .venv/bin/activate && dvc repro`. Each stage calls the library through
# `owl step NAME`, as the Dagster asset of the same name does. Outputs by lifetime: data and models are cached;
# raw_pairs.lance persists (new shards are appended to it); training checkpoints persist and are never cached, so
# a killed `dvc repro` resumes. metrics/ holds small files for git: `dvc metrics diff`, `dvc exp show`, `dvc plots`.
"""


def _relative(path: Path, root: Path) -> str:
    """A path as dvc.yaml names it: relative to the project where it lies inside it, else absolute."""
    resolved = path.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def _out(path: Path, options: dict, root: Path):
    return {_relative(path, root): options} if options else _relative(path, root)


def stage(step: Step, project: Project) -> dict:
    root = project.root.resolve()
    entry: dict = {"cmd": f"owl step {step.name}"}
    entry["deps"] = [_relative(path, root) for path in step.dvc_deps(project)]
    if step.params:
        entry["params"] = list(step.params)
    outs = [_out(path, options, root) for path, options in step.dvc_outs(project)]
    if step.name == C.ASSET_CURATED_PAIRS:  # the filter histograms: a picture for people, small, git-tracked
        outs.append({_relative(project.reports / C.FILTER_HISTOGRAMS, root): {"cache": False}})
    if outs:
        entry["outs"] = outs
    if step.metrics:
        entry["metrics"] = [{_relative(project.metrics_path(step.name), root): {"cache": False}}]
    if step.trains:
        plot = {"x": "step", "y": "loss", "cache": False}
        entry["plots"] = [{_relative(project.history_path(step.name), root): plot}]
    return entry


def render(project: Project) -> str:
    stages = {step.name: stage(step, project) for step in STEPS}
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the dvc.yaml of a project, generated from the steps")
    parser.add_argument("--project", default=".", help="the project folder (its params.yaml is read)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(load_project(Path(args.project))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
