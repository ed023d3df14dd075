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


def test_a_frozen_tower_remembers_each_pictures_output_and_runs_once_per_picture(monkeypatch):
    cfg = OwlConfig.from_name("tiny").vision
    vision = build_vision(cfg).eval().requires_grad_(False)
    pictures = torch.randn(5, 3, cfg.image_size, cfg.image_size)
    expected = vision(pictures)
    encoded = []
    original = vision._encode
    monkeypatch.setattr(vision, "_encode", lambda pixels: encoded.append(len(pixels)) or original(pixels))
    with vision.remembering_outputs(max_bytes=4 * expected[0].nbytes):
        first = vision(pictures[[0, 1, 2]])
        again = vision(pictures[[2, 0, 3, 4]])  # 0 and 2 remembered; 3 fits, 4 is over the limit
        last = vision(pictures[[4, 3]])
    assert encoded == [3, 2, 1]
    torch.testing.assert_close(torch.cat([first, again, last]), expected[[0, 1, 2, 2, 0, 3, 4, 4, 3]])
    vision(pictures[:1])
    assert encoded == [3, 2, 1, 1]  # outside the block nothing is remembered


def test_only_a_frozen_tower_remembers_outputs():
    import pytest

    vision = build_vision(OwlConfig.from_name("tiny").vision)
    with pytest.raises(ValueError, match="needs a frozen vision tower"):
        with vision.remembering_outputs(max_bytes=1 << 20):
            pass
