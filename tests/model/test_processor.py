import numpy as np
import pytest
import torch
from PIL import Image

from owl_pipeline.constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, IMAGE_TOKEN, SYSTEM_PROMPT
from owl_pipeline.model.processor import AI, HUMAN, ImageTransform, Turn, render_conversation

IMG = Turn(HUMAN, IMAGE_TOKEN)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_template_text():
    text, spans = render_conversation([IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")])
    assert text == f"{SYSTEM_PROMPT}\nHuman: <image>\nHuman: What color?\nAI: red"
    assert [text[a:b] for a, b in spans] == ["red"]  # official: the answer without a leading space


def test_labels_token_by_token(processor, tokenizer, red_image):
    turns = [IMG, Turn(HUMAN, "What color?"), Turn(AI, "red"), Turn(HUMAN, "Where?"), Turn(AI, "left")]
    sample = processor.encode(turns, [red_image])
    n = processor.config.num_image_tokens
    t = processor.image_token_id
    eos = tokenizer.eos_token_id
    # The official chunking: the separators "\nHuman: " and "AI: " are chunks of their own, so is each answer.
    chunks = lambda *texts: [i for text in texts for i in ids(tokenizer, text)]  # noqa: E731
    expected_ids = ([tokenizer.bos_token_id] + chunks(SYSTEM_PROMPT, "\nHuman: ") + [t] * n
                    + chunks("\nHuman: ", "What color?\n", "AI: ", "red") + [eos]
                    + chunks("\nHuman: ", "Where?\n", "AI: ", "left") + [eos])
    assert sample.input_ids == expected_ids
    answers = {tuple(ids(tokenizer, "red") + [eos]), tuple(ids(tokenizer, "left") + [eos])}
    labelled = [i if label != IGNORE_INDEX else None for i, label in zip(sample.input_ids, sample.labels)]
    runs, current = [], []
    for token in labelled + [None]:
        if token is None and current:
            runs.append(tuple(current))
            current = []
        elif token is not None:
            current.append(token)
    assert set(runs) == answers and len(runs) == 2
    assert all(label == IGNORE_INDEX for i, label in zip(sample.input_ids, sample.labels) if i == t)
    assert sample.pixel_values.shape == (1, 3, 64, 64)


def test_prompt_ends_where_training_answers_begin(processor, tokenizer, red_image):
    prompt = processor.encode_prompt("What color?", [red_image], history=[("Hi", "hello")])
    full = processor.encode([IMG, Turn(HUMAN, "Hi"), Turn(AI, "hello"), Turn(HUMAN, "What color?"),
                             Turn(AI, "red")], [red_image])
    assert full.input_ids[:len(prompt.input_ids)] == prompt.input_ids
    assert prompt.labels is None
    assert tokenizer.decode(prompt.input_ids[-3:]).endswith("AI: ")  # official: a space after the colon


def test_a_history_longer_than_the_prompt_loses_its_oldest_turns_never_the_question(processor, tokenizer,
                                                                                    red_image):
    history = [(f"Question number {i}?", f"answer number {i}") for i in range(3000)]
    prompt = processor.encode_prompt("What color is it?", [red_image], history=history)
    assert len(prompt.input_ids) <= processor.config.max_length
    assert tokenizer.decode(prompt.input_ids[-12:]).endswith("What color is it?\nAI: ")
    assert "number 2999" in tokenizer.decode(prompt.input_ids) and "number 0?" not in tokenizer.decode(
        prompt.input_ids)
    assert prompt.input_ids.count(processor.image_token_id) == processor.config.num_image_tokens


def test_several_images_and_text_only(processor, red_image, noise_image):
    two = processor.encode([IMG, IMG, Turn(HUMAN, "Same?"), Turn(AI, "no")], [red_image, noise_image])
    assert two.pixel_values.shape[0] == 2
    assert two.input_ids.count(processor.image_token_id) == 2 * processor.config.num_image_tokens
    text = processor.encode([Turn(HUMAN, "Say hi"), Turn(AI, "hi")], [])
    assert text.pixel_values.shape == (0, 3, 64, 64) and text.num_target_tokens > 0


def test_marker_and_image_counts_must_agree(processor, red_image):
    with pytest.raises(ValueError, match="1 <image> markers but 2 images"):
        processor.encode([IMG, Turn(HUMAN, "?"), Turn(AI, "x")], [red_image, red_image])


def test_conversation_must_end_with_an_answer(processor):
    with pytest.raises(ValueError, match="end with an AI turn"):
        processor.encode([Turn(HUMAN, "hello")], [])
    with pytest.raises(ValueError, match="role"):
        Turn("assistant", "hi")


def test_truncation_drops_a_cut_image_whole(processor, red_image):
    turns = [Turn(HUMAN, "Look"), IMG, IMG, Turn(HUMAN, "Same?"), Turn(AI, "yes")]
    full = processor.encode(turns, [red_image, red_image])
    n, t = processor.config.num_image_tokens, processor.image_token_id
    second_image = full.input_ids.index(t, full.input_ids.index(t) + n)
    processor.config.max_length = second_image + 10  # the limit falls inside the second image
    cut = processor.encode(turns, [red_image, red_image])
    assert cut.input_ids == full.input_ids[:second_image]
    assert cut.pixel_values.shape[0] == 1
    assert cut.num_target_tokens == 0  # the answer was cut: the model's loss guard handles this sample


def test_collate_pads_right_for_training_and_left_for_generation(processor, red_image):
    long = processor.encode([IMG, Turn(HUMAN, "What color is it?"), Turn(AI, "red")], [red_image])
    short = processor.encode([Turn(HUMAN, "Hi"), Turn(AI, "hi")], [])
    pad = processor.tokenizer.pad_token_id
    batch = processor.collate([long, short])
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["input_ids"][1, :n].tolist() == short.input_ids
    assert (batch["input_ids"][1, n:] == pad).all() and (batch["labels"][1, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (len(long.input_ids) - n)
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    left = processor.collate([long, short], padding_side="left")
    assert left["input_ids"][1, -n:].tolist() == short.input_ids
    assert left["attention_mask"][1, :-n].sum() == 0
    rounded = processor.collate([long, short], pad_to_multiple_of=64)
    assert rounded["input_ids"].shape[1] == -(-len(long.input_ids) // 64) * 64 > len(long.input_ids)
    assert rounded["input_ids"][0, :len(long.input_ids)].tolist() == long.input_ids
    assert (rounded["labels"][:, len(long.input_ids):] == IGNORE_INDEX).all()


def test_eval_transform_resizes_and_normalizes():
    transform = ImageTransform(size=32, train=False)
    out = transform(Image.new("RGB", (50, 20), (255, 0, 128)))
    assert out.shape == (3, 32, 32)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[:, 5, 5], expected, atol=1e-3, rtol=0)


def test_train_transform_is_random_but_seeded(noise_image):
    transform = ImageTransform(size=32, train=True)
    a = transform(noise_image, np.random.default_rng(7))
    b = transform(noise_image, np.random.default_rng(7))
    c = transform(noise_image, np.random.default_rng(8))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 32, 32) and not torch.allclose(a, c)


def test_random_crop_box_respects_scale_and_bounds():
    transform = ImageTransform(size=32, train=True, crop_scale=(0.5, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = transform._random_crop_box(80, 48, rng)
        assert 0 <= left < right <= 80 and 0 <= top < bottom <= 48
        assert (right - left) * (bottom - top) >= 0.5 * 80 * 48 * 0.95  # rounding slack
    assert transform._random_crop_box(1000, 10, rng) == (493, 0, 506, 10)  # extreme aspect: center crop at 4:3


def test_flip_can_be_turned_off(noise_image):
    transform = ImageTransform(size=48, train=True, crop_scale=(1.0, 1.0), hflip=False, crop_ratio=(1.0, 1.0))
    square = noise_image.resize((48, 48))
    outputs = {transform(square, np.random.default_rng(s)).sum().item() for s in range(8)}
    assert len(outputs) == 1


def test_crop_scale_one_keeps_the_whole_picture(noise_image):
    # Shapes world trains so: a crop could cut out an object its caption names, or move it to another column.
    train = ImageTransform(size=48, train=True, crop_scale=(1.0, 1.0), hflip=False)
    plain = ImageTransform(size=48, train=False)
    wide = noise_image.resize((80, 48))
    for seed in range(4):
        torch.testing.assert_close(train(wide, np.random.default_rng(seed)), plain(wide))


def test_save_and_load(processor, tmp_path, red_image):
    processor.save_pretrained(tmp_path)
    loaded = type(processor).from_pretrained(tmp_path)
    turns = [IMG, Turn(HUMAN, "What color?"), Turn(AI, "red")]
    assert loaded.encode(turns, [red_image]).input_ids == processor.encode(turns, [red_image]).input_ids
    assert loaded.config == processor.config
