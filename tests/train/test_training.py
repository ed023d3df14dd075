import json
import os
import signal
import subprocess
import sys
import textwrap

import lance
import pytest
import torch

from owl_pipeline.config import StageConfig
from owl_pipeline.data.loader import CaptionPairDataset
from owl_pipeline.model.builders import from_pretrained
from owl_pipeline.train.checkpoint import list_checkpoints
from owl_pipeline.train.loop import TrainingDivergedError, resolve_num_workers, storage_precision, train_stage
from owl_pipeline.train.optim import build_optimizer, build_scheduler

from ..conftest import quiet


@pytest.fixture
def pairs(raw_pairs, tmp_path):
    """The first 64 pairs: a small set a tiny model can overfit."""
    uri, _ = raw_pairs
    table = lance.dataset(str(uri)).to_table().slice(0, 64)
    lance.write_dataset(table, str(tmp_path / "pairs.lance"))
    return tmp_path / "pairs.lance"


def stage_config(**overrides):
    base = dict(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=1, weight_decay=0.1, eval_every=0, save_every=3,
                log_every=100, seed=0)
    return StageConfig(**{**base, **overrides})


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_schedule_warms_up_then_decays_to_the_floor_in_every_group():
    config = StageConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": weights[:1], "lr": 1e-3}, {"params": weights[1:], "lr": 1e-4}])
    scheduler, lrs = build_scheduler(optimizer, config), []
    for _ in range(101):
        lrs.append(scheduler.get_last_lr())
        optimizer.step()
        scheduler.step()
    assert lrs[5] == pytest.approx([5e-4, 5e-5]) and lrs[10] == pytest.approx([1e-3, 1e-4])
    assert lrs[55] == pytest.approx([5.5e-4, 5.5e-5]) and lrs[100] == pytest.approx([1e-4, 1e-5])


def test_loader_workers_default_to_none_on_cpu_and_up_to_eight_per_gpu_process():
    assert resolve_num_workers(None, gpu=False, processes=1, cores=16) == 0
    assert resolve_num_workers(None, gpu=True, processes=1, cores=16) == 8
    assert resolve_num_workers(None, gpu=True, processes=8, cores=16) == 1  # one core left to drive each GPU
    assert resolve_num_workers(None, gpu=True, processes=4, cores=None) == 0
    assert resolve_num_workers(3, gpu=True, processes=1, cores=16) == 3  # a set value is kept


def test_frozen_weights_keep_their_dtype_where_fsdp_or_deepspeed_manage_dtypes():
    from accelerate.utils import DistributedType

    assert storage_precision("bf16", DistributedType.MULTI_GPU) == "bf16"
    assert storage_precision("bf16", DistributedType.NO) == "bf16"
    assert storage_precision("bf16", DistributedType.FSDP) == "no"
    assert storage_precision("bf16", DistributedType.DEEPSPEED) == "no"


def test_vision_gets_a_scaled_lr_and_norms_no_decay(model):
    from owl_pipeline.model.builders import set_trainable

    set_trainable(model, 1)
    optimizer = build_optimizer(model, StageConfig(lr=1e-3, vision_lr_scale=0.1, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        members = [names[id(p)] for p in group["params"]]
        vision = members[0].startswith("vision.")
        assert all(n.startswith("vision.") == vision for n in members)
        assert group["lr"] == pytest.approx(1e-4 if vision else 1e-3)
        if group["weight_decay"]:
            assert all(model.get_parameter(n).ndim >= 2 for n in members)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for p in model.parameters() if p.requires_grad)


def test_stage_one_trains_vision_and_abstractor_and_leaves_the_llm_bit_identical(model, processor, pairs, tmp_path):
    before = snapshot(model)
    result = train_stage(model, processor, 1, CaptionPairDataset(pairs, processor, train=True), stage_config(),
                         tmp_path / "run", log=quiet)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]) == name.startswith("llm."), name
    assert result.steps == 6 and (tmp_path / "run/model/owl_config.json").is_file()
    assert (tmp_path / "run/loss_curve.png").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run/checkpoints")] == ["step-0000003", "step-0000006"]


