"""The OwlEval runner: reads the official layout, answers with the official template, writes official answers.

    folder/questions.jsonl        {image, question_id, question, ability, category[, question_type]}
    folder/cases/<image>          the pictures
    folder/answer/*.jsonl         {image, question_id, question, answer, model_id}: published or reference answers

Multi-turn questions (category ``multi_turn``) on one image are answered in order, each with the earlier
turns in the prompt. Problems with the input (a malformed line, a missing or undecodable image, an image name
that leaves ``cases/``, a pixel bomb, an unknown ability code, a question cut to ``max_question_tokens``) are
collected and reported; they never stop the run, and no file outside ``cases/`` is ever read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS, OWLEVAL_ABILITIES
from owl_pipeline.data.images import ImageRejected, decode_rgb
from owl_pipeline.files import atomic_write_text
from owl_pipeline.model.owl import OwlModel
from owl_pipeline.model.processor import OwlProcessor
from owl_pipeline.safe_text import printable

ABILITIES = OWLEVAL_ABILITIES


@dataclass
class Question:
    image: str
    question_id: int
    question: str
    ability: list[str]
    categories: list[str]  # the official file: ["single_turn"], ["multi_turn"], or both on a dialogue's opener
    question_type: str | None = None

    @property
    def multi_turn(self) -> bool:
        return "multi_turn" in self.categories


@dataclass
class EvalSet:
    folder: Path
    questions: list[Question]
    problems: list[str] = field(default_factory=list)


def load_eval_set(folder: str | Path) -> EvalSet:
    folder = Path(folder)
    path = folder / "questions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: point owleval_dir at a folder in the official OwlEval layout "
                                "(questions.jsonl, cases/, answer/), e.g. OwlEval from the mPLUG-Owl repository")
    questions, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            questions.append(_question(record, number, problems))
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as error:
            problems.append(printable(f"questions.jsonl line {number}: malformed ({error}); skipped"))
    return EvalSet(folder, questions, problems)


def _text(record: dict, name: str, default: str | None = None) -> str:
    value = record[name] if default is None else record.get(name, default)
    if not isinstance(value, str):
        raise TypeError(f"{name} is {value!r}, not a text")
    return value


def question_id_of(record) -> int:
    """An answer's or question's id: an integer, or a string of one (bool, float, null are malformed)."""
    if not isinstance(record, dict):
        raise TypeError(f"a {type(record).__name__}, not an object")
    value = record.get("question_id")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"question_id is {value!r}, not an integer")
    return int(value)


def _question(record, number: int, problems: list[str]) -> Question:
    """One line of questions.jsonl with every field of its type; unknown ability codes noted and dropped."""
    question_id = question_id_of(record)
    abilities = [a.strip() for a in _text(record, "ability", "").split(",") if a.strip()]
    unknown = [a for a in abilities if a not in ABILITIES]
    if unknown:
        problems.append(printable(f"questions.jsonl line {number}: unknown ability code(s) {unknown}; ignored"))
    category = record.get("category", "single_turn")
    categories = category if isinstance(category, list) else [category]
    if not all(isinstance(c, str) for c in categories):
        raise TypeError(f"category is {category!r}, not a name or a list of names")
    question_type = record.get("question_type")
    if question_type is not None and not isinstance(question_type, str):
        raise TypeError(f"question_type is {question_type!r}, not a name")
    return Question(image=_text(record, "image"), question_id=question_id,
                    question=_text(record, "question"), ability=[a for a in abilities if a in ABILITIES],
                    categories=list(categories), question_type=question_type)


def dialogues(questions: list[Question]) -> list[list[Question]]:
    """Single-turn questions alone; consecutive multi-turn questions on the same image together, in order."""
    groups: list[list[Question]] = []
    for question in questions:
        previous = groups[-1][-1] if groups else None
        if (question.multi_turn and previous is not None and previous.multi_turn
                and previous.image == question.image):
            groups[-1].append(question)
        else:
            groups.append([question])
    return groups


def _answer_record(question: Question, answer: str, model_id: str) -> dict:
    return {"image": question.image, "question_id": question.question_id, "question": question.question,
            "answer": answer, "model_id": model_id}


def case_image_path(folder: Path, name: str) -> Path | None:
    """``folder/cases/name`` if it stays inside ``cases/`` (no absolute path, no ``..``, no link out)."""
    cases = (Path(folder) / "cases").resolve()
    path = (cases / str(name)).resolve()
    return path if path.is_relative_to(cases) and path != cases else None


def _load_case_image(folder: Path, name: str, max_pixels: int) -> tuple[Image.Image | None, str | None]:
    """(picture, None), or (None, the problem) for an image that cannot be used."""
    path = case_image_path(folder, name)
    if path is None:
        return None, f"image name {name!r} leaves cases/: refused, its questions get no answer"
    if not path.is_file():
        return None, f"image {path} not found: its questions get no answer"
    try:
        return decode_rgb(path.read_bytes(), max_pixels), None
    except ImageRejected as rejected:
        return None, f"image {path} cannot be used ({rejected}): its questions get no answer"


def _capped_question(processor: OwlProcessor, question: Question, max_tokens: int, problems: list[str]) -> str:
    text, cut = processor.cap_tokens(question.question, max_tokens)
    if cut:
        problems.append(f"question {question.question_id} is longer than {max_tokens} tokens: cut to them")
    return text


@torch.no_grad()
def answer_eval_set(model: OwlModel, processor: OwlProcessor, eval_set: EvalSet, model_id: str,
                    max_new_tokens: int = 512, batch_size: int = 32, log: Callable[[str], None] = print,
                    max_question_tokens: int = 512, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[dict]:
    """Greedy answers in the official answer format, in question order. A question whose image cannot be used
    gets an empty answer and a problem line; generation batches the first turns of all dialogues."""
    model.eval()
    images: dict[str, Image.Image | None] = {}
    for question in eval_set.questions:
        if question.image not in images:
            images[question.image], problem = _load_case_image(eval_set.folder, question.image, max_image_pixels)
            if problem:
                eval_set.problems.append(problem)
    texts = {q.question_id: _capped_question(processor, q, max_question_tokens, eval_set.problems)
             for q in eval_set.questions}
    answers: dict[int, str] = {}
    groups = [g for g in dialogues(eval_set.questions) if images[g[0].image] is not None]
    started = time.perf_counter()
    turn = 0
    while True:  # turn k of every dialogue that has one, batched
        pending = [g for g in groups if len(g) > turn]
        if not pending:
            break
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            prompts = [processor.encode_prompt(texts[g[turn].question_id], [images[g[turn].image]],
                                               history=[(texts[q.question_id], answers[q.question_id])
                                                        for q in g[:turn]])
                       for g in chunk]
            batch = processor.collate(prompts, padding_side="left")
            batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
            generated = model.generate(**batch, max_new_tokens=max_new_tokens)
            for group, tokens in zip(chunk, generated):
                answers[group[turn].question_id] = processor.decode(tokens)
        turn += 1
    log(f"owleval: answered {len(answers)}/{len(eval_set.questions)} questions in "
        f"{time.perf_counter() - started:.1f} s")
    return [_answer_record(q, answers.get(q.question_id, ""), model_id) for q in eval_set.questions]


def write_answers(answers: list[dict], path: str | Path) -> Path:
    return atomic_write_text(path, "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))


def read_answers(path: str | Path) -> tuple[list[dict], list[str]]:
    answers, problems = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                record["question_id"] = question_id_of(record)
                if not isinstance(record.get("answer", ""), str):
                    raise TypeError(f"answer is {record['answer']!r}, not a text")
                answers.append(record)
            except (json.JSONDecodeError, RecursionError, TypeError, ValueError) as error:
                problems.append(printable(f"{Path(path).name} line {number}: malformed ({error}); skipped"))
    return answers, problems


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())
