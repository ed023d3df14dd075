"""The entry point a training subprocess runs when Dagster's TrainingLauncher starts it through dagster-pipes
(``owl step NAME --dagster-pipes``): rank 0 streams its log lines and reports the materialization, with the
same metadata and lineage as in-process, back to the Dagster run; other ranks only train."""

from __future__ import annotations

from collections.abc import Callable

from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.ranks import is_main_process
from owl_pipeline.pipeline.runner import run_step


def step_under_dagster_pipes(name: str, project: Project, tracking, force: bool,
                             log: Callable[[str], None] = print) -> None:
    if not is_main_process():
        run_step(name, project, tracking, log=log, force=force)
        return
    from dagster_pipes import open_dagster_pipes

    from owl_pipeline.orchestration.metadata import materialization, pipes_metadata

    with open_dagster_pipes() as pipes:
        def both(line: str) -> None:
            log(line)
            pipes.log.info(line)

        result = run_step(name, project, tracking, log=both, force=force)
        entries, version = materialization(project, result)
        pipes.report_asset_materialization(metadata=pipes_metadata(entries), data_version=version)
