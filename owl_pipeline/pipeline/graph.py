"""The pipeline's table, derived from the steps declared beside their code (``@pipeline_step`` in data_steps,
training_steps and eval_steps; pipeline/steps.py): every step, what it reads, which params sections it depends on,
what it writes. The Dagster assets (orchestration/assets.py), the reuse digests (runner.py) and the lineage records
read this table; dvc.yaml, which users edit, is checked against it by a test."""

from __future__ import annotations

from typing import Any

from owl_pipeline.pipeline import data_steps, eval_steps, training_steps  # noqa: F401  (importing declares them)
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.steps import GROUP_DATA, PACKAGE_ROOT, Step, registered_steps

__all__ = ["DATA_STEPS", "PACKAGE_ROOT", "PIPELINE_ORDER", "STEPS", "TRAINING_STEPS", "Step", "edges",
           "in_dependency_order", "params_of", "step"]



def in_dependency_order(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """Each step after the steps it reads, otherwise in declaration order; a read no step writes is an error."""
    ordered: list[Step] = []
    pending = list(steps)
    while pending:
        done = {s.name for s in ordered}
        ready = next((s for s in pending if set(s.reads) <= done), None)
        if ready is None:
            raise ValueError(f"steps {[s.name for s in pending]} read assets that no step writes, or read in a circle")
        ordered.append(ready)
        pending.remove(ready)
    return tuple(ordered)


STEPS: tuple[Step, ...] = in_dependency_order(registered_steps())
PIPELINE_ORDER: tuple[str, ...] = tuple(step.name for step in STEPS)
_BY_NAME = {step.name: step for step in STEPS}
DATA_STEPS = tuple(s.name for s in STEPS if s.group == GROUP_DATA)
TRAINING_STEPS = tuple(s.name for s in STEPS if s.trains)


def step(name: str) -> Step:
    if name not in _BY_NAME:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(PIPELINE_ORDER)}")
    return _BY_NAME[name]


def edges() -> dict[str, set[str]]:
    """asset -> the assets it reads."""
    return {s.name: set(s.reads) for s in STEPS}


def params_of(project: Project, name: str) -> dict[str, Any]:
    """The params sections step ``name`` depends on, as the config holds them now."""
    values = project.config.to_dict()
    return {section: values[section] for section in step(name).params}
