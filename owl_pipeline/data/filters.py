"""LAION/COYO curation: each rule is a keep-mask over the whole table, computed with Arrow/numpy kernels.

Rules, in the order removals are attributed (a row removed by several rules counts under the first):
caption_chars, caption_words, english, similarity, nsfw, watermark, min_side, aspect, image_bytes,
caption_repeats, dup_url_text, dup_image_text, near_duplicate. Each has its documented default in FilterConfig.

``metadata_masks`` needs metadata columns only (the fast path, benchmarked on 1M-row parquet): ``row_masks``
(each row decides alone) and ``set_masks`` (rows compared across the table); ``filter_pairs`` adds what needs
image bytes or a model (hashes, perceptual hash, language ID, CLIP similarity) and writes the curated Lance
dataset plus a report. data/ray_filters.py applies the same functions on Ray (set-wide rules are ``SetRule``s:
a group statistic and a keep test, so the two engines differ only in how they group).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from owl_pipeline.config import FilterConfig
from owl_pipeline.data.image_hash import near_duplicates, perceptual_hash
from owl_pipeline.data.images import resized_jpeg
from owl_pipeline.data.ingest import PAIR_SCHEMA
from owl_pipeline.data.lance_io import write_lance

RULES = ("caption_chars", "caption_words", "english", "similarity", "nsfw", "watermark", "min_side", "aspect",
         "image_bytes", "caption_repeats", "dup_url_text", "dup_image_text", "near_duplicate")


# --- vectorized helpers -----------------------------------------------------------------------------------
def _numpy(array, fill) -> np.ndarray:
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False)


_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 32]] = True


def word_counts(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whitespace-separated words per string, counted on the raw UTF-8 buffer (Arrow's split kernels count
    the empty pieces between repeated spaces, and its regex kernel is 20x slower)."""
    array = pc.fill_null(column, "")
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] else np.zeros(0, np.uint8)
    space = (data == 32) | ((data >= 9) & (data <= 13))
    after_space = np.empty(len(data), dtype=bool)
    after_space[:1] = True
    after_space[1:] = space[:-1]
    after_space[offsets[:-1][offsets[:-1] < len(data)]] = True  # a string's first byte starts a word
    starts = np.flatnonzero(~space & after_space)
    return np.diff(np.searchsorted(starts, offsets))


