"""OwlModel: vision encoder + visual abstractor + LLM, composed (built elsewhere, in builders.py).

Each ``<image>`` of a prompt is expanded by the processor into ``num_image_tokens`` placeholder ids; here the
placeholders' embeddings are overwritten, in order, by the abstractor's output for the batch's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from owl_pipeline.config import OwlConfig
from owl_pipeline.constants import IGNORE_INDEX
from owl_pipeline.model.abstractor import VisualAbstractor
from owl_pipeline.model.vision import VisionEncoder


@dataclass
class OwlOutput:
    # (B, L, vocab); with labels only at ``positions_with_targets(labels)``: (B, K, vocab); None when the loss
    # was computed in chunks (OwlModel.loss_chunk_positions), which never holds all of them
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    num_target_tokens: int = 0


def positions_with_targets(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose next token is labelled in at least one row: (K,), sorted.

    Only these positions' logits enter the loss, so the LM head (and the fp32 logits of the loss) runs on
    them alone; image and prompt positions need none."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def padded_on_the_right_only(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens then padding (the training collate), never padding first."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, K, V), in fp32, against ``targets`` (B, K), summed over labelled targets."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of ``logits`` (B, K, V) against ``targets`` (B, K), the labels one position later.

    Divides by max(count, 1): a batch whose every label is masked (truncation can remove all answers)
    gives a loss of 0 with a valid graph instead of the NaN of a mean over nothing.
    """
    count = int((targets != IGNORE_INDEX).sum())
    return summed_cross_entropy(logits, targets) / max(count, 1), count


def _head_and_summed_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    return summed_cross_entropy(head(hidden), targets)


def chunked_causal_lm_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                           chunk: int) -> tuple[torch.Tensor, int]:
    """``causal_lm_loss(head(hidden), targets)`` with the LM head and its fp32 logits made ``chunk`` positions at a
    time and recomputed in backward (activation checkpointing), so logits never exist for the whole batch: at a
    32k vocabulary, 16 x 2048 positions of fp32 logits are 4.2 GB, a chunk of 256 positions 0.5 GB."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk):
        total = total + checkpoint(_head_and_summed_loss, hidden[:, start:start + chunk],
                                   targets[:, start:start + chunk], head, use_reentrant=False)
    count = int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1), count


class OwlModel(nn.Module):
    def __init__(self, vision: VisionEncoder, abstractor: VisualAbstractor, llm: nn.Module, image_token_id: int,
                 config: OwlConfig):
        super().__init__()
        self.config = config  # kept for set_trainable and save_pretrained; the modules hold their own sizes
        self.vision = vision
        self.abstractor = abstractor
        self.llm = llm
        self.image_token_id = image_token_id
        # Set by the training loop when several processes train: a text-only batch then still runs the image
        # side (at zero weight), so every rank's backward reaches the same parameters and DDP's all-reduce of
        # the abstractor's gradients neither waits forever nor finds unused parameters.
        self.image_side_every_step = False
        # Labelled positions per piece of the LM head and loss in training (chunked_causal_lm_loss); a batch with
        # at most this many is computed in one piece, as is every batch with None.
        self.loss_chunk_positions: int | None = None

    @property
    def num_image_tokens(self) -> int:
        return self.abstractor.num_output_tokens

    def image_side_trains(self) -> bool:
        return any(p.requires_grad for part in (self.vision, self.abstractor) for p in part.parameters())

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_image_tokens, D_llm). Without a graph when neither part trains (stage 2)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.image_side_trains()):
            return self.abstractor(self.vision(pixel_values))

    def _through_image_side(self, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds`` unchanged, but with the image side's graph (of one blank picture) added at zero weight."""
        size = self.vision.clip.config.image_size
        blank = torch.zeros(1, 3, size, size, device=embeds.device)
        return embeds + 0.0 * self.encode_images(blank).to(embeds.dtype).sum()

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every image placeholder replaced by its image's abstractor output."""
        is_image = input_ids == self.image_token_id  # (B, L)
        # The placeholder id may lie outside the LLM's vocabulary: embed id 0 there, it is overwritten below.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))  # (B, L, D)
        num_slots = int(is_image.sum())
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        if num_slots != num_images * self.num_image_tokens:
            raise ValueError(
                f"the batch has {num_slots} image placeholder tokens but {num_images} images x "
                f"{self.num_image_tokens} tokens per image = {num_images * self.num_image_tokens}; "
                "each <image> must be expanded by the processor and have exactly one image")
        if num_images == 0:
            if self.image_side_every_step and torch.is_grad_enabled() and self.image_side_trains():
                return self._through_image_side(embeds)
            return embeds
        image_embeds = self.encode_images(pixel_values).to(embeds.dtype)  # (N, T, D)
        return embeds.masked_scatter(is_image.unsqueeze(-1), image_embeds)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> OwlOutput:
        if labels is None:
            embeds = self.embed_inputs(input_ids, pixel_values)
            return OwlOutput(logits=self.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                                             use_cache=False).logits)
        # Both read small tensors back to the host: done before the image side is queued, the wait is short.
        positions = positions_with_targets(labels)
        if attention_mask is not None and padded_on_the_right_only(attention_mask):
            # Causal attention never lets a real token see the padding after it, so the mask changes nothing
            # the loss reads; without it SDPA takes its fused causal (flash) kernel instead of a masked one.
            attention_mask = None
        embeds = self.embed_inputs(input_ids, pixel_values)
        if self._loss_in_chunks(len(positions)):
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                            use_cache=False).last_hidden_state[:, positions]  # (B, K, D)
            loss, count = chunked_causal_lm_loss(hidden, self.llm.get_output_embeddings(), labels[:, positions + 1],
                                                 self.loss_chunk_positions)
            return OwlOutput(logits=None, loss=loss, num_target_tokens=count)
        logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                          logits_to_keep=positions).logits  # (B, K, V)
        loss, count = causal_lm_loss(logits, labels[:, positions + 1])
        return OwlOutput(logits=logits, loss=loss, num_target_tokens=count)

    def _loss_in_chunks(self, positions: int) -> bool:
        """Chunk the head and loss only for a plain causal LM head: one that post-processes its logits (Gemma's
        soft-capping) goes through the model's own forward."""
        chunk = self.loss_chunk_positions
        capped = getattr(self.llm.config, "final_logit_softcapping", None)
        return chunk is not None and positions > chunk and not capped

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, max_new_tokens: int = 512, do_sample: bool = False,
                 top_k: int = 3, **kwargs) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens). Greedy by default; ``do_sample=True`` uses the demo's top-k 3.

        Prompts in a batch must be left-padded (the processor's ``collate(..., padding_side="left")``).
        """
        embeds = self.embed_inputs(input_ids, pixel_values)
        sampling = {"do_sample": True, "top_k": top_k} if do_sample else {"do_sample": False}
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                 max_new_tokens=max_new_tokens, **sampling, **kwargs)
