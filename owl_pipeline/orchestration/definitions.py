"""The one Definitions: `dagster dev -m owl_pipeline.orchestration.definitions` loads ``defs``; `owl run` builds
the same with the project it is given (orchestration/run.py) and executes its ``retrain`` job in-process."""

from __future__ import annotations

import os

import dagster as dg

from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import ALL_JOBS, ALL_SCHEDULES, ALL_SENSORS
from owl_pipeline.orchestration.checks import ALL_CHECKS
from owl_pipeline.orchestration.resources import resources_for


def pipeline_definitions(resources: dict[str, dg.ConfigurableResource],
                         loggers: dict[str, dg.LoggerDefinition] | None = None) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the pipeline, over ``resources``."""
    return dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=ALL_JOBS, schedules=ALL_SCHEDULES,
                          sensors=ALL_SENSORS, resources=resources, loggers=loggers)


defs = pipeline_definitions(resources_for(os.environ.get("OWL_DEPLOYMENT", "local")))
