"""The training's configuration: one loop run (StageConfig, stage 1's and stage 2's recipes), the embedded
default's base LLM, and the two pretraining recipes of shapes world (`owl pretrain-llm`, `owl pretrain-vision`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from owl_pipeline.config.loading import require
from owl_pipeline.config.model import LLMConfig, VisionConfig

LR_SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adamw_hf")


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
    # After a linear warmup from 0: "cosine" down to min_lr, "linear" down to 0 (the HF Trainer's default), or
    # "constant"; at schedule_steps (null: max_steps), the schedule's horizon where a recipe sets its own.
    lr_schedule: str = "cosine"
    schedule_steps: int | None = None
    # "adamw": torch's AdamW; "adamw_hf": the AdamW transformers 4.x shipped and its Trainer used by default (the
    # official recipe's): eps added to sqrt(v) before the bias correction, weight decay applied after the update.
    optimizer: str = "adamw"
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
    # The LM head and the fp32 loss in pieces of this many labelled positions, recomputed in backward, when a batch
    # has more (long stage-2 answers): the full (batch, positions, vocab) fp32 logits never exist. null: one piece.
    loss_chunk_positions: int | None = 256
    # Compiled runs: padded lengths rounded up to a multiple of this (null: to the longest sample). Dynamo's
    # automatic dynamic shapes already bound the graphs a varying length compiles (tests/train/test_fast_paths.py);
    # aligned lengths are for kernels that want them.
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        require(self.max_steps >= 0 and self.batch_size > 0 and self.grad_accum > 0,
                "max_steps must be >= 0 (0: no training, the input model is passed on), batch_size and grad_accum "
                "positive")
        require(self.lr > 0 and 0 <= self.min_lr <= self.lr,
                f"lr must be > 0 and min_lr within [0, lr]; got lr {self.lr}, min_lr {self.min_lr}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                f"betas must be two numbers in [0, 1), got {self.betas}")
        require(self.weight_decay >= 0 and self.vision_lr_scale >= 0,
                "weight_decay and vision_lr_scale must be >= 0")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")
        require(self.eval_every >= 0 and min(self.eval_batches, self.save_every, self.log_every) >= 1,
                "eval_every must be >= 0; eval_batches, save_every and log_every >= 1")
        require(self.num_workers is None or self.num_workers >= 0, "num_workers must be >= 0 or null")
        require(self.max_steps == 0 or 0 <= self.warmup_steps <= self.max_steps,
                f"warmup_steps ({self.warmup_steps}) must be within [0, max_steps={self.max_steps}]")
        require(self.lr_schedule in LR_SCHEDULES,
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        require(self.schedule_steps is None or self.schedule_steps >= max(self.warmup_steps, 1),
                f"schedule_steps must be null or at least warmup_steps ({self.warmup_steps}) and 1, "
                f"got {self.schedule_steps}")
        require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                                              f"got {self.optimizer!r}")
        require(self.compile in (True, False, "auto"), f"compile must be auto, true or false, got {self.compile!r}")
        require(self.mixed_precision in ("auto", "no", "bf16", "fp16"),
                f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        require(self.text_only_fraction is None or 0.0 <= self.text_only_fraction <= 1.0,
                f"text_only_fraction must be in [0, 1], got {self.text_only_fraction}")
        require(self.keep_last >= 1, f"keep_last must be at least 1, got {self.keep_last}")
        require(self.vision_memo_mib >= 0, f"vision_memo_mib must be >= 0, got {self.vision_memo_mib}")
        require(self.pad_to_multiple_of is None or self.pad_to_multiple_of > 0,
                f"pad_to_multiple_of must be > 0 or null, got {self.pad_to_multiple_of}")
        require(self.loss_chunk_positions is None or self.loss_chunk_positions > 0,
                f"loss_chunk_positions must be > 0 or null, got {self.loss_chunk_positions}")
        require(not (self.group_by_length and self.text_only_fraction is not None),
                "group_by_length and text_only_fraction cannot be combined (pick one sampler)")

    @property
    def horizon(self) -> int:
        """The step the schedule ends at (its decay reaches the floor there)."""
        return self.max_steps if self.schedule_steps is None else self.schedule_steps

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
        require(bool(self.mix) and all(w > 0 for w in self.mix.values()), "a phase's mix needs positive weights")
        require(self.steps > 0 and self.batch_size > 0 and self.lr > 0, "phase steps, batch_size, lr must be > 0")


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
        require(self.steps > 0 and self.batch_size > 1, "vision pretraining: steps > 0 and batch_size > 1")
        require(self.attribute_loss_weight >= 0, "vision pretraining: attribute_loss_weight must be >= 0")
