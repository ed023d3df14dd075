"""Model FLOP accounting (train/flops.py): 6N trained, 4N frozen with gradients passing, 2N forward only,
embedding lookups left out; the loop logs it per step."""

import torch
from torch import nn

from owl_pipeline.model.builders import set_trainable
from owl_pipeline.train.flops import OwlStepFlops, flops_per_token, matmul_parameters, peak_tflops, step_flops


def test_embeddings_are_not_counted_and_trained_and_frozen_are_split():
    module = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 4), nn.Linear(4, 2, bias=False))
    module[2].requires_grad_(False)
    assert matmul_parameters(module) == (8 * 4 + 4, 4 * 2)


def test_a_frozen_part_costs_four_n_downstream_of_training_and_two_n_upstream():
    upstream, trained, downstream = nn.Linear(10, 10), nn.Linear(10, 10), nn.Linear(10, 10)
    upstream.requires_grad_(False)
    downstream.requires_grad_(False)
    n = 110  # weights + biases
    assert flops_per_token([upstream, trained, downstream]) == [2 * n, 6 * n, 4 * n]
    assert step_flops([2 * n, 6 * n, 4 * n], [3, 1, 2]) == 3 * 2 * n + 6 * n + 2 * 4 * n


def test_stage_factors_on_the_owl_model(model):
    def per_token(part):
        trained, frozen = matmul_parameters(part)
        return trained + frozen

    vision, abstractor = per_token(model.vision), per_token(model.abstractor)
    set_trainable(model, 1)  # vision and abstractor train, the frozen LLM passes gradients to them
    llm = per_token(model.llm)
    assert flops_per_token([model.vision, model.abstractor, model.llm]) == [6 * vision, 6 * abstractor, 4 * llm]
    set_trainable(model, 2)  # the image side runs forward only; LoRA trains inside the LLM
    lora, base = matmul_parameters(model.llm)
    assert lora > 0 and base == llm
    assert flops_per_token([model.vision, model.abstractor, model.llm]) == [2 * vision, 2 * abstractor,
                                                                           6 * lora + 4 * base]


def test_a_step_counts_patch_tokens_queries_and_llm_tokens(model):
    set_trainable(model, 1)
    factors = flops_per_token([model.vision, model.abstractor, model.llm])
    counter = OwlStepFlops(model)
    patches = (64 // 8) ** 2 + 1  # the tiny preset: 64 px, 8 px patches, + CLS
    assert (counter.vision_tokens, counter.query_tokens) == (patches, model.num_image_tokens - 1)
    assert counter(images=3, llm_tokens=100) == 3 * patches * factors[0] + 3 * 64 * factors[1] + 100 * factors[2]


def test_no_peak_is_claimed_for_a_cpu():
    assert peak_tflops(torch.device("cpu")) is None
