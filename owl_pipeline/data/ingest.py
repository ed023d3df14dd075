"""img2dataset shards (webdataset tars, or parquet with image bytes) with LAION or COYO metadata -> one Lance
dataset with a normalized schema. Streams: memory holds a chunk of one shard at a time (RECORDS_PER_CHUNK samples).

Promises:
- A sample's metadata is its ``.json`` joined with the shard's ``.parquet`` row of the same key (img2dataset
  writes both; the scores are often only in the parquet); a score in neither is null. A shard is rejected
  only when it has no URL or no caption column (the error names what it lacks).
- Every problem with one sample is skipped and counted by reason, never fatal: ``corrupt_image``,
  ``too_many_pixels`` (the header's size over the pixel cap, checked before decoding), ``bad_metadata`` (JSON
  of the wrong shape: a list, null, a string score, an object caption; a score that is not finite, a declared
  size outside int32; examples name shard and key),
  ``bad_caption_encoding``, ``incomplete_sample``, ``duplicate_key`` (a key twice in one shard: the first one
  is kept),
  ``unsafe_member_name`` (absolute, ``..``, or a link), ``not_a_file`` (a directory entry), ``truncated_shard``,
  ``member_too_large`` (over MAX_MEMBER_BYTES for its kind, or past MAX_SHARD_BYTES in its shard).
- A tar shard is complete only when it ends with the end-of-archive marker and holds every sample its
  ``.parquet`` sidecar lists as downloaded; otherwise ``incomplete_shard`` (one per shard, named with the reason:
  cut short, or still being copied). Its readable samples are ingested, the ingested-shards record lists it
  as incomplete, and it is read again when the file changes (then every shard is re-read, as for any change).
  A shard once ingested complete and then replaced by an incomplete copy (a re-copy cut short) is not read:
  its earlier rows stay until the file is whole again (``kept_shards`` says so).
- A shard is a regular file: a FIFO, a device, a dangling link or a link out of its folder named as a shard is
  ``not_a_regular_file`` (counted and named, never opened).
- Names and captions are stored as given and shown escaped (safe_text.printable) in logs and problems.
- Tar members are read, never extracted. A shard that cannot be read at all is recorded with its error.
- Shards are identified by the shortest path suffix that tells them apart (two folders may both hold
  ``00000.tar``), and a sample by its shard and key: img2dataset numbers keys from 0 in every download, so two
  downloads share keys without sharing a sample. Duplicates across shards are the filters' job (``dup_url_text``,
  ``dup_image_text``, near-duplicates).
- One ingestion at a time per dataset (a lock file beside it); the record of ingested shards is written
  atomically and only describes the version it was written with, so a crash never makes it lie.
"""

from __future__ import annotations

import json
import math
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from owl_pipeline.data.images import DEFAULT_MAX_PIXELS, ImageRejected, image_size
from owl_pipeline.data.lance_io import EmptyDatasetError, write_lance
from owl_pipeline.files import atomic_write_json, name_in, read_json_or_none
from owl_pipeline.locks import StepLock
from owl_pipeline.safe_text import printable

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


    def columns(self) -> set[str]:
        return {c for options in (*self.required.values(), *self.optional.values()) for c in options}


# Scores are optional: a shard whose samples carry none (nor its parquet) is ingested with null scores, which
# the filters then treat as failing their rule.
LAION = SourceSchema("laion",
                     required={"url": ("url", "URL"), "caption": ("caption", "TEXT")},
                     optional={"nsfw": ("punsafe",), "watermark": ("pwatermark",), "similarity": ("similarity",),
                               "language": ("LANGUAGE", "language"), "width": ("width", "WIDTH"),
                               "height": ("height", "HEIGHT")})
COYO = SourceSchema("coyo",
                    required={"url": ("url",), "caption": ("caption", "text")},
                    optional={"nsfw": ("nsfw_score_opennsfw2", "nsfw_score_gantman"),
                              "watermark": ("watermark_score",), "similarity": ("clip_similarity_vitb32",),
                              "language": ("language",), "width": ("width",), "height": ("height",)})
