import torch
import torch.nn.functional as F

from owl_pipeline.config import AbstractorConfig
from owl_pipeline.model.abstractor import VisualAbstractor

CFG = AbstractorConfig(num_queries=64, num_layers=2, num_heads=4, hidden_size=32, intermediate_size=48,
                       attention_dropout=0.1)


def make_abstractor():
    torch.manual_seed(0)
    return VisualAbstractor(CFG, llm_hidden_size=24).eval()


def official_norm(norm, x, eps):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, eps=eps)


def reference_layer(layer, queries, visual):
    """The official layer written out by hand: one softmax over [normed queries; normed visual tokens].
    norm1, normk and norm2 are built without an eps there (1e-5); only ffn_ln uses the config's 1e-6."""
    q = official_norm(layer.norm1, queries, 1e-5)
    context = torch.cat([q, official_norm(layer.normk, visual, 1e-5)], dim=1)
    att = layer.attention
    n, h = q.shape[0], att.num_heads
    split = lambda x: x.view(n, x.shape[1], h, -1).transpose(1, 2)  # noqa: E731
    qh, kh, vh = split(att.query(q)), split(att.key(context)), split(att.value(context))
    probs = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
    attn = (probs @ vh).transpose(1, 2).reshape(n, q.shape[1], -1)
    x = q + layer.out_proj(attn)
    normed = official_norm(layer.norm2, x, 1e-5)
    inner = official_norm(layer.mlp.ffn_ln, F.silu(layer.mlp.w1(normed)) * layer.mlp.w3(normed), 1e-6)
    return x + layer.mlp.w2(inner)


def test_sixty_five_llm_tokens_per_image():
    out = make_abstractor()(torch.randn(3, 17, 32))
    assert out.shape == (3, 65, 24)


def test_queries_start_at_zero_as_in_the_official_code():
    assert not make_abstractor().query_embeds.any()


def test_matches_the_official_layer_written_out():
    abstractor = make_abstractor()
    # Small activations, where the LayerNorm eps matters (1e-5 vs 1e-6 moves the output by far more than 1e-5).
    with torch.no_grad():
        abstractor.query_embeds.normal_(std=3e-3)
    visual = torch.randn(2, 17, 32) * 3e-3
    x = abstractor.query_embeds.expand(2, -1, -1)
    for layer in abstractor.layers:
        x = reference_layer(layer, x, visual)
    expected = torch.cat([abstractor.visual_fc(x), abstractor.vit_eos.expand(2, -1, -1)], dim=1)
    torch.testing.assert_close(abstractor(visual), expected, rtol=1e-5, atol=1e-5)


def test_no_positional_information_on_visual_tokens():
    abstractor = make_abstractor()
    visual = torch.randn(1, 17, 32)
    shuffled = visual[:, torch.randperm(17)]
    torch.testing.assert_close(abstractor(visual), abstractor(shuffled), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(abstractor(visual), abstractor(torch.randn(1, 17, 32)))


def test_vit_eos_is_the_last_token_whatever_the_image():
    abstractor = make_abstractor()
    out = abstractor(torch.randn(2, 17, 32))
    torch.testing.assert_close(out[:, -1], abstractor.vit_eos[0].expand(2, -1))


def test_attention_dropout_only_in_training():
    abstractor = make_abstractor()
    visual = torch.randn(1, 17, 32)
    torch.testing.assert_close(abstractor(visual), abstractor(visual))
    abstractor.train()
    torch.manual_seed(1)
    first = abstractor(visual)
    assert not torch.allclose(first, abstractor(visual))
