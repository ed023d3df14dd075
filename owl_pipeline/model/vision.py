"""The vision encoder: a CLIP ViT whose every output token goes through the final LayerNorm."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

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
        self._memo: _OutputMemo | None = None

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._memo is not None:
            return self._memo.recall(pixel_values, self._encode)
        return self._encode(pixel_values)

    @contextlib.contextmanager
    def remembering_outputs(self, max_bytes: int) -> Iterator[None]:
        """Within: each picture's output is computed once and recalled after (up to ``max_bytes`` of outputs).
        Only for a frozen tower fed the same pixels for the same picture (no random crop or flip): then a
        stage that sees each picture many times runs the tower once per picture."""
        if any(p.requires_grad for p in self.parameters()):
            raise ValueError("remembering_outputs needs a frozen vision tower: its outputs would go stale")
        self._memo = _OutputMemo(max_bytes)
        try:
            yield
        finally:
            self._memo = None

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = getattr(self.clip, "vision_model", self.clip)  # transformers 4 nests the tower, 5 does not
        hidden = tower.embeddings(pixel_values)  # (N, 1 + P, D)
        hidden = tower.pre_layrnorm(hidden)
        hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
        return tower.post_layernorm(hidden)  # (N, 1 + P, D), all tokens normed


class _OutputMemo:
    """Tower outputs keyed by a digest of each picture's pixels (so any equal picture is a hit)."""

    def __init__(self, max_bytes: int):
        self.outputs: dict[bytes, torch.Tensor] = {}
        self.free_bytes = max_bytes

    @staticmethod
    def _key(pixels: torch.Tensor) -> bytes:
        return hashlib.blake2b(pixels.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()

    def recall(self, pixel_values: torch.Tensor, encode) -> torch.Tensor:
        keys = [self._key(p) for p in pixel_values]
        known = {k: self.outputs[k] for k in keys if k in self.outputs}
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            with torch.no_grad():
                fresh = encode(pixel_values[missing])
            for i, output in zip(missing, fresh):
                known[keys[i]] = output
                if self.free_bytes >= output.nbytes:
                    self.outputs[keys[i]], self.free_bytes = output, self.free_bytes - output.nbytes
        return torch.stack([known[k] for k in keys])


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
