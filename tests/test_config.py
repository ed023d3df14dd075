from pathlib import Path

import pytest
import yaml

from owl_pipeline.config import ConfigError, OwlConfig, PipelineConfig, StageConfig
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


PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def test_a_partial_stage2_section_keeps_the_stage2_recipe():
    # params.yaml overrides sizes and steps of stage 2; the rest is the paper's stage-2 recipe, not stage 1's.
    config = PipelineConfig.from_yaml(PARAMS_YAML)
    recipe = StageConfig.stage2_recipe()
    assert "betas" not in yaml.safe_load(PARAMS_YAML.read_text())["stage2"]
    assert config.stage2.betas == recipe.betas == (0.9, 0.999)
    assert config.stage2.vision_lr_scale == recipe.vision_lr_scale == 1.0
    assert config.stage2.grad_clip == recipe.grad_clip
    assert config.stage1.betas == (0.9, 0.98) and config.stage1.vision_lr_scale == 0.1


def test_the_model_section_is_held_as_an_owl_config(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  llm: {pretrained: /models/llama}\n")
    config = PipelineConfig.from_yaml(path)
    assert isinstance(config.model, OwlConfig)
    assert config.model.name == "tiny" and config.model.llm.pretrained == "/models/llama"  # tiny is the default
    assert config.to_dict()["model"]["preset"] == "tiny"
    assert PipelineConfig(**{**config.__dict__, "model": config.to_dict()["model"]}).model == config.model


@pytest.mark.parametrize("text, message", [
    ("stage1: {lr: fast}", r"params\.stage1\.lr: expected a finite number, got 'fast'"),
    ("stage1: {batch_size: 8.5}", r"params\.stage1\.batch_size: expected an integer, got 8\.5"),
    ("stage1: {max_steps: '40'}", r"params\.stage1\.max_steps: expected an integer, got '40'"),
    ("filters: [32]", r"params\.filters: expected a mapping, got \[32\]"),
    ("stage2: {lr: -0.001}", r"params\.stage2: lr must be > 0"),
    ("stage1: {lr: .nan}", r"params\.stage1\.lr: expected a finite number, got nan"),
    ("base_llm: {train: {betas: [0.9]}}", r"params\.base_llm\.train\.betas: expected 2 values"),
    ("synthetic: {faults: {nsfw: 1.5}}", r"params\.synthetic\.faults: fault rates must be in \[0, 1\)"),
    ("model: {llm: {num_layers: two}}", r"params\.model\.llm\.num_layers: expected an integer, got 'two'"),
    ("instructions: [{format: csv, path: a.csv}]", r"params\.instructions\[0\]: format must be alpaca"),
    ("filters: {min_similarity: 3}", r"params\.filters: filters\.min_similarity is a cosine similarity"),
    ("filters: {max_nsfw: 1.5}", r"params\.filters: scores must be in \[0, 1\]"),
    ("stage1: {grad_clip: 0}", r"params\.stage1: grad_clip must be > 0"),
])
def test_wrong_types_and_ranges_name_the_field(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_yaml(path)


# --- issue 42, item 6: what params.yaml may hold ----------------------------------------------------------------
def test_a_section_written_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("stage2:\n  lr: 0.001\nfilters: {}\nstage2:\n  max_steps: 10\n")
    with pytest.raises(ConfigError, match=r"params.yaml: key 'stage2' is written twice in one section "
                                          r"\(lines 1 and 4\): keep one"):
        PipelineConfig.from_yaml(path)


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    # Each level is nine aliases of the one before: 9**6 items from a few hundred bytes (a real bomb goes on).
    levels = ["&a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(5)]
    path = tmp_path / "params.yaml"
    path.write_text("stage1:\n  lr: [" + ",\n    ".join(levels) + "]\n")
    with pytest.raises(ConfigError, match=r"params.yaml line 3: YAML aliases \(\*name\) are not accepted") as error:
        PipelineConfig.from_yaml(path)
    assert len(str(error.value)) < 300


def test_a_huge_params_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("notes: [" + ", ".join(["0"] * 700_000) + "]\n")
    with pytest.raises(ConfigError, match=r"more than a config may be"):
        PipelineConfig.from_yaml(path)


def test_an_error_never_prints_a_huge_value(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("stage1: {lr: [" + ", ".join(["0"] * 50_000) + "]}\n")
    with pytest.raises(ConfigError, match=r"params\.stage1\.lr: expected a finite number, got \[0, 0,") as error:
        PipelineConfig.from_yaml(path)
    assert len(str(error.value)) < 300
