"""dvc.yaml names the pipeline's steps, in order, with the inputs the steps read."""

from pathlib import Path

import yaml

from owl_pipeline import steps

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def test_dvc_stages_are_the_pipeline_steps_in_order():
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    assert list(stages) == list(steps.PIPELINE_ORDER)
    for name, stage in stages.items():
        assert stage["cmd"] == f"owl step {name}"


def test_training_stages_depend_on_what_the_steps_read(tmp_path):
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    project = steps.Project(steps.PipelineConfig(), tmp_path)
    for name, inputs in steps.TRAINING_INPUTS.items():
        deps = {str(tmp_path / d) for d in stages[name]["deps"]}
        assert {str(getattr(project, key)) for key in inputs} <= deps, name


def test_dvc_and_dagster_draw_the_same_graph(tmp_path):
    from owl_pipeline.orchestration.assets import asset_graph_edges

    project = steps.Project(steps.PipelineConfig(), tmp_path)
    asset_of = {str(path): name for name, path in project.asset_paths().items()}
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    dvc_edges = {name: {asset_of[str(tmp_path / d)] for d in stage.get("deps", [])} for name, stage in stages.items()}
    assert dvc_edges == asset_graph_edges()


def test_every_param_section_a_stage_names_is_in_params_yaml():
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    params = yaml.safe_load((DVC_YAML.parent / "params.yaml").read_text())
    named = {key for stage in stages.values() for key in stage.get("params", [])}
    assert named <= set(params), named - set(params)
    assert steps.PipelineConfig.from_yaml(DVC_YAML.parent / "params.yaml").registry.metric == "accuracy"
