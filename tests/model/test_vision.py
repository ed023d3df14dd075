import torch

from owl_pipeline.config import OwlConfig
from owl_pipeline.model.builders import build_vision


def test_every_token_goes_through_the_final_layernorm():
    cfg = OwlConfig.from_name("tiny").vision
    vision = build_vision(cfg).eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    out = vision(pixels)
    assert out.shape == (2, cfg.num_tokens, cfg.hidden_size)
    hf = vision.clip(pixel_values=pixels)
    torch.testing.assert_close(out, vision.clip.post_layernorm(hf.last_hidden_state))
    torch.testing.assert_close(out[:, 0], hf.pooler_output)  # transformers norms only this one
