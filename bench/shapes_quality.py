"""The quality bar on the embedded default: the whole chain (data, base LLM, stage 1, stage 2) in a fresh
folder, timed step by step, then the three rungs:

1. the base LLM answering from the scene's description (text lookup, 400 fresh questions);
2. after stage 1, the frozen LLM saying held-out captions from the image alone (exact match and per
   attribute) and a linear probe reading each object's kind, color and column from the abstractor's tokens;
3. greedy answers to the held-out shapes-world questions, scored per type, beside chance (the most common
   answer per type in the training conversations) and the models before stage 2.

    python bench/shapes_quality.py [--params params.yaml] [--set stage1.max_steps=800 ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import lance  # noqa: E402
import yaml  # noqa: E402

from owl_pipeline.pipeline.graph import DATA_STEPS, TRAINING_STEPS  # noqa: E402
from owl_pipeline.pipeline.project import Project  # noqa: E402
from owl_pipeline.pipeline.runner import run_step  # noqa: E402
from owl_pipeline.config import PipelineConfig, from_mapping  # noqa: E402
from owl_pipeline.eval.owleval import answer_eval_set, load_eval_set, read_answers  # noqa: E402
from owl_pipeline.eval.report import Scorers, build_report, headline  # noqa: E402
from owl_pipeline.model.builders import from_pretrained  # noqa: E402
from owl_pipeline.train.loop import MODEL_DIR  # noqa: E402
from overrides import apply_overrides  # noqa: E402


def chance_accuracy(project: Project, eval_set, references) -> dict[str, float]:
    """Most common training answer per question text pattern's type, scored on the eval set."""
    answers_by_type = collections.defaultdict(collections.Counter)
    kinds = {q.question_id: q.question_type for q in eval_set.questions}
    expected = {r["question_id"]: r["answer"] for r in references}
    rows = lance.dataset(str(project.instructions)).to_table(columns=["turns"])["turns"].to_pylist()
    for turns in rows:
        for question, answer in zip(turns, turns[1:]):
            if question["role"] == "human" and answer["role"] == "ai":
                kind = _kind(question["text"])
                if kind:
                    answers_by_type[kind][answer["text"]] += 1
    scores = collections.defaultdict(list)
    for qid, kind in kinds.items():
        guess = answers_by_type[kind].most_common(1)[0][0] if answers_by_type[kind] else ""
        scores[kind].append(guess == expected[qid])
    overall = [v for values in scores.values() for v in values]
    return {"overall": sum(overall) / len(overall), **{k: sum(v) / len(v) for k, v in sorted(scores.items())}}


def _kind(question: str) -> str | None:
    prefixes = (("What color", "color"), ("What shape", "shape"), ("How many", "count"), ("Where", "position"))
    for prefix, kind in prefixes:
        if question.startswith(prefix):
            return kind
    return None


def evaluate(model_dir: Path, eval_set):
    model, processor = from_pretrained(model_dir)
    answers = answer_eval_set(model, processor, eval_set, "owl-shapes", max_new_tokens=12, log=lambda *_: None)
    summary = headline(build_report(eval_set, answers, "owl-shapes", Scorers(), log=lambda *_: None))
    return {"overall": summary["accuracy"], **summary["accuracy_by_type"]}


def rung2(model_dir: Path) -> dict[str, float]:
    from owl_pipeline.eval.image_probe import abstractor_features, caption_accuracy, fresh_scenes, linear_probe

    model, processor = from_pretrained(model_dir)
    captions = caption_accuracy(model, processor, fresh_scenes(100), image_size=64)
    train, test = fresh_scenes(400, seed=11), fresh_scenes(200, seed=12)
    probe = linear_probe(abstractor_features(model, processor, train), train,
                         abstractor_features(model, processor, test), test)
    return {**{f"caption_{k}": v for k, v in captions.items()}, **{f"probe_{k}": v for k, v in probe.items()}}


def rung1(model_dir: Path) -> dict[str, float]:
    from owl_pipeline.eval.text_probe import probe_items, text_recall

    model, processor = from_pretrained(model_dir)
    return text_recall(model.llm, processor, probe_items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--keep", help="project folder to keep (default: a temporary one); steps whose inputs and "
                        "settings did not change since the last bench in it are reused, e.g. to try stage-2 settings")
    parser.add_argument("--until", default="stage2_model", choices=("stage1_model", "stage2_model"),
                        help="stop after this step (stage1_model: print rung 2 only)")
    args = parser.parse_args()
    data = apply_overrides(yaml.safe_load(Path(args.params).read_text()), args.overrides)
    config = from_mapping(PipelineConfig, data, "params")
    with tempfile.TemporaryDirectory() as folder:
        project = Project(config, args.keep or folder)
        times = {}
        start = time.perf_counter()
        chain = (*DATA_STEPS, *TRAINING_STEPS)
        for name in chain[:chain.index(args.until) + 1]:
            began = time.perf_counter()
            run_step(name, project, log=lambda line: print("   ", line, flush=True) if "step" in line else None)
            times[name] = time.perf_counter() - began
        total = time.perf_counter() - start
        if args.until != "stage2_model":
            print(f"{args.until} done in {total:.0f} s; rung 2: {rung2(project.stage1 / MODEL_DIR)}")
            return
        eval_set = load_eval_set(project.owleval_dir())
        references, _ = read_answers(project.owleval_dir() / "answer" / "reference_answer.jsonl")
        text = rung1(project.base_llm / MODEL_DIR)
        image = rung2(project.stage1 / MODEL_DIR)
        rows = {"chance": chance_accuracy(project, eval_set, references),
                "untrained (base LLM)": evaluate(project.base_llm / MODEL_DIR, eval_set),
                "after stage 1": evaluate(project.stage1 / MODEL_DIR, eval_set),
                "after stage 2": evaluate(project.stage2 / MODEL_DIR, eval_set)}
    print(f"\noverrides: {' '.join(args.overrides) or '(none)'}")
    print(f"{'step':<20}{'seconds':>9}")
    for name, seconds in times.items():
        print(f"{name:<20}{seconds:>9.1f}")
    print(f"{'whole chain':<20}{total:>9.1f}")
    print("\nrung 1, text lookup of the base LLM: " + "  ".join(f"{k} {v:.3f}" for k, v in text.items()))
    print("rung 2, after stage 1 (captions from the image alone; linear probe on the abstractor's tokens): "
          + "  ".join(f"{k} {v:.3f}" for k, v in image.items()))
    columns = ["overall", "color", "shape", "count", "position"]
    print(f"\n{'model':<22}" + "".join(f"{c:>10}" for c in columns) + f"   ({len(eval_set.questions)} questions)")
    for name, scores in rows.items():
        print(f"{name:<22}" + "".join(f"{scores.get(c, 0.0):>10.3f}" for c in columns))


if __name__ == "__main__":
    main()
