"""What a step returns, and what its last run leaves in ``assets/reports/<step>.json`` for the next one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from owl_pipeline.files import atomic_write_json, read_json_or_none

# Metadata keys of the step records that readers outside Python use (the tests of dvc repro, DVC metrics).
REUSED = "reused"  # set on a result that was reused, not recomputed
MLFLOW_RUN = "mlflow_run"  # the training run's URL
_ENVELOPE = {"name", "outputs", "reused"}  # StepResult's own fields; the rest of a subclass's are its figures


@dataclass(kw_only=True)
class StepResult:
    """What a step returns: what it wrote, by role ({"model": ..., "lance": ...}), and its figures as the typed
    fields of a subclass, one per step, declared beside the step. Read them by attribute; ``metadata()`` flattens
    them for the edges only (the Dagster materialization, the step record, DVC metrics)."""

    name: str
    outputs: dict[str, str] = field(default_factory=dict)
    reused: bool = False  # the last run's result, returned again because nothing it depends on changed

    def metadata(self) -> dict[str, Any]:
        """The figures by field name, the unset ones left out; ``reused: True`` on a reused result."""
        figures = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ENVELOPE}
        figures = {key: value for key, value in figures.items() if value is not None}
        return {**figures, REUSED: True} if self.reused else figures

    @classmethod
    def from_metadata(cls, name: str, metadata: dict[str, Any], outputs: dict[str, str],
                      reused: bool = True) -> StepResult:
        """The result a record (or a worker's result file) holds; keys the class does not know are dropped."""
        known = {f.name for f in fields(cls)} - _ENVELOPE
        return cls(name=name, outputs=dict(outputs), reused=reused,
                   **{key: value for key, value in metadata.items() if key in known})

    def worth_reusing(self) -> bool:
        """False for a result that should be recomputed even when nothing changed (a skipped registration)."""
        return True


@dataclass
class StepRecord:
    """A step's last run as written beside its output."""

    metadata: dict[str, Any]
    outputs: dict[str, str]
    inputs_digest: str | None = None
    root: str | None = None  # the project folder it was written in

    def outputs_at(self, root: Path) -> dict[str, str]:
        """The outputs, those inside the project folder it was written in moved to ``root`` (a moved or copied
        project); anything else (a models:/ URI, a path outside) as written."""
        if not self.root:
            return dict(self.outputs)
        old = Path(self.root)
        return {key: str(root / Path(value).relative_to(old)) if Path(value).is_relative_to(old) else value
                for key, value in self.outputs.items()}

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
                   inputs_digest=data.get("inputs_digest"), root=data.get("root"))

    def write(self, path: Path) -> Path:
        return atomic_write_json(path, asdict(self))
