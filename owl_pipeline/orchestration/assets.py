"""Software-defined assets: one thin layer over each function of owl_pipeline.steps.

    raw_shards -> raw_pairs -> curated_pairs -> instruction_data -> base_llm -> stage1_model -> stage2_model
    -> owleval_report -> registered_model
"""


from pathlib import Path

import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline import steps
from owl_pipeline.data.versions import data_version
from owl_pipeline.orchestration.resources import MlflowResource, ProjectResource

GROUP_DATA, GROUP_TRAINING, GROUP_EVAL = "data", "training", "evaluation"


def ui_metadata(result: steps.StepResult) -> dict[str, dg.MetadataValue]:
    """What the Dagster UI shows for a materialization: numbers as numbers, links as links, plots inline."""
    metadata: dict[str, dg.MetadataValue] = {}
    for key, value in result.metadata.items():
        if isinstance(value, bool) or value is None:
            metadata[key] = dg.MetadataValue.text(str(value))
        elif isinstance(value, int):
            metadata[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            metadata[key] = dg.MetadataValue.float(value)
        elif isinstance(value, str) and value.startswith("http"):
            metadata[key] = dg.MetadataValue.url(value)
        elif isinstance(value, (dict, list)):
            metadata[key] = dg.MetadataValue.json(value)
        else:
            metadata[key] = dg.MetadataValue.text(str(value))
    for name, path in result.outputs.items():
        metadata[f"path_{name}"] = dg.MetadataValue.path(path)
    if "removed" in result.metadata:
        rows = "\n".join(f"| {rule} | {count} |" for rule, count in result.metadata["removed"].items())
        metadata["removed_per_rule"] = dg.MetadataValue.md(f"| rule | rows removed |\n|---|---|\n{rows}")
    return metadata


def materialized(project: steps.Project, result: steps.StepResult, deps: list[str],
                 metadata: dict[str, dg.MetadataValue] | None = None) -> dg.MaterializeResult:
    """The result with lineage: DVC hash (and Lance version) of what the step wrote and of what it read.
    The output's DVC hash is also the Dagster data version, so the UI shows when bytes really changed."""
    metadata = metadata if metadata is not None else ui_metadata(result)
    paths = project.asset_paths()
    written = data_version(paths[result.name]) if result.name in paths else {}
    metadata.update({f"written_{k}": dg.MetadataValue.text(str(v)) for k, v in written.items()})
    metadata["read_versions"] = dg.MetadataValue.json({dep: data_version(paths[dep]) for dep in deps if dep in paths})
    version = dg.DataVersion(written["dvc_md5"]) if written.get("dvc_md5") else None
    return dg.MaterializeResult(metadata=metadata, data_version=version)


def _data_asset(name: str, deps: list[str], description: str):
    @dg.asset(name=name, deps=deps, group_name=GROUP_DATA, description=description, compute_kind="lance")
    def _asset(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        owl_project = project.project()
        return materialized(owl_project, steps.run_step(name, owl_project, log=context.log.info), deps)

    return _asset


def _training_asset(name: str, deps: list[str], description: str):
    @dg.asset(name=name, deps=deps, group_name=GROUP_TRAINING, description=description, compute_kind="pytorch")
    def _asset(context: dg.AssetExecutionContext, project: ProjectResource, mlflow: MlflowResource
               ) -> dg.MaterializeResult:
        owl_project = project.project()
        result = steps.run_step(name, owl_project, mlflow.tracking(owl_project), log=context.log.info)
        metadata = ui_metadata(result)
        curve = Path(result.outputs["model"]).parent / "loss_curve.png"
        if curve.is_file():
            metadata["loss_curve"] = dg.MetadataValue.path(str(curve))
        return materialized(owl_project, result, deps, metadata)

    return _asset


raw_shards = _data_asset(C.ASSET_RAW_SHARDS, [], "Shapes world generated, or your img2dataset shards checked")
raw_pairs = _data_asset(C.ASSET_RAW_PAIRS, [C.ASSET_RAW_SHARDS], "Every readable pair in one Lance table")
curated_pairs = _data_asset(C.ASSET_CURATED_PAIRS, [C.ASSET_RAW_PAIRS], "Pairs that pass the LAION/COYO rules")
instruction_data = _data_asset(C.ASSET_INSTRUCTIONS, [C.ASSET_RAW_SHARDS], "Instruction conversations in Lance")
base_llm = _training_asset(C.ASSET_BASE_LLM, [C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS],
                           "The LLM the stages build on (trained here on the embedded default)")
stage1_model = _training_asset(C.ASSET_STAGE1, [C.ASSET_BASE_LLM, C.ASSET_CURATED_PAIRS],
                               "Stage 1: vision + abstractor trained, LLM frozen")
stage2_model = _training_asset(C.ASSET_STAGE2, [C.ASSET_STAGE1, C.ASSET_INSTRUCTIONS],
                               "Stage 2: LoRA on the LLM with the mixed instructions")


@dg.asset(name=C.ASSET_OWLEVAL, deps=[C.ASSET_STAGE2, C.ASSET_RAW_SHARDS], group_name=GROUP_EVAL,
          compute_kind="pytorch",
          description="OwlEval answers in the official format, scored beside the published models (HTML report)")
def owleval_report(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    owl_project = project.project()
    result = steps.run_step(C.ASSET_OWLEVAL, owl_project, log=context.log.info)
    metadata = ui_metadata(result)
    if "accuracy_by_type" in result.metadata:
        rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in result.metadata["accuracy_by_type"].items())
        metadata["accuracy_table"] = dg.MetadataValue.md(f"| question type | accuracy |\n|---|---|\n{rows}")
    return materialized(owl_project, result, [C.ASSET_STAGE2], metadata)


@dg.asset(name=C.ASSET_REGISTERED, deps=[C.ASSET_STAGE2, C.ASSET_OWLEVAL], group_name=GROUP_EVAL,
          compute_kind="mlflow",
          description="The stage-2 model in the MLflow registry: alias candidate, champion if it passes the gate")
def registered_model(context: dg.AssetExecutionContext, project: ProjectResource, mlflow: MlflowResource
                     ) -> dg.MaterializeResult:
    owl_project = project.project()
    result = steps.run_step(C.ASSET_REGISTERED, owl_project, mlflow.tracking(owl_project), log=context.log.info)
    return materialized(owl_project, result, [C.ASSET_STAGE2, C.ASSET_OWLEVAL])


ALL_ASSETS = [raw_shards, raw_pairs, curated_pairs, instruction_data, base_llm, stage1_model, stage2_model,
              owleval_report, registered_model]


def asset_graph_edges() -> dict[str, set[str]]:
    """asset -> the assets it depends on, as Dagster sees them (compared with dvc.yaml in a test)."""
    edges = {}
    for definition in ALL_ASSETS:
        for key in definition.keys:
            edges[key.to_user_string()] = {dep.to_user_string() for dep in definition.asset_deps[key]}
    return edges

