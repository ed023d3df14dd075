"""The data steps: shards -> raw pairs -> curated pairs, and the instruction conversations. Each reads its
inputs from the project, writes its Lance dataset (or folder) there, and returns what a user wants to see."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lance

from owl_pipeline import constants as C
from owl_pipeline.config import FilterConfig
from owl_pipeline.data.filters import filter_pairs
from owl_pipeline.data.ingest import find_shards, ingest
from owl_pipeline.data.instructions import build_instruction_table
from owl_pipeline.data.synthetic import generate_corpus
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.records import StepResult
from owl_pipeline.pipeline.steps import GROUP_DATA, INGEST_POOL, pipeline_step

Log = Callable[[str], None]


@dataclass(kw_only=True)
class RawShardsResult(StepResult):
    pairs: int | None = None  # shapes world: caption pairs generated
    shards: int | None = None
    injected_faults: dict[str, int] | None = None  # shapes world: rows per injected fault
    megabytes: float | None = None  # your shards: their size on disk


@dataclass(kw_only=True)
class RawPairsResult(StepResult):
    rows: int | None = None  # in the table now
    rows_added: int | None = None  # by this run
    mode: str | None = None  # full (every shard read again) | append (new shards only)
    shards_read: int | None = None
    shards_already_ingested: int | None = None
    skipped: dict[str, int] | None = None  # samples skipped, by reason
    failed_shards: dict[str, str] | None = None
    incomplete_shards: dict[str, str] | None = None  # read again when the file changes
    kept_shards: dict[str, str] | None = None  # replaced by an incomplete copy: their earlier rows stay
    problems: list[str] | None = None  # examples, escaped for printing
    lance_version: int | None = None
    images_per_s: int | None = None
    engine: str | None = None  # local | ray


@dataclass(kw_only=True)
class CuratedPairsResult(StepResult):
    rows_in: int | None = None
    rows_out: int | None = None
    removed: dict[str, int] | None = None  # by the first rule that removes a row
    failed: dict[str, int] | None = None  # rows each rule alone would remove
    seconds: float | None = None
    lance_version: int | None = None
    computed: dict[str, int] | None = None  # rows whose score was computed, per column
    source_version: int | None = None  # the raw_pairs version filtered
    engine: str | None = None


@dataclass(kw_only=True)
class InstructionDataResult(StepResult):
    rows_written: int | None = None
    rows_by_format: dict[str, int] | None = None
    skipped: dict[str, int] | None = None
    seconds: float | None = None
    lance_version: int | None = None


@pipeline_step(C.ASSET_RAW_SHARDS, reads=(), params=("raw_shards", "synthetic"),
               writes=lambda p: p.raw_shards if p.generated else None,  # your shards: read where they are
               description="Shapes world generated, or your img2dataset shards", group=GROUP_DATA,
               kinds=("webdataset",), external=lambda p: [] if p.generated else shard_files(p),
               watches=lambda p: [] if p.generated else [p.shard_folder()],
               code=("data/synthetic.py", "data/scenes.py", "data/image_hash.py"), result=RawShardsResult)
def raw_shards(project: Project, log: Log = print, tracking=None) -> RawShardsResult:
    """Generate shapes world, or check that the configured folder holds shards."""
    outputs = {"folder": str(project.raw_shards)}
    if project.generated:
        manifest = generate_corpus(project.raw_shards, project.config.synthetic, log=log)
        return RawShardsResult(name=C.ASSET_RAW_SHARDS, outputs=outputs, pairs=len(manifest.faults),
                               shards=len(manifest.shards), injected_faults=manifest.counts)
    shards = find_shards(project.shard_folder())
    if not shards:
        raise FileNotFoundError(f"no .tar or .parquet shards in {project.shard_folder()} (raw_shards in params)")
    return RawShardsResult(name=C.ASSET_RAW_SHARDS, outputs=outputs, shards=len(shards),
                           megabytes=round(sum(p.stat().st_size for p in shards) / 1e6, 1))


def shard_files(project: Project) -> list:
    """The shards ingestion reads: the configured (or generated) folder's, then the inbox's."""
    return find_shards(project.shard_folder()) + (find_shards(project.inbox) if project.inbox.is_dir() else [])


def on_ray(project: Project, step: str) -> bool:
    return project.config.engine[step] == "ray"


@pipeline_step(C.ASSET_RAW_PAIRS, reads=(C.ASSET_RAW_SHARDS,), params=("max_image_pixels",),
               writes=lambda p: p.raw_pairs, description="Every readable pair in one Lance table", group=GROUP_DATA,
               kinds=("lance",), external=shard_files, metrics=("rows", "rows_added"), pool=INGEST_POOL,
               persistent=True, watches=lambda p: [p.inbox, *([] if p.generated else [p.shard_folder()])],
               code=("data/ingest.py", "data/ray_ingest.py", "data/ray_session.py", "data/images.py",
                     "data/lance_io.py"), result=RawPairsResult)
def raw_pairs(project: Project, log: Log = print, tracking=None, only: list[Path] | None = None) -> RawPairsResult:
    """Bring the table up to date with the project's shard files; ``only``: with these of them (a Dagster
    partition run), the others left for their own runs (those already in the table stay)."""
    write_shards = None
    if on_ray(project, C.ASSET_RAW_PAIRS):
        from owl_pipeline.data.ray_ingest import write_shards_ray

        write_shards = write_shards_ray(project.config.ray)
    shards = shard_files(project)
    chosen = None if only is None else {Path(p).resolve() for p in only}
    defer = [] if chosen is None else [p for p in shards if p.resolve() not in chosen]
    report = ingest(shards, project.raw_pairs, log=log, max_pixels=project.config.max_image_pixels,
                    write_shards=write_shards, defer=defer, root=project.root)
    return RawPairsResult(
        name=C.ASSET_RAW_PAIRS, outputs={"lance": str(project.raw_pairs)},
        rows=lance.dataset(str(project.raw_pairs)).count_rows(), rows_added=report.rows_written, mode=report.mode,
        shards_read=report.shards, shards_already_ingested=report.shards_already_ingested,
        skipped=dict(report.skipped), failed_shards=report.failed_shards,
        incomplete_shards=report.incomplete_shards, kept_shards=report.kept_shards, problems=report.problems,
        lance_version=report.lance_version,
        images_per_s=round(report.rows_written / report.seconds) if report.seconds else None,
        engine=project.config.engine[C.ASSET_RAW_PAIRS])


def filter_config(project: Project) -> FilterConfig:
    """The filter rules with ``clip_model`` resolved (a folder, a bundled CLIP such as shapes-world-clip, a hub id)."""
    config = project.config.filters
    if not config.clip_model:
        return config
    return dataclasses.replace(config, clip_model=project.resolve_pretrained(config.clip_model))


def clip_model_files(project: Project) -> list:
    """The scoring CLIP's manifest and config, where it is a local folder (a retrained CLIP rescores)."""
    folder = Path(filter_config(project).clip_model or "")
    return [folder / C.PRETRAIN_MANIFEST_FILE, folder / "config.json"] if folder.is_dir() and folder.name else []


