"""OwlProcessor: conversation template + tokenizer + image transform + label masking + batch collation.

A conversation renders as (ARCHITECTURE.md section 2):

    {SYSTEM_PROMPT}
    Human: <image>
    Human: {question}
    AI: {answer}</s>
    Human: {question 2}
    AI: {answer 2}</s>

Only the text after each ``AI: `` plus its EOS carries labels. Token-exact as the official code: ``AI: `` (with
its space) ends an unlabelled prompt segment and each answer is tokenized on its own, without a leading space,
so a label boundary never falls inside a token, and a generation prompt ends with ``AI: `` exactly where a
training answer begins.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from owl_pipeline.constants import (AI_PREFIX, CLIP_MEAN, CLIP_STD, HUMAN_PREFIX, IGNORE_INDEX, IMAGE_TOKEN,
                                    PROCESSOR_CONFIG_FILE)
from owl_pipeline.model.conversation import AI, HUMAN, Turn, parse_conversation, render_conversation  # noqa: F401
from owl_pipeline.model.tokenizer import prepare_tokenizer

# The official code tokenizes the template's separators as chunks of their own (the split keeps them).
_TEMPLATE_SEPARATORS = re.compile(f"({re.escape(AI_PREFIX)}|{re.escape(chr(10) + HUMAN_PREFIX)})")


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int] | None
    pixel_values: torch.Tensor  # (num_images, 3, H, W); num_images may be 0

    @property
    def num_target_tokens(self) -> int:
        return 0 if self.labels is None else sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class ProcessorConfig:
    image_size: int = 224
    num_image_tokens: int = 65
    max_length: int = 2048
    # (1, 1): no crop, where the text names what a crop could cut out or move (shapes world)
    train_crop_scale: tuple[float, float] = (0.5, 1.0)
    train_hflip: bool = True  # turn off where left/right carries meaning (shapes-world positions)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        # JSON gives lists back; keep tuples so a loaded config equals the saved one.
        self.train_crop_scale, self.mean, self.std = (tuple(v) for v in (self.train_crop_scale, self.mean, self.std))

    @property
    def train_pixels_repeat(self) -> bool:
        """Whether a picture gives the same training pixels every time it is drawn (no random crop or flip)."""
        return self.train_crop_scale == (1.0, 1.0) and not self.train_hflip


@dataclass
class ImageTransform:
    """PIL image -> normalized (3, S, S) tensor. Train: RandomResizedCrop + flip; eval: plain resize."""

    size: int
    train: bool
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    crop_ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3))

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB")
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            cropping = tuple(self.crop_scale) != (1.0, 1.0)  # (1, 1): the whole picture, only resized
            box = self._random_crop_box(image.width, image.height, rng) if cropping else None
            image = image.resize((self.size, self.size), Image.BICUBIC, box=box)
            if self.hflip and rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = image.resize((self.size, self.size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # (3, S, S)

    def _random_crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The box of torchvision's RandomResizedCrop: random area fraction and aspect, center-crop fallback."""
        area = width * height
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.crop_scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        aspect = width / height
        w, h = width, height
        if aspect < self.crop_ratio[0]:
            h = round(width / self.crop_ratio[0])
        elif aspect > self.crop_ratio[1]:
            w = round(height * self.crop_ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h


def _prompt_turns(question: str, images: list, history: list[tuple[str, str]]) -> list[Turn]:
    turns = [Turn(HUMAN, IMAGE_TOKEN) for _ in images]
    for past_question, past_answer in history:
        turns += [Turn(HUMAN, past_question), Turn(AI, past_answer)]
    return [*turns, Turn(HUMAN, question)]


class OwlProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig | None = None):
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.config = config or ProcessorConfig()
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        common = dict(size=self.config.image_size, crop_scale=self.config.train_crop_scale,
                      hflip=self.config.train_hflip, mean=self.config.mean, std=self.config.std)
        self.train_transform = ImageTransform(train=True, **common)
        self.eval_transform = ImageTransform(train=False, **common)

    # --- encoding -------------------------------------------------------------------------------------
    def encode(self, turns: list[Turn], images: list[Image.Image], train: bool = False,
               rng: np.random.Generator | None = None) -> EncodedSample:
        """A whole conversation with labels on the answers, for training or scoring."""
        if not turns or turns[-1].role != AI:
            raise ValueError("a training conversation must end with an AI turn")
        text, spans = render_conversation(turns)
        return self._encode_text(text, spans, images, train, rng, with_labels=True)

    def encode_prompt(self, question: str, images: list[Image.Image],
                      history: list[tuple[str, str]] | None = None) -> EncodedSample:
        """A generation prompt: images first, earlier (question, answer) turns, then the question and ``AI: ``.
        Where the history does not fit ``max_length`` beside them, its oldest turns are dropped whole: cutting the
        prompt's end would lose the question being asked."""
        history = list(history or [])
        kept = len(history)
        if history and self._prompt_length(question, images, history) > self.config.max_length:
            low, high = 0, kept - 1  # the most newest turns that fit, found in log(len(history)) encodings
            while low < high:
                middle = (low + high + 1) // 2
                fits = self._prompt_length(question, images, history[kept - middle:]) <= self.config.max_length
                low, high = (middle, high) if fits else (low, middle - 1)
            history = history[kept - low:] if low else []
        return self.encode_turns_prompt(_prompt_turns(question, images, history), images)

    def _prompt_length(self, question: str, images: list[Image.Image], history: list[tuple[str, str]]) -> int:
        text, spans = render_conversation(_prompt_turns(question, images, history))
        ids, is_target = self._tokenize_with_targets(text + "\n" + AI_PREFIX, spans)
        return len(self._expand_images(ids, is_target, len(images))[0])

    def encode_turns_prompt(self, turns: list[Turn], images: list[Image.Image]) -> EncodedSample:
        """A generation prompt from whole turns (the last a Human turn), ending with ``AI: ``."""
        if not turns or turns[-1].role != HUMAN:
            raise ValueError("a generation prompt must end with a Human turn")
        text, spans = render_conversation(turns)
        return self._encode_text(text + "\n" + AI_PREFIX, spans, images, False, None, with_labels=False)

    def _encode_text(self, text: str, spans: list[tuple[int, int]], images: list[Image.Image], train: bool,
                     rng: np.random.Generator | None, with_labels: bool) -> EncodedSample:
        ids, is_target = self._tokenize_with_targets(text, spans)
        ids, is_target = self._expand_images(ids, is_target, len(images))
        transform = self.train_transform if train else self.eval_transform
        pixels = [transform(image, rng) for image in images]
        ids, is_target, pixels = self._truncate(ids, is_target, pixels)
        size = self.config.image_size
        pixel_values = torch.stack(pixels) if pixels else torch.empty(0, 3, size, size)
        labels = [i if target else IGNORE_INDEX for i, target in zip(ids, is_target)] if with_labels else None
        return EncodedSample(input_ids=ids, labels=labels, pixel_values=pixel_values)

    def _tokenize_with_targets(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        """Tokenize chunk by chunk and append EOS after each answer. As the official code does, the prompt
        between answers is split at ``AI: `` and ``\\nHuman: `` (each its own chunk) and every answer is a chunk."""
        tok = self.tokenizer
        ids: list[int] = [] if tok.bos_token_id is None else [tok.bos_token_id]
        is_target = [False] * len(ids)
        cursor = 0
        for start, end in [*spans, (len(text), len(text))]:
            chunks = [(chunk, False) for chunk in _TEMPLATE_SEPARATORS.split(text[cursor:start])]
            for chunk, target in [*chunks, (text[start:end], True)]:
                if chunk:
                    chunk_ids = tok(chunk, add_special_tokens=False)["input_ids"]
                    ids += chunk_ids
                    is_target += [target] * len(chunk_ids)
            if end > start:
                ids.append(tok.eos_token_id)
                is_target.append(True)
            cursor = end
        return ids, is_target

    def _expand_images(self, ids: list[int], is_target: list[bool], num_images: int) -> tuple[list[int], list[bool]]:
        markers = ids.count(self.image_token_id)
        if markers != num_images:
            raise ValueError(f"the conversation has {markers} {IMAGE_TOKEN} markers but {num_images} images")
        out_ids, out_target = [], []
        n = self.config.num_image_tokens
        for token, target in zip(ids, is_target):
            if token == self.image_token_id:
                out_ids += [token] * n
                out_target += [False] * n
            else:
                out_ids.append(token)
                out_target.append(target)
        return out_ids, out_target

    def _truncate(self, ids, is_target, pixels):
        """Cut to ``max_length``; an image whose span would be cut is dropped whole, with its pixels."""
        limit = self.config.max_length
        if len(ids) <= limit:
            return ids, is_target, pixels
        cut = limit
        while cut > 0 and ids[cut - 1] == self.image_token_id and ids[cut] == self.image_token_id:
            cut -= 1  # back off to the start of the image span the limit fell into
        kept_images = ids[:cut].count(self.image_token_id) // self.config.num_image_tokens
        return ids[:cut], is_target[:cut], pixels[:kept_images]

    def cap_tokens(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """``text`` cut after its first ``max_tokens`` tokens, and whether it was cut. Only a window of the
        text is tokenized, so a 10 MB question costs what a short one does."""
        window = text[:max_tokens * 32]  # no token of any tokenizer here spans 32 characters
        offsets = self.tokenizer(window, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= max_tokens and len(window) == len(text):
            return text, False
        return window[:offsets[min(max_tokens, len(offsets)) - 1][1]] if offsets else "", True

    # --- batching and decoding ------------------------------------------------------------------------
    def collate(self, samples: list[EncodedSample], padding_side: str = "right",
                pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Pad to the longest sample, rounded up to a multiple of ``pad_to_multiple_of`` if given. Right padding
        for training, left padding for batched generation."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(s.input_ids) for s in samples)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id

        def pad(values: list[int], fill: int) -> list[int]:
            padding = [fill] * (length - len(values))
            return padding + values if padding_side == "left" else values + padding

        batch = {
            "input_ids": torch.tensor([pad(s.input_ids, pad_id) for s in samples], dtype=torch.long),
            "attention_mask": torch.tensor([pad([1] * len(s.input_ids), 0) for s in samples], dtype=torch.long),
            "pixel_values": torch.cat([s.pixel_values for s in samples]),
        }
        if all(s.labels is not None for s in samples):
            batch["labels"] = torch.tensor([pad(s.labels, IGNORE_INDEX) for s in samples], dtype=torch.long)
        return batch

    def decode(self, token_ids) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    # --- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> OwlProcessor:
        folder = Path(folder)
        config_file = folder / PROCESSOR_CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a folder written by OwlProcessor.save_pretrained")
        config = ProcessorConfig(**json.loads(config_file.read_text()))
        return cls(AutoTokenizer.from_pretrained(folder), config)
