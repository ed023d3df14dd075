"""Tokenizers: train a small byte-level BPE locally (no hub here), and make any tokenizer Owl-ready."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from owl_pipeline.constants import IMAGE_TOKEN

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
_BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``: lossless decoding, no unknown tokens."""
    specials = [PAD, BOS, EOS, IMAGE_TOKEN]
    if vocab_size < _BYTE_ALPHABET_SIZE + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                         f"{_BYTE_ALPHABET_SIZE + len(specials)} (256 bytes + special tokens)")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the ``<image>`` marker as a special token and make sure padding is possible."""
    if not tokenizer.is_fast:
        raise TypeError(f"{type(tokenizer).__name__} is a slow tokenizer; OwlProcessor needs a fast one "
                        "(it maps answer spans to tokens through offsets)")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; every answer ends with one")
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; padded positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
