"""The schedules and optimizers a recipe may name (issue 39), checked against transformers' own schedule functions
and the AdamW formula transformers 4.x shipped."""

import math

import pytest
import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from owl_pipeline.config import ConfigError, StageConfig
from owl_pipeline.train.optim import AdamWHF, build_scheduler


def lrs(make, steps: int, base_lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler, seen = make(optimizer), []
    for _ in range(steps + 1):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("schedule, horizon, reference", [
    ("linear", None, lambda o: get_linear_schedule_with_warmup(o, 10, 60)),
    ("linear", 100, lambda o: get_linear_schedule_with_warmup(o, 10, 100)),
    ("constant", None, lambda o: get_constant_schedule_with_warmup(o, 10)),
    ("cosine", None, lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, 10, 60, min_lr_rate=0.1)),
    ("cosine", 80, lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, 10, 80, min_lr_rate=0.1)),
])
def test_each_schedule_is_transformers_own_step_by_step(schedule, horizon, reference):
    config = StageConfig(max_steps=60, warmup_steps=10, lr=1e-3, min_lr=1e-4, lr_schedule=schedule,
                         schedule_steps=horizon)
    ours = lrs(lambda o: build_scheduler(o, config), 60)
    assert ours == pytest.approx(lrs(reference, 60), abs=1e-12)
    if schedule == "linear" and horizon is None:
        assert ours[10] == pytest.approx(1e-3) and ours[60] == 0.0  # warmup's top, then linearly to 0 at max_steps


def test_a_schedule_or_optimizer_not_known_names_the_choices():
    with pytest.raises(ConfigError, match="lr_schedule must be one of cosine, linear, constant"):
        StageConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, adamw_hf"):
        StageConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="schedule_steps must be null or at least warmup_steps"):
        StageConfig(max_steps=100, warmup_steps=50, schedule_steps=20)


def adamw_hf_by_hand(theta: list[float], grads: list[list[float]], lr, betas, eps, weight_decay) -> list[float]:
    """transformers 4.28's AdamW, element by element, in Python floats."""
    beta1, beta2 = betas
    m, v = [0.0] * len(theta), [0.0] * len(theta)
    theta = list(theta)
    for step, grad in enumerate(grads, 1):
        for i, g in enumerate(grad):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            theta[i] -= step_size * m[i] / (math.sqrt(v[i]) + eps)
            theta[i] -= lr * weight_decay * theta[i]
    return theta


def test_adamw_hf_follows_the_formula_transformers_4_shipped():
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    param = torch.nn.Parameter(start.clone())
    optimizer = AdamWHF([param], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    expected = adamw_hf_by_hand(start.tolist(), [g.tolist() for g in grads], 0.05, (0.9, 0.999), 1e-8, 0.1)
    assert param.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    torch_adamw = torch.nn.Parameter(start.clone())
    other = torch.optim.AdamW([torch_adamw], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for grad in grads:
        torch_adamw.grad = grad.clone()
        other.step()
    assert not torch.allclose(torch_adamw, param, rtol=0, atol=1e-9)  # the two updates really differ
