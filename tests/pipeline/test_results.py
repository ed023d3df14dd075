"""Typed step results: each step returns its own dataclass, read by attribute; ``metadata()`` flattens it only at
the edges (Dagster, the step record, DVC metrics), and a record reads back into the same class."""

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from owl_pipeline.pipeline.data_steps import CuratedPairsResult
from owl_pipeline.pipeline.eval_steps import RegistrationResult
from owl_pipeline.pipeline.graph import PACKAGE_ROOT, STEPS
from owl_pipeline.pipeline.records import StepRecord, StepResult


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_returns_its_own_result_class_whose_fields_are_its_metrics(step):
    assert issubclass(step.result, StepResult) and step.result is not StepResult
    assert inspect.signature(step.run).return_annotation == step.result.__name__
    assert set(step.metrics) <= {f.name for f in fields(step.result)}


def test_a_result_reads_back_from_its_record_with_its_figures_typed(tmp_path):
    result = CuratedPairsResult(name="curated_pairs", outputs={"lance": "x.lance"}, rows_in=10, rows_out=8,
                                removed={"nsfw": 2}, engine="local")
    assert result.metadata() == {"rows_in": 10, "rows_out": 8, "removed": {"nsfw": 2}, "engine": "local"}
    StepRecord(result.metadata(), result.outputs, "digest").write(tmp_path / "record.json")
    record = StepRecord.read(tmp_path / "record.json")
    again = CuratedPairsResult.from_metadata("curated_pairs", {**record.metadata, "gone": 1}, record.outputs)
    assert again.reused and again.rows_out == 8 and again.removed == {"nsfw": 2} and again.seconds is None
    assert again.metadata() == {**result.metadata(), "reused": True}


def test_a_skipped_registration_is_not_worth_reusing():
    assert not RegistrationResult(name="registered_model").worth_reusing()
    assert RegistrationResult(name="registered_model", registered=True, version="3").worth_reusing()


def _string_key_reads(path: Path) -> list[str]:
    """``x.metadata[...]``, ``x.metadata.get(...)`` and ``report[...]`` in one module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = node.value if isinstance(node, ast.Subscript) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        named = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if isinstance(target, ast.Attribute) and named == "metadata" or named == "report":
            found.append(f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno}")
    return found


def test_no_result_or_report_is_read_by_string_key_outside_the_class_that_defines_it():
    """The steps, the Dagster layer and the CLI read results and the OwlEval report by attribute."""
    readers = [*(PACKAGE_ROOT / "pipeline").glob("*.py"), *(PACKAGE_ROOT / "orchestration").glob("*.py"),
               PACKAGE_ROOT / "cli.py"]
    allowed = {PACKAGE_ROOT / "pipeline" / "records.py", PACKAGE_ROOT / "pipeline" / "steps.py"}
    reads = [hit for path in readers if path not in allowed for hit in _string_key_reads(path)]
    assert not reads, f"read by string key: {reads}"
