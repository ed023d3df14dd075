"""The OwlEval runner: reads the official layout, answers with the official template, writes official answers.

    folder/questions.jsonl        {image, question_id, question, ability, category[, question_type]}
    folder/cases/<image>          the pictures
    folder/answer/*.jsonl         {image, question_id, question, answer, model_id}: published or reference answers

Multi-turn questions (category ``multi_turn``) on one image are answered in order, each with the earlier
turns in the prompt. Problems with the input (a malformed line, a missing image, an unknown ability code) are
collected and reported; they never stop the run.
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

from owl_pipeline.model.owl import OwlModel
from owl_pipeline.model.processor import OwlProcessor

ABILITIES = {"a": "instruction understanding", "b": "visual understanding", "c": "optical character recognition",
             "d": "knowledge transfer", "e": "reasoning", "f": "multi-turn dialogue"}


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
            abilities = [a.strip() for a in str(record.get("ability", "")).split(",") if a.strip()]
            unknown = [a for a in abilities if a not in ABILITIES]
            if unknown:
                problems.append(f"questions.jsonl line {number}: unknown ability code(s) {unknown}; ignored")
            category = record.get("category", "single_turn")
            questions.append(Question(image=record["image"], question_id=int(record["question_id"]),
                                      question=record["question"], ability=[a for a in abilities if a in ABILITIES],
                                      categories=list(category) if isinstance(category, list) else [category],
                                      question_type=record.get("question_type")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            problems.append(f"questions.jsonl line {number}: malformed ({error}); skipped")
    return EvalSet(folder, questions, problems)


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


@torch.no_grad()
def answer_eval_set(model: OwlModel, processor: OwlProcessor, eval_set: EvalSet, model_id: str,
                    max_new_tokens: int = 512, batch_size: int = 32, log: Callable[[str], None] = print) -> list[dict]:
    """Greedy answers in the official answer format, in question order. A question whose image is missing
    gets an empty answer and a problem line; generation batches the first turns of all dialogues."""
    model.eval()
    images: dict[str, Image.Image | None] = {}
    for question in eval_set.questions:
        if question.image not in images:
            path = eval_set.folder / "cases" / question.image
            images[question.image] = Image.open(path).convert("RGB") if path.is_file() else None
            if images[question.image] is None:
                eval_set.problems.append(f"image {path} not found: its questions get no answer")
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
            prompts = [processor.encode_prompt(g[turn].question, [images[g[turn].image]],
                                               history=[(q.question, answers[q.question_id]) for q in g[:turn]])
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers), encoding="utf-8")
    return path


def read_answers(path: str | Path) -> tuple[list[dict], list[str]]:
    answers, problems = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                answers.append(json.loads(line))
            except json.JSONDecodeError as error:
                problems.append(f"{Path(path).name} line {number}: malformed ({error}); skipped")
    return answers, problems


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())
