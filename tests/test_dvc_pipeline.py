"""dvc.yaml, which users edit, names the steps of the pipeline's one table (pipeline/graph.py), in order, with
the same inputs, params sections and outputs; and Dagster draws the same graph."""

from pathlib import Path

import yaml

from owl_pipeline.config import PipelineConfig
from owl_pipeline.pipeline.graph import PIPELINE_ORDER, STEPS, edges
from owl_pipeline.pipeline.project import Project

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def test_dvc_stages_are_the_pipeline_steps_in_order():
    assert list(stages()) == list(PIPELINE_ORDER)
    for name, stage in stages().items():
        assert stage["cmd"] == f"owl step {name}"


def test_each_stage_reads_writes_and_depends_on_what_the_table_says(tmp_path):
    project = Project(PipelineConfig(), tmp_path)
    asset_of = {str(path): name for name, path in project.asset_paths().items()}
    for step in STEPS:
        stage = stages()[step.name]
        assert {asset_of[str(tmp_path / d)] for d in stage.get("deps", [])} == set(step.reads), step.name
        assert set(stage.get("params", [])) == set(step.params), step.name
        data_outs = [o for o in stage.get("outs", []) if isinstance(o, str)]
        expected = [str(step.writes(project))] if step.writes else []
        assert [str(tmp_path / o) for o in data_outs] == expected, step.name
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        assert [tmp_path / m for m in metrics] == ([project.metrics_path(step.name)] if step.metrics else []), step.name
        plots = [next(iter(p)) for p in stage.get("plots", [])]
        assert [tmp_path / p for p in plots] == ([project.history_path(step.name)] if step.trains else []), step.name


def test_dvc_and_dagster_draw_the_same_graph():
    from owl_pipeline.orchestration.assets import asset_graph_edges

    assert asset_graph_edges() == edges()


def test_every_param_section_a_stage_names_is_in_params_yaml():
    params = yaml.safe_load((DVC_YAML.parent / "params.yaml").read_text())
    named = {key for stage in stages().values() for key in stage.get("params", [])}
    assert named <= set(params), named - set(params)
    assert PipelineConfig.from_yaml(DVC_YAML.parent / "params.yaml").registry.metric == "accuracy"
