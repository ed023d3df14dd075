"""The OwlEval report: our answers beside every published answer file, each scored the same ways.

Scores, per model, overall and per ability (a-f) and question type:
- ``accuracy``: normalized exact match, where the set has ``answer/reference_answer.jsonl`` (shapes world);
- ``similarity``: embedding cosine to the reference answers (default: the published mPLUG-Owl 7B answers);
- ``judge``: the LLM judge's A-D grades as a score (A=1 ... D=0), with the grade counts;
- ``human``: the same from an imported rating sheet.
Problems (a malformed line, a missing image, an empty answer, a judge with no grade) are listed, never raised.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from owl_pipeline.eval.human import HumanRatings
from owl_pipeline.eval.judge import LLMJudge, grade_score
from owl_pipeline.eval.owleval import EvalSet, Question, normalize, read_answers
from owl_pipeline.eval.similarity import SimilarityScorer

GROUND_TRUTH_FILE = "reference_answer.jsonl"


@dataclass
class Scorers:
    similarity: SimilarityScorer | None = None
    judge: LLMJudge | None = None
    human: HumanRatings | None = None


@dataclass
class AnswerSet:
    model_id: str
    answers: dict[int, str]  # question_id -> answer
    ours: bool = False


def published_answer_sets(folder: Path, problems: list[str]) -> list[AnswerSet]:
    """Every answer file in ``folder/answer`` except the ground truth, named by its records' model_id."""
    sets = []
    for path in sorted((folder / "answer").glob("*.jsonl")):
        if path.name == GROUND_TRUTH_FILE:
            continue
        records, bad = read_answers(path)
        problems.extend(bad)
        model_id = next((str(r["model_id"]) for r in records if r.get("model_id")), path.stem.removesuffix("_answer"))
        sets.append(AnswerSet(model_id, {int(r["question_id"]): str(r.get("answer", "")) for r in records
                                         if "question_id" in r}))
    return sets


def reference_answers(folder: Path, reference: str, problems: list[str]) -> tuple[str, dict[int, str]] | None:
    """(name, answers) of the similarity reference: ``answer/<reference>_answer.jsonl``, else the ground truth."""
    for path in (folder / "answer" / f"{reference}_answer.jsonl", folder / "answer" / GROUND_TRUTH_FILE):
        if path.is_file():
            records, bad = read_answers(path)
            problems.extend(bad)
            return path.stem, {int(r["question_id"]): str(r.get("answer", "")) for r in records}
    problems.append(f"no reference answers ({reference}_answer.jsonl or {GROUND_TRUTH_FILE}): no similarity score")
    return None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _groups(question: Question) -> list[str]:
    kind = question.question_type or ("multi_turn" if question.multi_turn else "single_turn")
    return ["all", *(f"ability:{a}" for a in question.ability), f"type:{kind}"]


@dataclass
class ModelReport:
    model_id: str
    ours: bool
    rows: dict[int, dict] = field(default_factory=dict)  # question_id -> answer and its scores

    def summary(self, questions: list[Question]) -> dict:
        """Each score's mean per group ("all", "ability:a", "type:color", ...) and the grade counts."""
        buckets: dict[str, dict[str, list]] = {}
        for question in questions:
            row = self.rows.get(question.question_id)
            if row is None:
                continue
            for group in _groups(question):
                bucket = buckets.setdefault(group, {"accuracy": [], "similarity": [], "judge": [], "human": []})
                for metric in bucket:
                    if row.get(metric) is not None:
                        bucket[metric].append(row[metric])
        scores = {group: {"accuracy": _mean([float(v) for v in b["accuracy"]]),
                          "similarity": _mean(b["similarity"]), "judge": grade_score(b["judge"]),
                          "human": grade_score(b["human"])} for group, b in buckets.items()}
        everything = buckets.get("all", {})
        return {"model_id": self.model_id, "ours": self.ours, "scores": scores,
                "judge_grades": dict(Counter(g or "none" for g in everything.get("judge", []))),
                "human_grades": dict(Counter(everything.get("human", [])))}


