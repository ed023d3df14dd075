"""The step table's code versions: a step's digest follows the code it runs (its module and its declared library
modules), so an edit reruns what it affects, and only that."""

import ast
import shutil

import pytest

from owl_pipeline.config import PipelineConfig, from_mapping
from owl_pipeline.pipeline.graph import PACKAGE_ROOT, STEPS, Step, in_dependency_order
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.runner import run_step

from ..conftest import SMALL

TRAINING = {"base_llm", "stage1_model", "stage2_model"}


def _digests_after_editing(tmp_path, module: str) -> set[str]:
    """The steps whose code digest changes when ``module`` (a path under owl_pipeline/) gains a comment."""
    package = tmp_path / "owl_pipeline"
    shutil.copytree(PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    with (package / module).open("a") as source:
        source.write("# an edit\n")
    return {s.name for s in STEPS if s.code_digest(package) != s.code_digest()}


def test_editing_the_training_loop_changes_the_training_steps_and_nothing_else(tmp_path):
    assert _digests_after_editing(tmp_path, "train/loop.py") == TRAINING


def test_editing_a_filter_rule_changes_the_curation_step_only(tmp_path):
    assert _digests_after_editing(tmp_path, "data/filters.py") == {"curated_pairs"}


def _imports(path) -> set[str]:
    """The owl_pipeline modules ``path`` imports, as paths under owl_pipeline/ (nested imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            file = PACKAGE_ROOT.parent / (name.replace(".", "/") + ".py")
            if name.startswith("owl_pipeline.") and file.is_file():
                found.add(file.relative_to(PACKAGE_ROOT).as_posix())
    return found


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _imports(PACKAGE_ROOT / module)
    return seen


def test_every_declared_module_is_code_the_step_can_run():
    """A declared list names only modules its step reaches through imports (a stale entry fails here)."""
    for definition in STEPS:
        own, *declared = [p.relative_to(PACKAGE_ROOT).as_posix() for p in definition.code_files()]
        unreachable = set(declared) - _reachable(own)
        assert not unreachable, f"{definition.name} declares code it never imports: {sorted(unreachable)}"


def test_a_step_whose_code_changed_is_run_again(tmp_path, monkeypatch):
    project = Project(from_mapping(PipelineConfig, {"synthetic": SMALL}, "params"), tmp_path)
    said = []
    run_step("raw_shards", project, log=said.append)
    run_step("raw_shards", project, log=said.append)
    assert sum("reusing its result" in line for line in said) == 1
    monkeypatch.setattr(Step, "code_digest", lambda self, package_root=PACKAGE_ROOT: "edited")
    said.clear()
    run_step("raw_shards", project, log=said.append)
    assert not any("reusing its result" in line for line in said)


def test_the_project_paths_are_what_the_steps_declare_they_write(tmp_path):
    project = Project(from_mapping(PipelineConfig, {}, "params"), tmp_path)
    assert project.asset_paths() == {s.name: s.writes(project) for s in STEPS if s.writes is not None}


def test_steps_come_after_what_they_read_and_a_read_nobody_writes_is_refused():
    orphan = Step("orphan", STEPS[0].run, reads=("nowhere",), params=(), writes=None, description="",
                  group="data", kinds=("python",))
    order = [s.name for s in in_dependency_order(tuple(reversed(STEPS)))]
    assert sorted(order) == sorted(s.name for s in STEPS)
    assert all(order.index(read) < order.index(s.name) for s in STEPS for read in s.reads)
    with pytest.raises(ValueError, match="read assets that no step writes"):
        in_dependency_order((*STEPS, orphan))


def test_registration_under_a_dvc_experiment_is_its_own_run_and_never_promotes(tmp_path, monkeypatch):
    """DVC sets DVC_EXP_NAME under `dvc exp run`: the registration step's inputs digest includes it (an
    experiment's candidate-only registration is not reused by the main line), and promotion is off."""
    from owl_pipeline.pipeline.eval_steps import promotion_off
    from owl_pipeline.pipeline.graph import step
    from owl_pipeline.pipeline.runner import inputs_digest

    project = Project(from_mapping(PipelineConfig, {"synthetic": SMALL}, "params"), tmp_path)
    import dataclasses

    registration = dataclasses.replace(step("registered_model"), reads=())  # nothing materialized here
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    main_line = inputs_digest(registration, project)
    assert promotion_off(project) is None
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep")
    assert inputs_digest(registration, project) != main_line
    assert promotion_off(project) == "DVC experiment lr-sweep (DVC_EXP_NAME)"
    monkeypatch.delenv("DVC_EXP_NAME")
    settings = {"synthetic": SMALL, "registry": {"promote": False}}
    off = Project(from_mapping(PipelineConfig, settings, "params"), tmp_path)
    assert promotion_off(off) == "registry.promote is false"
