"""Registration in the MLflow model registry, and the promotion gate.

Every new version gets the alias ``candidate``. It also gets ``champion`` only if it serves
(``models:/<name>@candidate`` loads and answers the serving example logged with it) and passes the gate: its score
is at least the current champion's plus ``min_delta`` (0: never worse, so the bar never slides), measured on the
same eval set (the same digest), and at least an absolute floor. A champion scored on another eval set, or
without the metric, is not beaten by default: the version is refused with the reason. The decision and its
reason are written on the version (tags ``gate.*`` and the description). The champion is read after the serving
check, under a lock on the store (``champion_lock``), so two registrations at once never both promote against
the champion of before. Load the result the MLflow way:
``mlflow.pyfunc.load_model("models:/<name>@champion")``.

Nothing is registered half-way: the pyfunc is built before the registry is touched, and a failure after the
version was created deletes that version again.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from PIL import Image

from owl_pipeline.registry import pyfunc_model
from owl_pipeline.registry.tracking import MlflowTracking

CANDIDATE, CHAMPION = "candidate", "champion"
SCORE_TAG_PREFIX = "eval."
EVAL_SET_DIGEST_TAG = "eval_set_digest"  # the DVC md5 of the eval set the scores were measured on
_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
CHAMPION_LOCK_WAIT_SECONDS = 600.0  # a registration holds it for a few store calls


class RegistryUnavailableError(ConnectionError):
    """The model registry could not be reached; nothing was registered."""


@dataclass
class GateDecision:
    promoted: bool
    reason: str


@dataclass(frozen=True)
class Champion:
    """The current champion as the gate sees it: its score on the metric, and the eval set it was measured on."""

    version: str
    score: float | None
    eval_set_digest: str | None


def _not_finite(score: float) -> bool:
    return not math.isfinite(score)  # NaN compares false both ways: it would pass every test below


def gate(score: float | None, champion: Champion | None, min_delta: float, floor: float,
         eval_set_digest: str | None = None, coverage: str | None = None) -> GateDecision:
    """Promote when ``score >= floor`` and, against a champion measured on the same eval set,
    ``score >= champion.score + min_delta``; no champion yet: the floor alone decides. A score that is not a finite
    number never promotes, and a champion's never counts as beaten. ``coverage``: why the scores do not cover the
    whole eval set (eval.report.OwlEvalReport.coverage_problem), which refuses."""
    if score is None:
        return GateDecision(False, "no score for the gate's metric: not promoted")
    if _not_finite(score):
        return GateDecision(False, f"score {score} is not a finite number: not promoted")
    if coverage:
        return GateDecision(False, f"{coverage}: not comparable, not promoted")
    if score < floor:
        return GateDecision(False, f"score {score:.4f} is below the floor {floor:.4f}")
    if champion is not None:
        problem = _champion_problem(champion, eval_set_digest)
        if problem:
            return GateDecision(False, problem)
        if score < champion.score + min_delta:
            return GateDecision(False, f"score {score:.4f} is below the champion's {champion.score:.4f} "
                                       f"plus min_delta {min_delta:.4f}")
    against = "no champion yet" if champion is None else f"champion {champion.score:.4f}"
    return GateDecision(True, f"score {score:.4f} passes (floor {floor:.4f}, {against}, min_delta {min_delta:.4f})")


def _champion_problem(champion: Champion, eval_set_digest: str | None) -> str | None:
    """Why a candidate cannot be compared with ``champion``, or None."""
    if champion.score is None or _not_finite(champion.score):
        return (f"the champion (version {champion.version}) has no finite score for the gate's metric "
                f"({champion.score}): not comparable, not promoted (score both, or move the alias by hand)")
    if champion.eval_set_digest != eval_set_digest:
        return (f"the champion (version {champion.version}) was scored on another eval set "
                f"(digest {champion.eval_set_digest}, now {eval_set_digest}): not comparable, not promoted")
    return None


def _example_image() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@contextlib.contextmanager
def _package_code() -> Iterator[Path]:
    """A copy of the owl_pipeline package as the served model needs it: its code, without the bundled shapes-world
    models (the pyfunc loads its weights from its own artifact) and without caches."""
    package = Path(pyfunc_model.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        code = Path(scratch) / package.name
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("bundled", "__pycache__", "*.pyc"))
        yield code


def _pyfunc_arguments(model_dir: Path, limits: pyfunc_model.ServingLimits | None, code: Path,
                      max_new_tokens: int = 64) -> dict:
    """What saving or logging the Owl folder as a pyfunc (models from code) takes: signature, input example,
    and the limits of what it accepts when served (pyfunc_model.ServingLimits; default: base64 images only)."""
    example = pd.DataFrame({"image": [_example_image()], "question": ["What color is the picture?"],
                            "history": ["[]"]})
    inferred = infer_signature(example, ["an answer"], params={pyfunc_model.MAX_NEW_TOKENS_PARAM: max_new_tokens})
    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "question"),
                     ColSpec("string", "history", required=False)])  # history only for follow-up turns
    return dict(python_model=str(Path(pyfunc_model.__file__).resolve()),
                artifacts={pyfunc_model.OWL_ARTIFACT: str(model_dir)},
                signature=ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params),
                input_example=example, model_config=(limits or pyfunc_model.ServingLimits()).to_config(),
                code_paths=[str(code)],  # the model carries the owl_pipeline code it runs
                pip_requirements=served_requirements())


def served_requirements() -> list[str]:
    """What the served model needs, at least the versions it was made with. Public versions only: a local label
    (torch's ``2.13.0+cpu``) is invalid in ``>=`` (PEP 440), and a virtualenv `mlflow models serve` rejects it."""
    return [f"{name}>={_version(name)}" for name in ("torch", "transformers", "peft", "mlflow")] + ["pillow", "pandas"]


def save_pyfunc(model_dir: Path, out: Path, max_new_tokens: int = 64,
                limits: pyfunc_model.ServingLimits | None = None) -> Path:
    """The Owl folder as an MLflow pyfunc in ``out`` (see _pyfunc_arguments)."""
    with _package_code() as code:
        mlflow.pyfunc.save_model(path=str(out), **_pyfunc_arguments(Path(model_dir), limits, code, max_new_tokens))
    return out


@contextlib.contextmanager
def _fluent_api_on(tracking: MlflowTracking) -> Iterator[None]:
    """MLflow's fluent API (which logging a LoggedModel and resolving ``models:/`` need) pointed at ``tracking``'s
    store for a while, then exactly as before. Through the MLFLOW_TRACKING_URI variable, restored after: MLflow's
    own setting stays unset (``mlflow.set_tracking_uri`` would also export the variable, and every later run in this
    process and every child process, a training launch or `dvc repro`, would inherit it). Only where this process
    set a URI explicitly, which outranks the variable, is it set and put back with ``mlflow.set_tracking_uri``."""
    previous_env = os.environ.get(_TRACKING_URI_ENV)
    os.environ[_TRACKING_URI_ENV] = tracking.tracking_uri
    explicit = mlflow.get_tracking_uri() != tracking.tracking_uri
    previous = mlflow.get_tracking_uri() if explicit else None
    if explicit:
        mlflow.set_tracking_uri(tracking.tracking_uri)
    try:
        yield
    finally:
        if explicit:
            mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop(_TRACKING_URI_ENV, None)
        else:
            os.environ[_TRACKING_URI_ENV] = previous_env


def log_model_in_run(tracking: MlflowTracking, run_id: str, model_dir: Path,
                     limits: pyfunc_model.ServingLimits | None) -> tuple[str, str]:
    """The pyfunc logged into the (training) run ``run_id`` as an MLflow LoggedModel: (its models:/ URI, id)."""
    with _package_code() as code, _fluent_api_on(tracking), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", **_pyfunc_arguments(Path(model_dir), limits, code))
    return info.model_uri, info.model_id


def _version(package: str) -> str:
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version(package)).public


