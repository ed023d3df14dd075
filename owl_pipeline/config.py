"""One place for configuration: dataclasses with checks, named presets, YAML loading.

OwlConfig is the model; SyntheticConfig, FilterConfig and PipelineConfig describe the data and the pipeline
(``params.yaml`` at the top of the project is a PipelineConfig).

Model presets (``OwlConfig.from_name``):
  tiny    a CPU-sized model, seconds per step, used by the embedded default and the tests
  owl-1b  CLIP ViT-L/14@224 + a 1.1B Llama (TinyLlama shape): our benchmark size
  owl-7b  the paper: CLIP ViT-L/14@224 + LLaMA-7B
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS


class ConfigError(ValueError):
    """A configuration value is missing or inconsistent; the message names the field."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class VisionConfig:
    """The vision encoder: a CLIP ViT. ``pretrained`` (local path or hub id) loads weights instead of random init."""

    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-6  # the official vision config's default (CLIP's own is 1e-5)
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _require(self.image_size % self.patch_size == 0,
                 f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})")
        _require(self.hidden_size % self.num_heads == 0,
                 f"vision.hidden_size ({self.hidden_size}) must be divisible by vision.num_heads ({self.num_heads})")

    @classmethod
    def from_hf_dict(cls, vision: dict, pretrained: str | None = None) -> VisionConfig:
        """The sizes of an HF CLIP vision config (``CLIPVisionConfig.to_dict()``); KeyError names a missing one."""
        return cls(pretrained=pretrained, image_size=vision["image_size"], patch_size=vision["patch_size"],
                   hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
                   num_heads=vision["num_attention_heads"], intermediate_size=vision["intermediate_size"],
                   hidden_act=vision.get("hidden_act", "quick_gelu"), layer_norm_eps=vision.get("layer_norm_eps", 1e-5))

    @property
    def num_tokens(self) -> int:
        """CLS + one token per patch: 257 for ViT-L/14 at 224 px."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class AbstractorConfig:
    """The visual abstractor: learned queries that attend to themselves and to the visual tokens."""

    num_queries: int = 64
    num_layers: int = 6
    num_heads: int = 16
    hidden_size: int = 1024
    intermediate_size: int = 2816
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-6  # the MLP's inner LayerNorm only; the other abstractor norms use 1e-5

    def __post_init__(self) -> None:
        _require(self.num_queries > 0, f"abstractor.num_queries must be positive, got {self.num_queries}")
        _require(self.hidden_size % self.num_heads == 0,
                 f"abstractor.hidden_size ({self.hidden_size}) must be divisible by "
                 f"abstractor.num_heads ({self.num_heads})")
        _require(0.0 <= self.attention_dropout < 1.0,
                 f"abstractor.attention_dropout must be in [0, 1), got {self.attention_dropout}")

    @property
    def num_output_tokens(self) -> int:
        """Queries plus the appended ``vit_eos``: 65 LLM tokens per image in the paper."""
        return self.num_queries + 1


@dataclass
class LLMConfig:
    """The language model: a Llama built from these sizes, or any HF causal LM named by ``pretrained``."""

    pretrained: str | None = None
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False  # biases on q/k/v/o (Qwen2-style): content-free position heads from step one
    init_std: float = 0.02  # weight init of a Llama built here (HF's default; ~1/sqrt(hidden) suits tiny widths)

    def __post_init__(self) -> None:
        _require(self.init_std > 0, f"llm.init_std must be > 0, got {self.init_std}")
        _require(self.hidden_size % self.num_heads == 0,
                 f"llm.hidden_size ({self.hidden_size}) must be divisible by llm.num_heads ({self.num_heads})")
        head_dim = self.hidden_size // self.num_heads
        _require(head_dim % 2 == 0, f"llm.hidden_size / llm.num_heads = {head_dim} must be even (rotary embeddings)")
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"llm.num_heads ({self.num_heads}) must be a multiple of llm.num_kv_heads ({self.num_kv_heads})")

    @classmethod
    def from_hf_dict(cls, text: dict, pretrained: str | None = None) -> LLMConfig:
        """The sizes of an HF Llama-style config (its ``config.json`` as a dict); KeyError names a missing one."""
        heads = text["num_attention_heads"]
        return cls(pretrained=pretrained, vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                   num_layers=text["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=text.get("num_key_value_heads") or heads, intermediate_size=text["intermediate_size"],
                   max_position_embeddings=text.get("max_position_embeddings", 2048),
                   rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=text.get("rope_theta", 10000.0),
                   attention_bias=bool(text.get("attention_bias", False)))


@dataclass
class LoraConfig:
    """LoRA on the LLM in stage 2 (paper: r 8, alpha 32, dropout 0.05 on q_proj and v_proj)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        _require(self.r > 0, f"lora.r must be positive, got {self.r}")
        _require(bool(self.target_modules), "lora.target_modules must name at least one module")