_SCORES = {"similarity", "nsfw", "watermark"}
_SCORE_COLUMNS = {c for schema in (LAION, COYO) for name in _SCORES for c in schema.optional[name]}
_TEXT_COLUMNS = {"url", "URL", "caption", "TEXT", "text", "LANGUAGE", "language"}
_SIZE_COLUMNS = {"width", "height", "WIDTH", "HEIGHT"}
_KNOWN_COLUMNS = LAION.columns() | COYO.columns()
MAX_PROBLEM_EXAMPLES = 50
# Largest member read, by kind (its header says its size before anything is read), and largest shard: a 300 MB
# caption compresses to 0.3 MB, so the archive's size on disk says nothing.
MAX_MEMBER_BYTES = {"txt": 1 << 16, "json": 1 << 20, "image": 1 << 25}
MAX_SHARD_BYTES = 1 << 33
RECORDS_PER_CHUNK = 512  # a tar's samples go on to the writer this many at a time, not the whole shard at once


def match_schema(columns: set[str], where: str) -> SourceSchema:
    """The schema whose required columns are present; where both are, the one more of whose columns are
    present (COYO's names are its own; LAION on a tie)."""
    matching = [schema for schema in (LAION, COYO) if not schema.missing(columns)]
    if not matching:
        raise SchemaError(f"{where} matches neither LAION (missing: {', '.join(LAION.missing(columns))}) nor COYO "
                          f"(missing: {', '.join(COYO.missing(columns))})")
    return max(matching, key=lambda schema: len(schema.columns() & columns))


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
    incomplete_shards: dict[str, str] = field(default_factory=dict)  # shard name -> why it is not complete
    kept_shards: dict[str, str] = field(default_factory=dict)  # replaced by an incomplete copy: earlier rows kept
    seconds: float = 0.0
    lance_version: int | None = None
    mode: str = "full"  # "full": every shard (re)read; "append": only new shards, added as a new version
    shards_already_ingested: int = 0
    problems: list[str] = field(default_factory=list)  # examples of skipped samples: "shard key: reason"
    max_pixels: int = DEFAULT_MAX_PIXELS
    seen: set[tuple[str, str]] = field(default_factory=set, repr=False)  # (shard, key) written so far

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = dict(self.skipped)
        del data["seen"]
        return data

    def skip(self, reason: str, shard: str = "", key: str = "", detail: str = "") -> None:
        self.skipped[reason] += 1
        if shard and len(self.problems) < MAX_PROBLEM_EXAMPLES:
            entry = f"{shard} {key}: {reason}" + (f" ({detail})" if detail else "")
            self.problems.append(printable(entry, limit=300))  # names and details come from the data


