"""Golden loss curves: four steps of each stage on the tiny preset, pinned (as torchtune pins its recipes'
losses). A change that alters training, on purpose or not, fails here with the new numbers in its message;
update PINNED with them when the change is meant."""

import pytest
import torch

from owl_pipeline.data.loader import CaptionPairDataset
from owl_pipeline.train.loop import train_stage

from ..conftest import quiet
from .test_training import pairs, stage_config  # noqa: F401 - the fixture is used by name

# transformers' warmup starts at lr 0, so the first step changes no weight: loss 2 is the untrained model's too.
PINNED = {
    0: [5.9809, 5.9684, 5.4445, 5.0743],  # the LLM trains
    1: [5.9809, 5.9683, 5.8895, 5.7584],  # vision + abstractor, LLM frozen
    2: [5.9809, 5.9684, 5.8537, 5.7562],  # LoRA
}


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_the_first_losses_of_each_stage_are_pinned(stage, model, processor, pairs, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    data = CaptionPairDataset(pairs, processor, train=False)
    result = train_stage(model, processor, stage, data, stage_config(max_steps=4, batch_size=4, save_every=4),
                         tmp_path / "run", log=quiet)
    losses = [round(h["loss"], 4) for h in result.history]
    assert losses == pytest.approx(PINNED[stage], abs=2e-4), f"stage {stage} losses are now {losses}"
