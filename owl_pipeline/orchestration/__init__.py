"""The only package that imports dagster: assets, checks, resources, schedules, sensors, Definitions."""
