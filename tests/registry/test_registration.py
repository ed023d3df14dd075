"""Registration with a real MLflow sqlite registry: two real tiny models scored on a slice of the real OwlEval,
the promotion gate, loading ``models:/<name>@champion``, and `mlflow models serve` answering over HTTP."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from owl_pipeline.config import OwlConfig
from owl_pipeline.eval.owleval import answer_eval_set, load_eval_set
from owl_pipeline.eval.report import Scorers, build_report, our_scores
from owl_pipeline.model.builders import build_model, processor_config_for, save_pretrained
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.registry.registration import (CANDIDATE, CHAMPION, Champion, RegistryUnavailableError, gate,
                                                register_model)
from owl_pipeline.registry.tracking import MlflowTracking

NAME = "owl-test"


def test_gate_rules():
    champion = Champion("3", 0.5, "set-a")
    assert gate(0.5, None, 0.0, 0.3).promoted  # no champion yet: the floor alone
    assert not gate(0.2, None, 0.0, 0.3).promoted  # below the floor
    assert gate(0.5, champion, 0.0, 0.3, "set-a").promoted  # as good as the champion
    decision = gate(0.49, champion, 0.0, 0.3, "set-a")  # a little worse is worse: the bar never slides
    assert not decision.promoted and "below the champion's 0.5000 plus min_delta 0.0000" in decision.reason
    assert not gate(0.55, champion, 0.1, 0.3, "set-a").promoted  # min_delta asks for a real gain
    other = gate(0.9, champion, 0.0, 0.3, "set-b")
    assert not other.promoted and "scored on another eval set (digest set-a, now set-b)" in other.reason
    unscored = gate(0.9, Champion("3", None, "set-a"), 0.0, 0.3, "set-a")
    assert not unscored.promoted and "has no finite score for the gate's metric" in unscored.reason
    assert not gate(None, champion, 0.0, 0.0, "set-a").promoted


def test_a_score_that_is_not_finite_never_promotes_nor_counts_as_beaten():
    nan = float("nan")
    for score in (nan, float("inf")):
        decision = gate(score, None, 0.0, 0.3)
        assert not decision.promoted and "not a finite number" in decision.reason
    assert not gate(nan, Champion("3", 0.5, "set-a"), 0.0, 0.3, "set-a").promoted
    after_a_nan_champion = gate(0.1, Champion("4", nan, "set-a"), 0.0, 0.0, "set-a")
    assert not after_a_nan_champion.promoted and "no finite score" in after_a_nan_champion.reason


def test_scores_that_cover_part_of_the_eval_set_never_promote():
    decision = gate(0.9, None, 0.0, 0.3, coverage="the report covers 30 of the eval set's 40 questions")
    assert not decision.promoted and "covers 30 of the eval set's 40 questions: not comparable" in decision.reason


def test_a_sequence_of_slightly_worse_candidates_never_moves_the_champion(tmp_path, two_models):
    """Retrains each 0.001 worse than the last: under the old tolerance of 0.02 every one was promoted."""
    (_, folder), _ = two_models
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    results = [register_model(tracking, folder, "slide", {"accuracy": 0.8 - 0.001 * i}, "accuracy", min_delta=0.0,
                              floor=0.0, log=print, eval_set_digest="set-a") for i in range(4)]
    assert [r.promoted for r in results] == [True, False, False, False]
    assert str(tracking.client.get_model_version_by_alias("slide", CHAMPION).version) == results[0].version
    refused = tracking.client.get_model_version("slide", results[-1].version)
    assert refused.tags["gate.decision"] == "refused" and refused.tags["eval_set_digest"] == "set-a"


def _register_racing(store: str, folder: str, score: float, barrier, serving_seconds: float) -> None:
    """One registration process of the race below: both pass the barrier before either's serving check ends (so
    each read the store before the other moved champion), and the worse one's check ends last."""
    from owl_pipeline.registry import registration

    def serving_check_taking(seconds):
        def check(name):
            barrier.wait(60)
            time.sleep(seconds)
            return None
        return check

    registration.serving_problem = serving_check_taking(serving_seconds)
    tracking = MlflowTracking(f"sqlite:///{store}", artifact_root=Path(store).parent / "artifacts")
    register_model(tracking, Path(folder), "race", {"accuracy": score}, "accuracy", 0.0, 0.0, log=print,
                   eval_set_digest="set-a")


@pytest.mark.slow  # two processes that import MLflow and register: 15 s
def test_two_registrations_at_once_leave_the_better_model_champion(tmp_path, two_models):
    import multiprocessing

    (_, folder), _ = two_models
    store = tmp_path / "mlflow.db"
    tracking = MlflowTracking(f"sqlite:///{store}", artifact_root=tmp_path / "artifacts")  # the store made once
    tracking.client.create_registered_model("race")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    racers = [context.Process(target=_register_racing, args=(str(store), str(folder), score, barrier, seconds))
              for score, seconds in ((0.9, 0.0), (0.5, 3.0))]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(180)
    assert [r.exitcode for r in racers] == [0, 0]
    champion = tracking.client.get_model_version_by_alias("race", CHAMPION)
    assert champion.tags["eval.accuracy"] == "0.9"
    worse = next(v for v in tracking.client.search_model_versions("name='race'") if v.tags["eval.accuracy"] == "0.5")
    assert worse.tags["gate.decision"] == "refused" and "below the champion's 0.9000" in worse.tags["gate.reason"]