@dataclass
class Registration:
    name: str
    version: str
    promoted: bool
    reason: str
    run_id: str
    model_uri: str  # models:/<name>/<version>
    serves: bool = True  # the candidate loaded and answered its logged serving example


def serving_problem(name: str) -> str | None:
    """None if ``models:/<name>@candidate`` loads as a pyfunc and answers the serving input example logged with
    it, parsed as `mlflow models serve` parses a request (``mlflow.models.predict``, in this environment); else
    what failed. Call with MLflow's fluent API pointed at the registry (``_fluent_api_on``)."""
    from mlflow.models import predict
    from mlflow.models.utils import load_serving_example

    uri = f"models:/{name}@{CANDIDATE}"
    with tempfile.TemporaryDirectory() as scratch:
        request, output = Path(scratch) / "request.json", Path(scratch) / "predictions.json"
        try:
            example = load_serving_example(uri)
            if example is None:
                return f"{uri} was logged without a serving input example"
            request.write_text(example if isinstance(example, str) else json.dumps(example))
            predict(uri, input_path=str(request), content_type="json", output_path=str(output), env_manager="local")
            answers = json.loads(output.read_text()).get("predictions")
        except Exception as error:  # any failure to load or answer is the finding, reported on the version
            return f"{uri} does not serve: {type(error).__name__}: {str(error)[:500]}"
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        return f"{uri} answered its serving example with {answers!r}, not a list of texts"
    return None


