"""`owl pretrain-vision`: the embedded default's vision encoder, pretrained from a seed as a tiny CLIP (transformers
``CLIPModel``: the shapes-world ViT and a small text tower over a word-level tokenizer of the caption words) on an
unlimited stream of fresh scenes (data/scene_stream.py), then saved as a standard ``CLIPModel.save_pretrained``
folder (safetensors, tokenizer) with a manifest (seed, settings, time, learning curve, sha256 of every file).

The loss: CLIP's contrastive loss, with each image's caption with one kind swapped as a hard negative, plus
per-column attribute heads on the tower's tokens (model/shapes_clip.py). The contrastive loss alone does not
teach a small tower kinds (measured: a linear probe stays at the random tower's 0.55); the per-object signal
does, after a few hundred steps. The heads are dropped: the pipeline loads the tower with
``CLIPVisionModel.from_pretrained`` as it would a real CLIP, and the filter scores captions with the whole CLIP.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast, get_cosine_with_min_lr_schedule_with_warmup

from owl_pipeline.config import VisionPretrainConfig
from owl_pipeline.data import scenes
from owl_pipeline.data.scene_stream import COLORS, KINDS, SceneBatch, pretraining_rng, scene_batch
from owl_pipeline.data.synthetic import CAPTION_TEMPLATES
from owl_pipeline.manifest import write_manifest
from owl_pipeline.model.processor import ImageTransform
from owl_pipeline.model.shapes_clip import ColumnAttributeHeads, column_pooling, contrastive_loss
from owl_pipeline.model.vision import VisionEncoder, clip_config_from

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
HELD_OUT_SCENES = 256


@dataclass
class VisionPretrainResult:
    folder: Path
    seconds: float
    scores: dict[str, float]  # the last held-out check
    curve: list[dict] = field(default_factory=list)  # held-out checks against steps


def caption_words() -> list[str]:
    """Every word a shapes-world caption (any template) can hold."""
    words = {*scenes.SHAPES, *scenes.COLORS, *scenes.COLUMNS, "a", "an", "on", "the", "in", "and"}
    for template in CAPTION_TEMPLATES:
        words.update(template.replace("{}", " ").replace(",", " ").split())
    return sorted(words)


def caption_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lowercased, one token per caption word (other words are <unk>), ``</s>`` appended: CLIP's
    text tower pools the hidden state at the first EOS."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, ",", *caption_words()])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    core.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def build_clip(config: VisionPretrainConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    text = config.text
    clip_config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text.hidden_size, num_hidden_layers=text.num_layers,
                         num_attention_heads=text.num_heads, intermediate_size=text.intermediate_size,
                         max_position_embeddings=text.max_positions, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id),
        vision_config=clip_config_from(config.vision).to_dict(), projection_dim=config.projection_dim)
    return CLIPModel(clip_config)


class _Batches:
    """Scene batches as tensors: pixels, tokenized captions (true, then swapped) and column labels."""

    def __init__(self, config: VisionPretrainConfig, tokenizer: PreTrainedTokenizerFast):
        self.config, self.tokenizer = config, tokenizer
        self.transform = ImageTransform(size=config.vision.image_size, train=False)

    def tensors(self, batch: SceneBatch) -> dict[str, torch.Tensor]:
        text = self.tokenizer(batch.captions + batch.swapped_captions, padding=True, truncation=True,
                              max_length=self.config.text.max_positions, return_tensors="pt")
        return dict(pixels=torch.stack([self.transform(image) for image in batch.images]),
                    input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    kinds=torch.from_numpy(batch.kinds), colors=torch.from_numpy(batch.colors))


def _forward(clip: CLIPModel, batch: dict[str, torch.Tensor]):
    """Image embeddings, text embeddings (true captions, then swapped ones) and the tower's normed tokens."""
    tokens = VisionEncoder(clip)(batch["pixels"])  # (B, 1 + P, D): what the abstractor will read
    image_embeds = clip.visual_projection(tokens[:, 0])  # CLIP's pooled output is the normed CLS token
    text = clip.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return image_embeds, clip.text_projection(text.pooler_output), tokens


def _loss(clip, heads, batch, config: VisionPretrainConfig) -> torch.Tensor:
    image_embeds, text_embeds, tokens = _forward(clip, batch)
    true, swapped = text_embeds.chunk(2)
    loss = contrastive_loss(image_embeds, true, clip.logit_scale, swapped if config.hard_negatives else None)
    if config.attribute_loss_weight:
        loss = loss + config.attribute_loss_weight * heads.loss(tokens, batch["kinds"], batch["colors"])
    return loss


@torch.no_grad()
def held_out_scores(clip, heads, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The heads' kind and color accuracy over every column, "none" for an empty one included (telling where the
    objects are but no kind scores 0.5; bench/vision_probe.py scores objects alone), and zero-shot retrieval: how
    often an image is closer to its caption than to the same caption with one kind swapped (chance 0.5)."""
    clip.eval()
    image_embeds, text_embeds, tokens = _forward(clip, batch)
    kind_logits, color_logits = heads(tokens)
    true, swapped = torch.nn.functional.normalize(text_embeds, dim=-1).chunk(2)
    image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
    closer = (image_embeds * true).sum(-1) > (image_embeds * swapped).sum(-1)
    clip.train()
    def accuracy(right: torch.Tensor) -> float:
        return round(float(right.float().mean()), 4)

    return {"head_kind": accuracy(kind_logits.argmax(-1) == batch["kinds"]),
            "head_color": accuracy(color_logits.argmax(-1) == batch["colors"]),
            "swap_retrieval": accuracy(closer)}


def pretrain_vision(output: str | Path, config: VisionPretrainConfig | None = None,
                    log: Callable[[str], None] = print) -> VisionPretrainResult:
    """Train the tiny CLIP on fresh scenes and write ``output`` (CLIPModel folder + tokenizer + manifest)."""
    config = config or VisionPretrainConfig()
    output, started = Path(output), time.perf_counter()
    torch.manual_seed(config.seed)
    tokenizer = caption_tokenizer()
    clip = build_clip(config, tokenizer)
    pooling = column_pooling(config.vision.image_size, config.vision.patch_size, len(scenes.COLUMNS))
    heads = ColumnAttributeHeads(config.vision.hidden_size, len(KINDS), len(COLORS), pooling)
    parameters = [*clip.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, config.warmup_steps, config.steps,
                                                           min_lr_rate=config.min_lr / config.lr)
    batches, rng = _Batches(config, tokenizer), pretraining_rng(config.seed)
    held_out = batches.tensors(scene_batch(np.random.default_rng([config.seed, 1001]), HELD_OUT_SCENES,
                                           config.vision.image_size))
    curve: list[dict] = []
    clip.train()
    for step in range(1, config.steps + 1):
        loss = _loss(clip, heads, batches.tensors(scene_batch(rng, config.batch_size, config.vision.image_size)),
                     config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if (config.probe_every and step % config.probe_every == 0) or step == config.steps:
            minutes = round((time.perf_counter() - started) / 60, 2)
            point = {"step": step, "loss": round(loss.item(), 4), "minutes": minutes,
                     **held_out_scores(clip, heads, held_out)}
            curve.append(point)
            log(f"pretrain-vision: {point}")
    output.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(output)
    tokenizer.save_pretrained(output)
    seconds = time.perf_counter() - started
    write_manifest(output, {"seed": config.seed, "config": dataclasses.asdict(config), "seconds": round(seconds, 1),
                            "held_out": curve[-1], "curve": curve})
    return VisionPretrainResult(output, seconds, curve[-1], curve)
