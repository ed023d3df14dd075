"""The official-checkpoint converter, both ways, on tiny checkpoints written here with the documented names."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from owl_pipeline.model.builders import (build_model, from_pretrained, processor_config_for, save_pretrained,
                                         set_trainable)
from owl_pipeline.model.convert import ConversionError, official_to_owl, owl_to_official, split_qkv
from owl_pipeline.model.processor import OwlProcessor

V_HIDDEN, V_HEADS, V_LAYERS, PATCH, IMAGE = 32, 4, 2, 8, 32
A_LAYERS, A_INTER, QUERIES = 2, 48, 5
TEXT = LlamaConfig(vocab_size=400, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)


def official_config() -> dict:
    return {"model_type": "mplug-owl", "num_query_tokens": QUERIES,
            "vision_config": {"hidden_size": V_HIDDEN, "intermediate_size": 64, "num_hidden_layers": V_LAYERS,
                              "num_attention_heads": V_HEADS, "image_size": IMAGE, "patch_size": PATCH,
                              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-6},
            "visual_abstractor_config": {"hidden_size": V_HIDDEN, "num_hidden_layers": A_LAYERS,
                                         "num_attention_heads": 4, "intermediate_size": A_INTER,
                                         "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-6,
                                         "encoder_hidden_size": V_HIDDEN},
            "text_config": TEXT.to_dict()}


def official_state(dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors under the official names and shapes (the issue's list), written out by hand."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    d, patches = V_HIDDEN, (IMAGE // PATCH) ** 2
    state = {"vision_model.embeddings.cls_token": rand(1, 1, d),
             "vision_model.embeddings.patch_embed.weight": rand(d, 3, PATCH, PATCH),
             "vision_model.embeddings.position_embedding": rand(1, patches + 1, d),
             "vision_model.post_layernorm.weight": rand(d), "vision_model.post_layernorm.bias": rand(d),
             "vision_model.embeddings.pre_layernorm.weight": rand(d),
             "vision_model.embeddings.pre_layernorm.bias": rand(d),
             "query_tokens": rand(1, QUERIES, d), "abstractor.vit_eos": rand(1, 1, TEXT.hidden_size),
             "abstractor.visual_fc.weight": rand(TEXT.hidden_size, d),
             "abstractor.visual_fc.bias": rand(TEXT.hidden_size)}
    for n in range(V_LAYERS):
        layer = f"vision_model.encoder.layers.{n}."
        shapes = {"input_layernorm": (d,), "post_attention_layernorm": (d,), "self_attn.dense": (d, d),
                  "self_attn.query_key_value": (3 * d, d), "mlp.fc1": (64, d), "mlp.fc2": (d, 64)}
        for name, shape in shapes.items():
            state[layer + name + ".weight"] = rand(*shape)
            state[layer + name + ".bias"] = rand(shape[0])
    for n in range(A_LAYERS):
        layer = f"abstractor.encoder.layers.{n}.crossattention."
        shapes = {"norm1": (d,), "normk": (d,), "attention.query": (d, d), "attention.key": (d, d),
                  "attention.value": (d, d), "output.out_proj": (d, d), "output.norm2": (d,),
                  "output.mlp.w1": (A_INTER, d), "output.mlp.w3": (A_INTER, d), "output.mlp.w2": (d, A_INTER),
                  "output.mlp.ffn_ln": (A_INTER,)}
        for name, shape in shapes.items():
            state[layer + name + ".weight"] = rand(*shape)
            state[layer + name + ".bias"] = rand(shape[0])
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    state.update({f"language_model.{k}": v.to(dtype) for k, v in LlamaForCausalLM(TEXT).state_dict().items()})
    return state


def write_official(folder, tokenizer, state, as_bin=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(official_config()))
    if as_bin:
        names = sorted(state)
        half = len(names) // 2
        for i, part in enumerate((names[:half], names[half:]), start=1):
            torch.save({k: state[k] for k in part}, folder / f"pytorch_model-0000{i}-of-00002.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def official(tmp_path, tokenizer):
    state = official_state()
    return write_official(tmp_path / "official", tokenizer, state), state


def test_every_tensor_lands_where_the_table_says(official, tmp_path):
    folder, state = official
    model, processor = from_pretrained(official_to_owl(folder, tmp_path / "owl", log=lambda *_: None))
    clip, d = model.vision.clip.state_dict(), V_HIDDEN
    torch.testing.assert_close(clip["embeddings.class_embedding"],
                               state["vision_model.embeddings.cls_token"].reshape(d))
    torch.testing.assert_close(clip["embeddings.position_embedding.weight"],
                               state["vision_model.embeddings.position_embedding"][0])
    torch.testing.assert_close(clip["pre_layrnorm.weight"], state["vision_model.embeddings.pre_layernorm.weight"])
    torch.testing.assert_close(clip["encoder.layers.1.layer_norm2.bias"],
                               state["vision_model.encoder.layers.1.post_attention_layernorm.bias"])
    torch.testing.assert_close(clip["encoder.layers.0.self_attn.out_proj.weight"],
                               state["vision_model.encoder.layers.0.self_attn.dense.weight"])
    abstractor = model.abstractor.state_dict()
    torch.testing.assert_close(abstractor["query_embeds"], state["query_tokens"])
    torch.testing.assert_close(abstractor["layers.1.mlp.ffn_ln.weight"],
                               state["abstractor.encoder.layers.1.crossattention.output.mlp.ffn_ln.weight"])
    torch.testing.assert_close(abstractor["layers.0.normk.bias"],
                               state["abstractor.encoder.layers.0.crossattention.normk.bias"])
    llm = model.llm.state_dict()
    torch.testing.assert_close(llm["model.layers.1.self_attn.k_proj.weight"],
                               state["language_model.model.layers.1.self_attn.k_proj.weight"])
    assert model.config.abstractor.num_queries == QUERIES and model.num_image_tokens == QUERIES + 1
    assert processor.config.image_size == IMAGE and model.config.vision.layer_norm_eps == 1e-6


def test_fused_qkv_is_split_per_head_not_contiguously(official, tmp_path):
    folder, state = official
    model, _ = from_pretrained(official_to_owl(folder, tmp_path / "owl", log=lambda *_: None))
    fused = state["vision_model.encoder.layers.0.self_attn.query_key_value.weight"]
    per_head = fused.reshape(V_HEADS, 3, V_HIDDEN // V_HEADS, V_HIDDEN)  # (head, {q,k,v}, head_dim, in)
    clip = model.vision.clip.state_dict()
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        torch.testing.assert_close(clip[f"encoder.layers.0.self_attn.{name}.weight"],
                                   per_head[:, i].reshape(V_HIDDEN, V_HIDDEN))
    # The contiguous [q; k; v] reading differs: this test would catch it.
    assert not torch.equal(clip["encoder.layers.0.self_attn.q_proj.weight"], fused[:V_HIDDEN])


def official_vision_attention(x, fused_weight, fused_bias, dense_weight, dense_bias, heads):
    """The official vision attention written out: the fused projection reshaped to (B, S, H, 3, hd)."""
    b, s, d = x.shape
    mixed = (x @ fused_weight.T + fused_bias).reshape(b, s, heads, 3, d // heads).permute(3, 0, 2, 1, 4)
    q, k, v = mixed[0], mixed[1], mixed[2]
    probs = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    return (probs @ v).permute(0, 2, 1, 3).reshape(b, s, d) @ dense_weight.T + dense_bias


def test_converted_attention_computes_what_the_official_one_does(official, tmp_path):
    folder, state = official
    model, _ = from_pretrained(official_to_owl(folder, tmp_path / "owl", log=lambda *_: None))
    layer = model.vision.clip.vision_model.encoder.layers[0] if hasattr(model.vision.clip, "vision_model") \
        else model.vision.clip.encoder.layers[0]
    x = torch.randn(2, 17, V_HIDDEN)
    prefix = "vision_model.encoder.layers.0.self_attn."
    expected = official_vision_attention(x, state[prefix + "query_key_value.weight"],
                                         state[prefix + "query_key_value.bias"], state[prefix + "dense.weight"],
                                         state[prefix + "dense.bias"], V_HEADS)
    torch.testing.assert_close(layer.self_attn(x)[0], expected, rtol=1e-5, atol=1e-5)
    assert split_qkv(state[prefix + "query_key_value.bias"], V_HEADS)[0].shape == (V_HIDDEN,)


def test_bin_shards_load_with_weights_only_and_dtype_is_kept(tmp_path, tokenizer):
    state = official_state(torch.bfloat16)
    folder = write_official(tmp_path / "official", tokenizer, state, as_bin=True)
    out = official_to_owl(folder, tmp_path / "owl", log=lambda *_: None)
    vision = load_file(str(next((out / "vision").glob("*.safetensors"))))
    assert {t.dtype for t in vision.values()} == {torch.bfloat16}
    assert load_file(str(out / "abstractor.safetensors"))["query_embeds"].dtype == torch.bfloat16


def test_a_bin_that_needs_more_than_weights_only_is_refused(tmp_path, tokenizer):
    folder = write_official(tmp_path / "official", tokenizer, official_state(), as_bin=True)
    torch.save({"weights": official_state(), "trainer": ConversionError("arbitrary object")},
               folder / "pytorch_model-00001-of-00002.bin")
    with pytest.raises(ConversionError, match="weights_only"):
        official_to_owl(folder, tmp_path / "owl", log=lambda *_: None)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_unmapped_or_missing_keys_are_named(tmp_path, tokenizer, change):
    state = official_state()
    if change == "extra":
        state["vision_model.encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
        expected = "self_attn.rotary.weight"
    else:
        del state["abstractor.encoder.layers.1.crossattention.normk.bias"]
        expected = "layers.1.crossattention.normk.bias"
    folder = write_official(tmp_path / "official", tokenizer, state)
    with pytest.raises(ConversionError, match=expected):
        official_to_owl(folder, tmp_path / "owl", log=lambda *_: None)


def test_owl_to_official_to_owl_is_bit_exact_with_the_adapter_merged(tmp_path, tokenizer, tiny_config):
    processor = OwlProcessor(tokenizer, processor_config_for(tiny_config))
    torch.manual_seed(0)
    model = build_model(tiny_config, processor)
    set_trainable(model, 2)
    with torch.no_grad():  # a trained-looking adapter, so merging changes the LLM
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    ours = save_pretrained(model, processor, tmp_path / "ours")
    official = owl_to_official(ours, tmp_path / "official", max_shard_bytes=200_000, log=lambda *_: None)
    assert (official / "model.safetensors.index.json").is_file() and (official / "tokenizer.json").is_file()
    config = json.loads((official / "config.json").read_text())
    assert config["num_query_tokens"] == tiny_config.abstractor.num_queries
    back, _ = from_pretrained(official_to_owl(official, tmp_path / "back", log=lambda *_: None))
    merged, _ = from_pretrained(save_pretrained(model, processor, tmp_path / "merged", merge_lora=True))
    expected, got = merged.state_dict(), back.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


@pytest.mark.parametrize("preset", ["tiny", "owl-1b", "owl-7b"])
def test_vision_layer_norms_use_the_official_eps(preset):
    from owl_pipeline.config import OwlConfig
    from owl_pipeline.model.builders import build_vision

    config = OwlConfig.from_name(preset)
    assert config.vision.layer_norm_eps == 1e-6
    if preset == "tiny":
        norms = [m for m in build_vision(config.vision).modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and {m.eps for m in norms} == {1e-6}