def current_champion(tracking: MlflowTracking, name: str, metric: str) -> Champion | None:
    try:
        champion = tracking.client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = champion.tags.get(SCORE_TAG_PREFIX + metric)
    return Champion(champion.version, float(value) if value not in (None, "None") else None,
                    champion.tags.get(EVAL_SET_DIGEST_TAG))


def check_registry(tracking: MlflowTracking) -> None:
    try:
        tracking.client.search_registered_models(max_results=1)
    except (MlflowException, OSError) as error:
        raise RegistryUnavailableError(f"cannot reach the MLflow model registry at {tracking.registry_uri}: "
                                       f"{error}. Nothing was registered.") from error


def register_model(tracking: MlflowTracking, model_dir: Path, name: str, scores: dict[str, float | None],
                   metric: str, min_delta: float, floor: float, tags: dict[str, str] | None = None,
                   log: Callable[[str], None] = print, limits: pyfunc_model.ServingLimits | None = None,
                   run_id: str | None = None, eval_set_digest: str | None = None,
                   promotion_off: str | None = None, coverage: str | None = None) -> Registration:
    """Register ``model_dir`` as a new version of ``name``, alias it ``candidate``, and ``champion`` if it
    passes the gate on ``scores[metric]``. With ``run_id`` (the training run that made it), the model is logged
    into that run as a LoggedModel with the scores as its metrics and registered from it, so the registry
    links back to the run's params, metrics and datasets; without, a run of its own holds it. The scores were
    measured on the eval set ``eval_set_digest`` names (its DVC md5): only a champion measured on the same set is
    compared against, and only scores of the whole set (``coverage``: why they are not) may promote.
    ``promotion_off`` (a reason, e.g. a DVC experiment) keeps champion where it is: the gate's verdict is still
    recorded."""
    check_registry(tracking)
    version_tags = {**(tags or {}), **{SCORE_TAG_PREFIX + k: str(v) for k, v in scores.items()},
                    **({EVAL_SET_DIGEST_TAG: eval_set_digest} if eval_set_digest else {})}
    gate_on = dict(score=scores.get(metric), metric=metric, min_delta=min_delta, floor=floor,
                   eval_set_digest=eval_set_digest, promotion_off=promotion_off, coverage=coverage)
    if run_id is not None:
        with _fluent_api_on(tracking):  # the store resolves a models:/ source through MLflow's global URI
            source, model_id = log_model_in_run(tracking, run_id, Path(model_dir), limits)
            # The LoggedModel's metrics, on the eval set as a dataset (its digest the eval set's DVC md5).
            tracking.client.log_batch(run_id, metrics=[
                Metric(f"{SCORE_TAG_PREFIX}{k}", float(v), _now_ms(), 0, model_id=model_id,
                       dataset_name="owleval" if eval_set_digest else None, dataset_digest=eval_set_digest)
                for k, v in scores.items() if v is not None])
            return _create_version(tracking, name, source, run_id, version_tags, log=log, model_id=model_id,
                                   **gate_on)
    with tempfile.TemporaryDirectory() as scratch:
        pyfunc_dir = save_pyfunc(Path(model_dir), Path(scratch) / "model", limits=limits)
        with tracking.run(f"register {name}", tags=version_tags) as run:
            run.log_metrics({k: v for k, v in scores.items() if v is not None}, step=0)
            run.log_artifact(pyfunc_dir, "model")
            source = f"{tracking.client.get_run(run.run_id).info.artifact_uri}/model"
            return _create_version(tracking, name, source, run.run_id, version_tags, log=log, **gate_on)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _link_logged_model(tracking: MlflowTracking, model_id: str, name: str, version: str) -> None:
    """Name the version on its LoggedModel (tag ``mlflow.modelVersions``), as ``mlflow.register_model`` does, so
    the LoggedModel's page links to it instead of saying "Not registered"."""
    logged = tracking.client.get_logged_model(model_id)
    versions = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]") + [{"name": name, "version": version}]
    tracking.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})


