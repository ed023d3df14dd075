"""The embedded default corpus, "shapes world", written to disk in the real formats:

    root/
      shards/00000.tar, 00000.parquet, ...     image-caption pairs as img2dataset writes them (webdataset tar
                                                with {key}.jpg/.txt/.json, plus a parquet per shard), LAION or
                                                COYO metadata columns, with injected faults
      instructions/images/*.jpg
      instructions/alpaca.json                  text-only tasks        {instruction, input, output}
      instructions/llava.json                   LLaVA conversations    {id, image, conversations}
      instructions/owl.jsonl                    mPLUG-Owl text         {image: [...], text, task_type}
      owleval/questions.jsonl, cases/, answer/  an OwlEval-format set of held-out images with reference answers
      manifest.json                             what was injected where: the ground truth the tests check

Everything is a function of ``SyntheticConfig`` (seed included): the same config writes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from owl_pipeline.config import SyntheticConfig
from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, IMAGE_TOKEN, SYSTEM_PROMPT
from owl_pipeline.data import scenes
from owl_pipeline.data.image_hash import hamming_distances, perceptual_hash

MANIFEST_FILE = "manifest.json"
SPAM_CAPTION = "stock photo image preview download now"
CLEAN = "clean"
# A clean caption is used at most this often, so only the injected spam caption trips the repeat rule.
_MAX_CLEAN_CAPTION_USES = 6
_MAX_CAPTION_USES_WITH_COPIES = 10  # duplicates copy captions too; FilterConfig.max_caption_repeats is 10
# Clean images stay this many pHash bits apart, so only injected near-duplicates trip the near-dup rule
# (FilterConfig.near_dup_max_distance defaults to 4); injected near-duplicates are at most 2 bits off.
_CLEAN_MIN_HASH_DISTANCE = 7
_NEAR_DUP_MAX_DISTANCE = 2
CAPTION_TEMPLATES = ("{}", "a picture of {}", "an image with {}", "{}, drawn on a plain background")
# dialogues that end with a question referring back (the eval set asks one on every third image)
FOLLOW_UP_SHARE = 1 / 3
_TRANSLATIONS = {
    "de": ({"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "violetter",
            "orange": "oranger"},
           {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "diamond": "Raute"},
           ("links", "in der Mitte", "rechts"), "ein {color} {shape} {where}", " und "),
    "fr": ({"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
            "orange": "orange"},
           {"circle": "cercle", "square": "carré", "triangle": "triangle", "diamond": "losange"},
           ("à gauche", "au centre", "à droite"), "un {shape} {color} {where}", " et "),
    "es": ({"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado",
            "orange": "naranja"},
           {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "diamond": "rombo"},
           ("a la izquierda", "en el centro", "a la derecha"), "un {shape} {color} {where}", " y "),
}
_ABILITY = {"color": "b", "shape": "b", "count": "b,e", "position": "b,e"}


@dataclass
class PairRow:
    key: str
    jpeg: bytes
    caption: str
    url: str
    similarity: float
    nsfw: float
    watermark: float
    fault: str = CLEAN


@dataclass
class CorpusManifest:
    config: dict
    faults: dict[str, str]  # key -> fault class, every pair row (clean ones included)
    shards: list[str]
    invalid_instructions: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> CorpusManifest:
        return cls(**json.loads((Path(root) / MANIFEST_FILE).read_text()))

    def keys_with(self, fault: str) -> set[str]:
        return {key for key, f in self.faults.items() if f == fault}


# --- pictures and text ------------------------------------------------------------------------------------
def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def translated_caption(scene: scenes.Scene, language: str) -> str:
    colors, kinds, columns, pattern, joiner = _TRANSLATIONS[language]
    parts = [pattern.format(color=colors[s.color], shape=kinds[s.kind], where=columns[s.column])
             for s in scene.shapes]
    return joiner.join(parts)


def english_caption(scene: scenes.Scene, rng: np.random.Generator) -> str:
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(scenes.caption(scene))


# --- caption pairs ----------------------------------------------------------------------------------------
def _fault_schedule(config: SyntheticConfig, rng: np.random.Generator) -> list[str]:
    rates = {k: v for k, v in asdict(config.faults).items() if k != "truncated_member"}
    names = [CLEAN, *rates]
    probs = np.array([1.0 - sum(rates.values()), *rates.values()])
    return [names[i] for i in rng.choice(len(names), size=config.num_pairs, p=probs)]


class _PairWriter:
    """Makes the pair rows one by one; faulted rows are derived from the clean rows made before them."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.clean: list[tuple[PairRow, scenes.Scene]] = []
        self.clean_hashes = np.zeros(0, dtype=np.uint64)
        self.caption_uses: dict[str, int] = {}

    def clean_row(self, key: str) -> tuple[PairRow, scenes.Scene]:
        """A row with no fault: its caption not over-used, its image unlike every clean image so far."""
        size = self.config.image_size
        while True:
            scene = scenes.random_scene(self.rng)
            text = english_caption(scene, self.rng)
            jpeg = jpeg_bytes(scenes.render(scene, size, size))
            if (self.caption_uses.get(text, 0) < _MAX_CLEAN_CAPTION_USES
                    and hamming_distances(perceptual_hash(jpeg), self.clean_hashes).min(
                        initial=64) >= _CLEAN_MIN_HASH_DISTANCE):
                break
        row = PairRow(key, jpeg, text, f"https://shapes.example/{key}.jpg",
                      similarity=float(self.rng.uniform(0.31, 0.45)), nsfw=float(self.rng.uniform(0.0, 0.2)),
                      watermark=float(self.rng.uniform(0.0, 0.3)))
        return row, scene

    def keep_clean(self, row: PairRow, scene: scenes.Scene) -> PairRow:
        self.caption_uses[row.caption] = self.caption_uses.get(row.caption, 0) + 1
        self.clean_hashes = np.append(self.clean_hashes, np.uint64(perceptual_hash(row.jpeg)))
        self.clean.append((row, scene))
        return row

    def original_to_copy(self) -> tuple[PairRow, scenes.Scene]:
        """A clean row to duplicate whose caption, copied once more, stays under the repeat limit."""
        while True:
            original, scene = self.clean[int(self.rng.integers(len(self.clean)))]
            if self.caption_uses[original.caption] < _MAX_CAPTION_USES_WITH_COPIES:
                self.caption_uses[original.caption] += 1
                return original, scene

    def near_duplicate_jpeg(self, original: PairRow, scene: scenes.Scene) -> bytes | None:
        """The same picture re-encoded: other bytes, at most _NEAR_DUP_MAX_DISTANCE pHash bits away."""
        size = self.config.image_size
        target = perceptual_hash(original.jpeg)
        for quality in (85, 80, 75, 70, 65):
            jpeg = jpeg_bytes(scenes.render(scene, size, size), quality=quality)
            if jpeg != original.jpeg and hamming_distances(perceptual_hash(jpeg), np.array(
                    [target], dtype=np.uint64))[0] <= _NEAR_DUP_MAX_DISTANCE:
                return jpeg
        return None

    def row(self, key: str, fault: str) -> PairRow:
        needs_original = fault in ("exact_duplicate", "near_duplicate")
        if fault == CLEAN or (needs_original and not self.clean):
            return self.keep_clean(*self.clean_row(key))
        row, scene = self.clean_row(key)
        row.fault = fault
        if not _FAULTS[fault](self, row, scene):  # the fault could not be made: this row stays clean instead
            row.fault = CLEAN
            return self.keep_clean(row, scene)
        return row


