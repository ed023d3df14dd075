import json

import lance
import pytest

from owl_pipeline.constants import IMAGE_TOKEN
from owl_pipeline.data.instructions import InstructionSource, build_instruction_table, turns_of
from owl_pipeline.model.processor import AI, HUMAN, Turn, parse_conversation, render_conversation

from ..conftest import SMALL, quiet
from .test_ingest import picture


def sources(root):
    folder = root / "instructions"
    return [InstructionSource("alpaca", folder / "alpaca.json"), InstructionSource("llava", folder / "llava.json"),
            InstructionSource("owl", folder / "owl.jsonl")]


def test_three_formats_become_one_table(corpus, tmp_path):
    root, manifest = corpus
    report = build_instruction_table(sources(root), tmp_path / "instructions.lance", log=quiet)
    half, alpaca = SMALL["num_instruction_images"] // 2, SMALL["num_text_only"] // 5
    owl = half + SMALL["num_text_only"] - alpaca  # image dialogues + described-scene text dialogues
    assert dict(report.rows_by_format) == {"alpaca": alpaca, "llava": half, "owl": owl}
    assert report.skipped == {"alpaca: missing_output": 1, "alpaca: missing_instruction": 1,
                              "llava: missing_image": 1, "llava: no_answer": 1, "owl: no_answer": 1,
                              "owl: image_count_mismatch": 1}
    assert sum(manifest.invalid_instructions.values()) == sum(report.skipped.values())
    rows = lance.dataset(str(tmp_path / "instructions.lance")).to_table().to_pylist()
    llava = next(r for r in rows if r["format"] == "llava")
    turns = turns_of(llava)
    assert turns[0] == Turn(HUMAN, IMAGE_TOKEN) and IMAGE_TOKEN not in turns[1].text and turns[-1].role == AI
    assert len(llava["images"]) == 1 and llava["images"][0][:2] == b"\xff\xd8"
    alpaca = next(r for r in rows if r["format"] == "alpaca")
    assert alpaca["images"] == [] and "\n" in turns_of(alpaca)[0].text  # instruction + input


def test_malformed_lines_and_records(tmp_path):
    (tmp_path / "img.jpg").write_bytes(picture())  # a real picture: images are checked to decode
    lines = ['{"image": ["img.jpg"], "text": "Human: <image>\\nHuman: hi\\nAI: hello"}', "{not json", "[1, 2]",
             '{"image": "img.jpg", "text": "Human: <image>\\nHuman: multi\\nline?\\nAI: yes\\nand more"}']
    (tmp_path / "owl.jsonl").write_text("\n".join(lines))
    report = build_instruction_table([InstructionSource("owl", tmp_path / "owl.jsonl")], tmp_path / "t.lance",
                                     log=quiet)
    assert report.rows_written == 2
    assert report.skipped == {"owl: malformed_line": 1, "owl: not_an_object": 1}
    rows = lance.dataset(str(tmp_path / "t.lance")).to_table().to_pylist()
    assert turns_of(rows[1])[1:] == [Turn(HUMAN, "multi\nline?"), Turn(AI, "yes\nand more")]


def test_records_of_the_wrong_shape_are_skipped_and_counted_never_fatal(tmp_path):
    """Issue 24 item 7: wrong types where a path, a text or a turn belongs, and a line nested past the parser."""
    (tmp_path / "img.jpg").write_bytes(picture())
    good_owl = {"image": ["img.jpg"], "text": "Human: <image>\nHuman: hi\nAI: hello"}
    owl = [good_owl, {**good_owl, "image": 5}, {**good_owl, "image": {"img.jpg": 1}}, {**good_owl, "image": [3]},
           {**good_owl, "text": ["x"]}]
    (tmp_path / "owl.jsonl").write_text("\n".join([*map(json.dumps, owl), "[" * 100_000 + "]" * 100_000]))
    answer = {"from": "gpt", "value": "red"}
    llava = [{"image": "img.jpg", "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\nColor?"}, answer]},
             {"image": 5, "conversations": [{"from": "human", "value": "Color?"}, answer]},
             {"conversations": [{"from": "human", "value": 5}, answer]},
             {"conversations": ["human: hi", answer]}]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    alpaca = [{"instruction": "Name a color.", "output": "red"},
              {"instruction": "Name one.", "input": 5, "output": "x"},
              {"instruction": "Name one.", "input": ["x"], "output": "x"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    report = build_instruction_table([InstructionSource(f, tmp_path / n) for f, n in
                                      (("owl", "owl.jsonl"), ("llava", "llava.json"), ("alpaca", "alpaca.json"))],
                                     tmp_path / "t.lance", log=quiet)
    assert dict(report.rows_by_format) == {"owl": 1, "llava": 1, "alpaca": 1}
    assert report.skipped == {"owl: bad_image_reference": 3, "owl: missing_text": 1, "owl: malformed_line": 1,
                              "llava: bad_image_reference": 1, "llava: bad_turn": 2, "alpaca: bad_input": 2}


def test_a_json_list_nested_too_deeply_is_one_clear_error(tmp_path):
    (tmp_path / "alpaca.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply to read"):
        build_instruction_table([InstructionSource("alpaca", tmp_path / "alpaca.json")], tmp_path / "t.lance",
                                log=quiet)


def test_a_missing_file_or_format_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="instruction file not found"):
        build_instruction_table([InstructionSource("alpaca", tmp_path / "nope.json")], tmp_path / "t.lance",
                                log=quiet)
    with pytest.raises(ValueError, match="instruction format must be one of"):
        InstructionSource("sharegpt", tmp_path / "x.json")
    (tmp_path / "a.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        build_instruction_table([InstructionSource("alpaca", tmp_path / "a.json")], tmp_path / "t.lance", log=quiet)


def test_parse_is_the_inverse_of_render():
    turns = [Turn(HUMAN, IMAGE_TOKEN), Turn(HUMAN, "What color?"), Turn(AI, "red"), Turn(HUMAN, "Sure?"),
             Turn(AI, "yes")]
    text, _ = render_conversation(turns)
    assert parse_conversation(text) == turns