def _is_unsafe(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts


def _unreadable_member(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is not read, or None: links may point anywhere, directories hold no sample."""
    if member.issym() or member.islnk() or _is_unsafe(member.name):
        return "unsafe_member_name"
    return None if member.isfile() else "not_a_file"


def _member_too_large(member: tarfile.TarInfo, read_so_far: int) -> bool:
    suffix = PurePosixPath(member.name).name.partition(".")[2].lower()
    cap = MAX_MEMBER_BYTES["image"] if suffix in IMAGE_SUFFIXES else MAX_MEMBER_BYTES.get(suffix, 1 << 20)
    return member.size > cap or read_so_far + member.size > MAX_SHARD_BYTES


TOO_LARGE = "__too_large"  # a part standing for a member that was not read (the sample is skipped whole)


@dataclass
class TarEnding:
    """How a tar shard ended, as ``iter_tar_samples`` found it."""

    marker: bool = False  # the end-of-archive marker (a zero block) followed the last member
    keys: set[str] = field(default_factory=set)  # every sample key found


def iter_tar_samples(path: Path, skipped: Counter,
                     ending: TarEnding | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per webdataset sample, streaming; members are read, never extracted. A member
    larger than its kind's cap (or past the shard's) is passed over unread and marks its sample ``TOO_LARGE``.
    ``ending`` learns whether the archive ended with its end-of-archive marker, and the keys it held."""
    ending = ending if ending is not None else TarEnding()
    key, parts, read = None, {}, 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                reason = _unreadable_member(member)
                if reason:
                    skipped[reason] += 1
                    continue
                stem, _, suffix = PurePosixPath(member.name).name.partition(".")
                if key is not None and (stem != key or suffix.lower() in parts):
                    # Members of a sample are consecutive: the previous one is complete (a repeated suffix
                    # starts a second sample under the same key, counted as a duplicate downstream).
                    yield key, parts
                    parts = {}
                key = stem
                ending.keys.add(key)
                if _member_too_large(member, read):
                    parts[TOO_LARGE] = b""
                    continue
                read += member.size
                parts[suffix.lower()] = tar.extractfile(member).read()
            # The header read that ended the loop began at tar.offset: a whole zero block there is the marker;
            # nothing (a file cut at a member boundary) or part of a block is a shard cut short.
            ending.marker = tar.fileobj.tell() >= tar.offset + tarfile.BLOCKSIZE
    except (tarfile.ReadError, EOFError, OSError):
        if key is None:
            raise  # nothing readable at all: the caller records the shard as failed
        skipped["truncated_shard"] += 1  # the sample being read when the tar ended is lost
        return
    if key is not None:
        yield key, parts


def _sidecar_metadata(tar_path: Path, report: IngestReport) -> tuple[dict[str, dict], set[str]]:
    """The shard's ``.parquet`` (img2dataset writes one beside each tar) as key -> row, image columns left out,
    and the keys it lists as downloaded (``status`` success, or every key where there is no status column): the
    samples the tar must hold."""
    path = tar_path.with_suffix(".parquet")
    if not path.is_file():
        return {}, set()
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        report.problems.append(f"{path.name}: unreadable, samples keep their .json metadata only ({error})")
        return {}, set()
    if "key" not in table.column_names:
        return {}, set()
    keys = [str(k) for k in table["key"].to_pylist()]
    statuses = table["status"].to_pylist() if "status" in table.column_names else ["success"] * len(keys)
    downloaded = {k for k, status in zip(keys, statuses) if status == "success"}
    table = table.select([c for c in table.column_names if c in _KNOWN_COLUMNS | {"key"}])
    return {str(row.pop("key")): row for row in table.to_pylist()}, downloaded


def _incomplete_because(ending: TarEnding, downloaded: set[str]) -> str | None:
    """Why a tar shard is not complete, or None."""
    if not ending.marker:
        return "no end-of-archive marker: cut short, or still being copied"
    missing = downloaded - ending.keys
    if missing:
        return f"{len(missing)} samples its .parquet lists as downloaded are not in it, e.g. {min(missing)}"
    return None


MAX_DECLARED_SIDE = 2**31 - 1  # a declared width or height is stored as int32


def _number_problem(name: str, value) -> str | None:
    """A score must be a finite number (an infinite one would pass every threshold), a declared size an integer
    within int32 (the stored type): otherwise the whole sample is ``bad_metadata``, never a field made up."""
    if name in _SCORE_COLUMNS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} is {value!r}, not a number"
        if abs(value) > 1e300 or not math.isfinite(value):  # abs first: a 400-digit integer overflows isfinite
            return f"{name} is {value!r}, not a finite number"
    if name in _SIZE_COLUMNS:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is {value!r}, not an integer"
        if not 0 <= value <= MAX_DECLARED_SIDE:
            return f"{name} is {value}, outside 0..{MAX_DECLARED_SIDE}"
    return None


def metadata_problem(meta) -> str | None:
    """What is wrong with one sample's metadata, or None: a mapping whose known fields have their types and
    ranges."""
    if not isinstance(meta, dict):
        return f"metadata is a {type(meta).__name__}, not an object"
    for name, value in meta.items():
        if value is None:
            continue
        if name in _TEXT_COLUMNS and not isinstance(value, str):
            return f"{name} is a {type(value).__name__}"
        problem = _number_problem(name, value)
        if problem:
            return problem
    return None


def _sample_record(key: str, parts: dict[str, bytes], sidecar: dict[str, dict], shard: str,
                   report: IngestReport) -> dict | None:
    """One webdataset sample as a record: its JSON joined with the sidecar's row, the caption, the image; None
    (the reason counted) for a sample that cannot be one."""
    if TOO_LARGE in parts:
        report.skip("member_too_large", shard, key)
        return None
    image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
    if image is None or "json" not in parts:
        report.skip("incomplete_sample", shard, key)
        return None
    try:
        meta = json.loads(parts["json"])
        problem = metadata_problem(meta)
        if problem is None and "txt" in parts:
            meta["caption"] = parts["txt"].decode("utf-8")
    except UnicodeDecodeError:
        report.skip("bad_caption_encoding", shard, key)
        return None
    except json.JSONDecodeError as error:
        report.skip("bad_metadata", shard, key, f"not JSON: {error}")
        return None
    if problem:
        report.skip("bad_metadata", shard, key, problem)
        return None
    joined = {**sidecar.get(key, {}), **{k: v for k, v in meta.items() if v is not None}}
    problem = metadata_problem(joined)
    if problem:
        report.skip("bad_metadata", shard, key, problem)
        return None
    return {**joined, "key": key, "__image": image}


def _tar_records(path: Path, report: IngestReport, shard: str | None = None) -> Iterator[list[dict]]:
    """The shard's samples as records, ``RECORDS_PER_CHUNK`` at a time; an incomplete shard is named (its
    readable samples are still records)."""
    shard = shard or path.name
    sidecar, downloaded = _sidecar_metadata(path, report)
    ending, records = TarEnding(), []
    for key, parts in iter_tar_samples(path, report.skipped, ending):
        if len(records) == RECORDS_PER_CHUNK:
            yield records
            records = []
        record = _sample_record(key, parts, sidecar, shard, report)
        if record is not None:
            records.append(record)
    incomplete = _incomplete_because(ending, downloaded) if ending.keys else None
    if incomplete:
        report.incomplete_shards[path.name] = incomplete
        report.skip("incomplete_shard", shard, detail=incomplete)
    yield records


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


def _sample_problem(record: dict, report: IngestReport) -> str | None:
    """Why one record cannot become a row (its image size recorded when it can), or None."""
    if not isinstance(record["__image"], bytes):
        return "missing_image"
    if isinstance(record.get("caption", record.get("TEXT", record.get("text"))), bytes):
        return "bad_caption_encoding"
    if metadata_problem({k: v for k, v in record.items() if k != "__image"}):
        return "bad_metadata"
    try:
        record["__size"] = image_size(record["__image"], report.max_pixels)
    except ImageRejected as rejected:
        return rejected.reason
    return None


def _to_table(records: list[dict], shard: str, report: IngestReport) -> pa.Table | None:
    """Check images, map the metadata schema, and build one normalized batch."""
    good = []
    for record in records:
        problem = _sample_problem(record, report)
        if problem:
            report.skip(problem, shard, str(record.get("key", "")))
        elif (shard, str(record["key"])) in report.seen:
            report.skip("duplicate_key", shard, str(record["key"]))
        else:
            report.seen.add((shard, str(record["key"])))
            good.append(record)
    if not good:
        return None
    images = [r.pop("__image") for r in good]
    sizes = [r.pop("__size") for r in good]
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k in _KNOWN_COLUMNS | {"key"}} for r in good])
    schema = match_schema(set(table.column_names), where=shard)
    columns = normalize(table, schema)
    columns.update(
        key=pc.cast(table.column("key"), pa.string()), image=pa.array(images, pa.binary()),
        width=pa.array([s[0] for s in sizes], pa.int32()), height=pa.array([s[1] for s in sizes], pa.int32()),
        source=pa.array([schema.name] * len(good)), shard=pa.array([shard] * len(good)))
    return pa.table({f.name: columns[f.name] for f in PAIR_SCHEMA}, schema=PAIR_SCHEMA)


