"""Stage 2 on two processes where one rank's micro-batch is text-only and the other's has an image: every rank
must run the same graph, or DDP's all-reduce of the abstractor's gradients waits forever (a known hang of
LLaVA-style trainers). With the model's ``image_side_every_step`` (the training loop sets it whenever several
processes train) the step completes and the abstractor trains the same on both ranks."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two torchrun launches of two processes: 13 s

WORKER = textwrap.dedent('''
    import sys

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from datetime import timedelta
    from PIL import Image

    from owl_pipeline.config import OwlConfig
    from owl_pipeline.constants import IMAGE_TOKEN
    from owl_pipeline.model.builders import build_model, processor_config_for, set_trainable
    from owl_pipeline.model.processor import AI, HUMAN, OwlProcessor, Turn
    from owl_pipeline.model.tokenizer import train_bpe_tokenizer

    # A short collective timeout: a rank left waiting fails the run instead of hanging the test.
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    tokenizer = train_bpe_tokenizer(["a red circle", "What color is it?", "Say hi", "hi"] * 20, vocab_size=300)
    config = OwlConfig.from_name("tiny")
    config.train_abstractor_in_stage2 = True
    processor = OwlProcessor(tokenizer, processor_config_for(config, train_hflip=False))
    torch.manual_seed(0)
    model = set_trainable(build_model(config, processor), 2)
    model.image_side_every_step = sys.argv[1] == "same-graph"
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    before = model.abstractor.query_embeds.detach().clone()
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.process_index == 0:
        sample = processor.encode([Turn(HUMAN, IMAGE_TOKEN), Turn(HUMAN, "What color is it?"), Turn(AI, "red")],
                                  [Image.new("RGB", (64, 64), (220, 30, 30))])
    else:
        sample = processor.encode([Turn(HUMAN, "Say hi"), Turn(AI, "hi")], [])
    for _ in range(2):
        loss = model(**processor.collate([sample])).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    after = accelerator.unwrap_model(model).abstractor.query_embeds.detach()
    gathered = accelerator.gather(after.reshape(1, -1))
    assert not torch.equal(after, before), "the abstractor did not train"
    assert torch.equal(gathered[0], gathered[1]), "the ranks' abstractors differ"
    accelerator.print("OK", float((after - before).abs().sum()))
''')


def launch(script: Path, mode: str) -> subprocess.CompletedProcess:
    # torchrun: `accelerate launch --cpu --num_processes 2` starts one process (multi-CPU needs MPI there).
    # --standalone: a free rendezvous port of its own, not the default another launch here may hold.
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), mode],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_a_text_only_rank_beside_an_image_rank_trains_the_abstractor(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = launch(script, "same-graph")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK" in done.stdout
    # The same step without it: the ranks' graphs differ, and DDP stops the run.
    failed = launch(script, "own-graph")
    assert failed.returncode != 0 and "parameters that were not used in producing loss" in failed.stderr
