"""Asset checks. Blocking ones stop a run before training on bad data or registering an unscored model."""


import json

import dagster as dg
import lance

from owl_pipeline import constants as C
from owl_pipeline.data.ingest import PAIR_SCHEMA
from owl_pipeline.data.synthetic import MANIFEST_FILE, CorpusManifest
from owl_pipeline.orchestration.resources import ProjectResource


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
    leftover = {}
    manifest_path = owl_project.raw_shards / MANIFEST_FILE
    if owl_project.generated and manifest_path.is_file():
        faults = CorpusManifest.load(owl_project.raw_shards).faults
        keys = dataset.to_table(columns=["key"])["key"].to_pylist()
        for key in keys:
            if faults.get(key, "clean") != "clean":
                leftover[faults[key]] = leftover.get(faults[key], 0) + 1
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
                description="The evaluation finished: every question answered, scores present where references exist")
def owleval_scored(project: ProjectResource) -> dg.AssetCheckResult:
    owl_project = project.project()
    report_path = owl_project.assets / C.ASSET_OWLEVAL / "report.json"
    if not report_path.is_file():
        return dg.AssetCheckResult(passed=False, metadata={"problem": f"{report_path} missing"})
    report = json.loads(report_path.read_text())
    has_references = (owl_project.owleval_dir() / "answer" / "reference_answer.jsonl").is_file()
    passed = report.get("questions", 0) > 0 and (not has_references or "accuracy" in report)
    return dg.AssetCheckResult(passed=passed, metadata={"questions": report.get("questions", 0),
                                                       "accuracy": report.get("accuracy", -1.0)})


ALL_CHECKS = [curated_pairs_ready, instruction_data_ready, owleval_scored]
