"""`owl ui` starts the Dagster and MLflow servers on 127.0.0.1; Ctrl-C stops both."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

QUERY = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, data: bytes | None = None, timeout: float = 120.0) -> bytes:
    deadline = time.time() + timeout
    while True:
        try:
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.read()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow
def test_owl_ui_serves_both_and_stops_on_ctrl_c(tmp_path):
    dagster_port, mlflow_port = free_port(), free_port()
    log = (tmp_path / "ui.log").open("w")  # a file, not a pipe: the test waits for `owl ui`, not its servers
    process = subprocess.Popen([sys.executable, "-m", "owl_pipeline.cli", "ui", "--project", str(tmp_path),
                                "--dagster-port", str(dagster_port), "--mlflow-port", str(mlflow_port)],
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        graph = json.loads(wait_for(f"http://127.0.0.1:{dagster_port}/graphql", QUERY))
        names = {node["assetKey"]["path"][-1] for node in graph["data"]["assetNodes"]}
        assert {"raw_shards", "curated_pairs", "stage1_model", "stage2_model", "owleval_report"} <= names
        assert b"mlflow" in wait_for(f"http://127.0.0.1:{mlflow_port}/").lower()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()  # leave nothing behind; the assertion below reports the failure
            process.wait()
    assert process.returncode == 0, (tmp_path / "ui.log").read_text()[-2000:]
    for port in (dagster_port, mlflow_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    assert (tmp_path / "dagster_home").is_dir()
    printed = (tmp_path / "ui.log").read_text()
    assert "SupersessionWarning" not in printed and "StarletteDeprecationWarning" not in printed  # issue 43 item 4