@dataclass
class OwlConfig:
    """The whole model: vision encoder + visual abstractor + LLM, and how stage 2 adapts it."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    abstractor: AbstractorConfig = field(default_factory=AbstractorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # The paper trains the abstractor in stage 2; the official code froze it.
    train_abstractor_in_stage2: bool = False
    # The paper trains the vision encoder in stage 1 (the official v0 code at 0.1x the lr); a tower pretrained on
    # the same kind of pictures (shapes world's CLIP) can stay frozen, which also skips its backward pass.
    train_vision_in_stage1: bool = True
    # A released mPLUG-Owl checkpoint (official layout, a local folder): the pipeline converts it once and starts
    # from it (stage 1 is then skipped); the sizes above are then read from its config.json.
    pretrained_official: str | None = None

    def __post_init__(self) -> None:
        # Queries and visual tokens share one attention (keys = concat[queries, visual]), so widths must agree.
        _require(self.abstractor.hidden_size == self.vision.hidden_size,
                 f"abstractor.hidden_size ({self.abstractor.hidden_size}) must equal vision.hidden_size "
                 f"({self.vision.hidden_size}): the abstractor attends over queries and visual tokens together")

    @classmethod
    def from_name(cls, name: str) -> OwlConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return copy.deepcopy(PRESETS[name])

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: OwlConfig | None = None, where: str = "model") -> OwlConfig:
        """Build from a dict; a ``preset`` key starts from that preset, else from ``base`` (default: the class
        defaults), and the other keys override it."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        preset = data.pop("preset", None)
        start = cls.from_name(preset) if preset else (base or cls())
        return from_mapping(cls, _deep_merge(start.to_dict(), data, path=f"{where}."), where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> OwlConfig:
        return cls.from_dict(read_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _deep_merge(base: dict[str, Any], override: dict[str, Any], path: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {where.removeprefix('model.')!r}; known keys here: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = _deep_merge(base[key], value, path=f"{where}.")
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_mapping(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a (YAML) mapping on top of ``base`` (an instance; default: the field
    defaults). A dataclass-typed field's mapping overrides that field's own default (``stage2`` starts from
    the stage-2 recipe, ``model`` from its preset), so a partial section keeps the rest of its recipe.
    Unknown keys, values of the wrong type and non-finite numbers fail with the field's path."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(names)}")
    hints = get_type_hints(cls)
    kwargs = {f.name: copy.deepcopy(getattr(base, f.name)) for f in dataclasses.fields(cls)} if base else {}
    for key, value in values.items():
        kind, path = hints[key], f"{where}.{key}"
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            default = getattr(base, key) if base is not None else _field_default(cls, key)
            value = (kind.from_dict(value, base=default, where=path) if hasattr(kind, "from_dict")
                     else from_mapping(kind, value, path, base=default))
        kwargs[key] = checked_value(value, kind, path)
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as error:  # a range check of the section, or a value it cannot take
        raise ConfigError(f"{where}: {error}") from None


def _field_default(cls: type, name: str) -> Any:
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def checked_value(value: Any, kind: Any, where: str) -> Any:
    """``value`` if it has type ``kind`` (ints are ints, floats finite numbers, lists lists, ...), converted
    where YAML gives another spelling (an int for a float, a list for a tuple); else a ConfigError naming
    ``where`` and the value."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return checked_value(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is none of {options}")
    if kind is Any or dataclasses.is_dataclass(kind) and isinstance(value, kind):
        return value
    if dataclasses.is_dataclass(kind):
        if isinstance(value, dict):
            return from_mapping(kind, value, where)
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        items = [checked_value(v, args[0] if origin is list or args[-1] is Ellipsis else args[i], f"{where}[{i}]")
                 for i, v in enumerate(value)] if args else list(value)
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


_VIT_L14 = VisionConfig()
_PAPER_ABSTRACTOR = AbstractorConfig()

PRESETS: dict[str, OwlConfig] = {
    "tiny": OwlConfig(
        name="tiny",
        vision=VisionConfig(image_size=64, patch_size=8, hidden_size=128, num_layers=2, num_heads=4,
                            intermediate_size=512),
        abstractor=AbstractorConfig(num_queries=64, num_layers=2, num_heads=4, hidden_size=128,
                                    intermediate_size=352),
        llm=LLMConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                      intermediate_size=352, max_position_embeddings=1024, rms_norm_eps=1e-5),
    ),
    "owl-1b": OwlConfig(
        name="owl-1b",
        vision=copy.deepcopy(_VIT_L14),
        abstractor=copy.deepcopy(_PAPER_ABSTRACTOR),
        llm=LLMConfig(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                      intermediate_size=5632, max_position_embeddings=2048, rms_norm_eps=1e-5),
    ),
    "owl-7b": OwlConfig(
        name="owl-7b",
        vision=copy.deepcopy(_VIT_L14),
        abstractor=copy.deepcopy(_PAPER_ABSTRACTOR),
        llm=LLMConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                      intermediate_size=11008, max_position_embeddings=2048, rms_norm_eps=1e-6),
    ),
}


# --- data ------------------------------------------------------------------------------------------------
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
        _require(not bad, f"fault rates must be in [0, 1): {bad}")
        _require(sum(rates.values()) < 0.8, f"fault rates add up to {sum(rates.values()):.2f}; keep them under 0.8")


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
        _require(self.metadata_format in ("laion", "coyo"),
                 f"synthetic.metadata_format must be 'laion' or 'coyo', got {self.metadata_format!r}")
        _require(self.num_pairs > 0 and self.shard_size > 0, "synthetic.num_pairs and shard_size must be positive")
        _require(min(self.num_instruction_images, self.num_eval_images) > 0 and self.num_text_only >= 0,
                 "synthetic.num_instruction_images and num_eval_images must be positive, num_text_only >= 0")
        _require(self.image_size >= 32, f"synthetic.image_size must be at least 32, got {self.image_size}")


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

    @classmethod
    def for_shapes_world(cls) -> FilterConfig:
        """The published rules, with the image-size rules scaled to shapes world's 64 px pictures."""
        return cls(min_side=32, min_image_bytes=None)

    def __post_init__(self) -> None:
        _require(self.near_dup_max_distance is None or 0 <= self.near_dup_max_distance < 16,
                 f"filters.near_dup_max_distance must be in [0, 16), got {self.near_dup_max_distance}")
        _require(self.min_similarity is None or -1 <= self.min_similarity <= 1,
                 f"filters.min_similarity is a cosine similarity, in [-1, 1]; got {self.min_similarity}")
        scores = {"max_nsfw": self.max_nsfw, "max_watermark": self.max_watermark}
        bad = {k: v for k, v in scores.items() if v is not None and not 0 <= v <= 1}
        _require(not bad, f"scores must be in [0, 1]: {bad}")
        counts = {"min_caption_chars": self.min_caption_chars, "min_caption_words": self.min_caption_words,
                  "max_caption_words": self.max_caption_words, "min_side": self.min_side,
                  "min_image_bytes": self.min_image_bytes, "max_caption_repeats": self.max_caption_repeats}
        bad = {k: v for k, v in counts.items() if v is not None and v < 0}
        _require(not bad, f"counts must be >= 0: {bad}")
        _require(self.max_aspect is None or self.max_aspect >= 1,
                 f"filters.max_aspect must be >= 1, got {self.max_aspect}")


# --- training --------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """One run of the training loop. The defaults are the paper's stage-1 recipe (ARCHITECTURE.md section 3);
    ``stage2_recipe`` gives stage 2's, and the embedded default overrides sizes and steps in params.yaml."""

    max_steps: int = 50_000
    batch_size: int = 64  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0  # the cosine schedule's floor
    warmup_steps: int = 2000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0
    vision_lr_scale: float = 0.1  # official v0 code: vision parameters at 0.1x the lr in stage 1
    eval_every: int = 1000  # steps; 0 evaluates at the end only
    eval_batches: int = 8
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 10
    num_workers: int | None = None  # loader processes; None: none on CPU, up to 8 per GPU (bench/loader.py)
    seed: int = 0
    mixed_precision: str = "auto"  # "auto": bf16 autocast on GPU, fp32 on CPU; or "no" / "bf16" / "fp16"
    text_only_fraction: float | None = None  # stage 2: share of text-only conversations; None keeps the data's
    activation_checkpointing: bool = False  # recompute LLM/vision layer activations in backward: less memory
    group_by_length: bool = False  # stage 2: batches of similar length (windows of 64 batches): less padding
    # torch.compile each repeated layer (regional): fused kernels, a minute of compiling. "auto": on when training
    # on CUDA (1.6-1.8x a step on an H100, ARCHITECTURE.md section 8), off on CPU (slower for the tiny preset)
    compile: bool | str = "auto"
    # A frozen vision tower fed the same pixels for a picture each time (no random crop or flip) runs once per
    # picture; its outputs are remembered up to this many MiB (0: off). 257 x 128 floats are 129 KiB a picture.
    vision_memo_mib: int = 1024

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _require(self.max_steps >= 0 and self.batch_size > 0 and self.grad_accum > 0,
                 "max_steps must be >= 0 (0: no training, the input model is passed on), batch_size and grad_accum "
                 "positive")
        _require(self.lr > 0 and 0 <= self.min_lr <= self.lr,
                 f"lr must be > 0 and min_lr within [0, lr]; got lr {self.lr}, min_lr {self.min_lr}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"betas must be two numbers in [0, 1), got {self.betas}")
        _require(self.weight_decay >= 0 and self.vision_lr_scale >= 0,
                 "weight_decay and vision_lr_scale must be >= 0")
        _require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")
        _require(self.eval_every >= 0 and min(self.eval_batches, self.save_every, self.log_every) >= 1,
                 "eval_every must be >= 0; eval_batches, save_every and log_every >= 1")
        _require(self.num_workers is None or self.num_workers >= 0, "num_workers must be >= 0 or null")
        _require(self.max_steps == 0 or 0 <= self.warmup_steps <= self.max_steps,
                 f"warmup_steps ({self.warmup_steps}) must be within [0, max_steps={self.max_steps}]")
        _require(self.compile in (True, False, "auto"), f"compile must be auto, true or false, got {self.compile!r}")
        _require(self.mixed_precision in ("auto", "no", "bf16", "fp16"),
                 f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        _require(self.text_only_fraction is None or 0.0 <= self.text_only_fraction <= 1.0,
                 f"text_only_fraction must be in [0, 1], got {self.text_only_fraction}")
        _require(self.keep_last >= 1, f"keep_last must be at least 1, got {self.keep_last}")
        _require(self.vision_memo_mib >= 0, f"vision_memo_mib must be >= 0, got {self.vision_memo_mib}")
        _require(not (self.group_by_length and self.text_only_fraction is not None),
                 "group_by_length and text_only_fraction cannot be combined (pick one sampler)")

    @classmethod
    def stage2_recipe(cls, **overrides) -> StageConfig:
        """The paper's stage 2: AdamW lr 2e-5, 50 warmup steps, cosine to 1e-6, grad clip 1.0."""
        base = dict(max_steps=3000, batch_size=256, lr=2e-5, min_lr=1e-6, warmup_steps=50, weight_decay=0.0,
                    betas=(0.9, 0.999), grad_clip=1.0, vision_lr_scale=1.0)
        return cls(**{**base, **overrides})


@dataclass
class BaseLLMConfig:
    """The embedded default's stand-in for a pretrained LLM: a tokenizer and a tiny causal LM trained here on
    the corpus text. Unused when ``model.llm.pretrained`` names a real LLM."""

    vocab_size: int = 512
    train: StageConfig = field(default_factory=lambda: StageConfig(
        max_steps=600, batch_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=30, weight_decay=0.01,
        betas=(0.9, 0.95), vision_lr_scale=1.0, eval_every=0, save_every=300, log_every=50))


@dataclass
class CurriculumPhase:
    """One phase of `owl pretrain-llm`: ``steps`` steps on conversations drawn from the curriculum's tasks in
    proportion to ``mix`` (data/lookup_curriculum.py), at a constant learning rate after a short warmup."""

    mix: dict[str, float]
    steps: int
    lr: float = 1e-3
    batch_size: int = 64
    warmup_steps: int = 30

    def __post_init__(self) -> None:
        _require(bool(self.mix) and all(w > 0 for w in self.mix.values()), "a phase's mix needs positive weights")
        _require(self.steps > 0 and self.batch_size > 0 and self.lr > 0, "phase steps, batch_size, lr must be > 0")


def _tiny_pretrained_llm() -> LLMConfig:
    # 3 layers: 2 never bound attributes in any setting tried; init ~1/sqrt(128): 0.02 stalls for hundreds of steps
    return LLMConfig(vocab_size=512, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4,
                     intermediate_size=352, max_position_embeddings=1024, rms_norm_eps=1e-5, init_std=0.08)


def _curriculum() -> list[CurriculumPhase]:
    return [CurriculumPhase({"inplace": 1.0}, steps=1250),
            CurriculumPhase({"described": 2.0, "inplace": 1.0, "echo": 1.0}, steps=1300, warmup_steps=10),
            CurriculumPhase({"described": 2.0, "colorq": 2.0, "inplace": 1.0, "echo": 1.0, "copy": 1.0},
                            steps=1000, warmup_steps=10),
            CurriculumPhase({"described": 2.0, "shapeq": 2.0, "colorq": 1.0, "inplace": 1.0, "echo": 1.0,
                             "copy": 1.0}, steps=600, warmup_steps=10)]


@dataclass
class LLMPretrainConfig:
    """`owl pretrain-llm`: the embedded default's base LLM, trained here from a seed on the lookup curriculum
    and shipped with the project (owl_pipeline/bundled/), so `owl run` starts from a pretrained LLM as the
    paper does. Retrain it with `owl pretrain-llm --out DIR`."""

    seed: int = 0
    vocab_size: int = 512
    llm: LLMConfig = field(default_factory=_tiny_pretrained_llm)
    phases: list[CurriculumPhase] = field(default_factory=_curriculum)


def _shapes_world_tower() -> VisionConfig:
    return VisionConfig(image_size=64, patch_size=4, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512)


@dataclass
class ClipTextConfig:
    """The text tower of shapes world's CLIP: small, over a word-level tokenizer of the caption words."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 40  # the longest shapes-world caption is ~30 words


@dataclass
class VisionPretrainConfig:
    """`owl pretrain-vision`: the embedded default's vision tower, pretrained here from a seed as a tiny CLIP on an
    unlimited stream of fresh scenes (data/scene_stream.py) and shipped with the project (owl_pipeline/bundled/),
    so `owl run` starts from a pretrained vision encoder as the paper does (CLIP ViT-L/14)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.05
    attribute_loss_weight: float = 1.0  # the per-column kind/color heads beside the contrastive loss (0: CLIP only)
    hard_negatives: bool = True  # each image's caption with one kind swapped joins its candidates
    projection_dim: int = 64
    vision: VisionConfig = field(default_factory=_shapes_world_tower)
    text: ClipTextConfig = field(default_factory=ClipTextConfig)
    probe_every: int = 120  # steps between held-out checks of the heads (the learning curve); 0: never

    def __post_init__(self) -> None:
        _require(self.steps > 0 and self.batch_size > 1, "vision pretraining: steps > 0 and batch_size > 1")
        _require(self.attribute_loss_weight >= 0, "vision pretraining: attribute_loss_weight must be >= 0")


@dataclass
class EvaluationConfig:
    """How OwlEval answers are produced and scored (owl_pipeline.eval)."""

    max_new_tokens: int = 64
    max_question_tokens: int = 512  # a longer question is cut to this many tokens (reported as a problem)
    reference_answers: str = "mPLUG_Owl_7b"  # answer/<this>_answer.jsonl: the reference for similarity scoring
    embedding_model: str | None = None  # a sentence-transformers folder; None: all-MiniLM-L6-v2 from its wheel
    judge_model: str | None = None  # a local causal LM (path or hub id) grading A-D; None: no judge
    judge_max_new_tokens: int = 8
    human_ratings: str | None = None  # a filled rating sheet (CSV) to fold into the report

    def __post_init__(self) -> None:
        _require(min(self.max_new_tokens, self.judge_max_new_tokens, self.max_question_tokens) > 0,
                 "evaluation: token limits must be > 0")


@dataclass
class RegistryConfig:
    """Registration in the MLflow model registry and the gate that promotes a version to ``champion``."""

    model_name: str = "owl-shapes-world"
    metric: str = "accuracy"  # a score of the evaluation report: accuracy | similarity | judge | human
    min_delta: float = 0.0  # promoted when metric >= champion's metric + min_delta (0: never worse) ...
    floor: float = 0.3  # ... and metric >= floor
    # What the served model accepts (registry/pyfunc_model.py ServingLimits), fixed when it is registered:
    serve_image_root: str | None = None  # image paths under this folder are accepted; None: base64 images only
    serve_max_rows: int = 16  # rows per request
    serve_max_new_tokens: int = 256  # the largest max_new_tokens a request may ask for

    def __post_init__(self) -> None:
        _require(self.metric in ("accuracy", "similarity", "judge", "human"),
                 f"registry.metric must be accuracy, similarity, judge or human, not {self.metric!r}")
        _require(self.min_delta >= 0, "registry.min_delta must be >= 0: a gate that lets a worse model through "
                                      "lets quality slide a little with every promotion")
        _require(self.serve_max_rows > 0 and self.serve_max_new_tokens > 0,
                 "registry.serve_max_rows and serve_max_new_tokens must be > 0")


# --- the pipeline ----------------------------------------------------------------------------------------
ENGINE_STEPS = ("raw_pairs", "curated_pairs")  # the data steps that can run on Ray
ENGINES = ("local", "ray")


@dataclass
class RayConfig:
    """Where the steps set to ``engine: ray`` (and stages with ``launcher: ray``) find Ray."""

    address: str = ""  # "": start a local Ray with this machine's cores; "auto" or "ray://HOST:10001": a cluster
    num_cpus: int | None = None  # a local Ray's CPUs; None: every core
    partitions: int | None = None  # shuffle partitions of the set-wide rules; None: 2 per CPU of the cluster
    clip_actors: int = 1  # CLIP scoring actors (one model each; one GPU each when the cluster has GPUs)
    train_workers: int = 2  # Ray Train workers of a stage (launcher: ray), one process each
    use_gpu: bool = False  # one GPU per training worker
    max_failures: int = 1  # times a stage restarts its workers after one died (it resumes from its checkpoint)

    def __post_init__(self) -> None:
        _require(self.num_cpus is None or self.num_cpus > 0, f"ray.num_cpus must be > 0, got {self.num_cpus}")
        _require(self.train_workers > 0, f"ray.train_workers must be > 0, got {self.train_workers}")
        _require(self.max_failures >= 0, f"ray.max_failures must be >= 0, got {self.max_failures}")
        _require(self.partitions is None or self.partitions > 0, "ray.partitions must be > 0")
        _require(self.clip_actors > 0, f"ray.clip_actors must be > 0, got {self.clip_actors}")


def _local_engines() -> dict[str, str]:
    return {step: "local" for step in ENGINE_STEPS}


@dataclass
class InstructionFile:
    format: str  # alpaca | llava | owl
    path: str
    image_root: str | None = None

    def __post_init__(self) -> None:
        _require(self.format in ("alpaca", "llava", "owl"),
                 f"format must be alpaca, llava or owl, got {self.format!r}")


@dataclass
class PipelineConfig:
    """The whole pipeline (``params.yaml``). Relative paths are relative to the project folder."""

    assets_dir: str = "assets"
    raw_shards: str | None = None  # a folder of img2dataset shards; None generates shapes world
    instructions: list[InstructionFile] | None = None  # None uses shapes world's three files
    owleval_dir: str | None = None  # None uses shapes world's eval set
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    filters: FilterConfig = field(default_factory=FilterConfig.for_shapes_world)
    model: OwlConfig = field(default_factory=lambda: OwlConfig.from_name("tiny"))
    base_llm: BaseLLMConfig = field(default_factory=BaseLLMConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig.stage2_recipe)
    min_curated_rows: int = 100
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images (by their header) are skipped and counted
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    engine: dict[str, str] = field(default_factory=_local_engines)  # data step -> local | ray
    launcher: str = "local"  # training stages: local (this process, or torchrun/accelerate) | ray (Ray Train)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _require(self.launcher in ENGINES, f"launcher must be local or ray, got {self.launcher!r}")
        unknown = set(self.engine) - set(ENGINE_STEPS)
        _require(not unknown, f"engine: {sorted(unknown)} cannot run on Ray; the steps that can: {list(ENGINE_STEPS)}")
        bad = {step: engine for step, engine in self.engine.items() if engine not in ENGINES}
        _require(not bad, f"engine: {bad}; each step's engine is local or ray")
        self.engine = {**_local_engines(), **self.engine}
        if isinstance(self.model, dict):  # as the YAML spells it: a preset and overrides
            self.model = OwlConfig.from_dict(self.model, base=OwlConfig.from_name("tiny"))
        if self.instructions is not None:
            self.instructions = [f if isinstance(f, InstructionFile) else
                                 from_mapping(InstructionFile, f, f"instructions[{i}]")
                                 for i, f in enumerate(self.instructions)]
        _require(self.min_curated_rows >= 0, f"min_curated_rows must be >= 0, got {self.min_curated_rows}")
        _require(self.max_image_pixels > 0, f"max_image_pixels must be > 0, got {self.max_image_pixels}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        return from_mapping(cls, read_yaml(path), "params")

    def to_dict(self) -> dict[str, Any]:
        """Every value, the model section with its preset named (as params.yaml spells it)."""
        data = dataclasses.asdict(self)
        if self.model.name in PRESETS:
            data["model"] = {"preset": self.model.name, **data["model"]}
        return data
