"""Asset checks. Blocking ones stop a run before training on bad data or registering an unscored model."""


from collections import Counter

import dagster as dg
import lance

from owl_pipeline import constants as C
from owl_pipeline.data.ingest import PAIR_SCHEMA
from owl_pipeline.data.synthetic import MANIFEST_FILE, CorpusManifest
from owl_pipeline.orchestration.resources import ProjectResource


def _faults_left(owl_project, dataset) -> dict[str, int]:
    """Shapes world: rows of the generated corpus whose injected fault the filters let through, by fault. Only the
    generated shards' rows are looked up: a shard dropped in the inbox numbers its keys from 0 too."""
    from owl_pipeline.data.ingest import IngestedRecord, shard_id, shard_names
    from owl_pipeline.pipeline.data_steps import shard_files

    if not (owl_project.generated and (owl_project.raw_shards / MANIFEST_FILE).is_file()):
        return {}
    faults = CorpusManifest.load(owl_project.raw_shards).faults
    folder = owl_project.shard_folder().resolve()
    # The names the rows were written with (the record's; the current files' where it has none).
    names = IngestedRecord.read(owl_project.raw_pairs, owl_project.root, log=lambda line: None).names or {
        shard_id(path, owl_project.root): name for path, name in shard_names(shard_files(owl_project)).items()}
    generated = {name for sid, name in names.items() if (owl_project.root / sid).resolve().parent == folder}
    rows = dataset.to_table(columns=["shard", "key"]).to_pydict()
    found = Counter(faults.get(key, "clean") for shard, key in zip(rows["shard"], rows["key"]) if shard in generated)
    return {fault: count for fault, count in sorted(found.items()) if fault != "clean"}


@dg.asset_check(asset=C.ASSET_CURATED_PAIRS, blocking=True,
                description="Enough rows, the normalized schema, and (shapes world) no injected fault left")
def curated_pairs_ready(project: ProjectResource) -> dg.AssetCheckResult:
    owl_project = project.project()
    dataset = lance.dataset(str(owl_project.curated_pairs))
    rows, minimum = dataset.count_rows(), owl_project.config.min_curated_rows
    problems = []
    if rows < minimum:
        problems.append(f"{rows} curated rows, fewer than min_curated_rows={minimum}")
    if dataset.schema != PAIR_SCHEMA:
        problems.append(f"schema differs from the normalized one: {dataset.schema}")
    leftover = _faults_left(owl_project, dataset)
    if leftover:
        problems.append(f"injected faults survived the filters: {leftover}")
    return dg.AssetCheckResult(passed=not problems, metadata={
        "rows": rows, "min_rows": minimum, "fault_rows_left": dg.MetadataValue.json(leftover),
        "problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=C.ASSET_INSTRUCTIONS, blocking=True, description="Conversations to train stage 2 on")
def instruction_data_ready(project: ProjectResource) -> dg.AssetCheckResult:
    rows = lance.dataset(str(project.project().instructions)).count_rows()
    return dg.AssetCheckResult(passed=rows > 0, metadata={"rows": rows})


@dg.asset_check(asset=C.ASSET_OWLEVAL, blocking=True,
                description="Evaluation finished: questions answered, the gate's score present and finite, the whole "
                            "eval set covered (accuracy where references exist)")
def owleval_scored(project: ProjectResource) -> dg.AssetCheckResult:
    from owl_pipeline.eval.owleval import load_eval_set
    from owl_pipeline.eval.report import GROUND_TRUTH_FILE, OwlEvalReport

    owl_project = project.project()
    report_path = owl_project.owleval_report_json
    if not report_path.is_file():
        return dg.AssetCheckResult(passed=False, metadata={"problem": f"{report_path} missing"})
    report = OwlEvalReport.read(report_path)
    has_references = (owl_project.owleval_dir() / "answer" / GROUND_TRUTH_FILE).is_file()
    problems = report.gate_problems(owl_project.config.registry.metric, load_eval_set(owl_project.owleval_dir()),
                                    has_references)
    return dg.AssetCheckResult(passed=not problems, metadata={
        "questions": report.questions, "answered": report.answered(), "scores": dg.MetadataValue.json(report.scores()),
        "problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=C.ASSET_REGISTERED, blocking=True,
                description="The candidate serves: models:/NAME@candidate loaded and answered its logged serving "
                            "example before the gate could move champion")
def candidate_serves(project: ProjectResource) -> dg.AssetCheckResult:
    from owl_pipeline.pipeline.graph import step

    registered = step(C.ASSET_REGISTERED).last_result(project.project())
    if registered is None or not registered.registered:
        return dg.AssetCheckResult(passed=True, metadata={"registered": False})  # tracking off: nothing to serve
    return dg.AssetCheckResult(passed=bool(registered.serves), metadata={
        "version": registered.version, "gate_reason": registered.gate_reason})


ALL_CHECKS = [curated_pairs_ready, instruction_data_ready, owleval_scored, candidate_serves]
