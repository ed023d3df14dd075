"""`owl ui`: the Dagster UI and the MLflow UI for one project, on 127.0.0.1, stopped together on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def ui_commands(project_root: Path, dagster_port: int, mlflow_port: int, host: str) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    store = project_root / "mlruns"
    return {
        "dagster": [str(bin_dir / "dagster"), "dev", "-m", "owl_pipeline.orchestration.definitions",
                    "-h", host, "-p", str(dagster_port)],
        "mlflow": [str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                   "--default-artifact-root", (store / "artifacts").as_uri(), "--host", host,
                   "--port", str(mlflow_port), "--workers", "1"],
    }


# Two warnings every start printed that say nothing to a user of `owl ui`: Dagster's note that `dagster dev` has a
# successor (`dg dev`, which needs a dg project layout), and Starlette's about the WSGI bridge MLflow's server uses.
QUIET_WARNINGS = ("ignore:Function `dev_command` is superseded:FutureWarning",
                  "ignore:starlette.middleware.wsgi is deprecated:UserWarning")


def ui_environment(project_root: Path, automations: bool = False) -> dict[str, str]:
    filters = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *QUIET_WARNINGS]))
    environment = {**os.environ, "DAGSTER_HOME": str(project_root / "dagster_home"),
                   "OWL_PROJECT_ROOT": str(project_root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                   "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONWARNINGS": filters}
    if automations:
        environment["OWL_AUTOMATIONS"] = "on"
    return environment


def automations_banner(environment: dict[str, str]) -> str:
    on = environment.get("OWL_AUTOMATIONS", "off").lower() in ("1", "on", "true", "yes")
    return ("automations ON: new_shards_sensor and retrain_automation run (the daemon is up): inbox shards become "
            "raw_pairs partitions, curated_pairs follows, training waits for its cron tick and enough new rows"
            if on else "automations OFF: the sensors are stopped; turn them on in the UI "
                       "(Automation) or start with `owl ui --automations`")


def serve(project_root: Path, dagster_port: int = 3000, mlflow_port: int = 5000, host: str = "127.0.0.1",
          log=print, automations: bool = False) -> int:
    """Start both servers and wait; Ctrl-C (or SIGTERM) stops both, each in its own process group."""
    from owl_pipeline.orchestration.console import prepare_dagster_home

    project_root = project_root.resolve()
    prepare_dagster_home(project_root)
    (project_root / "mlruns").mkdir(exist_ok=True)
    env = ui_environment(project_root, automations)
    processes = {name: subprocess.Popen(command, env=env, cwd=project_root, start_new_session=True)
                 for name, command in ui_commands(project_root, dagster_port, mlflow_port, host).items()}
    log(f"Dagster UI: http://{host}:{dagster_port}   MLflow UI: http://{host}:{mlflow_port}   (Ctrl-C stops both)")
    log(automations_banner(env))
    # Ctrl-C and SIGTERM stop both, even when this process was started with SIGINT ignored (a shell's `&` job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        failed = [name for name, p in processes.items() if p.poll() is not None]
        log(f"owl ui: {', '.join(failed)} exited; stopping the rest")
        return 1
    except KeyboardInterrupt:
        log("owl ui: stopping")
        return 0
    finally:
        _stop(processes.values())


def _stop(processes, grace: float = 20.0) -> None:
    """Ctrl-C to each server's process group, then SIGKILL to whatever is left of it after ``grace`` seconds,
    children that moved to a group of their own included (an orphaned webserver would keep its port)."""
    import psutil

    family = []
    for process in processes:
        if process.poll() is None:
            try:
                family += [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            os.killpg(process.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(family, timeout=grace)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        process.wait()
