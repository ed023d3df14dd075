import pytest

from owl_pipeline.config import ConfigError, OwlConfig
from owl_pipeline.model.builders import count_parameters


def test_presets_have_the_published_sizes():
    # Golden counts of the published models these presets reproduce.
    assert count_parameters(OwlConfig.from_name("owl-7b"))["llm"] == 6_738_415_616  # LLaMA-7B
    assert count_parameters(OwlConfig.from_name("owl-1b"))["llm"] == 1_100_048_384  # TinyLlama-1.1B
    assert count_parameters(OwlConfig.from_name("owl-7b"))["vision"] == 303_179_776  # CLIP ViT-L/14 vision tower


def test_paper_geometry():
    cfg = OwlConfig.from_name("owl-7b")
    assert cfg.vision.num_tokens == 257
    assert cfg.abstractor.num_output_tokens == 65
    assert (cfg.abstractor.num_layers, cfg.abstractor.hidden_size, cfg.abstractor.intermediate_size) == (6, 1024, 2816)
    lora = cfg.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 32, 0.05, ["q_proj", "v_proj"])


def test_presets_are_independent_copies():
    first = OwlConfig.from_name("tiny")
    first.llm.num_layers = 99
    assert OwlConfig.from_name("tiny").llm.num_layers == 2


def test_from_yaml_applies_overrides_to_a_preset(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\nllm:\n  pretrained: /models/my-llm\nlora:\n  r: 16\n")
    cfg = OwlConfig.from_yaml(path)
    assert cfg.name == "tiny" and cfg.llm.pretrained == "/models/my-llm" and cfg.lora.r == 16
    assert cfg.vision.image_size == 64


@pytest.mark.parametrize("text, message", [
    ("preset: huge\n", "unknown preset 'huge'"),
    ("preset: tiny\nllm:\n  layers: 3\n", "unknown config key 'llm.layers'"),
    ("preset: tiny\nvision:\n  patch_size: 7\n", "multiple of vision.patch_size"),
    ("preset: tiny\nabstractor:\n  hidden_size: 256\n  num_heads: 4\n", "must equal vision.hidden_size"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_yaml_names_the_problem(tmp_path, text, message):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        OwlConfig.from_yaml(path)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        OwlConfig.from_yaml(tmp_path / "nope.yaml")


def test_round_trip_through_dict():
    cfg = OwlConfig.from_name("owl-1b")
    assert OwlConfig.from_dict(cfg.to_dict()) == cfg
