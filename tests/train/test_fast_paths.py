"""The speed options change nothing but speed or memory: activation checkpointing, frozen Linears stored in
bf16 and compiled layers give the same loss and gradients as the plain path; the whole fast path (bf16
autocast, bf16 frozen weights, compiled layers: the GPU setting) stays within bf16 tolerance of fp32."""

import copy

import pytest
import torch
from torch import nn

from owl_pipeline.config import StageConfig
from owl_pipeline.data.loader import CaptionPairDataset
from owl_pipeline.model.builders import enable_activation_checkpointing, from_pretrained, set_trainable
from owl_pipeline.train.loop import train_stage
from owl_pipeline.train.speed import compile_repeated_layers, restore_dtypes, store_frozen_linears_in

from .test_training import pairs  # noqa: F401  (fixture)


@pytest.fixture
def batch(pairs, processor):  # noqa: F811
    dataset = CaptionPairDataset(pairs, processor, train=False, seed=0)
    return processor.collate([dataset[i] for i in range(4)])


def loss_and_grads(model, batch, autocast_dtype=None):
    """Loss, gradients, and how many layer calls went through the checkpoint function."""
    checkpointed = []

    def counting(inner):
        return lambda *args, **kwargs: checkpointed.append(1) or inner(*args, **kwargs)

    for module in model.modules():
        if getattr(module, "_gradient_checkpointing_func", None) is not None:
            module._gradient_checkpointing_func = counting(module._gradient_checkpointing_func)
    torch.manual_seed(0)  # the same dropout masks on both paths
    model.train()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
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


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_linears_stored_in_bf16_give_the_same_loss_and_gradients_under_autocast(model, batch, stage):
    set_trainable(model, stage)
    plain = copy.deepcopy(model)
    previous = store_frozen_linears_in(model, torch.bfloat16)
    assert previous and all(not p.requires_grad for linear in previous for p in linear.parameters())
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {dtypes[n] for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}  # master weights
    assert dtypes["llm.lm_head.weight" if stage == 1 else "llm.base_model.model.lm_head.weight"] == torch.bfloat16
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, nn.Embedding | nn.LayerNorm))
    loss, grads, _ = loss_and_grads(plain, batch, torch.bfloat16)
    loss_bf16, grads_bf16, _ = loss_and_grads(model, batch, torch.bfloat16)
    assert loss.item() == loss_bf16.item()  # autocast rounds the same weights the same way before each matmul
    assert grads.keys() == grads_bf16.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_bf16[name], atol=0, rtol=0, msg=name)
    restore_dtypes(previous)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_compiled_layers_give_the_same_loss_and_gradients(model, batch):
    from torch._dynamo.utils import counters

    set_trainable(model, 1)
    plain = copy.deepcopy(model)
    counters.clear()
    assert compile_repeated_layers(model, backend="aot_eager") == 6  # 2 vision, 2 abstractor, 2 LLM layers
    loss, grads, _ = loss_and_grads(plain, batch)
    loss_compiled, grads_compiled, _ = loss_and_grads(model, batch)
    assert counters["stats"]["unique_graphs"] >= 3  # one graph per layer class at least: the compiled path ran
    torch.testing.assert_close(loss_compiled, loss, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("stage", [1, 2])
def test_compiled_and_checkpointed_layers_together_give_the_same_loss_and_gradients(model, batch, stage):
    set_trainable(model, stage)
    plain = copy.deepcopy(model)
    compile_repeated_layers(enable_activation_checkpointing(model), backend="aot_eager")
    loss, grads, _ = loss_and_grads(plain, batch)
    loss_fast, grads_fast, calls = loss_and_grads(model, batch)
    assert calls == model.config.llm.num_layers + (model.config.vision.num_layers if stage == 1 else 0)
    torch.testing.assert_close(loss_fast, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_fast.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_fast[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_compiled_layer_stack_compiles_per_layer_class_not_per_layer(tiny_config, processor, pairs):  # noqa: F811
    """owl-1b has 22 LLM and 24 vision layers; were each compiled on its own, dynamo's recompile limit (8) would
    send most back to eager. New shapes (stage 2 lengths) add dynamic-shape graphs once, not one per shape."""
    from torch._dynamo.utils import counters

    from owl_pipeline.model.builders import build_model

    tiny_config.llm.num_layers = tiny_config.vision.num_layers = 10
    torch.manual_seed(0)
    model = set_trainable(build_model(tiny_config, processor), 2)
    counters.clear()
    assert compile_repeated_layers(model, backend="aot_eager") == 22
    dataset = CaptionPairDataset(pairs, processor, train=False, seed=0)
    graphs = []
    for size in (1, 2, 3, 4):  # batches of different lengths
        model(**processor.collate([dataset[i] for i in range(size)])).loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    # 3 layer classes: a few graphs each (static, then dynamic shapes), then no more; 22 or more if per layer.
    assert graphs[0] <= 4 and graphs[1] == graphs[-1] < 22 // 2, graphs


def test_the_gpu_fast_path_stays_within_bf16_tolerance_of_plain_fp32(model, processor, pairs, tmp_path):  # noqa: F811
    """The loop as it runs on a GPU (bf16 autocast, frozen Linears in bf16, every layer compiled by inductor),
    here on CPU, against the plain fp32 loop from the same start: the same losses within bf16 tolerance, and a
    saved model in the usual fp32 layout."""
    data = CaptionPairDataset(pairs, processor, train=False, seed=0)
    common = dict(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=0, eval_every=0, save_every=3, log_every=100)
    start = copy.deepcopy(model)
    plain = train_stage(model, processor, 1, data, StageConfig(mixed_precision="no", **common), tmp_path / "plain",
                        log=print)
    fast = train_stage(start, processor, 1, data, StageConfig(mixed_precision="bf16", compile=True, **common),
                       tmp_path / "fast", log=print)
    for step_plain, step_fast in zip(plain.history, fast.history, strict=True):
        assert abs(step_fast["loss"] - step_plain["loss"]) / step_plain["loss"] < 2e-2, (step_plain, step_fast)
    # the compile time is reported once, with the first step (issue 27 item 1); "auto" did not compile on CPU
    assert fast.history[0]["compile_seconds"] > 0 and all("compile_seconds" not in h for h in fast.history[1:])
    assert all("compile_seconds" not in h for h in plain.history)
    saved, _ = from_pretrained(fast.model_dir)
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    frozen = saved.llm.model.layers[0].self_attn.q_proj.weight  # stage 1: the LLM stays as it came, bf16-rounded
    torch.testing.assert_close(frozen, model.llm.model.layers[0].self_attn.q_proj.weight.bfloat16().float(),
                               atol=0, rtol=0)


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


def test_compile_auto_is_on_for_cuda_and_off_on_cpu_and_true_or_false_force_it():
    from owl_pipeline.config import ConfigError
    from owl_pipeline.train.speed import resolve_compile

    assert StageConfig().compile == "auto"
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile(True, "cpu") and not resolve_compile(False, "cuda")
    with pytest.raises(ConfigError, match="compile must be auto, true or false"):
        StageConfig(compile="sometimes")


def test_stage_two_lengths_that_vary_compile_a_bounded_number_of_graphs(model, processor):
    """Every batch of stage 2 has its own padded length. Dynamo's automatic dynamic shapes recompile once to a graph
    generic in the length, so five more lengths compile nothing more; rounding lengths up to a multiple
    (``pad_to_multiple_of``, an option for kernels that want aligned lengths) keeps the same bound."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from owl_pipeline.model.processor import AI, HUMAN, Turn

    set_trainable(model, 2)
    compile_repeated_layers(model, backend="eager")  # Dynamo's graph capture and guards, no code generation

    def graphs_after(words_per_batch, pad_to_multiple_of=None) -> tuple[int, set[int]]:
        lengths = set()
        for words in words_per_batch:
            samples = [processor.encode([Turn(HUMAN, "hi " * words), Turn(AI, "red circle " * (words // 3 + 1))], [])
                       for _ in range(2)]
            batch = processor.collate(samples, pad_to_multiple_of=pad_to_multiple_of)
            lengths.add(batch["input_ids"].shape[1])
            model(**batch).loss.backward()
        return counters["stats"]["unique_graphs"], lengths

    torch._dynamo.reset()
    counters.clear()
    try:
        first, lengths = graphs_after((3, 9, 17))
        more, more_lengths = graphs_after((25, 40, 55, 70, 90))
        assert len(lengths | more_lengths) == 8 and 0 < first == more
        torch._dynamo.reset()
        counters.clear()
        bucketed, bucket_lengths = graphs_after((3, 9, 17, 25, 40, 55, 70, 90), pad_to_multiple_of=64)
        assert all(length % 64 == 0 for length in bucket_lengths) and bucketed <= more
    finally:
        torch._dynamo.reset()
