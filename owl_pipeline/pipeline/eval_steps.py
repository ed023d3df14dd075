"""The evaluation steps: OwlEval answers and report for the stage-2 model, then its registration."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from owl_pipeline import constants as C
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.lineage import lineage_tags
from owl_pipeline.pipeline.records import StepResult
from owl_pipeline.pipeline.steps import EVALUATION_CODE, GROUP_EVAL, pipeline_step, registered_step

Log = Callable[[str], None]
TRAINING_STEP_NAMES = (C.ASSET_BASE_LLM, C.ASSET_STAGE1, C.ASSET_STAGE2)


@dataclass(kw_only=True)
class OwlEvalResult(StepResult):
    questions: int | None = None
    accuracy: float | None = None  # where the eval set has reference answers (shapes world's does)
    similarity: float | None = None
    judge: float | None = None
    human: float | None = None
    accuracy_by_type: dict[str, float] | None = None
    accuracy_by_ability: dict[str, float] | None = None
    problems: list[str] | None = None


@dataclass(kw_only=True)
class RegistrationResult(StepResult):
    registered: bool = False  # False: tracking was off, nothing registered (the step runs again next time)
    model_uri: str | None = None
    version: str | None = None
    aliases: list[str] | None = None
    promoted: bool | None = None  # took the champion alias
    serves: bool | None = None  # models:/NAME@candidate loaded and answered its logged serving example
    gate_reason: str | None = None
    gate_metric: str | None = None
    score: float | None = None
    mlflow_run: str | None = None

    def worth_reusing(self) -> bool:
        return self.registered


@pipeline_step(C.ASSET_OWLEVAL, reads=(C.ASSET_STAGE2, C.ASSET_RAW_SHARDS),
               params=("owleval_dir", "evaluation", "max_image_pixels"), writes=lambda p: p.owleval,
               description="OwlEval answers in the official format, scored beside the published models (HTML report)",
               group=GROUP_EVAL, kinds=("pytorch",), external=lambda p: [p.owleval_dir() / "questions.jsonl"],
               metrics=(C.METRIC_ACCURACY, C.METRIC_SIMILARITY, C.METRIC_JUDGE, C.METRIC_HUMAN, C.ACCURACY_BY_TYPE),
               code=EVALUATION_CODE,
               result=OwlEvalResult)
def owleval_report(project: Project, log: Log = print, tracking=None) -> OwlEvalResult:
    """Answer the eval set with the stage-2 model; score it beside the published answers (eval.report)."""
    from owl_pipeline.eval.evaluate import evaluate_model

    files = evaluate_model(project.stage2 / C.MODEL_DIR, project.owleval_dir(), project.owleval,
                           project.config.evaluation, f"owl-{project.config.model.name}", log=log,
                           max_image_pixels=project.config.max_image_pixels)
    log("owleval: " + ", ".join(f"{k} {v:.3f}" for k, v in files.report.scores().items()))
    return OwlEvalResult(name=C.ASSET_OWLEVAL, outputs={"answers": str(files.answers), "report": str(files.json),
                                                        "html": str(files.html),
                                                        "rating_sheet": str(files.rating_sheet)},
                         questions=files.report.questions, **files.report.headline(), problems=files.report.problems)


def _parent_runs(project: Project) -> dict[str, str]:
    """``parent_run.<step>``: the MLflow run of each training step's last run."""
    parents = {}
    for name in TRAINING_STEP_NAMES:
        result = registered_step(name).last_result(project)
        if result is not None and result.mlflow_run_id:
            parents[f"parent_run.{name}"] = result.mlflow_run_id
    return parents


STAGE2_PARENT = f"parent_run.{C.ASSET_STAGE2}"


def promotion_off(project: Project) -> str | None:
    """Why this registration may not move champion, or None: ``registry.promote: false``, or a run under
    `dvc exp run` (DVC sets DVC_EXP_NAME): an experiment is compared, never promoted."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return f"DVC experiment {experiment} (DVC_EXP_NAME)"
    return None if project.config.registry.promote else "registry.promote is false"


def eval_set_digest(project: Project) -> str:
    """The DVC md5 of the eval set folder (questions, pictures, reference answers): what the gate compares on."""
    from owl_pipeline.data.versions import data_version

    return str(data_version(project.owleval_dir())["dvc_md5"])


@pipeline_step(C.ASSET_REGISTERED, reads=(C.ASSET_STAGE2, C.ASSET_OWLEVAL), params=("registry",), writes=None,
               description="The stage-2 model in the MLflow registry: alias candidate, champion if it passes the gate",
               group=GROUP_EVAL, kinds=("mlflow",), tracked=True, metrics=("version", "promoted"),
               code=("registry/registration.py", "registry/pyfunc_model.py", "registry/tracking.py",
                     "data/versions.py"), result=RegistrationResult, environment=("DVC_EXP_NAME",))
def registered_model(project: Project, log: Log = print, tracking=None) -> RegistrationResult:
    """Register the stage-2 model in the MLflow registry: alias ``candidate``, ``champion`` if the gate passes."""
    from owl_pipeline.eval.owleval import load_eval_set
    from owl_pipeline.eval.report import OwlEvalReport
    from owl_pipeline.registry.pyfunc_model import ServingLimits
    from owl_pipeline.registry.registration import register_model

    if tracking is None:
        log("registered_model: tracking is off (--no-tracking); nothing registered")
        return RegistrationResult(name=C.ASSET_REGISTERED, registered=False)
    settings = project.config.registry
    report = OwlEvalReport.read(project.owleval_report_json)
    scores = report.scores()
    tags = {**lineage_tags(project, (C.ASSET_CURATED_PAIRS, C.ASSET_INSTRUCTIONS)),
            **_parent_runs(project), "eval_set": report.eval_set}
    limits = ServingLimits(image_root=settings.serve_image_root, max_image_pixels=project.config.max_image_pixels,
                           max_rows=settings.serve_max_rows, max_new_tokens=settings.serve_max_new_tokens,
                           max_question_tokens=project.config.evaluation.max_question_tokens)
    # Logged into the stage-2 training run and registered from it (a run of its own if stage 2 was untracked).
    registration = register_model(tracking, project.stage2 / C.MODEL_DIR, settings.model_name, scores,
                                  settings.metric, settings.min_delta, settings.floor, tags=tags, log=log,
                                  limits=limits, run_id=tags.get(STAGE2_PARENT),
                                  eval_set_digest=eval_set_digest(project),
                                  promotion_off=promotion_off(project),
                                  coverage=report.coverage_problem(load_eval_set(project.owleval_dir())))
    return RegistrationResult(
        name=C.ASSET_REGISTERED, outputs={"model_uri": registration.model_uri}, registered=True,
        model_uri=registration.model_uri, version=registration.version,
        aliases=["candidate", "champion"] if registration.promoted else ["candidate"],
        promoted=registration.promoted, serves=registration.serves, gate_reason=registration.reason,
        gate_metric=settings.metric,
        score=scores.get(settings.metric),
        mlflow_run=f"{tracking.ui_url.rstrip('/')}/#/experiments/{tracking.experiment_id}/runs/{registration.run_id}")
