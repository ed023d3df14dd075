"""Processes of a distributed launch (accelerate, torchrun): rank 0 writes files, everyone trains."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` / ``torchrun`` job, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the processes of a distributed launch; nothing to do in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # The first PartialState fixes the process group for the whole process (the training loop's Accelerator
        # included): without cpu=True on a machine with no GPU it sets up no group at all, and each process
        # would train alone.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()
