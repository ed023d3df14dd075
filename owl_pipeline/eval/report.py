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
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from owl_pipeline import constants as C
from owl_pipeline.eval.human import HumanRatings
from owl_pipeline.eval.judge import LLMJudge, grade_score
from owl_pipeline.eval.owleval import EvalSet, Question, normalize, read_answers
from owl_pipeline.eval.similarity import SimilarityScorer
from owl_pipeline.files import atomic_write_text
from owl_pipeline.safe_text import printable

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


def load_answer_files(folder: Path, problems: list[str]) -> dict[str, list[dict]]:
    """Every ``folder/answer/*.jsonl`` read once: file name -> its well-formed records (problems collected)."""
    files = {}
    for path in sorted((folder / "answer").glob("*.jsonl")):
        records, bad = read_answers(path)
        problems.extend(bad)
        files[path.name] = [r for r in records if "question_id" in r]
    return files


def _by_question(records: list[dict]) -> dict[int, str]:
    return {int(r["question_id"]): str(r.get("answer", "")) for r in records}


def published_answer_sets(files: dict[str, list[dict]]) -> list[AnswerSet]:
    """Every answer file except the ground truth, named by its records' model_id."""
    sets = []
    for name, records in files.items():
        if name == GROUND_TRUTH_FILE:
            continue
        model_id = next((str(r["model_id"]) for r in records if r.get("model_id")),
                        name.removesuffix(".jsonl").removesuffix("_answer"))
        sets.append(AnswerSet(model_id, _by_question(records)))
    return sets


def reference_answers(files: dict[str, list[dict]], reference: str,
                      problems: list[str]) -> tuple[str, dict[int, str]] | None:
    """(name, answers) of the similarity reference: ``answer/<reference>_answer.jsonl``, else the ground truth."""
    for name in (f"{reference}_answer.jsonl", GROUND_TRUTH_FILE):
        if name in files:
            return name.removesuffix(".jsonl"), _by_question(files[name])
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
                bucket = buckets.setdefault(group, {metric: [] for metric in C.SCORE_METRICS})
                for metric in bucket:
                    if row.get(metric) is not None:
                        bucket[metric].append(row[metric])
        scores = {group: {C.METRIC_ACCURACY: _mean([float(v) for v in b[C.METRIC_ACCURACY]]),
                          C.METRIC_SIMILARITY: _mean(b[C.METRIC_SIMILARITY]),
                          C.METRIC_JUDGE: grade_score(b[C.METRIC_JUDGE]),
                          C.METRIC_HUMAN: grade_score(b[C.METRIC_HUMAN])} for group, b in buckets.items()}
        everything = buckets.get("all", {})
        return {"model_id": self.model_id, "ours": self.ours, "scores": scores,
                "judge_grades": dict(Counter(g or "none" for g in everything.get(C.METRIC_JUDGE, []))),
                "human_grades": dict(Counter(everything.get(C.METRIC_HUMAN, [])))}


def score_answer_set(answer_set: AnswerSet, eval_set: EvalSet, scorers: Scorers, ground_truth: dict[int, str],
                     reference: dict[int, str] | None, problems: list[str]) -> ModelReport:
    report = ModelReport(answer_set.model_id, answer_set.ours)
    shown = printable(answer_set.model_id, limit=60)  # from an answer file: never a terminal escape in a problem
    similarity = (scorers.similarity.score(answer_set.answers, reference)
                  if scorers.similarity is not None and reference else {})
    for question in eval_set.questions:
        qid = question.question_id
        if qid not in answer_set.answers:
            continue
        answer = answer_set.answers[qid]
        row: dict = {"answer": answer, C.METRIC_SIMILARITY: similarity.get(qid)}
        if not answer.strip():
            problems.append(f"{shown}: empty answer to question {qid}")
        if qid in ground_truth:
            row[C.METRIC_ACCURACY] = normalize(answer) == normalize(ground_truth[qid])
        if scorers.judge is not None:
            judgment = scorers.judge.grade(question.question, answer, (reference or {}).get(qid))
            row.update({C.METRIC_JUDGE: judgment.grade, "judge_reply": judgment.reply})
            if judgment.cut:
                problems.append(f"{shown}: the answer to question {qid} was cut to fit the judge")
            if judgment.grade is None:
                problems.append(f"{shown}: the judge gave no grade for question {qid} "
                                f"(reply {judgment.reply[:60]!r})")
        if scorers.human is not None:
            row[C.METRIC_HUMAN] = scorers.human.grades.get((answer_set.model_id, qid))
        report.rows[qid] = row
    return report


