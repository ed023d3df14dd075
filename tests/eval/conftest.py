"""Eval fixtures: real tiny judge LMs trained here to reply a fixed text, and the packaged embedding model."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from owl_pipeline.eval.judge import judge_prompt

_PROMPTS = [judge_prompt(f"What is in picture {i}?", answer, reference)
            for i, (answer, reference) in enumerate([("a red circle", "a circle"), ("two cats", None),
                                                      ("I do not know", "a dog on a sofa"), ("blue", "blue")])]


def train_judge(tokenizer, reply: str, folder: Path) -> Path:
    """A one-layer Llama that learned to answer every judge prompt with ``reply`` (then EOS)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    target = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    batch = [tokenizer(p, add_special_tokens=False)["input_ids"] + target for p in _PROMPTS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = 0.0
        for ids in batch:
            labels = [-100] * (len(ids) - len(target)) + target
            loss = loss + model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def judge_says_b(tokenizer, tmp_path_factory):
    return train_judge(tokenizer, "B", tmp_path_factory.mktemp("judge_b"))


@pytest.fixture(scope="session")
def judge_without_grade(tokenizer, tmp_path_factory):
    return train_judge(tokenizer, "hmm", tmp_path_factory.mktemp("judge_hmm"))
