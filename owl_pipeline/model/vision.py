"""The vision encoder: a CLIP ViT whose every output token goes through the final LayerNorm."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from owl_pipeline.config import VisionConfig


class VisionEncoder(nn.Module):
    """Wraps transformers' CLIPVisionModel.

    transformers applies ``post_layernorm`` only to the pooled CLS output; mPLUG-Owl feeds all 257 tokens,
    normed, to the abstractor, so we apply it to the whole sequence here.
    """

    def __init__(self, clip: CLIPVisionModel):
        super().__init__()
        self.clip = clip

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = getattr(self.clip, "vision_model", self.clip)  # transformers 4 nests the tower, 5 does not
        hidden = tower.embeddings(pixel_values)  # (N, 1 + P, D)
        hidden = tower.pre_layrnorm(hidden)
        hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
        return tower.post_layernorm(hidden)  # (N, 1 + P, D), all tokens normed


def clip_config_from(cfg: VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
    )