def _local_store_file(uri: str) -> Path | None:
    """The file or folder of a local tracking store (``sqlite:///PATH``, ``file:PATH`` or a plain path); None for
    a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    return None if "://" in uri else Path(uri)


@contextlib.contextmanager
def champion_lock(tracking: MlflowTracking) -> Iterator[None]:
    """Held while the champion is read, compared with and moved, so two registrations against one store never
    both promote against the same old champion. A local store holds it as a file beside it (released by the OS
    if the holder dies); a server offers none through MLflow: there the champion is re-read just before the alias
    is set, which narrows the race to that moment (keep registrations to one process per model name)."""
    store = _local_store_file(tracking.registry_uri)
    if store is None:
        yield
        return
    with FileLock(store.with_name(f".{store.name}.champion.lock"), timeout=CHAMPION_LOCK_WAIT_SECONDS):
        yield


def _decide(score: float | None, champion: Champion | None, problem: str | None, promotion_off: str | None,
            **gate_on) -> GateDecision:
    """The gate's verdict, then what overrules it: a candidate that does not serve, or promotion turned off."""
    decision = gate(score, champion, **gate_on)
    if problem:
        return GateDecision(False, f"the candidate does not serve, not promoted: {problem}")
    if promotion_off:
        verdict = "would pass" if decision.promoted else "would not pass"
        return GateDecision(False, f"{promotion_off}: candidate only ({verdict}: {decision.reason})")
    return decision


def _create_version(tracking: MlflowTracking, name: str, source: str, run_id: str, tags: dict[str, str],
                    score: float | None, metric: str, min_delta: float, floor: float, eval_set_digest: str | None,
                    log: Callable[[str], None], model_id: str | None = None,
                    promotion_off: str | None = None, coverage: str | None = None) -> Registration:
    client = tracking.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="mPLUG-Owl-style model trained by owl-pipeline")
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    try:
        if model_id:
            _link_logged_model(tracking, model_id, name, str(version.version))
        client.set_registered_model_alias(name, CANDIDATE, version.version)
        with _fluent_api_on(tracking):
            problem = serving_problem(name)
        client.set_model_version_tag(name, version.version, "serving.check", problem or "passed")
        # The champion is read after the seconds-long serving check, under the lock: another registration may
        # have moved it meanwhile, and the comparison must be with the champion the alias moves from.
        with champion_lock(tracking):
            champion = current_champion(tracking, name, metric)
            decision = _decide(score, champion, problem, promotion_off, min_delta=min_delta, floor=floor,
                               eval_set_digest=eval_set_digest, coverage=coverage)
            if decision.promoted:
                client.set_registered_model_alias(name, CHAMPION, version.version)
        against = f" (champion was version {champion.version})" if champion else ""
        client.set_model_version_tag(name, version.version, "gate.decision", "promoted" if decision.promoted
                                     else "refused")
        client.set_model_version_tag(name, version.version, "gate.reason", decision.reason + against)
        client.update_model_version(name, version.version, description=f"gate on {metric}: {decision.reason}{against}")
    except BaseException:
        client.delete_model_version(name, version.version)  # never leave a half-registered version behind
        raise
    log(f"registered {name} version {version.version} ({CANDIDATE}); gate on {metric}: "
        f"{'promoted to ' + CHAMPION if decision.promoted else 'not promoted'}: {decision.reason}")
    return Registration(name, str(version.version), decision.promoted, decision.reason, run_id,
                        f"models:/{name}/{version.version}", serves=problem is None)
