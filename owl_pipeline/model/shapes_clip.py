"""The pieces of shapes world's CLIP pretraining that are not CLIP itself: the contrastive loss with hard
negatives, and per-column attribute heads on the vision tower's tokens (the per-object signal that teaches a
small tower to tell kinds apart; a contrastive loss alone leaves it at "which colors and columns", as CLIP's
bag-of-words weakness predicts). The heads are dropped after pretraining: only the CLIPModel ships."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def column_pooling(image_size: int, patch_size: int, columns: int) -> torch.Tensor:
    """(columns, patches) averaging weights: patch p belongs to the column its center falls in."""
    grid = image_size // patch_size
    centers = (torch.arange(grid) + 0.5) * patch_size  # x center of each patch column, in pixels
    column_of = (centers * columns / image_size).long().clamp(max=columns - 1)  # (grid,)
    member = (column_of[None, :] == torch.arange(columns)[:, None]).float()  # (columns, grid)
    weights = member[:, None, :].expand(columns, grid, grid).reshape(columns, grid * grid)  # rows x cols, row-major
    return weights / weights.sum(dim=1, keepdim=True)


class ColumnAttributeHeads(nn.Module):
    """Linear heads naming the kind and the color (or none) in each column from the mean of its patch tokens."""

    def __init__(self, hidden_size: int, num_kinds: int, num_colors: int, pooling: torch.Tensor):
        super().__init__()
        self.register_buffer("pooling", pooling, persistent=False)  # (C, P)
        self.kind = nn.Linear(hidden_size, num_kinds)
        self.color = nn.Linear(hidden_size, num_colors)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        columns = torch.einsum("cp,bpd->bcd", self.pooling, tokens[:, 1:])  # (B, C, D), CLS left out
        return self.kind(columns), self.color(columns)  # (B, C, kinds), (B, C, colors)

    def loss(self, tokens: torch.Tensor, kinds: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        kind_logits, color_logits = self(tokens)
        return (F.cross_entropy(kind_logits.flatten(0, 1), kinds.flatten())
                + F.cross_entropy(color_logits.flatten(0, 1), colors.flatten()))


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     negative_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the batch; ``negative_embeds`` (B, E), one wrong caption per image, join
    the image-to-text candidates."""
    image_embeds = F.normalize(image_embeds, dim=-1)
    candidates = F.normalize(text_embeds, dim=-1)
    if negative_embeds is not None:
        candidates = torch.cat([candidates, F.normalize(negative_embeds, dim=-1)])
    logits = logit_scale.exp() * image_embeds @ candidates.T  # (B, B or 2B)
    target = torch.arange(len(image_embeds), device=image_embeds.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :len(image_embeds)].T, target)) / 2
