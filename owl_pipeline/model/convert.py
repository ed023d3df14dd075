"""Convert between the released mPLUG-Owl checkpoints and this project's model folder, both ways.

The official layout (X-PLUG/mPLUG-Owl, ``MplugOwlForConditionalGeneration``): ``config.json`` with
``vision_config``, ``visual_abstractor_config``, ``text_config`` and ``num_query_tokens``; weights as
safetensors or ``pytorch_model*.bin`` shards; a LLaMA tokenizer beside them. Ours: the one folder that
``builders.save_pretrained`` writes.

The name table below is the whole mapping. Two tensors change shape or layout:
- the vision attention's fused ``query_key_value`` holds its output features per head as (head, {q,k,v},
  head_dim), so it is split and merged through that view, never as contiguous [q; k; v];
- ``cls_token`` (1, 1, D) and ``position_embedding`` (1, P + 1, D) are CLIP's (D,) and (P + 1, D).
Loading is strict: a key the table does not map, or one it expects and does not find, is an error naming them.
Tensors keep their dtype. ``.bin`` shards are read with ``torch.load(weights_only=True)`` and refused if they
need more than that (a full unpickle could run code).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, LlamaConfig

from owl_pipeline.config import AbstractorConfig, LLMConfig, OwlConfig, VisionConfig
from owl_pipeline.constants import ABSTRACTOR_WEIGHTS_FILE, LLM_DIR, OWL_CONFIG_FILE, PROCESSOR_DIR, VISION_DIR
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.model.vision import clip_config_from

OFFICIAL_CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
MAX_SHARD_BYTES = 5 * 1024**3  # HF's default shard size


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file or the keys."""


