"""Fixtures of the data tests: a tiny CLIP for similarity scoring."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from owl_pipeline.model.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = train_bpe_tokenizer(["a red circle on the left", "a blue square"] * 20, vocab_size=300)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