# --- the injected faults: each turns a clean row (and its scene) into a faulted one; False if it cannot ------
def _mismatched_caption(writer: _PairWriter, row: PairRow, scene: scenes.Scene) -> bool:
    other = scenes.random_scene(writer.rng)
    while scenes.caption(other) == scenes.caption(scene):
        other = scenes.random_scene(writer.rng)
    row.caption, row.similarity = english_caption(other, writer.rng), float(writer.rng.uniform(0.02, 0.2))
    return True


def _resized(width_factor: float, height_factor: float):
    def inject(writer: _PairWriter, row: PairRow, scene: scenes.Scene) -> bool:
        size = writer.config.image_size
        row.jpeg = jpeg_bytes(scenes.render(scene, int(size * width_factor), int(size * height_factor)))
        return True

    return inject


def _exact_duplicate(writer: _PairWriter, row: PairRow, scene: scenes.Scene) -> bool:
    original = writer.original_to_copy()[0]
    row.jpeg, row.caption, row.url = original.jpeg, original.caption, original.url
    return True


def _near_duplicate(writer: _PairWriter, row: PairRow, scene: scenes.Scene) -> bool:
    original, original_scene = writer.original_to_copy()
    jpeg = writer.near_duplicate_jpeg(original, original_scene)
    if jpeg is None:  # no re-encoding close enough
        return False
    row.jpeg, row.caption = jpeg, original.caption
    return True