# --- the name table ---------------------------------------------------------------------------------------
# (ours, official) with {n} a layer index. Ours: vision keys relative to CLIPVisionModel, abstractor keys
# relative to VisualAbstractor, LLM keys relative to the causal LM.
_VISION_LAYER = [("layer_norm1", "input_layernorm"), ("self_attn.out_proj", "self_attn.dense"),
                 ("layer_norm2", "post_attention_layernorm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
_ABSTRACTOR_LAYER = [("norm1", "crossattention.norm1"), ("normk", "crossattention.normk"),
                     ("attention.query", "crossattention.attention.query"),
                     ("attention.key", "crossattention.attention.key"),
                     ("attention.value", "crossattention.attention.value"),
                     ("out_proj", "crossattention.output.out_proj"), ("norm2", "crossattention.output.norm2"),
                     ("mlp.w1", "crossattention.output.mlp.w1"), ("mlp.w2", "crossattention.output.mlp.w2"),
                     ("mlp.w3", "crossattention.output.mlp.w3"), ("mlp.ffn_ln", "crossattention.output.mlp.ffn_ln")]
_SUFFIXES = ("weight", "bias")
_VISION_PREFIX, _ABSTRACTOR_PREFIX, _LLM_PREFIX = "vision_model.", "abstractor.", "language_model."


def vision_name_table(num_layers: int) -> dict[str, str]:
    """Ours -> official for every vision tensor except the fused attention (see ``_split_qkv``)."""
    table = {"embeddings.class_embedding": "vision_model.embeddings.cls_token",
             "embeddings.patch_embedding.weight": "vision_model.embeddings.patch_embed.weight",
             "embeddings.position_embedding.weight": "vision_model.embeddings.position_embedding"}
    for suffix in _SUFFIXES:
        table[f"pre_layrnorm.{suffix}"] = f"vision_model.embeddings.pre_layernorm.{suffix}"
        table[f"post_layernorm.{suffix}"] = f"vision_model.post_layernorm.{suffix}"
        for n in range(num_layers):
            for ours, official in _VISION_LAYER:
                table[f"encoder.layers.{n}.{ours}.{suffix}"] = f"vision_model.encoder.layers.{n}.{official}.{suffix}"
    return table


def abstractor_name_table(num_layers: int) -> dict[str, str]:
    table = {"query_embeds": "query_tokens", "vit_eos": "abstractor.vit_eos"}
    for suffix in _SUFFIXES:
        table[f"visual_fc.{suffix}"] = f"abstractor.visual_fc.{suffix}"
        for n in range(num_layers):
            for ours, official in _ABSTRACTOR_LAYER:
                table[f"layers.{n}.{ours}.{suffix}"] = f"abstractor.encoder.layers.{n}.{official}.{suffix}"
    return table


def _qkv_name(n: int, suffix: str) -> str:
    return f"vision_model.encoder.layers.{n}.self_attn.query_key_value.{suffix}"


def split_qkv(fused: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official fused q/k/v (3D, ...) laid out per head as (head, {q,k,v}, head_dim) -> q, k, v (D, ...)."""
    rest = fused.shape[1:]
    per_head = fused.reshape(num_heads, 3, fused.shape[0] // (3 * num_heads), *rest)
    return tuple(per_head[:, i].reshape(-1, *rest).contiguous() for i in range(3))


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of ``split_qkv``."""
    rest = q.shape[1:]
    heads = [t.reshape(num_heads, -1, *rest) for t in (q, k, v)]
    return torch.stack(heads, dim=1).reshape(-1, *rest).contiguous()


# --- configs ----------------------------------------------------------------------------------------------
def owl_config_from_official(config: dict) -> OwlConfig:
    """Our OwlConfig from an official ``config.json`` (its vision, abstractor and text sections)."""
    try:
        vision, abstractor, text = config["vision_config"], config["visual_abstractor_config"], config["text_config"]
        return OwlConfig(
            name=config.get("_name_or_path") or "mplug-owl",
            vision=VisionConfig(image_size=vision["image_size"], patch_size=vision["patch_size"],
                                hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
                                num_heads=vision["num_attention_heads"], intermediate_size=vision["intermediate_size"],
                                hidden_act=vision.get("hidden_act", "quick_gelu"),
                                layer_norm_eps=vision.get("layer_norm_eps", 1e-6)),
            abstractor=AbstractorConfig(num_queries=config["num_query_tokens"],
                                        num_layers=abstractor["num_hidden_layers"],
                                        num_heads=abstractor["num_attention_heads"],
                                        hidden_size=abstractor["hidden_size"],
                                        intermediate_size=abstractor["intermediate_size"],
                                        attention_dropout=abstractor.get("attention_probs_dropout_prob", 0.1),
                                        layer_norm_eps=abstractor.get("layer_norm_eps", 1e-6)),
            llm=LLMConfig.from_hf_dict(text),
        )
    except KeyError as missing:
        raise ConversionError(f"official config.json lacks {missing}") from None


def official_config_from(config: OwlConfig, text_config: dict) -> dict:
    """An official ``config.json`` for ``config``; ``text_config`` is the LLM's own (a LlamaConfig dict)."""
    vision, abstractor = config.vision, config.abstractor
    return {
        "architectures": ["MplugOwlForConditionalGeneration"], "model_type": "mplug-owl",
        "num_query_tokens": abstractor.num_queries,
        "vision_config": {"model_type": "mplug_owl_vision_model", "hidden_size": vision.hidden_size,
                          "intermediate_size": vision.intermediate_size,
                          "num_hidden_layers": vision.num_layers, "num_attention_heads": vision.num_heads,
                          "image_size": vision.image_size, "patch_size": vision.patch_size,
                          "hidden_act": vision.hidden_act, "layer_norm_eps": vision.layer_norm_eps,
                          "num_channels": 3},
        "visual_abstractor_config": {"model_type": "mplug_owl_visual_abstract", "hidden_size": abstractor.hidden_size,
                                     "num_hidden_layers": abstractor.num_layers,
                                     "num_attention_heads": abstractor.num_heads,
                                     "intermediate_size": abstractor.intermediate_size,
                                     "attention_probs_dropout_prob": abstractor.attention_dropout,
                                     "layer_norm_eps": abstractor.layer_norm_eps,
                                     "encoder_hidden_size": vision.hidden_size},
        "text_config": text_config,
    }


# --- reading and writing weights --------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"no weights in {folder}: expected *.safetensors or pytorch_model*.bin shards")
    return files


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the unpickler's errors vary; all mean "not a plain state dict"
        raise ConversionError(f"{path} needs more than weights_only loading (it could run code when "
                              f"unpickled); refusing it. Convert it to safetensors where you trust it. ({error})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} is not a plain state dict of tensors")
    return state


def read_official_weights(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        shard = load_file(str(path)) if path.suffix == ".safetensors" else _load_bin(path)
        state.update(shard)
    return state


def write_sharded_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> list[Path]:
    """HF's layout: ``model.safetensors``, or numbered shards and ``model.safetensors.index.json``."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return [folder / "model.safetensors"]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update({name: path.name for name in shard})
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths


def _check_keys(expected: set[str], found: set[str], where: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ConversionError(f"{where}: the checkpoint does not match the name table; "
                              f"missing {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
                              f"unexpected (unmapped) {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")


# --- official -> ours -------------------------------------------------------------------------------------
def _vision_from_official(state: dict[str, torch.Tensor], config: OwlConfig) -> dict[str, torch.Tensor]:
    vision = config.vision
    ours = {name: state[official] for name, official in vision_name_table(vision.num_layers).items()}
    ours["embeddings.class_embedding"] = ours["embeddings.class_embedding"].reshape(-1)
    ours["embeddings.position_embedding.weight"] = ours["embeddings.position_embedding.weight"].reshape(
        -1, vision.hidden_size)
    for n in range(vision.num_layers):
        for suffix in _SUFFIXES:
            q, k, v = split_qkv(state[_qkv_name(n, suffix)], vision.num_heads)
            for proj, tensor in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                ours[f"encoder.layers.{n}.self_attn.{proj}.{suffix}"] = tensor
    return ours


def _expected_official_keys(config: OwlConfig, llm_keys: set[str]) -> set[str]:
    qkv = {_qkv_name(n, s) for n in range(config.vision.num_layers) for s in _SUFFIXES}
    return (set(vision_name_table(config.vision.num_layers).values()) | qkv
            | set(abstractor_name_table(config.abstractor.num_layers).values())
            | {_LLM_PREFIX + key for key in llm_keys})


def _llm_keys(text_config: dict) -> set[str]:
    """The state-dict keys of the LLM ``text_config`` describes, from a meta-device build (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**_without_model_type(text_config)))
    return set(model.state_dict())


def _without_model_type(text_config: dict) -> dict:
    return {k: v for k, v in text_config.items() if k not in ("model_type", "architectures", "transformers_version")}


def _save_module(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], folder: Path) -> None:
    """Build a transformers model on the meta device, adopt ``state`` as its tensors (dtype kept), save it."""
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(folder)


def official_to_owl(source: str | Path, output: str | Path, log: Callable[[str], None] = print,
                    settings: OwlConfig | None = None) -> Path:
    """Convert an official mPLUG-Owl checkpoint folder into our model folder (loadable by ``from_pretrained``).
    ``settings`` (a pipeline's model config) gives what the checkpoint does not fix: LoRA, stage-2 training."""
    source, output = Path(source), Path(output)
    config_file = source / OFFICIAL_CONFIG_FILE
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found: {source} is not an official mPLUG-Owl checkpoint")
    official = json.loads(config_file.read_text())
    config = owl_config_from_official(official)
    if settings is not None:
        config.lora, config.train_abstractor_in_stage2 = settings.lora, settings.train_abstractor_in_stage2
    state = read_official_weights(source)
    llm_keys = _llm_keys(official["text_config"])
    _check_keys(_expected_official_keys(config, llm_keys), set(state), str(source))
    output.mkdir(parents=True, exist_ok=True)
    vision_state = _vision_from_official(state, config)
    _save_module(lambda: CLIPVisionModel(clip_config_from(config.vision)), vision_state, output / VISION_DIR)
    table = abstractor_name_table(config.abstractor.num_layers)
    abstractor = {ours: state[official] for ours, official in table.items()}
    save_file({k: v.contiguous() for k, v in abstractor.items()}, str(output / ABSTRACTOR_WEIGHTS_FILE))
    text_config = LlamaConfig(**_without_model_type(official["text_config"]))
    _save_module(lambda: AutoModelForCausalLM.from_config(text_config),
                 {key: state[_LLM_PREFIX + key] for key in llm_keys}, output / LLM_DIR)
    image_token_id = _save_processor(source, config, output / PROCESSOR_DIR)
    meta = {"layout_version": 1, "config": config.to_dict(), "image_token_id": image_token_id, "has_adapter": False,
            "converted_from": str(source)}
    (output / OWL_CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    log(f"convert: {len(state)} official tensors -> {output}")
    return output


def _save_processor(source: Path, config: OwlConfig, folder: Path) -> int:
    from owl_pipeline.model.builders import processor_config_for

    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise ConversionError(f"no tokenizer files in {source} (expected one of {', '.join(TOKENIZER_FILES)})")
    processor = OwlProcessor(AutoTokenizer.from_pretrained(source), processor_config_for(config))
    processor.save_pretrained(folder)
    return processor.image_token_id


# --- ours -> official -------------------------------------------------------------------------------------
def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def official_state_from(model) -> dict[str, torch.Tensor]:
    """Every tensor of an OwlModel (its LoRA adapter merged already) under its official name."""
    config = model.config
    # transformers 4 nests the tower under "vision_model.", 5 does not: strip it either way.
    vision = _strip_prefix(model.vision.clip.state_dict(), "vision_model.")
    _check_keys(set(vision_name_table(config.vision.num_layers))
                | {f"encoder.layers.{n}.self_attn.{p}.{s}" for n in range(config.vision.num_layers)
                   for p in ("q_proj", "k_proj", "v_proj") for s in _SUFFIXES}, set(vision), "vision tower")
    state = {official: vision[ours] for ours, official in vision_name_table(config.vision.num_layers).items()}
    hidden = config.vision.hidden_size
    state["vision_model.embeddings.cls_token"] = state["vision_model.embeddings.cls_token"].reshape(1, 1, hidden)
    position = "vision_model.embeddings.position_embedding"
    state[position] = state[position].reshape(1, -1, hidden)
    for n in range(config.vision.num_layers):
        for suffix in _SUFFIXES:
            parts = [vision[f"encoder.layers.{n}.self_attn.{p}.{suffix}"] for p in ("q_proj", "k_proj", "v_proj")]
            state[_qkv_name(n, suffix)] = merge_qkv(*parts, config.vision.num_heads)
    abstractor = model.abstractor.state_dict()
    table = abstractor_name_table(config.abstractor.num_layers)
    _check_keys(set(table), set(abstractor), "abstractor")
    state.update({official: abstractor[ours] for ours, official in table.items()})
    state.update({_LLM_PREFIX + key: tensor for key, tensor in model.llm.state_dict().items()})
    return state


def owl_to_official(source: str | Path, output: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES,
                    log: Callable[[str], None] = print) -> Path:
    """Export our model folder in the official layout (LoRA merged): config.json, safetensors, tokenizer."""
    from owl_pipeline.model.builders import from_pretrained, merged_llm

    source, output = Path(source), Path(output)
    model, processor = from_pretrained(source)
    model.llm = merged_llm(model.llm)
    state = official_state_from(model)
    output.mkdir(parents=True, exist_ok=True)
    text_config = model.llm.config.to_dict()
    (output / OFFICIAL_CONFIG_FILE).write_text(json.dumps(official_config_from(model.config, text_config), indent=2))
    write_sharded_safetensors(state, output, max_shard_bytes)
    processor.tokenizer.save_pretrained(output)
    for name in ("tokenizer.model",):  # a sentencepiece model the fast tokenizer was made from, if any
        if (source / PROCESSOR_DIR / name).is_file():
            shutil.copy(source / PROCESSOR_DIR / name, output / name)
    log(f"convert: {len(state)} tensors -> {output} (official layout)")
    return output
