import time

import pytest

from owl_pipeline.cli import main


def test_info_prints_counts(capsys):
    assert main(["info", "--preset", "owl-1b"]) == 0
    out = capsys.readouterr().out
    assert "1,100,048,384" in out and "total" in out


def test_info_reports_a_bad_config_clearly(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: tiny\nllm:\n  hidden_size: 100\n")
    assert main(["info", "--config", str(path)]) == 2
    assert "llm.hidden_size / llm.num_heads = 25 must be even" in capsys.readouterr().err


def test_chat_and_eval_with_a_saved_model(tmp_path, model, processor, red_image, corpus, capsys):
    import json
    import shutil

    from owl_pipeline.model.builders import save_pretrained

    save_pretrained(model, processor, tmp_path / "model")
    red_image.save(tmp_path / "red.png")
    assert main(["chat", "What color is it?", "--image", str(tmp_path / "red.png"), "--model", str(tmp_path / "model"),
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""  # an untrained model answers something, stops within 4 tokens

    real = corpus[0] / "owleval"  # shapes world's eval set, in the official layout
    folder = tmp_path / "owleval"
    (folder / "cases").mkdir(parents=True)
    lines = (real / "questions.jsonl").read_text().splitlines()[:3] + ["{broken"]
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    for line in lines[:3]:
        image = json.loads(line)["image"]
        shutil.copy(real / "cases" / image, folder / "cases" / image)
    shutil.copytree(real / "answer", folder / "answer")
    published = [{**json.loads(line), "model_id": "mPLUG_Owl_7b:v1"}  # a stand-in for the published file
                 for line in (real / "answer/reference_answer.jsonl").read_text().splitlines()]
    (folder / "answer/mPLUG_Owl_7b_answer.jsonl").write_text("".join(json.dumps(a) + "\n" for a in published))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "model"), "--owleval", str(folder), "--out", str(out),
                 "--max-new-tokens", "3", "--model-id", "mine"]) == 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [json.loads(line)["question_id"] for line in lines[:3]]
    assert set(answers[0]) == {"image", "question_id", "question", "answer", "model_id"}
    printed = capsys.readouterr().out
    assert "questions.jsonl line 4: malformed" in printed
    reference_line = next(line for line in printed.splitlines() if line.startswith("mPLUG_Owl_7b:v1 "))
    assert "similarity 1.000" in reference_line  # the reference answers scored against themselves
    assert (out / "report.html").is_file() and (out / "rating_sheet.csv").is_file()


def test_an_unreachable_tracking_server_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["step", "registered_model", "--project", str(tmp_path)]) == 2
    assert "cannot reach the MLflow tracking store" in capsys.readouterr().err


def test_the_help_names_the_steps_shows_defaults_and_pretraining_needs_a_folder(capsys):
    from owl_pipeline import constants as C
    from owl_pipeline.pipeline.graph import PIPELINE_ORDER

    assert C.ASSET_ORDER == PIPELINE_ORDER
    with pytest.raises(SystemExit):
        main(["step", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert ", ".join(PIPELINE_ORDER) in shown and "(default: .)" in shown
    for command in ("pretrain-llm", "pretrain-vision"):  # never into the installed package by default
        with pytest.raises(SystemExit) as stopped:
            main([command])
        assert stopped.value.code == 2 and "--out" in capsys.readouterr().err


def test_a_step_already_running_is_said_in_one_line(tmp_path, capsys):
    from owl_pipeline.locks import StepLock
    from owl_pipeline.pipeline.project import load_project

    project = load_project(tmp_path, None)
    project.lock_path("raw_shards").parent.mkdir(parents=True)
    with StepLock(project.lock_path("raw_shards"), what=f"step raw_shards of {project.root}"):
        assert main(["step", "raw_shards", "--project", str(tmp_path), "--no-tracking"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("owl step: error: step raw_shards of") and "is already running (process" in error
    assert len(error.strip().splitlines()) == 1


def test_a_bad_setting_under_an_experiment_says_how_to_get_the_workspace_back(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("stage2: {lr: -1}\n")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-bad-lr")
    assert main(["step", "raw_shards", "--project", str(tmp_path), "--no-tracking"]) == 2
    error = capsys.readouterr().err
    assert "lr must be > 0" in error and "git checkout params.yaml && dvc checkout" in error


@pytest.mark.slow  # a training step's process: 10 s
def test_sigterm_stops_a_training_step_and_marks_its_mlflow_run_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import psutil
    import yaml
    from mlflow.tracking import MlflowClient

    from owl_pipeline.cli import main
    from owl_pipeline.registry.tracking import local_tracking_uri

    from .test_pipeline import TINY_PARAMS

    long_training = {**TINY_PARAMS["base_llm"], "train": {**TINY_PARAMS["base_llm"]["train"], "max_steps": 5000}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, "base_llm": long_training}))
    for name in ("raw_shards", "raw_pairs", "curated_pairs", "instruction_data"):
        assert main(["step", name, "--project", str(tmp_path), "--no-tracking"]) == 0
    step = subprocess.Popen([sys.executable, "-m", "owl_pipeline.cli", "step", "base_llm", "--project", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # Open our own MLflow client only once training has started: the step's run exists by then, and a second
    # process reading the sqlite store while the step still creates its tables can see it half made.
    output = _lines_until(step, "stage 0 step 1/", timeout_s=300)
    client = MlflowClient(local_tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("owl-pipeline").experiment_id])
    assert runs and runs[0].info.status == "RUNNING", output
    family = [psutil.Process(step.pid), *psutil.Process(step.pid).children(recursive=True)]
    step.send_signal(signal.SIGTERM)
    assert step.wait(timeout=60) != 0
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not (tmp_path / "assets/.locks/base_llm.lock").exists()


def _lines_until(process, marker: str, timeout_s: float) -> str:
    """The output of ``process`` up to the first line containing ``marker``; fails on exit or timeout."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert process.poll() is None, "".join(seen)
            continue
        if marker in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout_s} s:\n" + "".join(seen))
