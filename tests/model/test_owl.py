import pytest
import torch
import torch.nn.functional as F

from owl_pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN
from owl_pipeline.model.builders import set_trainable
from owl_pipeline.model.owl import padded_on_the_right_only, positions_with_targets
from owl_pipeline.model.processor import AI, HUMAN, Turn

IMG = Turn(HUMAN, IMAGE_TOKEN)


def mixed_batch(processor, red_image, noise_image):
    samples = [
        processor.encode([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")], [red_image]),
        processor.encode([Turn(HUMAN, "Say hi"), Turn(AI, "hi")], []),
        processor.encode([IMG, IMG, Turn(HUMAN, "Same?"), Turn(AI, "no")], [noise_image, red_image]),
    ]
    return processor.collate(samples)


def test_forward_backward_on_a_mixed_batch(model, processor, red_image, noise_image):
    batch = mixed_batch(processor, red_image, noise_image)
    out = model(**batch)
    kept = len(positions_with_targets(batch["labels"]))
    assert out.logits.shape == (batch["input_ids"].shape[0], kept, model.llm.config.vocab_size)
    assert torch.isfinite(out.loss) and out.num_target_tokens == int((batch["labels"][:, 1:] != -100).sum())
    out.loss.backward()
    assert model.vision.clip.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.abstractor.query_embeds.grad.abs().sum() > 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_the_loss_on_labelled_positions_equals_the_loss_over_all_logits(model, processor, red_image, noise_image,
                                                                        padding_side):
    """With labels the model computes logits only where a label follows, and drops a right-padding-only mask
    (causal attention hides the padding anyway): the loss is the one over all logits with the mask."""
    model.eval()
    samples = [processor.encode([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")], [red_image]),
               processor.encode([Turn(HUMAN, "Say hi"), Turn(AI, "hi")], []),
               processor.encode([IMG, IMG, Turn(HUMAN, "Same?"), Turn(AI, "no")], [noise_image, red_image])]
    batch = processor.collate(samples, padding_side=padding_side)
    assert not batch["attention_mask"].all()
    assert padded_on_the_right_only(batch["attention_mask"]) == (padding_side == "right")
    positions = positions_with_targets(batch["labels"])
    assert 0 < len(positions) < batch["input_ids"].shape[1] - 65  # image and prompt positions are skipped
    out = model(**batch)
    full = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits  # (B, L, V)
    reference = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, reference, atol=1e-6, rtol=1e-6)
    targets = batch["labels"][:, positions + 1] != IGNORE_INDEX  # padding's own logits may differ: unread
    torch.testing.assert_close(out.logits[targets], full[:, positions][targets])


def test_the_loss_in_chunks_equals_the_loss_in_one_piece_with_the_same_gradients(model, processor, red_image,
                                                                                 noise_image):
    """Above loss_chunk_positions labelled positions the LM head and fp32 loss run a chunk at a time (recomputed in
    backward) and no full logits are returned; the loss and every trained parameter's gradient are those of the one-
    piece path, stage 1 (vision, abstractor) and stage 2 (LoRA) alike."""
    batch = mixed_batch(processor, red_image, noise_image)
    positions = len(positions_with_targets(batch["labels"]))
    for stage in (1, 2):
        set_trainable(model, stage)
        model.eval()  # no dropout (stage 2 adds LoRA's): both paths see the same function
        results = []
        for chunk in (None, 2):
            model.zero_grad(set_to_none=True)
            model.loss_chunk_positions = chunk
            out = model(**batch)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            results.append((out, grads))
        (whole, whole_grads), (chunked, chunked_grads) = results
        assert positions > 2 and whole.logits is not None and chunked.logits is None
        assert chunked.num_target_tokens == whole.num_target_tokens
        torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-6, atol=1e-6)
        assert whole_grads.keys() == chunked_grads.keys() and len(whole_grads) > 0
        for name, grad in whole_grads.items():
            torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda text, name=name: f"{name}: {text}")
    model.loss_chunk_positions = None


def test_stage_two_builds_no_graph_through_the_frozen_image_side(model, processor, red_image, noise_image):
    batch = mixed_batch(processor, red_image, noise_image)
    set_trainable(model, 2)
    assert not model.encode_images(batch["pixel_values"]).requires_grad
    model.config.train_abstractor_in_stage2 = True
    set_trainable(model, 2)
    assert model.encode_images(batch["pixel_values"]).requires_grad


def test_images_land_on_their_placeholders_in_order(model, processor, red_image, noise_image):
    model.eval()
    batch = mixed_batch(processor, red_image, noise_image)
    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
    images = model.encode_images(batch["pixel_values"])  # (3, 65, D): red, noise, red
    assert images.shape[1] == 65 == model.num_image_tokens
    slots = batch["input_ids"] == processor.image_token_id
    assert slots.sum(dim=1).tolist() == [65, 0, 130]
    torch.testing.assert_close(embeds[0][slots[0]], images[0])
    torch.testing.assert_close(embeds[2][slots[2]], images[1:].reshape(-1, images.shape[-1]))
    text = model.llm.get_input_embeddings()(batch["input_ids"][1])
    torch.testing.assert_close(embeds[1], text)  # the text-only sample is untouched


def test_placeholder_count_mismatch_raises(model, processor, red_image, noise_image):
    batch = mixed_batch(processor, red_image, noise_image)
    with pytest.raises(ValueError, match="195 image placeholder tokens but 2 images"):
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:2])
    with pytest.raises(ValueError, match="but 0 images"):
        model(batch["input_ids"], batch["attention_mask"], None)


def test_an_all_masked_batch_gives_a_finite_loss(model, processor, red_image):
    sample = processor.encode([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")], [red_image])
    batch = processor.collate([sample])
    batch["labels"][:] = IGNORE_INDEX  # what truncation of every answer produces
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0 and out.num_target_tokens == 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_an_all_masked_sample_does_not_change_the_loss_of_the_others(model, processor, red_image):
    model.eval()
    good = processor.encode([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")], [red_image])
    bad = processor.encode([Turn(HUMAN, "Say hi"), Turn(AI, "hi")], [])
    bad.labels = [IGNORE_INDEX] * len(bad.labels)
    alone = model(**processor.collate([good])).loss
    together = model(**processor.collate([good, bad])).loss
    torch.testing.assert_close(alone, together)


def test_generate_learns_an_answer_and_stops_at_eos(model, processor, red_image):
    batch = processor.collate([processor.encode([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")], [red_image])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    prompt = processor.collate([processor.encode_prompt("What color?", [red_image])], padding_side="left")
    prompt.pop("labels", None)
    new_tokens = model.generate(**prompt, max_new_tokens=12)
    assert processor.decode(new_tokens[0]) == "red"
    assert new_tokens[0, -1].item() == processor.tokenizer.eos_token_id and new_tokens.shape[1] < 12


def test_batched_sampling_generation(model, processor, red_image, noise_image):
    model.eval()
    prompts = [processor.encode_prompt("What color?", [red_image]), processor.encode_prompt("Hi", [])]
    batch = processor.collate(prompts, padding_side="left")
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=3)
    assert out.shape[0] == 2 and out.shape[1] <= 4