@pipeline_step(C.ASSET_CURATED_PAIRS, reads=(C.ASSET_RAW_PAIRS,), params=("filters",), writes=lambda p: p.curated_pairs,
               description="Pairs that pass the LAION/COYO rules", group=GROUP_DATA, kinds=("lance",),
               metrics=("rows_in", "rows_out"), external=clip_model_files,
               code=("data/filters.py", "data/ray_filters.py", "data/ray_session.py", "data/image_hash.py",
                     "data/clip_score.py", "data/report_plots.py", "data/lance_io.py"), result=CuratedPairsResult)
def curated_pairs(project: Project, log: Log = print, tracking=None) -> CuratedPairsResult:
    config = filter_config(project)
    if on_ray(project, C.ASSET_CURATED_PAIRS):
        from owl_pipeline.data.ray_filters import filter_pairs_ray

        report = filter_pairs_ray(project.raw_pairs, project.curated_pairs, config, project.config.ray, log=log,
                                  histogram_path=project.filter_histograms)
    else:
        report = filter_pairs(project.raw_pairs, project.curated_pairs, config, log=log,
                              histogram_path=project.filter_histograms)
    return CuratedPairsResult(name=C.ASSET_CURATED_PAIRS, outputs={"lance": str(project.curated_pairs),
                                                                   "histogram": str(project.filter_histograms)},
                              **report.to_dict(),
                              engine=project.config.engine[C.ASSET_CURATED_PAIRS])


def _instruction_files(project: Project) -> list[Path]:
    return [source.path for source in project.instruction_sources()]


@pipeline_step(C.ASSET_INSTRUCTIONS, reads=(C.ASSET_RAW_SHARDS,), params=("instructions", "max_image_pixels"),
               writes=lambda p: p.instructions, description="Instruction conversations in Lance", group=GROUP_DATA,
               kinds=("lance",), external=_instruction_files,
               code=("data/instructions.py", "data/images.py", "data/lance_io.py", "model/conversation.py"),
               result=InstructionDataResult)
def instruction_data(project: Project, log: Log = print, tracking=None) -> InstructionDataResult:
    report = build_instruction_table(project.instruction_sources(), project.instructions, log=log,
                                     max_pixels=project.config.max_image_pixels)
    return InstructionDataResult(name=C.ASSET_INSTRUCTIONS, outputs={"lance": str(project.instructions)},
                                 **report.to_dict())