def _set(**draws):
    """A fault that sets row fields to values drawn from the writer's rng: {field: rng -> value}."""
    def inject(writer: _PairWriter, row: PairRow, scene: scenes.Scene) -> bool:
        for name, draw in draws.items():
            setattr(row, name, draw(writer.rng, row, scene))
        return True

    return inject


_FAULTS = {
    "mismatched_caption": _mismatched_caption,
    "tiny_image": _resized(0.25, 0.25),
    "extreme_aspect": _resized(4, 1),
    "exact_duplicate": _exact_duplicate,
    "near_duplicate": _near_duplicate,
    "non_english": _set(caption=lambda rng, row, scene: translated_caption(scene, ("de", "fr", "es")[
        int(rng.integers(3))])),
    "nsfw": _set(nsfw=lambda rng, row, scene: float(rng.uniform(0.6, 1.0))),
    "watermark": _set(watermark=lambda rng, row, scene: float(rng.uniform(0.85, 1.0))),
    "short_caption": _set(caption=lambda rng, row, scene: ("", "red", "a dot", "circle")[int(rng.integers(4))]),
    "repeated_caption": _set(caption=lambda rng, row, scene: SPAM_CAPTION),
    "corrupt_jpeg": _set(jpeg=lambda rng, row, scene: b"\xff\xd8\xff\xe0" + rng.bytes(max(64, len(row.jpeg) // 2))),
}


def make_pair_rows(config: SyntheticConfig) -> list[PairRow]:
    rng = np.random.default_rng([config.seed, 1])
    writer = _PairWriter(config, rng)
    rows = []
    for index, fault in enumerate(_fault_schedule(config, rng)):
        shard, offset = divmod(index, config.shard_size)
        rows.append(writer.row(f"{shard:05d}{offset:04d}", fault))
    return rows


def _metadata(row: PairRow, width: int, height: int, config: SyntheticConfig, rng: np.random.Generator) -> dict:
    """What img2dataset keeps per sample: its own fields plus the input's metadata columns (without the CLIP
    similarity when ``config.similarity_scores`` is off: the filter then scores it with ``filters.clip_model``)."""
    meta = _source_metadata(row, width, height, config.metadata_format, rng)
    if not config.similarity_scores:
        for name in ("similarity", "clip_similarity_vitb32", "clip_similarity_vitl14"):
            meta.pop(name, None)
    return meta


def _source_metadata(row: PairRow, width: int, height: int, metadata_format: str, rng: np.random.Generator) -> dict:
    common = {"key": row.key, "url": row.url, "caption": row.caption, "status": "success", "error_message": None,
              "width": width, "height": height, "original_width": width, "original_height": height,
              "sha256": hashlib.sha256(row.jpeg).hexdigest()}
    if metadata_format == "laion":
        return {**common, "URL": row.url, "TEXT": row.caption, "WIDTH": width, "HEIGHT": height,
                "similarity": row.similarity, "hash": int(rng.integers(-2**62, 2**62)), "punsafe": row.nsfw,
                "pwatermark": row.watermark}
    words = len(row.caption.split())
    return {**common, "id": int(row.key), "text": row.caption, "image_phash": None, "text_length": len(row.caption),
            "word_count": words, "num_tokens_bert": words + 2, "num_tokens_gpt": words + 1, "num_faces": 0,
            "clip_similarity_vitb32": row.similarity, "clip_similarity_vitl14": row.similarity * 0.9,
            "nsfw_score_opennsfw2": row.nsfw, "nsfw_score_gantman": row.nsfw * 0.8,
            "watermark_score": row.watermark, "aesthetic_score_laion_v2": float(rng.uniform(4, 6))}


def _image_size(jpeg: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - corrupt bytes are injected on purpose; img2dataset had the size
        return 64, 64


def write_shards(rows: list[PairRow], folder: Path, config: SyntheticConfig) -> list[str]:
    """img2dataset's webdataset output: one tar + one parquet per shard."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, 2])
    names = []
    for start in range(0, len(rows), config.shard_size):
        name = f"{start // config.shard_size:05d}"
        records = []
        with tarfile.open(folder / f"{name}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows[start:start + config.shard_size]:
                meta = _metadata(row, *_image_size(row.jpeg), config, rng)
                for suffix, payload in (("jpg", row.jpeg), ("txt", row.caption.encode()),
                                        ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{row.key}.{suffix}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
                records.append(meta)
        pq.write_table(pa.Table.from_pylist(records), folder / f"{name}.parquet")
        names.append(f"{name}.tar")
    return names


def truncate_last_member(tar_path: Path) -> str:
    """Cut the tar in the middle of its last image: what an interrupted download leaves. Returns that key."""
    with tarfile.open(tar_path) as tar:
        last_image = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    with open(tar_path, "r+b") as handle:
        handle.truncate(last_image.offset_data + last_image.size // 2)
    return last_image.name.rsplit(".", 1)[0]


# --- instructions -----------------------------------------------------------------------------------------
def _owl_text(turns: list[tuple[str, str]], num_images: int) -> str:
    lines = [SYSTEM_PROMPT] + [HUMAN_PREFIX + IMAGE_TOKEN] * num_images
    for question, answer in turns:
        lines += [HUMAN_PREFIX + question, AI_PREFIX + answer]
    return "\n".join(lines)


def _dialogue_turns(scene: scenes.Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The four questions in a random order, then on a share of the dialogues a follow-up that refers back
    ("What color is the square?" / "Where is it?"): the eval set asks it, so the dialogues must teach it."""
    qas = scenes.questions(scene, rng)
    turns = [(qas[i].question, qas[i].answer) for i in rng.permutation(len(qas))]
    if rng.random() < FOLLOW_UP_SHARE:
        target = scene.shapes[int(rng.integers(len(scene.shapes)))]
        turns += [(qa.question, qa.answer) for qa in scenes.follow_up(target)]
    return turns


def _alpaca_task(rng: np.random.Generator) -> dict:
    """A question about a scene answered from its description alone (Alpaca format)."""
    scene = scenes.random_scene(rng)
    qa = scenes.questions(scene, rng)[int(rng.integers(4))]
    return {"instruction": f"Answer the question about this picture: {scenes.caption(scene)}.",
            "input": qa.question, "output": qa.answer}


def _described_scene_dialogue(rng: np.random.Generator) -> dict:
    """A text-only mPLUG-Owl record shaped like the image dialogues, with the description where the image
    would be: the curriculum that teaches the base LLM to answer from what precedes the questions."""
    scene = scenes.random_scene(rng)
    turns = _dialogue_turns(scene, rng)
    lines = [SYSTEM_PROMPT, HUMAN_PREFIX + scenes.caption(scene)]
    for question, answer in turns:
        lines += [HUMAN_PREFIX + question, AI_PREFIX + answer]
    return {"image": [], "text": "\n".join(lines), "task_type": "text_only"}


def write_instructions(folder: Path, config: SyntheticConfig) -> dict[str, int]:
    """The three instruction formats; a few invalid records in each, counted in the returned dict."""
    rng = np.random.default_rng([config.seed, 3])
    (folder / "images").mkdir(parents=True, exist_ok=True)
    llava, owl = [], []
    for index in range(config.num_instruction_images):
        scene = scenes.random_scene(rng)
        name = f"images/{index:05d}.jpg"
        size = config.image_size
        (folder / name).write_bytes(jpeg_bytes(scenes.render(scene, size, size)))
        turns = _dialogue_turns(scene, rng)
        if rng.random() < 0.2:
            turns.append(("Describe the image.", scenes.caption(scene)))
        if index % 2 == 0:
            conversation = []
            for position, (question, answer) in enumerate(turns):
                asked = f"{IMAGE_TOKEN}\n{question}" if position == 0 else question
                conversation += [{"from": "human", "value": asked}, {"from": "gpt", "value": answer}]
            llava.append({"id": f"llava-{index}", "image": name, "conversations": conversation})
        else:
            owl.append({"image": [name], "text": _owl_text(turns, 1), "task_type": "shapes_qa"})
    alpaca = [_alpaca_task(rng) for _ in range(config.num_text_only // 5)]
    owl += [_described_scene_dialogue(rng) for _ in range(config.num_text_only - len(alpaca))]
    invalid = {"alpaca": 2, "llava": 2, "owl": 2}
    alpaca += [{"instruction": "Name a color."}, {"instruction": "", "input": "", "output": "red"}]
    llava += [{"id": "missing-image", "image": "images/nope.jpg",
               "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat?"}, {"from": "gpt", "value": "x"}]},
              {"id": "no-answer", "image": "images/00000.jpg",
               "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat color?"}]}]
    owl += [{"image": ["images/00001.jpg"], "text": "Human: <image>\nHuman: no answer here", "task_type": "bad"},
            {"image": [], "text": _owl_text([("What color?", "red")], 1), "task_type": "bad"}]
    (folder / "alpaca.json").write_text(json.dumps(alpaca, indent=1))
    (folder / "llava.json").write_text(json.dumps(llava, indent=1))
    (folder / "owl.jsonl").write_text("".join(json.dumps(record) + "\n" for record in owl))
    return invalid


# --- the OwlEval-format eval set --------------------------------------------------------------------------
def eval_scenes(config: SyntheticConfig) -> Iterator[tuple[str, scenes.Scene, list[tuple[scenes.QA, str]]]]:
    """Each eval image's name, scene, and questions with their category (single_turn, multi_turn): what
    `write_eval_set` writes, and what an error analysis needs to know of a held-out question."""
    rng = np.random.default_rng([config.seed, 4])
    for number in range(1, config.num_eval_images + 1):
        scene = scenes.random_scene(rng)
        items = [(qa, "single_turn") for qa in scenes.questions(scene, rng)]
        if number % 3 == 0:
            target = scene.shapes[int(rng.integers(len(scene.shapes)))]
            items += [(qa, "multi_turn") for qa in scenes.follow_up(target)]
        yield f"{number}.jpg", scene, items


def write_eval_set(folder: Path, config: SyntheticConfig) -> int:
    """OwlEval layout with one question of each type per image, and a two-turn dialogue on every third."""
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    (folder / "answer").mkdir(parents=True, exist_ok=True)
    questions, answers = [], []
    for image, scene, items in eval_scenes(config):
        size = config.image_size
        (folder / "cases" / image).write_bytes(jpeg_bytes(scenes.render(scene, size, size)))
        for qa, category in items:
            question_id = len(questions) + 1
            ability = _ABILITY[qa.kind] + (",f" if category == "multi_turn" else "")
            questions.append({"image": image, "question_id": question_id, "question": qa.question,
                              "ability": ability, "category": category, "question_type": qa.kind})
            answers.append({"image": image, "question_id": question_id, "question": qa.question,
                            "answer": qa.answer, "model_id": "reference"})
    for name, records in (("questions.jsonl", questions), ("answer/reference_answer.jsonl", answers)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return len(questions)


# --- the whole corpus -------------------------------------------------------------------------------------
def generate_corpus(root: str | Path, config: SyntheticConfig | None = None, log=print) -> CorpusManifest:
    """Write the whole corpus to ``root``, replacing what is there only once the new one is complete."""
    config = config or SyntheticConfig()
    root = Path(root)
    staging = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    rows = make_pair_rows(config)
    shards = write_shards(rows, staging / "shards", config)
    faults = {row.key: row.fault for row in rows}
    if config.faults.truncated_member:
        faults[truncate_last_member(staging / "shards" / shards[-1])] = "truncated_member"
    log(f"shapes world: {len(rows)} caption pairs in {len(shards)} shards")
    invalid = write_instructions(staging / "instructions", config)
    num_questions = write_eval_set(staging / "owleval", config)
    log(f"shapes world: {config.num_instruction_images} instruction images, {config.num_text_only} text-only "
        f"tasks, {num_questions} eval questions on {config.num_eval_images} images")
    counts = {fault: sum(1 for f in faults.values() if f == fault) for fault in sorted(set(faults.values()))}
    manifest = CorpusManifest(config=asdict(config), faults=faults, shards=shards, invalid_instructions=invalid,
                              counts=counts)
    (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=1))
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    log(f"shapes world: written to {root} in {time.perf_counter() - start:.1f} s")
    return manifest