def score_answer_set(answer_set: AnswerSet, eval_set: EvalSet, scorers: Scorers, ground_truth: dict[int, str],
                     reference: dict[int, str] | None, problems: list[str]) -> ModelReport:
    report = ModelReport(answer_set.model_id, answer_set.ours)
    similarity = (scorers.similarity.score(answer_set.answers, reference)
                  if scorers.similarity is not None and reference else {})
    for question in eval_set.questions:
        qid = question.question_id
        if qid not in answer_set.answers:
            continue
        answer = answer_set.answers[qid]
        row: dict = {"answer": answer, "similarity": similarity.get(qid)}
        if not answer.strip():
            problems.append(f"{answer_set.model_id}: empty answer to question {qid}")
        if qid in ground_truth:
            row["accuracy"] = normalize(answer) == normalize(ground_truth[qid])
        if scorers.judge is not None:
            judgment = scorers.judge.grade(question.question, answer, (reference or {}).get(qid))
            row.update(judge=judgment.grade, judge_reply=judgment.reply)
            if judgment.grade is None:
                problems.append(f"{answer_set.model_id}: the judge gave no grade for question {qid} "
                                f"(reply {judgment.reply[:60]!r})")
        if scorers.human is not None:
            row["human"] = scorers.human.grades.get((answer_set.model_id, qid))
        report.rows[qid] = row
    return report


def build_report(eval_set: EvalSet, our_answers: list[dict], our_model_id: str, scorers: Scorers,
                 reference_name: str = "mPLUG_Owl_7b", log: Callable[[str], None] = print) -> dict:
    """The whole report as one JSON-ready dict: questions, every model's answers and scores, problems."""
    problems = list(eval_set.problems)
    if scorers.human is not None:
        problems.extend(scorers.human.problems)
    ground_truth_path = eval_set.folder / "answer" / GROUND_TRUTH_FILE
    ground_truth = ({int(r["question_id"]): str(r["answer"]) for r in read_answers(ground_truth_path)[0]}
                    if ground_truth_path.is_file() else {})
    found = reference_answers(eval_set.folder, reference_name, problems)
    reference_id, reference = found if found else (None, None)
    ours = AnswerSet(our_model_id, {int(a["question_id"]): a.get("answer", "") for a in our_answers}, ours=True)
    answer_sets = [ours, *published_answer_sets(eval_set.folder, problems)]
    models = []
    for answer_set in answer_sets:
        log(f"owleval: scoring {answer_set.model_id} ({len(answer_set.answers)} answers)")
        models.append(score_answer_set(answer_set, eval_set, scorers, ground_truth, reference, problems))
    return {
        "eval_set": str(eval_set.folder), "questions": len(eval_set.questions), "our_model": our_model_id,
        "similarity_reference": reference_id,
        "judge": scorers.judge.model_id if scorers.judge else None,
        "models": [m.summary(eval_set.questions) for m in models],
        "rows": [{"question_id": q.question_id, "image": q.image, "question": q.question, "ability": q.ability,
                  "question_type": q.question_type, "multi_turn": q.multi_turn,
                  "ground_truth": ground_truth.get(q.question_id),
                  "answers": {m.model_id: m.rows[q.question_id] for m in models if q.question_id in m.rows}}
                 for q in eval_set.questions],
        "problems": problems,
    }


def our_scores(report: dict) -> dict:
    """Our model's overall scores: {"accuracy": ..., "similarity": ..., "judge": ..., "human": ...}."""
    ours = next(m for m in report["models"] if m["ours"])
    return ours["scores"].get("all", {})


def headline(report: dict) -> dict:
    """What a run summary shows: our overall scores, accuracy per question type and per ability (where set)."""
    ours = next(m for m in report["models"] if m["ours"])["scores"]
    summary = {k: v for k, v in our_scores(report).items() if v is not None}
    for prefix, key in (("type:", "accuracy_by_type"), ("ability:", "accuracy_by_ability")):
        values = {g.removeprefix(prefix): s["accuracy"] for g, s in sorted(ours.items())
                  if g.startswith(prefix) and s.get("accuracy") is not None}
        if values:
            summary[key] = values
    return summary


def write_report_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
