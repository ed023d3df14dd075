"""MLflow tracking as its users expect it, against a real sqlite store."""

import time

from owl_pipeline.registry import tracking as tracking_module
from owl_pipeline.registry.tracking import MlflowTracking


def test_a_training_run_records_system_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking_module, "SYSTEM_METRICS_SECONDS", 0.2)
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    with tracking.run("training", system_metrics=True) as run:
        time.sleep(1.5)
    with tracking.run("registration") as plain:
        pass
    metrics = tracking.client.get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert tracking.client.get_run(run.run_id).info.status == "FINISHED"
    assert not [k for k in tracking.client.get_run(plain.run_id).data.metrics if k.startswith("system/")]
