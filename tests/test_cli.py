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


def test_run_trains_both_stages(capsys):
    assert main(["run", "--steps", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: 861,952 trainable" in out and "stage 2: 8,192 trainable" in out
