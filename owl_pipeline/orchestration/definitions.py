"""The one Definitions object: `dagster dev -m owl_pipeline.orchestration.definitions`."""

from __future__ import annotations

import os

import dagster as dg

from owl_pipeline.orchestration.assets import ALL_ASSETS
from owl_pipeline.orchestration.automation import ALL_JOBS, ALL_SCHEDULES, ALL_SENSORS
from owl_pipeline.orchestration.checks import ALL_CHECKS
from owl_pipeline.orchestration.resources import resources_for

defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=ALL_JOBS, schedules=ALL_SCHEDULES,
                      sensors=ALL_SENSORS, resources=resources_for(os.environ.get("OWL_DEPLOYMENT", "local")))
