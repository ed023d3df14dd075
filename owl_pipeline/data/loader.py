"""Lance -> torch: map-style datasets (random access by index), a resumable seeded sampler, and DataLoaders
whose workers start with ``spawn`` (Lance is not fork-safe).

Determinism: the sampler yields ``epoch * len(dataset) + index``; a dataset seeds each sample's random
transform from (seed, epoch, index), so a sample looks the same whichever worker loads it, and a resumed run
sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import functools
import multiprocessing.util
import os
import sys
from collections.abc import Iterator

import lance
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from owl_pipeline.constants import IMAGE_TOKEN
from owl_pipeline.data.images import decode_rgb
from owl_pipeline.model.processor import AI, HUMAN, EncodedSample, OwlProcessor, Turn


class _LanceDataset(Dataset):
    """Opens its Lance dataset lazily, once per process, and never pickles the handle.

    The version is pinned when the dataset is made: every loader worker reads exactly the rows that were
    counted, even while the table is rewritten (a new version) during training."""

    columns: list[str] = []

    def __init__(self, uri: str, processor: OwlProcessor, train: bool, seed: int = 0):
        self.uri, self.processor, self.train, self.seed = str(uri), processor, train, seed
        self._dataset: lance.LanceDataset | None = lance.dataset(self.uri)
        self.version = self._dataset.version
        self._length = self.dataset.count_rows()
        if self._length == 0:
            raise ValueError(f"{self.uri} has no rows to train on")

    @property
    def dataset(self) -> lance.LanceDataset:
        if self._dataset is None:
            self._dataset = lance.dataset(self.uri, version=self.version)
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, position: int) -> EncodedSample:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: list[int]) -> list[EncodedSample]:
        """Batched random access: one Lance ``take`` for the whole batch."""
        epochs, indices = zip(*(divmod(int(p), self._length) for p in positions))
        rows = self.dataset.take(list(indices), columns=self.columns).to_pylist()
        return [self.encode(row, np.random.default_rng([self.seed, epoch, index]))
                for row, epoch, index in zip(rows, epochs, indices)]

    def encode(self, row: dict, rng: np.random.Generator) -> EncodedSample:
        raise NotImplementedError


def decode_image(data: bytes) -> Image.Image:
    """RGB as displayed (data/images.py); ingestion has checked that the bytes decode within the pixel cap."""
    return decode_rgb(data, max_pixels=sys.maxsize)


class CaptionPairDataset(_LanceDataset):
    """Curated image-caption pairs as stage-1 samples: the image, then the caption as the answer."""

    columns = ["image", "caption"]

    def encode(self, row: dict, rng: np.random.Generator) -> EncodedSample:
        turns = [Turn(HUMAN, IMAGE_TOKEN), Turn(AI, row["caption"])]
        return self.processor.encode(turns, [decode_image(row["image"])], train=self.train, rng=rng)


class ConversationDataset(_LanceDataset):
    """The instruction table's conversations (text-only and multimodal) as stage-2 samples."""

    columns = ["turns", "images"]

    def approximate_lengths(self, chars_per_token: float = 4.0, tokens_per_turn: float = 3.0) -> np.ndarray:
        """Tokens per row, roughly (text characters / 4, a role prefix and an end token per turn, the image
        tokens), from the text columns alone: enough to group rows of similar length without tokenizing or
        decoding anything."""
        table = self.dataset.to_table(columns=["turns", "images"])
        texts = pc.struct_field(pc.list_flatten(table["turns"]), "text")
        rows = pc.list_parent_indices(table["turns"]).to_numpy()
        chars = np.bincount(rows, weights=pc.utf8_length(texts).to_numpy(), minlength=len(table))
        images = pc.list_value_length(table["images"]).to_numpy(zero_copy_only=False)
        turns = pc.list_value_length(table["turns"]).to_numpy(zero_copy_only=False)
        return chars / chars_per_token + turns * tokens_per_turn + images * self.processor.config.num_image_tokens

    def text_only_rows(self) -> np.ndarray:
        """True for each row without images."""
        images = self.dataset.to_table(columns=["images"])["images"]
        return pc.list_value_length(images).to_numpy(zero_copy_only=False) == 0

    def encode(self, row: dict, rng: np.random.Generator) -> EncodedSample:
        turns = [Turn(t["role"], t["text"]) for t in row["turns"]]
        images = [decode_image(data) for data in row["images"]]
        return self.processor.encode(turns, images, train=self.train, rng=rng)


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, endless, that can start at any (epoch, position).

    With several processes each one takes every ``num_replicas``-th position of the same permutation, so
    positions (and resume points) are global.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, epoch: int = 0, position: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch, self.position = epoch, position
        self.num_replicas, self.rank = num_replicas, rank

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, position = self.epoch, self.position
        while True:
            order = self.order(epoch)
            for global_position in range(position, self.length):
                if global_position % self.num_replicas == self.rank:
                    yield epoch * self.length + order[global_position]
            epoch, position = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; iteration itself does not stop
        return self.length

    def state_after(self, samples_consumed: int) -> dict[str, int]:
        """Where to resume after ``samples_consumed`` samples (all processes together) from this start."""
        absolute = self.epoch * self.length + self.position + samples_consumed
        return {"epoch": absolute // self.length, "position": absolute % self.length}


class MixtureSampler(ResumableSampler):
    """Text-only rows with probability ``text_only_fraction``, multimodal rows otherwise, whatever their shares
    in the table. The draw at each global position is a function of (seed, epoch, position), so it resumes and
    shards across processes exactly like ResumableSampler."""

    def __init__(self, text_only: np.ndarray, text_only_fraction: float, **kwargs):
        super().__init__(len(text_only), **kwargs)
        self.pools = (np.flatnonzero(~text_only), np.flatnonzero(text_only))
        if not len(self.pools[0]) or not len(self.pools[1]):
            raise ValueError("text_only_fraction needs both text-only and multimodal conversations in the data")
        self.fraction = text_only_fraction

    def __iter__(self) -> Iterator[int]:
        epoch, position = self.epoch, self.position
        while True:
            for global_position in range(position, self.length):
                if global_position % self.num_replicas == self.rank:
                    rng = np.random.default_rng([self.seed, epoch, global_position])
                    pool = self.pools[int(rng.random() < self.fraction)]
                    yield epoch * self.length + int(pool[rng.integers(len(pool))])
            epoch, position = epoch + 1, 0


class LengthGroupedSampler(ResumableSampler):
    """ResumableSampler's permutation, then sorted by length inside each window of ``window`` rows (longest
    first): consecutive batches hold rows of similar length, so stage 2 pads far less, while the order stays
    a seeded function of the epoch (it resumes and shards across processes exactly like its parent)."""

    def __init__(self, lengths: np.ndarray, window: int, **kwargs):
        super().__init__(len(lengths), **kwargs)
        self.lengths, self.window = np.asarray(lengths), max(1, window)

    def order(self, epoch: int) -> list[int]:
        order = super().order(epoch)
        grouped = []
        for start in range(0, len(order), self.window):
            chunk = order[start:start + self.window]
            grouped += sorted(chunk, key=lambda index: -self.lengths[index])
        return grouped


def _exit_worker_without_static_destructors(_worker_id: int) -> None:
    """A spawned worker ends through ``sys.exit``, which runs C++ static destructors; Lance's native thread pool
    aborts in them ("terminate called without an active exception"). The worker has nothing left to clean up
    by then, so its last exit handler flushes output and leaves with ``os._exit``."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    multiprocessing.util.Finalize(None, leave, exitpriority=0)


def make_loader(dataset: _LanceDataset, batch_size: int, sampler: ResumableSampler, num_workers: int = 0,
                prefetch_factor: int = 4, pad_to_multiple_of: int | None = None) -> DataLoader:
    workers = {"num_workers": num_workers}
    if num_workers > 0:
        workers.update(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=prefetch_factor,
                       worker_init_fn=_exit_worker_without_static_destructors)
    # Its own generator: creating an iterator would otherwise draw from the global RNG and shift dropout
    # masks after a resume.
    collate = functools.partial(dataset.processor.collate, pad_to_multiple_of=pad_to_multiple_of)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(sampler.seed),
                      **workers)