def _shard_batches(path: Path, shard: str, report: IngestReport) -> Iterator[pa.RecordBatch]:
    if path.suffix == ".tar":
        chunks = _tar_records(path, report, shard)
    elif path.suffix == ".parquet":
        chunks = _parquet_records(path, report)
    else:
        raise SchemaError(f"{path}: expected a webdataset .tar or a .parquet with image bytes")
    for records in chunks:
        table = _to_table(records, shard, report)
        if table is not None:
            yield from table.to_batches()


def shard_names(shards: list[Path]) -> dict[Path, str]:
    """Each shard's identity: its file name, or as many trailing folders as it takes to tell it apart."""
    paths = [Path(p).resolve() for p in shards]
    names = {}
    for path, original in zip(paths, shards):
        depth = 1
        while depth < len(path.parts) and sum(p.parts[-depth:] == path.parts[-depth:] for p in paths) > 1:
            depth += 1
        names[Path(original)] = "/".join(path.parts[-depth:])
    return names


def find_shards(folder: Path) -> list[Path]:
    """Webdataset tars, or parquet files with images when there are no tars (img2dataset writes both)."""
    tars = sorted(folder.glob("*.tar"))
    return tars or sorted(folder.glob("*.parquet"))


INGESTED_SHARDS_FILE = "owl_ingested_shards.json"  # inside the dataset folder: which files made which version
INGEST_LOCK_WAIT_SECONDS = 3600.0


