"""CLIP image-text similarity for rows whose metadata lacks it (cosine of the projected embeddings)."""

from __future__ import annotations

import io

import lance
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from owl_pipeline.model.processor import ImageTransform


class ClipScorer:
    """A CLIP model (local path or hub id) scoring (image bytes, caption) pairs."""

    def __init__(self, name_or_path: str, batch_size: int = 64):
        self.model = CLIPModel.from_pretrained(name_or_path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.transform = ImageTransform(size=self.model.config.vision_config.image_size, train=False)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: list[bytes], captions: list[str]) -> np.ndarray:
        scores = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(Image.open(io.BytesIO(b)))
                                  for b in images[start:start + self.batch_size]])
            text = self.tokenizer(captions[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
            image_emb = self.model.get_image_features(pixel_values=pixels)
            text_emb = self.model.get_text_features(**text)
            image_emb = getattr(image_emb, "pooler_output", image_emb)
            text_emb = getattr(text_emb, "pooler_output", text_emb)
            scores.append(torch.nn.functional.cosine_similarity(image_emb, text_emb).numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def score_missing_similarity(dataset: lance.LanceDataset, table: pa.Table, missing: np.ndarray,
                             clip_model: str, log) -> np.ndarray:
    """The similarity column with its missing entries scored by ``clip_model``."""
    rows = np.flatnonzero(missing)
    log(f"filter: scoring CLIP similarity of {len(rows)} rows with {clip_model}")
    scorer = ClipScorer(clip_model)
    images = dataset.take(rows.tolist(), columns=["image"]).column("image").to_pylist()
    captions = table["caption"].take(rows).fill_null("").to_pylist()
    similarity = table["similarity"].to_numpy(zero_copy_only=False).astype(np.float32)
    similarity[rows] = scorer(images, captions)
    return similarity
