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
