"""What a step returns, and what its last run leaves in ``assets/reports/<step>.json`` for the next one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from owl_pipeline.files import atomic_write_json, read_json_or_none

# Metadata keys read across rooms (run summary, Dagster checks and sensors, the registry).
REUSED = "reused"  # set on a result that was reused, not recomputed
MLFLOW_RUN = "mlflow_run"  # the training run's URL
MLFLOW_RUN_ID = "mlflow_run_id"  # the training run's id
ROWS_OUT = "rows_out"  # curated_pairs: rows kept
REGISTERED = "registered"  # registered_model: whether a version was registered (False: tracking was off)


@dataclass
class StepResult:
    name: str
    outputs: dict[str, str]  # what the step wrote, by role: {"model": ..., "lance": ..., "report": ...}
    metadata: dict[str, Any] = field(default_factory=dict)  # what a user wants to see (Dagster, the summary)


@dataclass
class StepRecord:
    """A step's last run as written beside its output."""

    metadata: dict[str, Any]
    outputs: dict[str, str]
    inputs_digest: str | None = None

    @classmethod
    def read(cls, path: Path, warn: Callable[[str], None] = print) -> StepRecord | None:
        """The record in ``path``; None if there is none, or (with a warning) if it is damaged."""
        data = read_json_or_none(path, warn)
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
            warn(f"warning: ignoring {path}: not a step record; the step runs again")
            return None
        return cls(metadata=data.get("metadata", {}), outputs=data.get("outputs", {}),
                   inputs_digest=data.get("inputs_digest"))

    def write(self, path: Path) -> Path:
        return atomic_write_json(path, asdict(self))

    def result(self, name: str) -> StepResult:
        return StepResult(name, dict(self.outputs), {**self.metadata, REUSED: True})
