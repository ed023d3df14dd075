"""Connecting to Ray for the steps that run on it (``engine: ray``): a local Ray started here, or a cluster.

Ray is an optional extra (``pip install owl-pipeline[ray]``); the local engine never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from owl_pipeline.config import RayConfig


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("engine: ray needs Ray: pip install 'owl-pipeline[ray]' (ray[data,train], polars, "
                          "lance-ray)") from None
    return ray


@contextlib.contextmanager
def ray_session(config: RayConfig, log=print) -> Iterator[object]:
    """Ray, initialized: the one already running in this process (a test's, a Ray job's), else ``config.address``
    (empty: a local Ray with ``config.num_cpus`` CPUs, shut down afterwards)."""
    ray = import_ray()
    _quiet_data_progress(ray)
    with _ordered_data(ray):
        if ray.is_initialized():
            yield ray
        else:
            with _connected(ray, config, log):
                yield ray


# A local Ray keeps its idle worker processes for a minute instead of killing them after a second. Ray
# Data runs each stage's tasks and each shuffle's aggregators in workers; with the default, a burst of tasks
# leaves more workers than CPUs, the extra ones are killed as soon as they idle, and the next stage starts new
# Python processes (1-2 s each on a laptop). With this and ray_filters.py's materialized joins,
# `python bench/filter_ray.py --rows 100000` filters on Ray (1 worker) in 7.9 s instead of 22.8 s.
LOCAL_WORKER_IDLE_MS = 60_000  # seconds apart within a step; a test session's Ray lets them go soon after


def local_ray_options(num_cpus: int | None, **options) -> dict:
    """``ray.init`` arguments of a local Ray for the steps (and the tests): no dashboard, idle workers kept."""
    return dict(num_cpus=num_cpus, include_dashboard=False,
                _system_config={"idle_worker_killing_time_threshold_ms": LOCAL_WORKER_IDLE_MS}, **options)


@contextlib.contextmanager
def _connected(ray, config: RayConfig, log) -> Iterator[None]:
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    local = address is None
    options = local_ray_options(config.num_cpus) if local else {}
    # Workers' output (a training stage's progress lines from rank 0) is shown here, prefixed by Ray.
    ray.init(address=address, log_to_driver=True, logging_level="WARNING", **options)
    resources = ray.cluster_resources()
    log(f"ray: {'local' if local else address}, {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    try:
        yield
    finally:
        if local:
            ray.shutdown()


@contextlib.contextmanager
def _ordered_data(ray) -> Iterator[None]:
    """Ray Data keeps every dataset's block order through each map and write while the steps run.

    "First" (which duplicate is kept) and the written row order are defined by the source order; without this,
    a map's output blocks come in the order their tasks finish, so a small shard read last could be written
    first (the order then depends on the machine's load)."""
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def _quiet_data_progress(ray) -> None:
    # Ray Data's progress bars, plan dumps and per-operator stats garble the step's own log lines in Dagster.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def shuffle_partitions(ray, config: RayConfig) -> int:
    """Partitions of a shuffle: as configured, else two per CPU of the cluster."""
    return config.partitions or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