def shard_id(path: Path, root: Path) -> str:
    """How the record names a shard file: by its place in the project ``root`` (files.name_in)."""
    return name_in(root, path)


def _shard_stats(shards: list[Path], root: Path) -> dict[str, list[int]]:
    # keyed by the whole path: the shard folder and the inbox may both hold a 00000.tar
    return {shard_id(p, root): [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in shards}


@dataclass
class IngestedRecord:
    """What the dataset's current version was made from: each shard file's [size, mtime_ns], the shards that
    were incomplete, and the name each shard's rows carry. Empty when unknown (then all are re-read)."""

    version: int | None = None
    shards: dict[str, list[int]] = field(default_factory=dict)
    incomplete: dict[str, str] = field(default_factory=dict)  # by file name, as IngestReport.incomplete_shards
    names: dict[str, str] = field(default_factory=dict)  # shard id -> the ``shard`` column of its rows

    @classmethod
    def read(cls, output: Path, root: Path, log) -> IngestedRecord:
        """The record of the dataset's current version; shards named by an absolute path inside ``root`` (as
        records written before shards were named relative to the project) are renamed as ``shard_id`` names them."""
        if not (output / "_versions").is_dir():
            return cls()
        data = read_json_or_none(output / INGESTED_SHARDS_FILE, warn=log)
        if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
            return cls()
        if data.get("version") != lance.dataset(str(output)).version:
            return cls()

        def ids(mapping) -> dict:
            return {shard_id(Path(name), root) if Path(name).is_absolute() else name: value
                    for name, value in dict(mapping or {}).items()}

        return cls(data["version"], ids(data["shards"]), dict(data.get("incomplete") or {}), ids(data.get("names")))


def ingest(shards: list[Path], output: str | Path, log=print, incremental: bool = True,
           max_pixels: int = DEFAULT_MAX_PIXELS, write_shards: WriteShards | None = None,
           defer: Collection[Path] = (), root: Path | None = None) -> IngestReport:
    """Read ``shards`` and write the normalized Lance dataset at ``output`` as a new version.

    Incremental (the default): when every shard the current version was made from is still there unchanged,
    only the new shards are read and appended; otherwise (a shard changed or went away) all are re-read. A shard
    recorded as complete whose file is replaced by one cut short (a re-copy that did not finish) is not read: its
    earlier rows stay until the file is whole again (``IngestReport.kept_shards``).
    Reading the record, writing and recording are one step under a lock on ``output``: two ingestions of the
    same new shards append them once. ``write_shards`` reads and writes the shards (default: here, streaming;
    data/ray_ingest.py: as Ray tasks). ``root`` (the project folder; default: the dataset's folder): shards
    inside it are recorded by their path relative to it, so a moved or copied project still knows them.

    ``defer``: shards among ``shards`` left for an ingestion of their own (a Dagster partition run); one already
    in the dataset is kept (its rows stay), a new one is not read now. Where the dataset must be re-read whole
    (a shard changed or went away, or no record names its shards), every shard is read, the deferred ones too:
    a table re-read without them would lose their rows."""
    output = Path(output)
    root = Path(root or output.parent).resolve()
    # Waits for another ingestion into the same dataset, then plans again (its shards are then known).
    with StepLock(output.with_name(f".{output.name}.lock"), what=f"ingestion into {output}", warn=log,
                  wait_seconds=INGEST_LOCK_WAIT_SECONDS):
        return _ingest_locked(shards, output, log, incremental, max_pixels, write_shards or _write_shards,
                              defer, root)


def why_not_a_shard(path: Path) -> str | None:
    """Only a regular file is read as a shard: a link counts if it resolves to one inside the shard's folder."""
    path = Path(path)
    if path.is_symlink():
        target = path.resolve()
        if not target.exists():
            return "a link to nothing"
        if path.parent.resolve() not in target.parents:
            return f"a link out of its folder, to {target}"
    if not path.is_file():  # a FIFO would block the read forever, a device never ends
        return "not a regular file"
    return None


def why_incomplete(path: Path) -> str | None:
    """Why a shard file is not whole, from its headers alone (no member is read), or None."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            pq.ParquetFile(path)
            return None
        ending = TarEnding()
        with tarfile.open(path, "r:") as tar:
            ending.keys = {PurePosixPath(m.name).name.partition(".")[0] for m in tar}
            ending.marker = tar.fileobj.tell() >= tar.offset + tarfile.BLOCKSIZE
    except (tarfile.TarError, EOFError, OSError, pa.ArrowException) as error:
        return f"unreadable: {error}"
    return _incomplete_because(ending, _sidecar_metadata(path, IngestReport())[1])


def _cut_copies(shards: list[Path], record: IngestedRecord, stats: dict[str, list[int]],
                root: Path) -> dict[Path, str]:
    """Shards the record holds as complete whose file changed and is now incomplete: path -> why."""
    cut = {}
    for path in shards:
        sid = shard_id(path, root)
        if sid in record.shards and stats[sid] != record.shards[sid] and Path(path).name not in record.incomplete:
            why = why_incomplete(path)
            if why:
                cut[path] = why
    return cut


@dataclass
class _Plan:
    """What one ingestion reads: the shards the dataset is made of afterwards, the ones read now, their stats as
    the record will hold them, the cut copies whose earlier rows stand for them, and what is not a shard."""

    shards: list[Path]
    todo: list[Path]
    stats: dict[str, list[int]]
    cut: dict[Path, str]
    odd: dict[Path, str]
    append: bool


def _plan(shards: list[Path], record: IngestedRecord, defer: Collection[Path], root: Path) -> _Plan:
    odd = {Path(p): why for p in shards if (why := why_not_a_shard(p))}
    shards = [p for p in shards if Path(p) not in odd]
    stats = _shard_stats(shards, root)
    cut = _cut_copies(shards, record, stats, root)
    stats.update({shard_id(p, root): record.shards[shard_id(p, root)] for p in cut})  # its rows stand for it
    known = record.shards
    if not (known and all(stats.get(name) == stat for name, stat in known.items())):
        # Re-read whole: every shard, the deferred ones too (a table re-read without them would lose their rows).
        return _Plan(shards, [p for p in shards if p not in cut], stats, cut, odd, append=False)
    waiting = {shard_id(p, root) for p in defer} - set(known)  # new shards left for their own runs
    shards = [p for p in shards if shard_id(p, root) not in waiting]
    return _Plan(shards, [p for p in shards if shard_id(p, root) not in known],
                 {name: stat for name, stat in stats.items() if name not in waiting}, cut, odd, append=True)


def _ingest_locked(shards: list[Path], output: Path, log, incremental: bool, max_pixels: int,
                   write_shards: WriteShards, defer: Collection[Path], root: Path) -> IngestReport:
    record = IngestedRecord.read(output, root, log) if incremental else IngestedRecord()
    plan = _plan(shards, record, defer, root)
    shards, todo, cut, unchanged = plan.shards, plan.todo, plan.cut, plan.append
    report = IngestReport(shards=len(todo), mode="append" if unchanged else "full",
                          shards_already_ingested=len(shards) - len(todo), max_pixels=max_pixels)
    for path, why in plan.odd.items():
        report.skip("not_a_regular_file", shard=path.name, detail=why)
        log(f"ingest: {printable(path.name)} is not read: {why}")
    for path, why in cut.items():
        report.kept_shards[Path(path).name] = why
        log(f"ingest: shard {printable(Path(path).name)} was replaced by an incomplete copy ({printable(why)}); "
            "its earlier rows stay until the file is whole again")
    names = shard_names(shards)
    if unchanged and not todo:
        report.lance_version = lance.dataset(str(output)).version
        log(f"ingest: all {len(shards)} shards already in {output} (version {report.lance_version})")
        return report
    row_names = {shard_id(p, root): names[p] for p in todo}
    for path in set(shards) - set(todo):  # rows kept from before carry the name they were written with
        row_names[shard_id(path, root)] = record.names.get(shard_id(path, root), names[path])
    version = _write_planned(plan, record.version, [row_names[shard_id(p, root)] for p in cut], names, output,
                             report, write_shards, log)
    for name, why in report.incomplete_shards.items():
        log(f"ingest: shard {printable(name)} is incomplete ({why}); it is read again when the file changes")
    atomic_write_json(output / INGESTED_SHARDS_FILE, {"version": version, "shards": plan.stats,
                                                      "incomplete": report.incomplete_shards, "names": row_names})
    return report


def _write_planned(plan: _Plan, recorded_version: int | None, cut_names: list[str], names: dict[Path, str],
                   output: Path, report: IngestReport, write_shards: WriteShards, log) -> int:
    """Read and write the plan's shards; in a whole re-read, the cut shards' rows come from the version that held
    them. The dataset's version now."""
    written = False
    try:
        version = write_shards(plan.todo, names, output, report, append=plan.append, log=log).version
        written = True
    except EmptyDatasetError:
        if not (plan.append or plan.cut):
            raise
        version = report.lance_version = lance.dataset(str(output)).version  # new shards all unreadable: counted
        log(f"ingest: no readable rows in the {len(plan.todo)} shards read; {output} stays at version {version}")
    if plan.cut and not plan.append:
        version = report.lance_version = _write_earlier_rows(output, recorded_version, cut_names, append=written)
    return version


def _write_earlier_rows(output: Path, version: int, shards: list[str], append: bool) -> int:
    """The rows of ``shards`` (their ``shard`` names) as dataset ``version`` held them, appended to the re-read
    dataset (or, where nothing else was read, as the whole new version); the version now current."""
    earlier = lance.dataset(str(output), version=version).to_table(filter=pc.field("shard").isin(shards))
    if not earlier.num_rows:
        return lance.dataset(str(output)).version
    return write_lance(earlier.to_batches(), PAIR_SCHEMA, output, append=append,
                       message=f"keep the rows of {len(shards)} shards replaced by incomplete copies").version


SHARD_ERRORS = (SchemaError, tarfile.ReadError, OSError)  # a shard that raises one of these is recorded as failed
WriteShards = Callable[[list[Path], dict[Path, str], Path, IngestReport, bool, Callable], lance.LanceDataset]


def read_shard(path: Path, shard: str, report: IngestReport) -> Iterator[pa.RecordBatch]:
    """One shard's normalized batches; a shard that fails part-way keeps what was read and is recorded."""
    try:
        yield from _shard_batches(Path(path), shard, report)
    except SHARD_ERRORS as error:
        report.failed_shards[Path(path).name] = str(error)


def _write_shards(shards: list[Path], names: dict[Path, str], output: Path, report: IngestReport, append: bool,
                  log) -> lance.LanceDataset:
    start = time.perf_counter()

    def batches() -> Iterator[pa.RecordBatch]:
        for number, path in enumerate(shards, 1):
            rows_before = report.rows_written
            for batch in read_shard(Path(path), names[Path(path)], report):
                report.rows_written += batch.num_rows
                yield batch
            if Path(path).name in report.failed_shards:
                log(f"ingest: shard {printable(Path(path).name)} failed: "
                    f"{printable(report.failed_shards[Path(path).name])}")
            log(f"ingest: shard {number}/{len(shards)} {printable(Path(path).name)}: "
                f"{report.rows_written - rows_before} rows")

    verb = "append" if append else "ingest"
    dataset = write_lance(batches(), PAIR_SCHEMA, output, message=f"{verb} {len(shards)} shards", append=append)
    report.lance_version = dataset.version
    report.seconds = time.perf_counter() - start
    log_written(report, output, log)
    return dataset


def log_written(report: IngestReport, output: Path, log) -> None:
    log(f"ingest ({report.mode}): {report.rows_written} rows -> {output} (version {report.lance_version}) in "
        f"{report.seconds:.1f} s; skipped {dict(report.skipped)}")
