"""The data's configuration: the generated shapes-world corpus, the LAION/COYO filter rules, instruction files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from owl_pipeline.config.loading import require


@dataclass
class FaultRates:
    """Fractions of the shapes-world caption pairs that carry each injected fault (one fault per row)."""

    mismatched_caption: float = 0.04  # another scene's caption, low similarity
    tiny_image: float = 0.03
    extreme_aspect: float = 0.03
    exact_duplicate: float = 0.03  # same image bytes and caption as an earlier row
    near_duplicate: float = 0.03  # the same scene re-encoded and shifted by a pixel
    non_english: float = 0.04
    nsfw: float = 0.02
    watermark: float = 0.02
    short_caption: float = 0.03  # empty or under the caption length/word minimum
    repeated_caption: float = 0.02  # one spam caption on many rows
    corrupt_jpeg: float = 0.02
    truncated_member: bool = True  # the last shard ends inside a tar member

    def __post_init__(self) -> None:
        rates = {k: v for k, v in dataclasses.asdict(self).items() if k != "truncated_member"}
        bad = {k: v for k, v in rates.items() if not 0.0 <= v < 1.0}
        require(not bad, f"fault rates must be in [0, 1): {bad}")
        require(sum(rates.values()) < 0.8, f"fault rates add up to {sum(rates.values()):.2f}; keep them under 0.8")


@dataclass
class SyntheticConfig:
    """The embedded default corpus ("shapes world"), generated deterministically from ``seed``."""

    seed: int = 0
    num_pairs: int = 4000
    shard_size: int = 1000
    image_size: int = 64
    metadata_format: str = "laion"  # or "coyo"
    # LAION and COYO ship a CLIP similarity per pair; off, the shards carry none and the filter computes it with
    # filters.clip_model (shapes world's own CLIP), as LAION computed theirs with ViT-B/32.
    similarity_scores: bool = True
    num_instruction_images: int = 2000
    num_text_only: int = 1000
    num_eval_images: int = 60
    faults: FaultRates = field(default_factory=FaultRates)

    def __post_init__(self) -> None:
        require(self.metadata_format in ("laion", "coyo"),
                f"synthetic.metadata_format must be 'laion' or 'coyo', got {self.metadata_format!r}")
        require(self.num_pairs > 0 and self.shard_size > 0, "synthetic.num_pairs and shard_size must be positive")
        require(min(self.num_instruction_images, self.num_eval_images) > 0 and self.num_text_only >= 0,
                "synthetic.num_instruction_images and num_eval_images must be positive, num_text_only >= 0")
        require(self.image_size >= 32, f"synthetic.image_size must be at least 32, got {self.image_size}")


@dataclass
class FilterConfig:
    """LAION/COYO curation rules (ARCHITECTURE.md section 4). ``None`` turns a rule off.

    Defaults are the published ones; the shapes-world params override image-size rules for its 64 px images.
    """

    min_similarity: float | None = 0.28  # LAION-5B English (LAION-400M used 0.3)
    min_caption_chars: int | None = 5
    min_caption_words: int | None = 3  # COYO
    max_caption_words: int | None = 256  # COYO
    english_only: bool = True
    max_nsfw: float | None = 0.5  # punsafe / COYO NSFW scores
    max_watermark: float | None = 0.8  # pwatermark
    min_side: int | None = 200  # COYO, DataComp
    max_aspect: float | None = 3.0
    min_image_bytes: int | None = 5000  # LAION-400M
    max_caption_repeats: int | None = 10  # COYO: a caption on more rows than this is dropped everywhere
    dedup_url_text: bool = True
    dedup_image_text: bool = True
    near_dup_max_distance: int | None = 4  # perceptual-hash Hamming distance; None turns near-dedup off
    clip_model: str | None = None  # local path or hub id, scores similarity where the column is missing
    # Not a rule: kept pictures stored with their shorter side scaled down to this (quality-95 JPEG), which a
    # training loader decodes several times faster (bench/loader.py); the rules see the original bytes. null: as is.
    store_short_side: int | None = None

    @classmethod
    def for_shapes_world(cls) -> FilterConfig:
        """The published rules, with the image-size rules scaled to shapes world's 64 px pictures."""
        return cls(min_side=32, min_image_bytes=None)

    def __post_init__(self) -> None:
        require(self.near_dup_max_distance is None or 0 <= self.near_dup_max_distance < 16,
                f"filters.near_dup_max_distance must be in [0, 16), got {self.near_dup_max_distance}")
        require(self.min_similarity is None or -1 <= self.min_similarity <= 1,
                f"filters.min_similarity is a cosine similarity, in [-1, 1]; got {self.min_similarity}")
        scores = {"max_nsfw": self.max_nsfw, "max_watermark": self.max_watermark}
        bad = {k: v for k, v in scores.items() if v is not None and not 0 <= v <= 1}
        require(not bad, f"scores must be in [0, 1]: {bad}")
        counts = {"min_caption_chars": self.min_caption_chars, "min_caption_words": self.min_caption_words,
                  "max_caption_words": self.max_caption_words, "min_side": self.min_side,
                  "min_image_bytes": self.min_image_bytes, "max_caption_repeats": self.max_caption_repeats}
        bad = {k: v for k, v in counts.items() if v is not None and v < 0}
        require(not bad, f"counts must be >= 0: {bad}")
        require(self.store_short_side is None or self.store_short_side >= 32,
                f"filters.store_short_side must be at least 32 px or null, got {self.store_short_side}")
        require(self.max_aspect is None or self.max_aspect >= 1,
                f"filters.max_aspect must be >= 1, got {self.max_aspect}")



@dataclass
class InstructionFile:
    format: str  # alpaca | llava | owl
    path: str
    image_root: str | None = None

    def __post_init__(self) -> None:
        require(self.format in ("alpaca", "llava", "owl"),
                f"format must be alpaca, llava or owl, got {self.format!r}")