@pytest.fixture(scope="module")
def eval_slice(corpus, tmp_path_factory):
    """The first eight questions of shapes world's eval set, with their pictures and reference answers."""
    root = corpus[0] / "owleval"
    folder = tmp_path_factory.mktemp("owleval")
    lines = (root / "questions.jsonl").read_text().splitlines()[:8]
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copytree(root / "answer", folder / "answer")
    (folder / "cases").mkdir()
    for image in {json.loads(line)["image"] for line in lines}:
        shutil.copy(root / "cases" / image, folder / "cases" / image)
    return load_eval_set(folder)


@pytest.fixture(scope="module")
def two_models(tokenizer, eval_slice, similarity, tmp_path_factory):
    """Two real tiny models (seeds 0 and 1), saved, each with its measured similarity score; worse one first."""
    config = OwlConfig.from_name("tiny")
    scored = []
    for seed in (0, 1):
        processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=False))
        torch.manual_seed(seed)
        model = build_model(config, processor)
        folder = tmp_path_factory.mktemp(f"model{seed}")
        save_pretrained(model, processor, folder)
        answers = answer_eval_set(model, processor, eval_slice, f"seed{seed}", max_new_tokens=8)
        score = our_scores(build_report(eval_slice, answers, f"seed{seed}", Scorers(similarity=similarity)))
        scored.append((score["similarity"], folder))
    scored.sort(key=lambda pair: pair[0])
    assert scored[0][0] < scored[1][0], "the two models must score differently for the gate test to mean anything"
    return scored


@pytest.fixture(scope="module")
def registry(tmp_path_factory, two_models):
    """A sqlite registry holding: the worse model (champion, first), the better (promoted), the worse again."""
    root = tmp_path_factory.mktemp("mlruns")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = MlflowTracking(uri, artifact_root=root / "artifacts")
    (worse, worse_dir), (better, better_dir) = two_models
    results = [register_model(tracking, folder, NAME, {"similarity": score}, "similarity", min_delta=0.0,
                              floor=0.0, tags={"git_commit": "test"}, log=print)
               for score, folder in ((worse, worse_dir), (better, better_dir), (worse, worse_dir))]
    return uri, tracking, results


def test_the_gate_promotes_the_better_model_and_refuses_the_worse(registry):
    _, tracking, (first, better, worse_again) = registry
    assert first.promoted and better.promoted and not worse_again.promoted
    client = tracking.client
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == better.version
    assert str(client.get_model_version_by_alias(NAME, CANDIDATE).version) == worse_again.version
    refused = client.get_model_version(NAME, worse_again.version)
    assert refused.tags["gate.decision"] == "refused" and "below the champion's" in refused.tags["gate.reason"]
    assert f"champion was version {better.version}" in refused.description
    assert refused.tags["git_commit"] == "test" and "eval.similarity" in refused.tags


@pytest.fixture(scope="module")
def picture(corpus) -> Path:
    return corpus[0] / "owleval" / "cases" / "1.jpg"


def _image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_champion_loads_and_predicts(registry, picture, monkeypatch):
    uri, _, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    image = _image_b64(picture)  # base64: the default model takes no paths
    frame = pd.DataFrame({"image": [image, image],
                          "question": ["What is this?", "And now?"],
                          "history": ["[]", json.dumps([["What is this?", "a phone"]])]})
    answers = model.predict(frame, params={"max_new_tokens": 4})
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert model.metadata.get_input_schema().input_names() == ["image", "question", "history"]
    single = model.predict(pd.DataFrame({"image": [image], "question": ["What is it?"]}))  # history optional
    assert len(single) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # a model server: 10 s
