"""What `owl run` prints: one compact line per log message (time, step, message), INFO and above unless
asked for more, and the project's Dagster instance set up so Dagster prints no banner."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import dagster as dg

DAGSTER_YAML = """# DAGSTER_HOME for this project (runs, event logs and schedules persist here)
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1  # each pool (e.g. owl_ingest: raw_pairs) runs one step at a time across runs
"""


def prepare_dagster_home(project_root: Path) -> Path:
    """``project_root/dagster_home`` with a dagster.yaml (telemetry off, concurrency pools), made once."""
    home = project_root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").is_file():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


class CompactFormatter(logging.Formatter):
    """``15:11:45 base_llm | stage 0 step 2/4 loss 5.47 ...``: the step instead of the run's ids."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or ""
        message = meta.get("orig_message") or record.getMessage()
        event = meta.get("dagster_event")
        if event is not None and event.is_step_failure and event.step_failure_data.error is not None:
            message += "\n" + event.step_failure_data.error.to_string().rstrip()  # what failed, and where
        return f"{self.formatTime(record, '%H:%M:%S')} {step:<16} | {message}"


@dg.logger(config_schema={"log_level": dg.Field(str, default_value="INFO", is_required=False)},
           description="One line per message: time, step, message")
def compact_console(init_context) -> logging.Logger:
    logger = logging.Logger("owl", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CompactFormatter())
    logger.addHandler(handler)
    return logger
