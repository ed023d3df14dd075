import json

import pytest
import torch
from peft import PeftModel

from owl_pipeline.config import ConfigError
from owl_pipeline.constants import IMAGE_TOKEN
from owl_pipeline.model.builders import (build_model, count_parameters, from_pretrained, processor_config_for,
                                         save_pretrained, set_trainable, trainable_parameters)
from owl_pipeline.model.processor import AI, HUMAN, OwlProcessor, Turn


def params(module):
    return sum(p.numel() for p in module.parameters())


def batch_for(processor, image):
    return processor.collate([processor.encode([Turn(HUMAN, IMAGE_TOKEN), Turn(HUMAN, "What color?"),
                                                Turn(AI, "red")], [image])])


def lora_size(cfg, llm):
    """r x (in + out) per adapted projection, two adapted projections (q, v) per layer."""
    hidden, head_dim = cfg.llm.hidden_size, cfg.llm.hidden_size // cfg.llm.num_heads
    q = cfg.lora.r * (hidden + hidden)
    v = cfg.lora.r * (hidden + cfg.llm.num_kv_heads * head_dim)
    return cfg.llm.num_layers * (q + v)


def test_stage_one_trains_vision_and_abstractor_only(model):
    set_trainable(model, 1)
    assert trainable_parameters(model) == params(model.vision) + params(model.abstractor)
    assert trainable_parameters(model.llm) == 0


def test_stage_one_can_keep_a_pretrained_tower_frozen(tiny_config, processor):
    tiny_config.train_vision_in_stage1 = False
    model = set_trainable(build_model(tiny_config, processor), 1)
    assert trainable_parameters(model) == params(model.abstractor) and trainable_parameters(model.vision) == 0


def test_stage_two_trains_lora_only(model, tiny_config):
    set_trainable(model, 2)
    assert isinstance(model.llm, PeftModel)
    assert trainable_parameters(model) == lora_size(tiny_config, model.llm) == 8192
    set_trainable(model, 2)  # idempotent: wraps only once
    assert trainable_parameters(model) == 8192


def test_stage_two_can_train_the_abstractor(tiny_config, processor):
    tiny_config.train_abstractor_in_stage2 = True
    model = set_trainable(build_model(tiny_config, processor), 2)
    assert trainable_parameters(model) == lora_size(tiny_config, model.llm) + params(model.abstractor)


def test_unknown_stage(model):
    with pytest.raises(ValueError, match="stage must be one of"):
        set_trainable(model, 3)


def test_stage_one_step_leaves_the_llm_bit_identical(model, processor, red_image):
    set_trainable(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model(**batch_for(processor, red_image)).loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        same = torch.equal(value, after[name])
        assert same == name.startswith("llm."), name


def test_stage_two_step_changes_lora_only(model, processor, red_image):
    set_trainable(model, 2)
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # LoRA B starts at zero; give A a gradient too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch_for(processor, red_image)).loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_round_trip_stage_one(model, processor, red_image, tmp_path):
    batch = batch_for(processor, red_image)
    save_pretrained(model, processor, tmp_path / "owl")
    loaded, loaded_processor = from_pretrained(tmp_path / "owl")
    assert torch.equal(logits(model, batch), logits(loaded, batch_for(loaded_processor, red_image)))
    assert not any(tmp_path.rglob("*.bin")) and not any(tmp_path.rglob("*.pt"))  # safetensors only


def test_round_trip_with_adapter_and_merged_export(model, processor, red_image, tmp_path):
    set_trainable(model, 2)
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    batch = batch_for(processor, red_image)
    expected = logits(model, batch)
    save_pretrained(model, processor, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter/owl_config.json").read_text())["has_adapter"]
    assert (tmp_path / "adapter/adapter/adapter_model.safetensors").is_file()
    loaded, _ = from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded.llm, PeftModel)
    assert torch.equal(logits(loaded, batch), expected)
    save_pretrained(model, processor, tmp_path / "merged", merge_lora=True)
    merged, _ = from_pretrained(tmp_path / "merged")
    assert not isinstance(merged.llm, PeftModel)
    torch.testing.assert_close(logits(merged, batch), expected, rtol=1e-4, atol=1e-4)
    assert isinstance(model.llm, PeftModel)  # exporting merged leaves the training model as it was


def test_pretrained_parts_by_local_path(model, processor, tiny_config, tmp_path):
    model.vision.clip.save_pretrained(tmp_path / "clip")
    model.llm.save_pretrained(tmp_path / "llm")
    tiny_config.vision.pretrained = str(tmp_path / "clip")
    tiny_config.llm.pretrained = str(tmp_path / "llm")
    loaded = build_model(tiny_config, processor)
    for part in ("vision", "llm"):
        theirs = getattr(loaded, part).state_dict()
        for key, value in getattr(model, part).state_dict().items():
            assert torch.equal(value, theirs[key]), key


def test_processor_must_agree_with_the_model(tokenizer, tiny_config):
    processor = OwlProcessor(tokenizer, processor_config_for(tiny_config, num_image_tokens=9))
    with pytest.raises(ConfigError, match="expands <image> to 9 tokens but the abstractor makes 65"):
        build_model(tiny_config, processor)


def test_parameter_counts_match_a_real_build(model, tiny_config):
    counts = count_parameters(tiny_config)
    real_vocab = model.llm.config.vocab_size
    embedding_delta = 2 * (tiny_config.llm.vocab_size - real_vocab) * tiny_config.llm.hidden_size
    assert counts["vision"] == params(model.vision) and counts["abstractor"] == params(model.abstractor)
    assert counts["llm"] - embedding_delta == params(model.llm)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an Owl model folder"):
        from_pretrained(tmp_path)


def test_a_save_that_fails_midway_leaves_the_previous_model_whole(model, processor, tmp_path, monkeypatch):
    """Issue 24 item 14: new vision weights never sit beside an old abstractor and LLM."""
    import copy
    import errno

    from owl_pipeline.model import builders

    model = copy.deepcopy(model)  # the shared fixture stays as it is
    folder = tmp_path / "model"
    builders.save_pretrained(model, processor, folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builders, "save_file", disk_full)  # the abstractor's weights, after the vision tower's
    with pytest.raises(OSError, match="No space left"):
        builders.save_pretrained(model, processor, folder)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no draft left behind
    monkeypatch.undo()
    builders.save_pretrained(model, processor, folder)  # and a save that completes replaces it
    reloaded, _ = builders.from_pretrained(folder)
    first = next(model.abstractor.parameters())
    assert torch.equal(next(reloaded.abstractor.parameters()), first)
