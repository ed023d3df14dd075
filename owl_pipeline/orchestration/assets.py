"""Software-defined assets: one thin layer over each function of owl_pipeline.steps.

    raw_shards -> raw_pairs -> curated_pairs -> instruction_data -> base_llm -> stage1_model -> stage2_model
    -> owleval_report -> registered_model
"""


import dagster as dg

from owl_pipeline import constants as C
from owl_pipeline import steps
from owl_pipeline.orchestration.metadata import ASSET_DEPS, materialization

GROUP_DATA, GROUP_TRAINING, GROUP_EVAL = "data", "training", "evaluation"


_METADATA_VALUE = {"text": dg.MetadataValue.text, "int": dg.MetadataValue.int, "float": dg.MetadataValue.float,
                   "url": dg.MetadataValue.url, "json": dg.MetadataValue.json, "path": dg.MetadataValue.path,
                   "md": dg.MetadataValue.md}


def materialized(project: steps.Project, result: steps.StepResult) -> dg.MaterializeResult:
    """What the Dagster UI shows for a step: its figures, tables and plots, and the versions it read and wrote."""
    entries, version = materialization(project, result)
    return dg.MaterializeResult(metadata={key: _METADATA_VALUE[kind](value) for key, (kind, value) in entries.items()},
                                data_version=dg.DataVersion(version) if version else None)


def _asset(name: str, group: str, kind: str, description: str, resources: tuple[str, ...] = ("project",)):
    """Asset ``name``: run its step (or reuse its result) and report it; training goes through the launcher."""

    @dg.asset(name=name, deps=ASSET_DEPS[name], group_name=group, description=description, compute_kind=kind,
              required_resource_keys=set(resources))
    def _materialize(context: dg.AssetExecutionContext):
        owl_project = context.resources.project.project()
        if "launcher" in resources and context.resources.launcher.mode == "pipes":
            return context.resources.launcher.run_step(context, name, context.resources.project,
                                                       context.resources.mlflow)
        tracking = context.resources.mlflow.tracking(owl_project) if "mlflow" in resources else None
        return materialized(owl_project, steps.run_step(name, owl_project, tracking, log=context.log.info))

    return _materialize


_TRAINING = ("project", "mlflow", "launcher")
raw_shards = _asset(C.ASSET_RAW_SHARDS, GROUP_DATA, "lance", "Shapes world generated, or your img2dataset shards")
raw_pairs = _asset(C.ASSET_RAW_PAIRS, GROUP_DATA, "lance", "Every readable pair in one Lance table")
curated_pairs = _asset(C.ASSET_CURATED_PAIRS, GROUP_DATA, "lance", "Pairs that pass the LAION/COYO rules")
instruction_data = _asset(C.ASSET_INSTRUCTIONS, GROUP_DATA, "lance", "Instruction conversations in Lance")
base_llm = _asset(C.ASSET_BASE_LLM, GROUP_TRAINING, "pytorch",
                  "The LLM the stages build on (trained here on the embedded default)", _TRAINING)
stage1_model = _asset(C.ASSET_STAGE1, GROUP_TRAINING, "pytorch", "Stage 1: vision + abstractor trained, LLM frozen",
                      _TRAINING)
stage2_model = _asset(C.ASSET_STAGE2, GROUP_TRAINING, "pytorch", "Stage 2: LoRA on the LLM with the mixed instructions",
                      _TRAINING)
owleval_report = _asset(C.ASSET_OWLEVAL, GROUP_EVAL, "pytorch",
                        "OwlEval answers in the official format, scored beside the published models (HTML report)")
registered_model = _asset(C.ASSET_REGISTERED, GROUP_EVAL, "mlflow",
                          "The stage-2 model in the MLflow registry: alias candidate, champion if it passes the gate",
                          ("project", "mlflow"))


ALL_ASSETS = [raw_shards, raw_pairs, curated_pairs, instruction_data, base_llm, stage1_model, stage2_model,
              owleval_report, registered_model]


def asset_graph_edges() -> dict[str, set[str]]:
    """asset -> the assets it depends on, as Dagster sees them (compared with dvc.yaml in a test)."""
    edges = {}
    for definition in ALL_ASSETS:
        for key in definition.keys:
            edges[key.to_user_string()] = {dep.to_user_string() for dep in definition.asset_deps[key]}
    return edges