def _dictionary_indices(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return _numpy(encoded.indices, -1).astype(np.int64)


def group_ids(*columns: pa.ChunkedArray | pa.Array | np.ndarray) -> np.ndarray:
    """A dense group id per row for the combination of values, numbered in order of first appearance.

    Each column is dictionary-encoded (or given as its dictionary indices); the index tuples are combined into
    one integer key, re-densified after each column so the product never overflows.
    """
    key = None
    for column in columns:
        indices = column if isinstance(column, np.ndarray) else _dictionary_indices(column)
        key = indices if key is None else key * (int(indices.max(initial=0)) + 1) + indices
        if len(columns) > 1:
            key = _dictionary_indices(pa.array(key))
    return key


def occurrence_counts(ids: np.ndarray) -> np.ndarray:
    """How many rows share each row's group."""
    return np.bincount(ids)[ids]


def first_rows(ids: np.ndarray) -> np.ndarray:
    """The first row (in table order) of each row's group. Ids are numbered in order of first appearance, so
    group g first appears where the running maximum id grows for the g-th time."""
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = ids[1:] > np.maximum.accumulate(ids)[:-1]
    return np.flatnonzero(first)[ids]


def row_masks(table: pa.Table, config: FilterConfig) -> dict[str, np.ndarray]:
    """Keep-masks of the rules that read one row's metadata; rules whose column is absent are left out."""
    masks: dict[str, np.ndarray] = {}
    names = set(table.column_names)
    caption = pc.fill_null(table["caption"], "")
    if config.min_caption_chars is not None:
        masks["caption_chars"] = _numpy(pc.utf8_length(pc.utf8_trim_whitespace(caption)), 0) >= config.min_caption_chars
    if config.min_caption_words is not None or config.max_caption_words is not None:
        words = word_counts(caption)
        masks["caption_words"] = ((words >= (config.min_caption_words or 0))
                                  & (words <= (config.max_caption_words or np.iinfo(np.int64).max)))
    if config.english_only and "language" in names:
        masks["english"] = _numpy(pc.equal(pc.utf8_lower(table["language"]), "en"), False)
    for rule, column, limit, passes in (("similarity", "similarity", config.min_similarity, np.greater_equal),
                                        ("nsfw", "nsfw", config.max_nsfw, np.less),
                                        ("watermark", "watermark", config.max_watermark, np.less)):
        if limit is not None and column in names:
            masks[rule] = passes(_numpy(table[column], np.nan), limit)  # a missing score (NaN) fails
    if "width" in names and "height" in names:
        width = _numpy(pc.cast(table["width"], pa.float64()), np.nan)
        height = _numpy(pc.cast(table["height"], pa.float64()), np.nan)
        short, long = np.minimum(width, height), np.maximum(width, height)
        if config.min_side is not None:
            masks["min_side"] = short >= config.min_side  # NaN and negative sizes fail here
        if config.max_aspect is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                masks["aspect"] = (short > 0) & (long / short <= config.max_aspect)
    if config.min_image_bytes is not None and "image_bytes" in names:
        masks["image_bytes"] = _numpy(table["image_bytes"], 0) >= config.min_image_bytes
    return masks


NULL_URL = "\x00null"  # a null URL groups with the other null URLs, apart from the empty string


def group_key_columns(table: pa.Table) -> dict[str, pa.ChunkedArray | pa.Array]:
    """The columns the set-wide rules group rows by, with nulls spelled out (both engines group by these)."""
    keys = {"caption_key": pc.fill_null(table["caption"], "")}
    if "url" in table.column_names:
        keys["url_key"] = pc.fill_null(table["url"], NULL_URL)
    if "image_sha256" in table.column_names:
        keys["image_sha256"] = table["image_sha256"]
    return keys


@dataclass(frozen=True)
class SetRule:
    """A rule that compares rows: a statistic of each row's group (the rows sharing ``keys``), then a keep test
    on it. The local path computes the statistic in numpy, the Ray path by a grouped aggregate joined back."""

    name: str
    keys: tuple[str, ...]  # columns of group_key_columns
    statistic: str  # "count": rows in the group; "first_row": the group's first row in table order
    limit: int | None = None  # "count" rules: the most rows a group may hold

    def keep(self, rows: np.ndarray, statistic: np.ndarray) -> np.ndarray:
        """The keep-mask of rows at positions ``rows`` whose group statistic is ``statistic``."""
        return statistic <= self.limit if self.statistic == "count" else rows == statistic


def set_rules(config: FilterConfig, key_columns) -> list[SetRule]:
    """The set-wide rules ``config`` turns on whose key columns exist, in RULES order."""
    candidates = [SetRule("caption_repeats", ("caption_key",), "count", config.max_caption_repeats)
                  if config.max_caption_repeats is not None else None,
                  SetRule("dup_url_text", ("url_key", "caption_key"), "first_row") if config.dedup_url_text else None,
                  SetRule("dup_image_text", ("image_sha256", "caption_key"), "first_row")
                  if config.dedup_image_text else None]
    return [rule for rule in candidates if rule is not None and set(rule.keys) <= set(key_columns)]


def set_masks(table: pa.Table, config: FilterConfig) -> dict[str, np.ndarray]:
    """Keep-masks of the rules that compare rows: caption repeats, and exact duplicates (the first row of a
    group is kept, in table order, whatever the other rules decide)."""
    keys = group_key_columns(table)
    rules = set_rules(config, keys)
    indices = {name: _dictionary_indices(keys[name]) for name in {k for rule in rules for k in rule.keys}}
    statistic = {"count": occurrence_counts, "first_row": first_rows}
    rows = np.arange(table.num_rows)
    return {rule.name: rule.keep(rows, statistic[rule.statistic](group_ids(*(indices[k] for k in rule.keys))))
            for rule in rules}


def metadata_masks(table: pa.Table, config: FilterConfig) -> dict[str, np.ndarray]:
    """Keep-masks of every rule that needs metadata columns only."""
    return {**row_masks(table, config), **set_masks(table, config)}


@dataclass
class RuleCounts:
    rows_in: int
    rows_out: int
    removed: dict[str, int]  # attributed to the first rule that removes a row; sums to rows_in - rows_out
    failed: dict[str, int]  # rows each rule alone would remove


def combine(masks: dict[str, np.ndarray], rows: int) -> tuple[np.ndarray, RuleCounts]:
    keep = np.ones(rows, dtype=bool)
    removed, failed = {}, {}
    for rule in RULES:
        if rule in masks:
            removed[rule] = int((keep & ~masks[rule]).sum())
            failed[rule] = int((~masks[rule]).sum())
            keep &= masks[rule]
    return keep, RuleCounts(rows, int(keep.sum()), removed, failed)


# --- what needs image bytes or a model --------------------------------------------------------------------
def image_digests(images: list[bytes]) -> dict[str, np.ndarray]:
    """sha256 hex, perceptual hash and byte length of each image."""
    return {"image_sha256": np.array([hashlib.sha256(data).hexdigest() for data in images], dtype=object),
            "phash": np.array([perceptual_hash(data) for data in images], dtype=np.uint64),
            "image_bytes": np.array([len(data) for data in images], dtype=np.int64)}


def image_columns(dataset: lance.LanceDataset, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """``image_digests`` of every image of ``dataset``, streaming the image column."""
    parts = [image_digests(batch.column(0).to_pylist())
             for batch in dataset.to_batches(columns=["image"], batch_size=batch_size)]
    empty = image_digests([])
    return {name: np.concatenate([empty[name]] + [part[name] for part in parts]) for name in empty}


def detect_languages(captions: list[str]) -> list[str]:
    """ISO 639-1 codes from py3langid, whose model ships inside the package (offline)."""
    import py3langid

    return [py3langid.classify(text)[0] if text.strip() else "" for text in captions]


def complete_languages(table: pa.Table) -> tuple[pa.Table, int]:
    """``table`` with its missing languages detected from the caption, and how many were."""
    missing = _numpy(pc.is_null(table["language"]), True)
    if not missing.any():
        return table, 0
    captions = pc.fill_null(table["caption"], "").to_pylist()
    detected = iter(detect_languages([c for c, m in zip(captions, missing) if m]))
    languages = [next(detected) if m else v for v, m in zip(table["language"].to_pylist(), missing)]
    table = table.set_column(table.schema.get_field_index("language"), "language", pa.array(languages, pa.string()))
    return table, int(missing.sum())


def score_panels(table: pa.Table) -> dict[str, np.ndarray]:
    """The per-row values the filter histograms show (NaN where a score is missing)."""
    def scores(name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.array([])
        return pc.fill_null(pc.cast(table[name], pa.float64()), np.nan).to_numpy(zero_copy_only=False)

    sides = np.minimum(table["width"].to_numpy(zero_copy_only=False), table["height"].to_numpy(zero_copy_only=False))
    return {"similarity": scores("similarity"), "nsfw": scores("nsfw"), "watermark": scores("watermark"),
            "caption words": word_counts(table["caption"]).astype(float), "min side": sides.astype(float),
            "image_bytes": scores("image_bytes")}


# --- the whole step ---------------------------------------------------------------------------------------
@dataclass
class FilterReport:
    counts: RuleCounts
    seconds: float
    lance_version: int | None = None
    computed: dict[str, int] = field(default_factory=dict)  # rows whose score we computed, per column
    source_version: int | None = None  # the version of the source that was filtered (read when filtering began)

    def to_dict(self) -> dict:
        return {"rows_in": self.counts.rows_in, "rows_out": self.counts.rows_out, "removed": self.counts.removed,
                "failed": self.counts.failed, "seconds": self.seconds, "lance_version": self.lance_version,
                "computed": self.computed, "source_version": self.source_version}


def stored_images(images: pa.Array | pa.ChunkedArray, config: FilterConfig) -> pa.Array | pa.ChunkedArray:
    """The kept rows' pictures as the curated table stores them: as downloaded, or scaled down to
    ``config.store_short_side`` (both engines write through this)."""
    if config.store_short_side is None:
        return images
    return pa.array([resized_jpeg(data, config.store_short_side) for data in images.to_pylist()], pa.binary())


def require_clip_model(missing_similarity: int, config: FilterConfig) -> None:
    """Rows without a similarity score need ``filters.clip_model`` to score them (the similarity rule is on)."""
    if missing_similarity and config.clip_model is None:
        raise ValueError(f"{missing_similarity} rows have no similarity score and filters.clip_model is not set: "
                         "name a CLIP model (local path or hub id) to score them, or set "
                         "filters.min_similarity to null to skip the rule")


def _complete_scores(table: pa.Table, dataset: lance.LanceDataset, config: FilterConfig,
                     computed: dict[str, int], log) -> pa.Table:
    """Fill language and similarity where missing (language ID; CLIP with ``config.clip_model``)."""
    if config.english_only:
        table, detected = complete_languages(table)
        if detected:
            computed["language"] = detected
    if config.min_similarity is not None:
        missing = _numpy(pc.is_null(table["similarity"]), True)
        if missing.any():
            require_clip_model(int(missing.sum()), config)
            from owl_pipeline.data.clip_score import score_missing_similarity

            similarity = score_missing_similarity(dataset, table, missing, config.clip_model, log)
            table = table.set_column(table.schema.get_field_index("similarity"), "similarity",
                                     pa.array(similarity, pa.float32()))
            computed["similarity"] = int(missing.sum())
    return table


def filter_pairs(source: str | Path, output: str | Path, config: FilterConfig, log=print,
                 histogram_path: str | Path | None = None) -> FilterReport:
    """Apply every rule to the Lance dataset at ``source``; write the kept rows to ``output``."""
    start = time.perf_counter()
    dataset = lance.dataset(str(source))
    metadata_columns = [f.name for f in PAIR_SCHEMA if f.name != "image"]
    table = dataset.to_table(columns=metadata_columns)
    log(f"filter: {table.num_rows} rows from {source} (version {dataset.version})")
    computed: dict[str, int] = {}
    table = _complete_scores(table, dataset, config, computed, log)
    derived = image_columns(dataset)
    table = table.append_column("image_sha256", pa.array(derived["image_sha256"], pa.string()))
    table = table.append_column("image_bytes", pa.array(derived["image_bytes"]))
    masks = metadata_masks(table, config)
    if config.near_dup_max_distance is not None:
        alive, _ = combine(masks, table.num_rows)
        masks["near_duplicate"] = ~near_duplicates(derived["phash"], alive, config.near_dup_max_distance)
    keep, counts = combine(masks, table.num_rows)
    kept = np.flatnonzero(keep)
    log(f"filter: keeping {counts.rows_out}/{counts.rows_in}; removed {counts.removed}")

    def batches():
        # Metadata from our table (computed language and similarity included), images from the source.
        for begin in range(0, len(kept), 2048):
            rows = kept[begin:begin + 2048]
            chunk = table.take(rows)
            images = stored_images(dataset.take(rows.tolist(), columns=["image"]).column("image"), config)
            columns = {name: images if name == "image" else chunk[name] for name in PAIR_SCHEMA.names}
            yield from pa.table(columns).cast(PAIR_SCHEMA).to_batches()

    written = write_lance(batches(), PAIR_SCHEMA, output, message=f"filter {source}@{dataset.version}")
    if histogram_path is not None:
        from owl_pipeline.data.report_plots import plot_filter_histograms

        plot_filter_histograms(score_panels(table), keep, histogram_path)
    return FilterReport(counts, time.perf_counter() - start, written.version, computed, dataset.version)