def build_report(eval_set: EvalSet, our_answers: list[dict], our_model_id: str, scorers: Scorers,
                 reference_name: str = "mPLUG_Owl_7b", log: Callable[[str], None] = print) -> dict:
    """The whole report as one JSON-ready dict: questions, every model's answers and scores, problems."""
    problems = list(eval_set.problems)
    if scorers.human is not None:
        problems.extend(scorers.human.problems)
    files = load_answer_files(eval_set.folder, problems)
    ground_truth = _by_question(files.get(GROUND_TRUTH_FILE, []))
    found = reference_answers(files, reference_name, problems)
    reference_id, reference = found if found else (None, None)
    ours = AnswerSet(our_model_id, {int(a["question_id"]): a.get("answer", "") for a in our_answers}, ours=True)
    answer_sets = [ours, *published_answer_sets(files)]
    if scorers.similarity is not None and reference:
        # Every answer and reference embedded in one call: the model batches texts of like length together, and
        # each model's scoring below reads the cache (the real set's 6 answer files: 15 s -> 9 s on 2 cores).
        scorers.similarity.embed([text for s in answer_sets for text in s.answers.values() if text.strip()]
                                 + list(reference.values()))
    models = []
    for answer_set in answer_sets:
        log(f"owleval: scoring {printable(answer_set.model_id, limit=60)} ({len(answer_set.answers)} answers)")
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
    """Our model's overall scores, keyed by C.SCORE_METRICS (None where not scored)."""
    ours = next(m for m in report["models"] if m["ours"])
    return ours["scores"].get("all", {})


def headline(report: dict) -> dict:
    """What a run summary shows: our overall scores, accuracy per question type and per ability (where set)."""
    ours = next(m for m in report["models"] if m["ours"])["scores"]
    summary = {k: v for k, v in our_scores(report).items() if v is not None}
    for prefix, key in (("type:", C.ACCURACY_BY_TYPE), ("ability:", C.ACCURACY_BY_ABILITY)):
        values = {g.removeprefix(prefix): s[C.METRIC_ACCURACY] for g, s in sorted(ours.items())
                  if g.startswith(prefix) and s.get(C.METRIC_ACCURACY) is not None}
        if values:
            summary[key] = values
    return summary


@dataclass(frozen=True)
class OwlEvalReport:
    """The report, read by attribute. ``document`` is the JSON-ready whole (``build_report``) that report.json,
    the HTML page and the rating sheet are written from."""

    document: dict

    @classmethod
    def read(cls, path: Path) -> OwlEvalReport:
        return cls(json.loads(Path(path).read_text()))

    @property
    def questions(self) -> int:
        return self.document["questions"]

    @property
    def eval_set(self) -> str:
        return self.document["eval_set"]

    @property
    def problems(self) -> list[str]:
        return self.document["problems"]

    def scores(self) -> dict[str, float]:
        """Our model's overall scores that were computed (accuracy where references exist, similarity, ...)."""
        return {k: v for k, v in our_scores(self.document).items() if v is not None}

    def headline(self) -> dict:
        return headline(self.document)

    def answered(self) -> int:
        """Questions our model gave an answer to."""
        ours = self.document["our_model"]
        return sum(1 for row in self.document["rows"] if row["answers"].get(ours, {}).get("answer"))

    def coverage_problem(self, eval_set: EvalSet) -> str | None:
        """Why our scores do not stand for the whole of ``eval_set`` (questions it has that our model has no row
        for, or rows for questions it lacks), or None: a gate compares like with like."""
        ours = self.document["our_model"]
        covered = {row["question_id"] for row in self.document["rows"] if ours in row["answers"]}
        wanted = {q.question_id: q.question_type or "untyped" for q in eval_set.questions}
        missing, extra = set(wanted) - covered, covered - set(wanted)
        if not missing and not extra:
            return None
        by_type = Counter(wanted[q] for q in missing)
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(by_type.items()))
        return (f"the report covers {len(covered & set(wanted))} of the eval set's {len(wanted)} questions"
                + (f" (missing: {what})" if missing else "")
                + (f", and {len(extra)} it does not have" if extra else ""))

    def gate_problems(self, metric: str, eval_set: EvalSet, has_references: bool) -> list[str]:
        """Why these scores cannot go before the registration gate (the blocking check's findings), or []."""
        scores = self.scores()
        value = scores.get(metric)
        found = [(self.questions == 0, "no questions"), (self.answered() == 0, "no question got an answer"),
                 (has_references and C.METRIC_ACCURACY not in scores, "references exist but no accuracy"),
                 (value is None, f"no {metric!r} score for the registration gate"),
                 (value is not None and not math.isfinite(value), f"the {metric!r} score is {value}, not finite")]
        coverage = self.coverage_problem(eval_set)
        return [text for failed, text in found if failed] + ([coverage] if coverage else [])

    def scores_by_model(self) -> dict[str, dict[str, float]]:
        """Every model's overall scores (ours and the published answer files'), the unscored left out."""
        return {m["model_id"]: {k: v for k, v in m["scores"]["all"].items() if v is not None}
                for m in self.document["models"]}


def write_report_json(report: dict, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False))  # a reader never sees a part
