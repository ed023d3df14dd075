"""Damaged training state (issue 14, items 9 and 10): every case builds the damage itself on real checkpoints."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from owl_pipeline.data.loader import CaptionPairDataset
from owl_pipeline.files import sha256_of
from owl_pipeline.train.checkpoint import NonFiniteWeightsError, list_checkpoints, save_checkpoint
from owl_pipeline.train.loop import train_stage

from .test_training import pairs, stage_config  # noqa: F401 - the fixture is used by name


@pytest.fixture
def trained(model, processor, pairs, tmp_path):  # noqa: F811
    """Six steps of stage 1, checkpoints at 3 and 6; returns (model, processor, data, run folder)."""
    data = CaptionPairDataset(pairs, processor, train=False)
    train_stage(model, processor, 1, data, stage_config(max_steps=6, save_every=3), tmp_path / "run", log=print)
    assert [p.name for p in list_checkpoints(tmp_path / "run/checkpoints")] == ["step-0000003", "step-0000006"]
    return model, processor, data, tmp_path / "run"


def resume(trained, max_steps=7):
    model, processor, data, run = trained
    lines = []
    result = train_stage(model, processor, 1, data, stage_config(max_steps=max_steps, save_every=3), run,
                         log=lines.append)
    return result, "\n".join(lines)


def zero_tensor_data(path):
    """Keep the safetensors header valid, zero every byte of tensor data."""
    raw = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[header:] = bytes(len(raw) - header)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated weights", "zeroed data", "truncated state", "missing optimizer"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(trained, damage):
    newest = trained[3] / "checkpoints/step-0000006"
    if damage == "truncated weights":
        data = (newest / "trainable.safetensors").read_bytes()
        (newest / "trainable.safetensors").write_bytes(data[:len(data) // 2])
    elif damage == "zeroed data":
        zero_tensor_data(newest / "trainable.safetensors")
    elif damage == "truncated state":
        (newest / "trainer_state.json").write_text((newest / "trainer_state.json").read_text()[:40])
    else:
        (newest / "optimizer.safetensors").unlink()
    result, log = resume(trained)
    assert "not resuming from damaged checkpoint" in log and "step-0000006" in log
    assert "resuming from step-0000003" in log and result.resumed_from_step == 3 and result.steps == 7


def test_nan_weights_with_matching_hashes_are_damage_not_a_learning_rate(trained):
    newest = trained[3] / "checkpoints/step-0000006"
    weights = load_file(str(newest / "trainable.safetensors"))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(newest / "trainable.safetensors"))
    state = json.loads((newest / "trainer_state.json").read_text())
    state["files"]["trainable.safetensors"] = sha256_of(newest / "trainable.safetensors")
    (newest / "trainer_state.json").write_text(json.dumps(state))
    result, log = resume(trained)
    assert "NaN or infinity" in log and result.resumed_from_step == 3


def test_nothing_intact_starts_over_with_a_warning(trained):
    for checkpoint in list_checkpoints(trained[3] / "checkpoints"):
        zero_tensor_data(checkpoint / "rng.safetensors")
    result, log = resume(trained, max_steps=2)
    assert log.count("not resuming from damaged checkpoint") == 2 and result.resumed_from_step is None


def test_non_finite_weights_are_never_saved(model, processor, tmp_path):
    from owl_pipeline.config import StageConfig
    from owl_pipeline.model.builders import set_trainable
    from owl_pipeline.train.checkpoint import TrainerState
    from owl_pipeline.train.optim import build_optimizer, build_scheduler

    set_trainable(model, 1)
    optimizer = build_optimizer(model, StageConfig())
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("inf"))
    with pytest.raises(NonFiniteWeightsError, match="NaN or infinity"):
        save_checkpoint(tmp_path, model, optimizer, build_scheduler(optimizer, StageConfig()), TrainerState(step=5), 2)
    assert not list(tmp_path.iterdir())


def test_changed_settings_move_old_checkpoints_aside(tmp_path):
    from owl_pipeline.pipeline.training_runs import start_fresh_if_changed

    (tmp_path / "checkpoints/step-0000003").mkdir(parents=True)
    (tmp_path / "checkpoints/step-0000003/trainer_state.json").write_text("{}")
    lines = []
    start_fresh_if_changed(tmp_path, {"lr": 1}, lines.append)  # no fingerprint yet: moved aside too
    start_fresh_if_changed(tmp_path, {"lr": 1}, lines.append)  # same run: nothing to move
    aside = list(tmp_path.glob("checkpoints.superseded-*"))
    assert len(aside) == 1 and (aside[0] / "step-0000003/trainer_state.json").is_file()
    assert len(lines) == 1 and aside[0].name in lines[0]


def test_only_the_newest_set_aside_checkpoints_are_kept(tmp_path):
    from owl_pipeline.pipeline.training_runs import start_fresh_if_changed

    lines = []
    for lr in (1, 2, 3):  # three experiments in a row, each with other settings, within a second
        (tmp_path / f"checkpoints/step-000000{lr}").mkdir(parents=True)
        start_fresh_if_changed(tmp_path, {"lr": lr}, lines.append)
    aside = list(tmp_path.glob("checkpoints.superseded-*"))
    assert len(aside) == 1 and (aside[0] / "step-0000003").is_dir()
    assert sum("deleted checkpoints.superseded-" in line for line in lines) == 2


def test_a_run_that_cannot_start_moves_nothing(tmp_path):
    from owl_pipeline.config import PipelineConfig
    from owl_pipeline.pipeline.project import Project
    from owl_pipeline.pipeline.training_steps import stage1_model

    project = Project(PipelineConfig(), tmp_path)
    (project.stage1 / "checkpoints/step-0000003").mkdir(parents=True)
    (project.stage1 / "fingerprint.json").write_text(json.dumps({"fingerprint": "another run"}))
    with pytest.raises(FileNotFoundError):  # no base model to start from
        stage1_model(project, log=lambda *_: None)
    assert (project.stage1 / "checkpoints/step-0000003").is_dir()
