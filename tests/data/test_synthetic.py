import json
import tarfile

import numpy as np
import pyarrow.parquet as pq

from owl_pipeline.config import SyntheticConfig
from owl_pipeline.data import scenes
from owl_pipeline.data.synthetic import CorpusManifest, eval_scenes, generate_corpus

from ..conftest import SMALL, quiet


def test_same_seed_same_bytes(tmp_path):
    config = SyntheticConfig(**{**SMALL, "num_pairs": 200, "shard_size": 100})
    first = generate_corpus(tmp_path / "a", config, log=quiet)
    second = generate_corpus(tmp_path / "b", config, log=quiet)
    assert first.faults == second.faults
    for name in ("shards/00000.tar", "shards/00001.parquet", "instructions/llava.json", "owleval/questions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = generate_corpus(tmp_path / "c", SyntheticConfig(**{**SMALL, "num_pairs": 200, "seed": 1}), log=quiet)
    assert other.faults != first.faults


def test_fault_rates_are_close_to_the_configured_ones(corpus):
    _, manifest = corpus
    rates = SyntheticConfig().faults
    for fault in ("mismatched_caption", "non_english", "tiny_image", "exact_duplicate", "near_duplicate"):
        expected = getattr(rates, fault) * SMALL["num_pairs"]
        assert 0.4 * expected <= manifest.counts[fault] <= 1.8 * expected, fault
    assert manifest.counts["truncated_member"] == 1


def test_img2dataset_layout_with_laion_columns(corpus):
    root, manifest = corpus
    assert manifest.shards == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    with tarfile.open(root / "shards/00000.tar") as tar:
        names = tar.getnames()[:3]
        meta = json.loads(tar.extractfile(names[2]).read())
    assert names == ["000000000.jpg", "000000000.txt", "000000000.json"]
    assert {"URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark"} <= set(meta)
    table = pq.read_table(root / "shards/00000.parquet")
    assert table.num_rows == 300 and {"key", "status", "sha256", "similarity"} <= set(table.column_names)


def test_coyo_columns_on_request(tmp_path):
    generate_corpus(tmp_path / "coyo", SyntheticConfig(**{**SMALL, "num_pairs": 50, "metadata_format": "coyo"}),
                    log=quiet)
    columns = set(pq.read_table(tmp_path / "coyo/shards/00000.parquet").column_names)
    assert {"clip_similarity_vitb32", "nsfw_score_opennsfw2", "watermark_score", "image_phash"} <= columns


def test_instruction_files_and_eval_set(corpus):
    root, manifest = corpus
    llava = json.loads((root / "instructions/llava.json").read_text())
    assert llava[0]["conversations"][0]["value"].startswith("<image>\n")
    owl = [json.loads(line) for line in (root / "instructions/owl.jsonl").read_text().splitlines()]
    assert "\nHuman: <image>\nHuman: " in owl[0]["text"] and "\nAI: " in owl[0]["text"]
    alpaca = json.loads((root / "instructions/alpaca.json").read_text())
    assert {"instruction", "input", "output"} <= set(alpaca[0])
    questions = [json.loads(line) for line in (root / "owleval/questions.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (root / "owleval/answer/reference_answer.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert all((root / "owleval/cases" / q["image"]).is_file() for q in questions)
    multi = [q for q in questions if q["category"] == "multi_turn"]
    assert multi and all("f" in q["ability"].split(",") for q in multi)
    assert manifest.invalid_instructions == {"alpaca": 2, "llava": 2, "owl": 2}
    assert CorpusManifest.load(root).faults == manifest.faults


def test_every_question_has_one_right_answer():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = scenes.random_scene(rng)
        assert len({s.kind for s in scene.shapes}) == len({s.color for s in scene.shapes}) == len(scene.shapes)
        assert len({s.column for s in scene.shapes}) == len(scene.shapes)
        for qa in scenes.questions(scene, rng):
            assert qa.answer and qa.kind in scenes.QUESTION_TYPES


def test_dialogues_teach_the_follow_up_the_eval_set_asks(corpus):
    """"Where is it?" refers to the shape of the question before it, in the image dialogues and the text-only
    ones alike, on about a third of them; the eval set asks it the same way."""
    root, _ = corpus
    owl = [json.loads(line) for line in (root / "instructions/owl.jsonl").read_text().splitlines()]
    dialogues = [r["text"].split("\n") for r in owl if r["task_type"] in ("shapes_qa", "text_only")]
    with_follow_up = [lines for lines in dialogues if "Human: Where is it?" in lines]
    assert 0.2 < len(with_follow_up) / len(dialogues) < 0.5
    for lines in with_follow_up:
        asked = lines.index("Human: Where is it?")
        kind = lines[asked - 2].removeprefix("Human: What color is the ").removesuffix("?")
        column = lines[asked + 1].removeprefix("AI: ")
        assert kind in scenes.SHAPES and column in scenes.COLUMNS
        if "<image>" not in lines[1]:  # text-only: the description says where that shape is
            said = "in the center" if column == "center" else f"on the {column}"
            assert any(part.split(" ", 2)[-1].startswith(f"{kind} {said}")
                       for part in lines[1].removeprefix("Human: ").replace(" and ", ", ").split(", "))
    questions = [json.loads(line) for line in (root / "owleval/questions.jsonl").read_text().splitlines()]
    assert {q["question"] for q in questions if q["category"] == "multi_turn"} >= {"Where is it?"}


def test_without_similarity_scores_the_shipped_clip_scores_them_and_the_threshold_drops_mismatched_captions(
        tmp_path):
    import lance

    from owl_pipeline.config import PipelineConfig, from_mapping
    from owl_pipeline.data.synthetic import CLEAN
    from owl_pipeline.pipeline.project import Project
    from owl_pipeline.pipeline.runner import run_step

    params = from_mapping(PipelineConfig, {
        "synthetic": {**SMALL, "num_pairs": 400, "shard_size": 200, "similarity_scores": False},
        "filters": {"min_side": 32, "min_image_bytes": None, "clip_model": "shapes-world-clip",
                    "min_similarity": 0.8}}, "params")  # bench/clip_similarity.py: clean >= 0.74, mismatched mean 0.03
    project = Project(params, tmp_path)
    for step in ("raw_shards", "raw_pairs", "curated_pairs"):
        result = run_step(step, project, log=quiet)
    assert lance.dataset(str(project.raw_pairs)).to_table(columns=["similarity"])["similarity"].null_count == \
        lance.dataset(str(project.raw_pairs)).count_rows()
    assert result.computed["similarity"] > 0
    manifest = CorpusManifest.load(project.raw_shards)
    kept = set(lance.dataset(str(project.curated_pairs)).to_table(columns=["key"])["key"].to_pylist())
    mismatched, clean = manifest.keys_with("mismatched_caption"), manifest.keys_with(CLEAN)
    assert mismatched and not mismatched & kept and len(clean & kept) >= 0.9 * len(clean)


def test_the_eval_scenes_regenerate_the_written_eval_set(corpus):
    """An error analysis (bench/shapes_errors.py) reads each held-out question's scene from eval_scenes: it must
    be the scene the written question and reference answer were made from."""
    root, _ = corpus
    written = [json.loads(line) for line in (root / "owleval/questions.jsonl").read_text().splitlines()]
    answers = (root / "owleval/answer/reference_answer.jsonl").read_text().splitlines()
    references = [json.loads(line) for line in answers]
    regenerated = [(image, qa, category) for image, _, items in eval_scenes(SyntheticConfig(**SMALL))
                   for qa, category in items]
    assert [(q["image"], q["question"], q["category"]) for q in written] == [
        (image, qa.question, category) for image, qa, category in regenerated]
    assert [r["answer"] for r in references] == [qa.answer for _, qa, _ in regenerated]
