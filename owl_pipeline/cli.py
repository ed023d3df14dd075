"""`owl` command line: thin wrappers over the library (owl_pipeline.pipeline runs the steps)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time unless the user opts in
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported


def _quiet_libraries() -> None:
    """No library chatter a user cannot act on: peft's call of a name transformers 5 deprecated, MLflow's
    database set-up notes, transformers' per-load notes and progress bars (set through the environment above,
    so a data step does not import transformers for it: 0.5-1 s less per process)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if "transformers" in sys.modules:  # imported before the environment was set (`main` called in-process)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


def _load_model_config(args):
    from owl_pipeline.config import OwlConfig

    return OwlConfig.from_yaml(args.config) if args.config else OwlConfig.from_name(args.preset)


def _project(args):
    from owl_pipeline.pipeline.project import load_project

    return load_project(args.project, args.params)


def _tracking(args, project):
    """MLflow tracking for this process; None with --no-tracking and on the other ranks of a distributed
    launch (rank 0 logs)."""
    from owl_pipeline.pipeline.ranks import is_main_process
    from owl_pipeline.registry.tracking import tracking_for

    if args.no_tracking or not is_main_process():
        return None
    return tracking_for(project.root, os.environ.get("MLFLOW_TRACKING_URI"))


def _log(line: str) -> None:
    print(line, flush=True)


def cmd_info(args) -> int:
    """Parameter counts of a preset or config, per component."""
    from owl_pipeline.model.builders import count_parameters

    counts = count_parameters(_load_model_config(args))
    print(f"{'component':<12}{'parameters':>16}")
    for name, count in counts.items():
        print(f"{name:<12}{count:>16,}")
    return 0


def _timed_step(name: str, args) -> None:
    """One step of the project in ``args``, framed by its name and time (or reported through dagster-pipes)."""
    from owl_pipeline.pipeline.graph import step
    from owl_pipeline.pipeline.runner import run_step

    project = _project(args)
    # Only the tracked steps open MLflow: importing it and opening its store costs a data step's process 2-3 s.
    tracking = _tracking(args, project) if step(name).tracked else None
    if getattr(args, "dagster_pipes", False):
        from owl_pipeline.orchestration.pipes_step import step_under_dagster_pipes

        step_under_dagster_pipes(name, project, tracking, args.force, log=_log)
        return
    started = time.perf_counter()
    _log(f"== {name}")
    run_step(name, project, tracking, log=_log, force=args.force)
    _log(f"== {name} done in {time.perf_counter() - started:.1f} s")


def cmd_step(args) -> int:
    _timed_step(args.name, args)
    return 0


def cmd_train(args) -> int:
    from owl_pipeline import constants as C

    _timed_step({0: C.ASSET_BASE_LLM, 1: C.ASSET_STAGE1, 2: C.ASSET_STAGE2}[args.stage], args)
    return 0


def cmd_run(args) -> int:
    """The main job: the whole asset graph materialized through Dagster, then a summary."""
    from owl_pipeline.orchestration.run import materialize_pipeline

    project = _project(args)
    started = time.perf_counter()
    result = materialize_pipeline(project.root, Path(args.params) if args.params else None,
                                  tracking=not args.no_tracking, verbose=args.verbose, force=args.force)
    _print_summary(project, time.perf_counter() - started)
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        checks = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        print(f"owl run: failed steps {failed}, failed checks {checks}; see the log above or `owl ui`",
              file=sys.stderr)
        return 1
    return 0


def _print_summary(project, seconds: float) -> None:
    from owl_pipeline import constants as C
    from owl_pipeline.pipeline.graph import step

    def last(name):  # the step's typed result (pipeline/*_steps.py), or None if it never ran
        return step(name).last_result(project)

    print(f"\nowl run: {seconds / 60:.1f} min, assets in {project.assets}")
    curated = last(C.ASSET_CURATED_PAIRS)
    if curated and curated.rows_out is not None:
        print(f"  data: {curated.rows_out} of {curated.rows_in} pairs kept; removed: {curated.removed}")
    for name in (C.ASSET_BASE_LLM, C.ASSET_STAGE1, C.ASSET_STAGE2):
        trained = last(name)
        if trained and trained.final_loss is not None:
            print(f"  {name}: loss {trained.first_loss:.3f} -> {trained.final_loss:.3f} in {trained.seconds} s"
                  + (f"  {trained.mlflow_run}" if trained.mlflow_run else ""))
    evaluation = last(C.ASSET_OWLEVAL)
    if evaluation and evaluation.accuracy is not None:
        by_type = "  ".join(f"{k} {v:.2f}" for k, v in (evaluation.accuracy_by_type or {}).items())
        print(f"  accuracy on {evaluation.questions} held-out questions: {evaluation.accuracy:.3f} ({by_type})")
    if evaluation and evaluation.similarity is not None:
        print(f"  similarity to the reference answers: {evaluation.similarity:.3f}; "
              f"report: {project.owleval / C.OWLEVAL_REPORT_HTML}")
    registered = last(C.ASSET_REGISTERED)
    if registered and registered.registered:
        print(f"  registered {registered.model_uri} aliases {registered.aliases}: {registered.gate_reason}")
    print("  look closer: `owl ui` (Dagster on :3000, MLflow on :5000), reports in assets/reports/")


