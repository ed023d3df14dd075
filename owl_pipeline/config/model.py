"""The model's configuration: vision encoder, visual abstractor, LLM, LoRA, and the named presets
(``OwlConfig.from_name``):
  tiny    a CPU-sized model, seconds per step, used by the embedded default and the tests
  owl-1b  CLIP ViT-L/14@224 + a 1.1B Llama (TinyLlama shape): our benchmark size
  owl-7b  the paper: CLIP ViT-L/14@224 + LLaMA-7B
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from owl_pipeline.config.loading import ConfigError, deep_merge, from_mapping, read_yaml, require

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
        require(self.image_size % self.patch_size == 0,
                f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})")
        require(self.hidden_size % self.num_heads == 0,
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
        require(self.num_queries > 0, f"abstractor.num_queries must be positive, got {self.num_queries}")
        require(self.hidden_size % self.num_heads == 0,
                f"abstractor.hidden_size ({self.hidden_size}) must be divisible by "
                f"abstractor.num_heads ({self.num_heads})")
        require(0.0 <= self.attention_dropout < 1.0,
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
        require(self.init_std > 0, f"llm.init_std must be > 0, got {self.init_std}")
        require(self.hidden_size % self.num_heads == 0,
                f"llm.hidden_size ({self.hidden_size}) must be divisible by llm.num_heads ({self.num_heads})")
        head_dim = self.hidden_size // self.num_heads
        require(head_dim % 2 == 0, f"llm.hidden_size / llm.num_heads = {head_dim} must be even (rotary embeddings)")
        require(self.num_heads % self.num_kv_heads == 0,
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
        require(self.r > 0, f"lora.r must be positive, got {self.r}")
        require(bool(self.target_modules), "lora.target_modules must name at least one module")


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
        require(self.abstractor.hidden_size == self.vision.hidden_size,
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
        return from_mapping(cls, deep_merge(start.to_dict(), data, path=f"{where}."), where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> OwlConfig:
        return cls.from_dict(read_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
