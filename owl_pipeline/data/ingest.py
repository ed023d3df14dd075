"""img2dataset shards (webdataset tars, or parquet with image bytes) with LAION or COYO metadata -> one Lance
dataset with a normalized schema. Streams shard by shard: memory holds one shard at a time.

Per-sample problems (corrupt image, bad caption encoding, unsafe member name, truncated tar) are skipped and
counted by reason; a shard that cannot be read at all is recorded with its error and the run goes on.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from owl_pipeline.data.lance_io import EmptyDatasetError, write_lance

PAIR_SCHEMA = pa.schema([
    ("key", pa.string()), ("image", pa.binary()), ("caption", pa.string()), ("url", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("similarity", pa.float32()), ("nsfw", pa.float32()),
    ("watermark", pa.float32()), ("language", pa.string()), ("source", pa.string()), ("shard", pa.string()),
])
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
IMAGE_COLUMNS = ("jpg", "image", "image_bytes", "bytes")


class SchemaError(ValueError):
    """A metadata file matches neither the LAION nor the COYO schema."""


@dataclass(frozen=True)
class SourceSchema:
    """How one metadata schema maps onto the normalized one: field -> candidate columns.

    Text fields take the first candidate present; score fields take the maximum of those present
    (COYO has two NSFW scores).
    """

    name: str
    required: dict[str, tuple[str, ...]]
    optional: dict[str, tuple[str, ...]]

    def missing(self, columns: set[str]) -> list[str]:
        return [" or ".join(options) for options in self.required.values() if not set(options) & columns]


LAION = SourceSchema("laion",
                     required={"url": ("url", "URL"), "caption": ("caption", "TEXT"), "nsfw": ("punsafe",),
                               "watermark": ("pwatermark",)},
                     optional={"similarity": ("similarity",), "language": ("LANGUAGE", "language"),
                               "width": ("width", "WIDTH"), "height": ("height", "HEIGHT")})
COYO = SourceSchema("coyo",
                    required={"url": ("url",), "caption": ("caption", "text"),
                              "nsfw": ("nsfw_score_opennsfw2", "nsfw_score_gantman"),
                              "watermark": ("watermark_score",)},
                    optional={"similarity": ("clip_similarity_vitb32",), "language": ("language",), "width": ("width",),
                              "height": ("height",)})
_SCORES = {"similarity", "nsfw", "watermark"}


def match_schema(columns: set[str], where: str) -> SourceSchema:
    """The schema whose required columns are present (COYO checked first: its columns are more specific)."""
    for schema in (COYO, LAION):
        if not schema.missing(columns):
            return schema
    raise SchemaError(f"{where} matches neither LAION (missing: {', '.join(LAION.missing(columns))}) nor COYO "
                      f"(missing: {', '.join(COYO.missing(columns))})")


def normalize(table: pa.Table, schema: SourceSchema) -> dict[str, pa.Array]:
    """The normalized metadata columns of ``table`` (vectorized); absent optional fields are nulls."""
    out = {}
    for name, options in {**schema.required, **schema.optional}.items():
        present = [table.column(c) for c in options if c in table.column_names]
        target = PAIR_SCHEMA.field(name).type
        if not present:
            out[name] = pa.nulls(table.num_rows, target)
        elif name in _SCORES:
            columns = [pc.cast(c, pa.float32(), safe=False) for c in present]
            out[name] = columns[0] if len(columns) == 1 else pc.max_element_wise(*columns)
        else:
            out[name] = pc.cast(present[0], target, safe=False)
    return out


# --- reading samples --------------------------------------------------------------------------------------
@dataclass
class IngestReport:
    shards: int = 0
    rows_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed_shards: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    lance_version: int | None = None
    mode: str = "full"  # "full": every shard (re)read; "append": only new shards, added as a new version
    shards_already_ingested: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = dict(self.skipped)
        return data


def image_size(data: bytes) -> tuple[int, int] | str:
    """(width, height) of decodable image bytes, or the reason they are not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: decode at 1/8 scale
            image.load()
            return size
    except Image.DecompressionBombError:
        return "image_too_large"
    except (OSError, SyntaxError, ValueError):
        return "corrupt_image"


