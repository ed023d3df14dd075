"""What the model gets wrong on shapes world's eval set, and how: for each question type, accuracy by the number
of shapes in the scene and by turn, and each wrong answer sorted by what it is (another shape's attribute in the
same scene, e.g. the column of a shape of another kind; or nothing in the scene, e.g. an empty column).

    python bench/shapes_errors.py PROJECT [PROJECT ...]

PROJECT is a folder `owl run` finished in (its params.yaml and assets/owleval_report/report.json); the scenes
are regenerated from the params' synthetic section, so the eval images themselves are not needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from owl_pipeline.data import scenes  # noqa: E402
from owl_pipeline.data.synthetic import eval_scenes  # noqa: E402
from owl_pipeline.pipeline.project import load_project  # noqa: E402

ATTRIBUTE = {"color": lambda s: s.color, "shape": lambda s: s.kind, "position": lambda s: scenes.COLUMNS[s.column]}
WRONG = ("another shape's", "not in the scene", "not a word of its kind")
WORDS = {"color": set(scenes.COLORS), "shape": set(scenes.SHAPES), "position": set(scenes.COLUMNS),
         "count": set(scenes.NUMBER_WORDS)}


def error_kind(kind: str, answer: str, scene: scenes.Scene) -> str:
    """Which of WRONG a wrong answer is."""
    if answer not in WORDS[kind]:
        return WRONG[2]
    if kind in ATTRIBUTE and answer in {ATTRIBUTE[kind](s) for s in scene.shapes}:
        return WRONG[0]
    return WRONG[1]


def analyse(project: Path) -> None:
    config = load_project(project).config.synthetic
    report = json.loads((project / "assets" / "owleval_report" / "report.json").read_text())
    answers = {row["question_id"]: row["answers"][report["our_model"]]["answer"].strip().lower().rstrip(".")
               for row in report["rows"]}
    right, asked = Counter(), Counter()
    errors: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    question_id = 0
    for image, scene, items in eval_scenes(config):
        for qa, category in items:
            question_id += 1
            answer = answers.get(question_id, "")
            group = (qa.kind, len(scene.shapes), category)
            asked[group] += 1
            if answer == qa.answer:
                right[group] += 1
                continue
            errors[qa.kind][error_kind(qa.kind, answer, scene)] += 1
            if len(examples[qa.kind]) < 4:
                examples[qa.kind].append(f"{image} {scenes.caption(scene)!r}: {qa.question} -> {answer!r} "
                                         f"(right: {qa.answer})")
    print(f"{project} (synthetic seed {config.seed})")
    print(f"{'type':<10}{'shapes':>7}{'turn':>13}{'right':>7}{'asked':>7}{'accuracy':>10}")
    for group in sorted(asked):
        print(f"{group[0]:<10}{group[1]:>7}{group[2]:>13}{right[group]:>7}{asked[group]:>7}"
              f"{right[group] / asked[group]:>10.2f}")
    print(f"{'wrong answers':<14}" + "".join(f"{w:>26}" for w in WRONG))
    for kind in scenes.QUESTION_TYPES:
        print(f"{kind:<14}" + "".join(f"{errors[kind][w]:>26}" for w in WRONG))
    for kind, lines in examples.items():
        for line in lines:
            print(f"  {kind}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="+", type=Path)
    for project in parser.parse_args().projects:
        analyse(project)


if __name__ == "__main__":
    main()