def test_a_frozen_pretrained_tower_runs_once_per_picture_with_the_same_losses(tiny_config, tokenizer, pairs,
                                                                             tmp_path, monkeypatch):
    from owl_pipeline.model.builders import build_model, processor_config_for
    from owl_pipeline.model.processor import OwlProcessor

    tiny_config.train_vision_in_stage1 = False
    processor = OwlProcessor(tokenizer, processor_config_for(tiny_config, train_hflip=False,
                                                             train_crop_scale=(1.0, 1.0)))
    runs, encoded = {}, []
    for memo in (0, 64):
        torch.manual_seed(0)
        model = build_model(tiny_config, processor)
        before = snapshot(model.vision)
        original = model.vision._encode
        monkeypatch.setattr(model.vision, "_encode",
                            lambda pixels, f=original: encoded.append(len(pixels)) or f(pixels))
        messages = []
        runs[memo] = train_stage(model, processor, 1, CaptionPairDataset(pairs, processor, train=True),
                                 stage_config(max_steps=20, vision_memo_mib=memo), tmp_path / f"run{memo}",
                                 log=messages.append)
        assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in before.items())
        assert any("remembered per picture" in m for m in messages) == bool(memo)
    pictures = len(set(lance.dataset(str(pairs)).to_table(columns=["image"])["image"].to_pylist()))
    assert sum(encoded[:20]) == 80 and sum(encoded[20:]) == pictures  # 20 steps of 4; the memo: each picture once
    losses = [[h["loss"] for h in runs[memo].history] for memo in (0, 64)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_stage_two_trains_lora_only(model, processor, pairs, tmp_path):
    from owl_pipeline.model.builders import set_trainable

    before = snapshot(set_trainable(model, 2))  # wrapped with LoRA first, so the keys compare
    train_stage(model, processor, 2, CaptionPairDataset(pairs, processor, train=True), stage_config(max_steps=3),
                tmp_path / "run", log=quiet)
    after = model.state_dict()
    changed = {k for k, v in after.items() if k not in before or not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)


def test_loss_decreases_on_a_tiny_run(model, processor, pairs, tmp_path):
    # Stage 0 (the LLM learns the captions): a random frozen LLM leaves stage 1 little to show in 30 steps.
    result = train_stage(model, processor, 0, CaptionPairDataset(pairs, processor, train=False),
                         stage_config(max_steps=30, batch_size=8, save_every=30), tmp_path / "run", log=quiet)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert all(0.0 <= h["data_wait_share"] < 1.0 for h in result.history)  # time in next(batch) / step time
    assert all(h["model_tflops_per_s"] > 0 and "mfu" not in h for h in result.history)  # no peak known for a CPU


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(model, processor, pairs, tmp_path):
    calls = {"n": 0}

    def poison(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] >= 5:  # from step 5 on
            output.logits = output.logits * float("nan")
        return output

    model.llm.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 5.*step-0000003"):
        train_stage(model, processor, 1, CaptionPairDataset(pairs, processor, train=True), stage_config(),
                    tmp_path / "run", log=quiet)
    assert [p.name for p in list_checkpoints(tmp_path / "run/checkpoints")] == ["step-0000003"]


RESUMABLE_RUN = textwrap.dedent("""
    import os, signal, sys, torch
    from owl_pipeline.config import StageConfig
    from owl_pipeline.data.loader import CaptionPairDataset
    from owl_pipeline.model.builders import from_pretrained
    from owl_pipeline.train.loop import train_stage

    torch.set_num_threads(1)  # a fixed reduction order, whatever else the machine is doing
    start, pairs, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model, processor = from_pretrained(start)
    config = StageConfig(max_steps=9, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=0, save_every=3,
                         log_every=100, seed=0)

    def crash(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train_stage(model, processor, 1, CaptionPairDataset(pairs, processor, train=True), config, out,
                log=lambda line: None, on_step_end=crash)
""")


@pytest.mark.slow  # three training processes: 16 s
def test_a_run_killed_mid_stage_resumes_to_the_same_weights(model, processor, pairs, tmp_path):
    from owl_pipeline.model.builders import save_pretrained

    save_pretrained(model, processor, tmp_path / "start")
    script = tmp_path / "run.py"
    script.write_text(RESUMABLE_RUN)

    def run(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(tmp_path / "start"), str(pairs), str(out),
                               str(kill_at)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."})

    killed = run(tmp_path / "b", kill_at=5)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "b/checkpoints")] == ["step-0000003"]
    assert run(tmp_path / "b", kill_at=-1).returncode == 0
    assert run(tmp_path / "a", kill_at=-1).returncode == 0
    resumed_state = json.loads((list_checkpoints(tmp_path / "b/checkpoints")[-1] / "trainer_state.json").read_text())
    assert resumed_state["step"] == 9
    uninterrupted, _ = from_pretrained(tmp_path / "a/model")
    resumed, _ = from_pretrained(tmp_path / "b/model")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
