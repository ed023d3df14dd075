"""The speed options change nothing but speed or memory: activation checkpointing gives the same loss and
gradients as the plain path; bf16 autocast (the GPU default) stays within bf16 tolerance of fp32."""

import copy

import pytest
import torch

from owl_pipeline.data.loader import CaptionPairDataset
from owl_pipeline.model.builders import enable_activation_checkpointing, set_trainable

from .test_training import pairs  # noqa: F401  (fixture)


@pytest.fixture
def batch(pairs, processor):  # noqa: F811
    dataset = CaptionPairDataset(pairs, processor, train=False, seed=0)
    return processor.collate([dataset[i] for i in range(4)])


def loss_and_grads(model, batch):
    """Loss, gradients, and how many layer calls went through the checkpoint function."""
    checkpointed = []

    def counting(inner):
        return lambda *args, **kwargs: checkpointed.append(1) or inner(*args, **kwargs)

    for module in model.modules():
        if getattr(module, "_gradient_checkpointing_func", None) is not None:
            module._gradient_checkpointing_func = counting(module._gradient_checkpointing_func)
    torch.manual_seed(0)  # the same dropout masks on both paths
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(checkpointed)


@pytest.mark.parametrize("stage", [1, 2])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(model, batch, stage):
    set_trainable(model, stage)
    plain = copy.deepcopy(model)
    checkpointed = enable_activation_checkpointing(model)
    loss, grads, calls = loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt, calls_ckpt = loss_and_grads(checkpointed, batch)
    layers = model.config.llm.num_layers + (model.config.vision.num_layers if stage == 1 else 0)
    assert (calls, calls_ckpt) == (0, layers)  # every LLM layer (and trained vision layer) is checkpointed
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_matches_fp32_within_bf16_tolerance(model, batch):
    set_trainable(model, 1)
    model.eval()
    with torch.no_grad():
        fp32 = model(**batch).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**batch).loss
    assert torch.isfinite(bf16) and abs(bf16.item() - fp32.item()) / fp32.item() < 2e-2


def test_stage_two_with_length_grouping_and_checkpointing_trains(model, processor, corpus, tmp_path):
    from owl_pipeline.config import StageConfig
    from owl_pipeline.data.instructions import InstructionSource, build_instruction_table
    from owl_pipeline.data.loader import ConversationDataset
    from owl_pipeline.train.loop import train_stage

    root, _ = corpus
    uri = tmp_path / "instructions.lance"
    build_instruction_table([InstructionSource("owl", root / "instructions/owl.jsonl"),
                             InstructionSource("alpaca", root / "instructions/alpaca.json")], uri, log=print)
    config = StageConfig(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0, save_every=3,
                         group_by_length=True, activation_checkpointing=True)
    result = train_stage(model, processor, 2, ConversationDataset(uri, processor, train=True), config,
                         tmp_path / "run", log=print)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_length_grouping_needs_conversation_data(model, processor, pairs, tmp_path):  # noqa: F811
    from owl_pipeline.config import StageConfig
    from owl_pipeline.train.loop import train_stage

    config = StageConfig(max_steps=1, batch_size=4, warmup_steps=0, eval_every=0, group_by_length=True)
    with pytest.raises(ValueError, match="group_by_length applies to conversation data"):
        train_stage(model, processor, 2, CaptionPairDataset(pairs, processor, train=True), config, tmp_path / "r")
