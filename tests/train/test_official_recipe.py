"""The official stage-2 recipe (issue 39): ``recipe: official-stage2`` sets what mPLUG-Owl's train_it.sh and the
transformers 4.28 Trainer set, and a run of it loses what a loop written from those settings loses, step by step."""

import dataclasses
import math

import lance
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from owl_pipeline.config import ConfigError, PipelineConfig
from owl_pipeline.config.model import LoraConfig
from owl_pipeline.data.loader import CaptionPairDataset, ResumableSampler, make_loader
from owl_pipeline.model.builders import build_model, set_train_modes, set_trainable
from owl_pipeline.train.loop import train_stage

from ..conftest import quiet

STEPS, WARMUP, LR = 50, 10, 1e-3  # the recipe with a short warmup and a larger lr: 40 steps of linear decay to see


def test_the_official_recipe_sets_what_the_official_stage2_sets(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("recipe: official-stage2\n")
    config = PipelineConfig.from_yaml(path)
    stage2 = config.stage2
    assert (stage2.lr, stage2.warmup_steps, stage2.lr_schedule, stage2.optimizer) == (2e-5, 50, "linear", "adamw_hf")
    assert (stage2.weight_decay, stage2.grad_clip, stage2.betas, stage2.batch_size) == (1e-4, 1.0, (0.9, 0.999), 4)
    assert stage2.activation_checkpointing and stage2.max_steps == 4236 and stage2.mixed_precision == "auto"
    assert not config.model.train_abstractor_in_stage2 and config.recipe == "official-stage2"
    assert config.stage1 == PipelineConfig().stage1  # stage 1 keeps its own recipe


def test_a_section_beside_the_recipe_overrides_it_and_an_unknown_recipe_names_the_known(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("recipe: official-stage2\nstage2: {max_steps: 60, warmup_steps: 5}\n")
    config = PipelineConfig.from_yaml(path)
    assert (config.stage2.max_steps, config.stage2.warmup_steps, config.stage2.lr) == (60, 5, 2e-5)
    path.write_text("recipe: llava\n")
    with pytest.raises(ConfigError, match="params.recipe: 'llava' is not a recipe; known: official-stage2"):
        PipelineConfig.from_yaml(path)


def reference_losses(model, dataset, config) -> list[float]:
    """The official settings as a plain loop: LoRA parameters, linear warmup and decay from transformers, the
    gradient norm clipped to 1.0, and AdamW as transformers 4.28 stepped it (written out here)."""
    params = [p for p in model.parameters() if p.requires_grad]
    holder = torch.optim.SGD(params, lr=LR)  # carries the lr the schedule sets
    schedule = get_linear_schedule_with_warmup(holder, WARMUP, STEPS)
    beta1, beta2 = config.betas
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    batches = iter(make_loader(dataset, config.batch_size, ResumableSampler(len(dataset), seed=config.seed)))
    torch.manual_seed(config.seed)
    set_train_modes(model)
    losses = []
    for step in range(1, STEPS + 1):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        lr = holder.param_groups[0]["lr"]
        with torch.no_grad():
            for param, (m, v) in zip(params, moments):
                m.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                param.addcdiv_(m, v.sqrt() + 1e-8, value=-size)
                param.mul_(1 - lr * config.weight_decay)
                param.grad = None
        holder.step()  # no gradient left: moves nothing, keeps the schedule's order of calls
        schedule.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow  # two 50-step stage-2 runs of the tiny model: 15 s
def test_a_run_of_the_official_recipe_loses_what_a_loop_of_its_settings_loses(tiny_config, processor, raw_pairs,
                                                                             tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(f"recipe: official-stage2\nstage2: {{max_steps: {STEPS}, warmup_steps: {WARMUP}, lr: {LR}, "
                    "weight_decay: 0.01, eval_every: 0, log_every: 100, save_every: 100, compile: false}\n")
    config = dataclasses.replace(PipelineConfig.from_yaml(path).stage2, batch_size=4)
    uri, _ = raw_pairs
    lance.write_dataset(lance.dataset(str(uri)).to_table().slice(0, 64), str(tmp_path / "pairs.lance"))
    owl = dataclasses.replace(tiny_config, lora=LoraConfig(dropout=0.0))  # fp32 and no dropout: the same numbers
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(set_trainable(build_model(owl, processor), 2))
    dataset = CaptionPairDataset(tmp_path / "pairs.lance", processor, train=False)
    ours = train_stage(models[0], processor, 2, dataset, config, tmp_path / "run", log=quiet)
    reference = reference_losses(models[1], dataset, config)
    assert [h["loss"] for h in ours.history] == pytest.approx(reference, abs=1e-6)
    # the lr after each step: linear from the top at the end of warmup down to 0 at the last step
    assert ours.history[WARMUP - 1]["lr"] == pytest.approx(LR) and ours.history[-1]["lr"] == 0.0
    assert ours.history[-2]["lr"] == pytest.approx(LR / (STEPS - WARMUP))


def test_an_adamw_hf_run_resumes_from_its_checkpoint(model, processor, raw_pairs, tmp_path):
    from owl_pipeline.config import StageConfig

    uri, _ = raw_pairs
    lance.write_dataset(lance.dataset(str(uri)).to_table().slice(0, 16), str(tmp_path / "pairs.lance"))
    dataset = CaptionPairDataset(tmp_path / "pairs.lance", processor, train=False)
    settings = dict(batch_size=4, lr=1e-3, warmup_steps=1, optimizer="adamw_hf", lr_schedule="linear",
                    eval_every=0, save_every=2, log_every=100, compile=False)
    train_stage(model, processor, 2, dataset, StageConfig(max_steps=2, **settings), tmp_path / "run", log=quiet)
    lines = []
    result = train_stage(model, processor, 2, dataset, StageConfig(max_steps=4, schedule_steps=4, **settings),
                         tmp_path / "run", log=lines.append)
    assert any("resuming from step-0000002" in line for line in lines) and len(result.history) == 4
