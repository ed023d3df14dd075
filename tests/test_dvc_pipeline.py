"""dvc.yaml, which users edit, names the steps of the pipeline's one table (pipeline/graph.py), in order, with
the same inputs, params sections and outputs; and Dagster draws the same graph."""

from pathlib import Path

import yaml

from owl_pipeline.config import PipelineConfig
from owl_pipeline.pipeline.graph import PIPELINE_ORDER, STEPS, edges
from owl_pipeline.pipeline.dvc_yaml import render
from owl_pipeline.pipeline.project import Project, load_project

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def test_dvc_stages_are_the_pipeline_steps_in_order():
    assert list(stages()) == list(PIPELINE_ORDER)
    for name, stage in stages().items():
        assert stage["cmd"] == f"owl step {name}"


def test_dvc_yaml_is_the_one_the_step_registry_generates():
    expected = render(load_project(DVC_YAML.parent))
    assert DVC_YAML.read_text() == expected, (
        "dvc.yaml is not what the steps declare: `python -m owl_pipeline.pipeline.dvc_yaml > dvc.yaml`")


def test_each_stage_reads_writes_and_depends_on_what_the_table_says(tmp_path):
    project = Project(PipelineConfig(), tmp_path)
    asset_of = {str(path): name for name, path in project.asset_paths().items()}
    for step in STEPS:
        stage = stages()[step.name]
        data_deps = [d for d in stage["deps"] if not d.startswith(("owl_pipeline/", "inbox"))]
        assert {asset_of[str(tmp_path / d)] for d in data_deps} == set(step.reads), step.name
        code = {str(path.relative_to(DVC_YAML.parent)) for path in step.code_files()}
        assert code <= set(stage["deps"]), step.name  # the code it runs: an edit reruns it in DVC too
        assert set(stage.get("params", [])) == set(step.params), step.name
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        assert str(tmp_path / outs[0]) == str(step.writes(project)) if step.writes else not outs, step.name
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        assert [tmp_path / m for m in metrics] == ([project.metrics_path(step.name)] if step.metrics else []), step.name
        plots = [next(iter(p)) for p in stage.get("plots", [])]
        assert [tmp_path / p for p in plots] == ([project.history_path(step.name)] if step.trains else []), step.name
    assert "inbox" in stages()["raw_pairs"]["deps"]


def test_outputs_are_declared_by_lifetime():
    """Models and data cached; the appended table persists; checkpoints persist and are never cached."""
    outs = {name: stage.get("outs", []) for name, stage in stages().items()}
    assert outs["raw_pairs"] == [{"assets/raw_pairs.lance": {"persist": True}}]
    for name in ("base_llm", "stage1_model", "stage2_model"):
        assert outs[name] == [f"assets/{name}/model", {f"assets/{name}/checkpoints": {"persist": True, "cache": False}}]
    assert "registered_model" not in {name for name, o in outs.items() if o}  # it writes no data


def test_external_inputs_named_in_params_are_dependencies(tmp_path):
    """Your shards, instruction file and eval set outside the project: deps of the stages that read them, and
    raw_shards writes nothing (it reads your folder where it is)."""
    shards, eval_set = tmp_path / "laion", tmp_path / "owleval"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(b"")
    eval_set.mkdir()
    (eval_set / "questions.jsonl").write_text("")
    instructions = tmp_path / "alpaca.json"
    instructions.write_text("[]")
    config = {"raw_shards": str(shards), "owleval_dir": str(eval_set),
              "instructions": [{"format": "alpaca", "path": str(instructions)}]}
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(config))
    generated = yaml.safe_load(render(load_project(root)))["stages"]
    assert generated["raw_shards"]["deps"][0] == str(shards) and "outs" not in generated["raw_shards"]
    assert generated["raw_pairs"]["deps"][:2] == ["inbox", str(shards)]
    assert str(instructions) in generated["instruction_data"]["deps"]
    assert str(eval_set / "questions.jsonl") in generated["owleval_report"]["deps"]


def test_dvc_and_dagster_draw_the_same_graph():
    from owl_pipeline.orchestration.assets import asset_graph_edges

    assert asset_graph_edges() == edges()


def test_every_param_section_a_stage_names_is_in_params_yaml():
    params = yaml.safe_load((DVC_YAML.parent / "params.yaml").read_text())
    named = {key for stage in stages().values() for key in stage.get("params", [])}
    assert named <= set(params), named - set(params)
    assert PipelineConfig.from_yaml(DVC_YAML.parent / "params.yaml").registry.metric == "accuracy"