def test_mlflow_models_serve_answers_http(registry, picture, tmp_path):
    uri, _, _ = registry
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # the server runs `uvicorn` from PATH: the venv's bin, as when the venv is activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{mlflow_cli.parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["image", "question", "history"],
                                               "data": [[_image_b64(picture), "What is funny here?", "[]"]]},
                           "params": {"max_new_tokens": 4}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert len(reply["predictions"]) == 1 and isinstance(reply["predictions"][0], str)
        # A file path on the server is refused with one plain message: no traceback, no local paths.
        body = json.dumps({"dataframe_split": {"columns": ["image", "question"],
                                               "data": [[str(picture), "What?"]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        error = json.loads(refused.value.read())
        # (MLflow's server echoes the request's own data before the message.)
        assert refused.value.code == 400
        assert error["message"].endswith("Error: image must be base64-encoded image bytes")
        assert "stack_trace" not in error and "Traceback" not in json.dumps(error)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_unreachable_registry_registers_nothing(tmp_path, two_models, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = MlflowTracking(uri, registry_uri=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(RegistryUnavailableError, match="cannot reach the MLflow model registry"):
        register_model(tracking, two_models[1][1], NAME, {"similarity": 1.0}, "similarity", 0.0, 0.0)
    assert MlflowTracking(uri).client.search_registered_models() == []
    assert tracking.client.search_runs([tracking.experiment_id]) == []


def test_registering_leaves_the_process_tracking_uri_as_it_was(tmp_path, two_models, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; left behind, a later run in this process (or a child
    # process, e.g. the next training step) would log to this registry's store instead of its project's own.
    (score, folder), _ = two_models
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    experiment = tracking.client.create_experiment("training", artifact_location=(tmp_path / "runs").as_uri())

    def register_from_a_training_run():  # the pipeline's way: the model logged into its run through the fluent API
        run_id = tracking.client.create_run(experiment).info.run_id
        register_model(tracking, folder, NAME, {"similarity": score}, "similarity", 0.0, 0.0, tags={}, log=print,
                       run_id=run_id)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    register_from_a_training_run()
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    register_from_a_training_run()
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"


def test_the_served_requirements_are_valid_pep_440_and_met_here():
    """Issue 26: ``torch>=2.13.0+cpu`` is refused by packaging (a local label in >=); the public version is not."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from owl_pipeline.registry.registration import served_requirements

    for line in served_requirements():
        requirement = Requirement(line)  # raises InvalidRequirement on a local label
        if requirement.specifier:
            assert requirement.specifier.contains(version(requirement.name), prereleases=True), line
    assert any(line.startswith("torch>=") and "+" not in line for line in served_requirements())


def test_a_candidate_that_does_not_serve_never_becomes_champion(tmp_path, two_models):
    """``models:/NAME@candidate`` must load and answer its logged serving example before the gate may promote it:
    a version whose weights are damaged is registered as candidate, refused, and says why."""
    (_, folder), _ = two_models
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    good = register_model(tracking, folder, "serves", {"accuracy": 0.5}, "accuracy", 0.0, 0.0, log=print)
    assert good.promoted and good.serves
    assert tracking.client.get_model_version("serves", good.version).tags["serving.check"] == "passed"
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "abstractor.safetensors").write_bytes(b"not a safetensors file")
    bad = register_model(tracking, damaged, "serves", {"accuracy": 0.9}, "accuracy", 0.0, 0.0, log=print)
    assert not bad.promoted and not bad.serves and "does not serve" in bad.reason
    version = tracking.client.get_model_version("serves", bad.version)
    assert version.tags["gate.decision"] == "refused" and "@candidate does not serve" in version.tags["serving.check"]
    assert str(tracking.client.get_model_version_by_alias("serves", CHAMPION).version) == good.version
    assert str(tracking.client.get_model_version_by_alias("serves", CANDIDATE).version) == bad.version


def test_an_experiment_registers_a_candidate_and_never_moves_champion(tmp_path, two_models):
    (_, folder), _ = two_models
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    tried = register_model(tracking, folder, "exp", {"accuracy": 0.9}, "accuracy", 0.0, 0.0, log=print,
                           promotion_off="DVC experiment lr-sweep (DVC_EXP_NAME)")
    assert not tried.promoted and "DVC experiment lr-sweep (DVC_EXP_NAME): candidate only (would pass" in tried.reason
    assert str(tracking.client.get_model_version_by_alias("exp", CANDIDATE).version) == tried.version
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.client.get_model_version_by_alias("exp", CHAMPION)
    main_line = register_model(tracking, folder, "exp", {"accuracy": 0.9}, "accuracy", 0.0, 0.0, log=print)
    assert main_line.promoted


def test_an_explicitly_set_tracking_uri_is_put_back_after_registering(tmp_path, two_models, monkeypatch):
    (score, folder), _ = two_models
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    experiment = tracking.client.create_experiment("training", artifact_location=(tmp_path / "runs").as_uri())
    run_id = tracking.client.create_run(experiment).info.run_id
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(mine)  # this process chose its own store (MLflow also exports it to the variable)
    try:
        register_model(tracking, folder, NAME, {"similarity": score}, "similarity", 0.0, 0.0, log=print,
                       run_id=run_id)
        assert mlflow.get_tracking_uri() == mine and os.environ["MLFLOW_TRACKING_URI"] == mine
    finally:
        mlflow.set_tracking_uri(None)  # unsets the setting and its variable: later tests start clean
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_the_registry_room_touches_no_private_mlflow_name():
    import re

    registry = Path(__file__).resolve().parents[2] / "owl_pipeline" / "registry"
    private = re.compile(r"mlflow(\.\w+)*\._\w+|from mlflow[\w.]*\._|from mlflow[\w.]* import _")
    hits = [f"{p.name}: {m.group(0)}" for p in registry.glob("*.py") for m in private.finditer(p.read_text())]
    assert not hits, hits