def cmd_chat(args) -> int:
    """One answer from a saved model about one image (greedy unless --sample)."""
    from PIL import Image

    from owl_pipeline.model.builders import from_pretrained

    model, processor = from_pretrained(args.model)
    model.eval()
    images = [Image.open(path).convert("RGB") for path in args.image]
    batch = processor.collate([processor.encode_prompt(args.question, images)], padding_side="left")
    tokens = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=args.sample)
    print(processor.decode(tokens[0]))
    return 0


def cmd_eval(args) -> int:
    """Answer an OwlEval folder with a saved model; score it beside the published answers; write the report."""
    from owl_pipeline import constants as C
    from owl_pipeline.config import EvaluationConfig
    from owl_pipeline.eval.evaluate import evaluate_model

    config = EvaluationConfig(max_new_tokens=args.max_new_tokens, reference_answers=args.reference,
                              judge_model=args.judge, human_ratings=args.ratings)
    files = evaluate_model(args.model, args.owleval, Path(args.out), config, args.model_id, log=_log)
    from owl_pipeline.safe_text import printable

    for model_id, scores in files.report.scores_by_model().items():  # names from answer files: shown escaped
        print(f"{printable(model_id, limit=60):<20}" + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    summary = files.report.headline()
    if C.ACCURACY_BY_TYPE in summary:
        print("accuracy by type: " + " ".join(f"{k} {v:.3f}" for k, v in summary[C.ACCURACY_BY_TYPE].items()))
    print(f"answers: {files.answers}\nreport: {files.html}\nrating sheet: {files.rating_sheet} "
          f"(fill the grade column, then pass it back with --ratings)")
    for problem in files.report.problems:
        print(f"problem: {problem}")
    return 0


def cmd_convert(args) -> int:
    """Official mPLUG-Owl checkpoint <-> our model folder (model/convert.py)."""
    from owl_pipeline.model.convert import official_to_owl, owl_to_official

    convert = official_to_owl if args.direction == "official-to-owl" else owl_to_official
    convert(args.source, args.output, log=_log)
    return 0


def cmd_pretrain_llm(args) -> int:
    """The embedded default's base LLM, trained from a seed on the lookup curriculum."""
    from owl_pipeline.config import LLMPretrainConfig
    from owl_pipeline.train.pretrain_llm import pretrain_base_llm

    result = pretrain_base_llm(args.out, LLMPretrainConfig(seed=args.seed), log=_log)
    print(f"pretrain-llm: {result.folder} in {result.seconds / 60:.1f} min; text lookup {result.scores}")
    return 0


def cmd_pretrain_vision(args) -> int:
    """The embedded default's vision tower, pretrained from a seed as a tiny CLIP on fresh scenes."""
    from owl_pipeline.config import VisionPretrainConfig
    from owl_pipeline.train.pretrain_vision import pretrain_vision

    config = VisionPretrainConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    result = pretrain_vision(args.out, config, log=_log)
    print(f"pretrain-vision: {result.folder} in {result.seconds / 60:.1f} min; held out {result.scores}")
    return 0


def cmd_ui(args) -> int:
    from owl_pipeline.ui import serve

    return serve(Path(args.project), args.dagster_port, args.mlflow_port, args.host, automations=args.automations)


def build_parser() -> argparse.ArgumentParser:
    from owl_pipeline import constants as C

    parser = argparse.ArgumentParser(prog="owl", description="mPLUG-Owl training pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:  # its --help shows the defaults
        return commands.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)

    info = command("info", help="parameter counts of a model preset or config")
    info.add_argument("--preset", default="tiny", help="tiny | owl-1b | owl-7b")
    info.add_argument("--config", help="a model YAML (overrides --preset)")
    info.set_defaults(func=cmd_info)

    def project_args(command):
        command.add_argument("--project", default=".", help="project folder (assets/, mlruns/, params.yaml)")
        command.add_argument("--params", help="pipeline config (default: <project>/params.yaml)")
        command.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
        command.add_argument("--force", action="store_true",
                             help="run even when inputs and settings are unchanged since the last run")

    run = command("run", help="run the whole pipeline (the embedded default unless params say otherwise)")
    project_args(run)
    run.add_argument("-v", "--verbose", action="store_true", help="also print Dagster's DEBUG events")
    run.set_defaults(func=cmd_run)

    step = command("step", help="run one step of the pipeline (what dvc.yaml's stages call)")
    step.add_argument("name", metavar="NAME", help=f"the step: {', '.join(C.ASSET_ORDER)}")
    project_args(step)
    step.add_argument("--dagster-pipes", action="store_true",
                      help="report to the Dagster run that launched this process (dagster-pipes)")
    step.set_defaults(func=cmd_step)

    train = command("train", help="run one training stage (0: base LLM, 1: pretraining, 2: instructions)")
    train.add_argument("--stage", type=int, choices=(0, 1, 2), required=True,
                       help="0: the base LLM, 1: vision and abstractor on pairs, 2: LoRA on the instructions")
    project_args(train)
    train.set_defaults(func=cmd_train)

    chat = command("chat", help="ask a saved model about an image")
    chat.add_argument("question")
    chat.add_argument("--image", action="append", required=True, help="an image path (repeat for several)")
    chat.add_argument("--model", default="assets/stage2_model/model",
                      help="a folder written by save_pretrained (the default is relative to the current folder)")
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--sample", action="store_true", help="top-k 3 sampling, as the official demo")
    chat.set_defaults(func=cmd_chat)

    evaluate = command("eval", help="answer (and score) an OwlEval folder with a saved model")
    evaluate.add_argument("--model", default="assets/stage2_model/model",
                          help="a folder written by save_pretrained (the default is relative to the current folder)")
    evaluate.add_argument("--owleval", required=True, help="a folder in the official layout")
    evaluate.add_argument("--out", default="owleval_out", help="folder for answers.jsonl, report.{json,html}, "
                          "rating_sheet.csv, judge_cache.jsonl")
    evaluate.add_argument("--model-id", default="owl-pipeline")
    evaluate.add_argument("--max-new-tokens", type=int, default=512)
    evaluate.add_argument("--reference", default="mPLUG_Owl_7b",
                          help="answer/<NAME>_answer.jsonl is the reference for similarity scoring")
    evaluate.add_argument("--judge", help="a local causal LM (folder or hub id) that grades answers A-D")
    evaluate.add_argument("--ratings", help="a filled rating sheet (CSV) to fold into the report")
    evaluate.set_defaults(func=cmd_eval)

    convert = command("convert", help="convert an official mPLUG-Owl checkpoint to our model folder or back")
    convert.add_argument("direction", choices=("official-to-owl", "owl-to-official"))
    convert.add_argument("source", help="the checkpoint folder to read")
    convert.add_argument("output", help="the folder to write")
    convert.set_defaults(func=cmd_convert)

    pretrain = command("pretrain-llm", help="train the embedded default's base LLM (shipped as "
                              "owl_pipeline/bundled/shapes-world-llm) from a seed")
    pretrain.add_argument("--out", required=True, help="the folder to write (to ship it as the embedded default, "
                          "a release step: owl_pipeline/bundled/shapes-world-llm)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.set_defaults(func=cmd_pretrain_llm)

    vision = command("pretrain-vision", help="pretrain the embedded default's vision tower, a tiny CLIP "
                            "(shipped as owl_pipeline/bundled/shapes-world-clip), from a seed")
    vision.add_argument("--out", required=True, help="the folder to write (to ship it as the embedded default, "
                        "a release step: owl_pipeline/bundled/shapes-world-clip)")
    vision.add_argument("--seed", type=int, default=0)
    vision.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    vision.set_defaults(func=cmd_pretrain_vision)

    ui = command("ui", help="the Dagster UI and the MLflow UI for this project (Ctrl-C stops both)")
    ui.add_argument("--project", default=".", help="project folder (assets/, mlruns/, dagster_home/, params.yaml)")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    ui.add_argument("--automations", action="store_true",
                    help="start the inbox sensor and the retraining automation running (default: stopped)")
    ui.set_defaults(func=cmd_ui)
    return parser


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM (`dvc repro` or a scheduler stopping us) unwinds like Ctrl-C: loader workers end with their
    loader, the MLflow run is marked KILLED, locks are released."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (e.g. called from a test runner's thread)
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    _stop_cleanly_on_sigterm()
    from owl_pipeline.locks import LockHeldError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ConnectionError, LockHeldError) as error:  # ConnectionError: MLflow
        print(f"owl {args.command}: error: {error}{_workspace_hint(error)}", file=sys.stderr)
        return 2


def _workspace_hint(error: Exception) -> str:
    """Under `dvc exp run`, a settings error comes after DVC removed the stage's outputs: how to get them back."""
    from owl_pipeline.config import ConfigError

    if not (isinstance(error, ConfigError) and os.environ.get("DVC_EXP_NAME")):
        return ""
    return ("\n(dvc exp run removed this stage's outputs before it ran: run it again with a valid value, or get "
            "the workspace back with `git checkout params.yaml && dvc checkout`)")


def run() -> None:
    """The `owl` command (and `python -m owl_pipeline.cli`): ``main``, then exit. The objects alive by then are
    frozen first, so the interpreter's last garbage collections skip them: after the model stack was loaded those
    walk millions of objects, about a second of every `owl step` (every file and run is closed by then)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