def _is_unsafe(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts


def iter_tar_samples(path: Path, skipped: Counter) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per webdataset sample, streaming; members are read, never extracted."""
    key, parts = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if _is_unsafe(member.name):
                    skipped["unsafe_member_name"] += 1
                    continue
                stem, _, suffix = PurePosixPath(member.name).name.partition(".")
                if stem != key and key is not None:
                    yield key, parts  # members of a sample are consecutive: the previous one is complete
                    parts = {}
                key = stem
                parts[suffix.lower()] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, OSError):
        if key is None:
            raise  # nothing readable at all: the caller records the shard as failed
        skipped["truncated_shard"] += 1  # the sample being read when the tar ended is lost
        return
    if key is not None:
        yield key, parts


def _tar_records(path: Path, report: IngestReport) -> list[dict]:
    records = []
    for key, parts in iter_tar_samples(path, report.skipped):
        image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
        if image is None or "json" not in parts:
            report.skipped["incomplete_sample"] += 1
            continue
        try:
            meta = json.loads(parts["json"])
            if "txt" in parts:
                meta["caption"] = parts["txt"].decode("utf-8")
        except UnicodeDecodeError:
            report.skipped["bad_caption_encoding"] += 1
            continue
        except json.JSONDecodeError:
            report.skipped["bad_metadata_json"] += 1
            continue
        records.append({**meta, "key": key, "__image": image})
    return records


def _parquet_records(path: Path, report: IngestReport) -> Iterator[list[dict]]:
    parquet = pq.ParquetFile(path)
    image_column = next((c for c in IMAGE_COLUMNS if c in parquet.schema_arrow.names), None)
    if image_column is None:
        raise SchemaError(f"{path} has no image bytes column (one of {', '.join(IMAGE_COLUMNS)})")
    index = 0
    for batch in parquet.iter_batches(batch_size=2048):
        records = batch.to_pylist()
        for record in records:
            record["__image"] = record.pop(image_column)
            record.setdefault("key", f"{path.stem}{index:06d}")
            index += 1
        yield records


def _to_table(records: list[dict], shard: str, report: IngestReport) -> pa.Table | None:
    """Check images, map the metadata schema, and build one normalized batch."""
    good, sizes = [], []
    for record in records:
        size = image_size(record["__image"]) if isinstance(record["__image"], bytes) else "missing_image"
        if isinstance(size, str):
            report.skipped[size] += 1
            continue
        caption = record.get("caption", record.get("TEXT", record.get("text")))
        if isinstance(caption, bytes):
            report.skipped["bad_caption_encoding"] += 1
            continue
        good.append(record)
        sizes.append(size)
    if not good:
        return None
    images = [r.pop("__image") for r in good]
    table = pa.Table.from_pylist(good)
    schema = match_schema(set(table.column_names), where=shard)
    columns = normalize(table, schema)
    columns.update(
        key=pc.cast(table.column("key"), pa.string()), image=pa.array(images, pa.binary()),
        width=pa.array([s[0] for s in sizes], pa.int32()), height=pa.array([s[1] for s in sizes], pa.int32()),
        source=pa.array([schema.name] * len(good)), shard=pa.array([shard] * len(good)))
    return pa.table({f.name: columns[f.name] for f in PAIR_SCHEMA}, schema=PAIR_SCHEMA)


def _shard_batches(path: Path, report: IngestReport) -> Iterator[pa.RecordBatch]:
    if path.suffix == ".tar":
        chunks = iter([_tar_records(path, report)])
    elif path.suffix == ".parquet":
        chunks = _parquet_records(path, report)
    else:
        raise SchemaError(f"{path}: expected a webdataset .tar or a .parquet with image bytes")
    for records in chunks:
        table = _to_table(records, path.name, report)
        if table is not None:
            yield from table.to_batches()


def find_shards(folder: Path) -> list[Path]:
    """Webdataset tars, or parquet files with images when there are no tars (img2dataset writes both)."""
    tars = sorted(folder.glob("*.tar"))
    return tars or sorted(folder.glob("*.parquet"))


INGESTED_SHARDS_FILE = "owl_ingested_shards.json"  # inside the dataset folder: which files made which version


def _shard_stats(shards: list[Path]) -> dict[str, list[int]]:
    # keyed by the whole path: the shard folder and the inbox may both hold a 00000.tar
    return {str(Path(p).resolve()): [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in shards}


def _known_shards(output: Path) -> dict[str, list[int]]:
    """The shard files the dataset's current version was made from; {} when unknown (then all are re-read)."""
    record = output / INGESTED_SHARDS_FILE
    if not record.is_file() or not (output / "_versions").is_dir():
        return {}
    data = json.loads(record.read_text())
    return data["shards"] if data.get("version") == lance.dataset(str(output)).version else {}


def ingest(shards: list[Path], output: str | Path, log=print, incremental: bool = True) -> IngestReport:
    """Read ``shards`` and write the normalized Lance dataset at ``output`` as a new version.

    Incremental (the default): when every shard the current version was made from is still there unchanged,
    only the new shards are read and appended; otherwise (a shard changed or went away) all are re-read."""
    output = Path(output)
    stats = _shard_stats(shards)
    known = _known_shards(output) if incremental else {}
    unchanged = bool(known) and all(stats.get(name) == stat for name, stat in known.items())
    todo = [p for p in shards if str(Path(p).resolve()) not in known] if unchanged else list(shards)
    report = IngestReport(shards=len(todo), mode="append" if unchanged else "full",
                          shards_already_ingested=len(shards) - len(todo))
    if unchanged and not todo:
        report.lance_version = lance.dataset(str(output)).version
        log(f"ingest: all {len(shards)} shards already in {output} (version {report.lance_version})")
        return report
    try:
        version = _write_shards(todo, output, report, append=unchanged, log=log).version
    except EmptyDatasetError:
        if not unchanged:
            raise
        version = report.lance_version = lance.dataset(str(output)).version  # new shards all unreadable: counted
        log(f"ingest: no readable rows in the {len(todo)} new shards; {output} stays at version {version}")
    (output / INGESTED_SHARDS_FILE).write_text(json.dumps({"version": version, "shards": stats}))
    return report


def _write_shards(shards: list[Path], output: Path, report: IngestReport, append: bool, log) -> lance.LanceDataset:
    start = time.perf_counter()

    def batches() -> Iterator[pa.RecordBatch]:
        for number, path in enumerate(shards, 1):
            rows_before = report.rows_written
            try:
                for batch in _shard_batches(Path(path), report):
                    report.rows_written += batch.num_rows
                    yield batch
            except (SchemaError, tarfile.ReadError, OSError) as error:
                report.failed_shards[Path(path).name] = str(error)
                log(f"ingest: shard {Path(path).name} failed: {error}")
            log(f"ingest: shard {number}/{len(shards)} {Path(path).name}: "
                f"{report.rows_written - rows_before} rows")

    verb = "append" if append else "ingest"
    dataset = write_lance(batches(), PAIR_SCHEMA, output, message=f"{verb} {len(shards)} shards", append=append)
    report.lance_version = dataset.version
    report.seconds = time.perf_counter() - start
    log(f"ingest ({report.mode}): {report.rows_written} rows -> {output} (version {dataset.version}) in "
        f"{report.seconds:.1f} s; skipped {dict(report.skipped)}")
    return dataset
