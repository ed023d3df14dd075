"""LAION/COYO curation on Ray Data (``engine: {curated_pairs: ray}``): the rules of data/filters.py over a
dataset too big for one process, keeping the same rows with the same per-rule counts as the local path. The
rules are the local path's own functions; only how rows are grouped differs (shuffles instead of numpy).

- Per-row rules run on Arrow batches in Ray tasks (``row_masks``, ``image_digests``, ``complete_languages``);
  CLIP scoring, where the similarity column is missing, runs in an actor pool (one model per actor).
- Set-wide rules (``filters.set_rules``: caption repeats, exact duplicates) group by the same key columns
  (``group_key_columns``); each group statistic (a count, or the group's first row) is an aggregate joined back,
  and the rule's own ``keep`` test decides.
- Near-duplicates (data/image_hash.py): among the rows still kept, rows sharing one perceptual hash collapse onto
  the first of them; the distinct hashes are banded (``band_values``), grouped by (band, value), and compared
  within a bucket (``pairs_within``). Those pairs, few beside the rows, reach the driver, where ``first_kept``
  applies the local path's rule.

Rows are identified by their position in the source dataset (computed from Lance's row address), which is the
order "first" refers to; kept rows are written in that order with their images taken from the source.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from owl_pipeline.config import FilterConfig, RayConfig
from owl_pipeline.data.filters import (RULES, FilterReport, RuleCounts, SetRule, combine, complete_languages,
                                       group_key_columns, image_digests, require_clip_model, row_masks, score_panels,
                                       set_rules, stored_images)
from owl_pipeline.data.image_hash import band_values, first_kept, near_duplicate_rows, pairs_within
from owl_pipeline.data.ingest import PAIR_SCHEMA
from owl_pipeline.data.lance_io import EmptyDatasetError
from owl_pipeline.data.ray_session import ray_session, shuffle_partitions

HISTOGRAM_SAMPLE_ROWS = 200_000  # rows drawn for the filter histograms
READ_BLOCK_ROWS = 10_000  # rows (with their images) per read task; more blocks than this only add overhead
_METADATA = [f.name for f in PAIR_SCHEMA if f.name != "image"]


def _mask_column(rule: str) -> str:
    return f"keep_{rule}"


# --- per-row work (Ray tasks) -----------------------------------------------------------------------------
def _positions(addresses: np.ndarray, fragment_starts: np.ndarray) -> np.ndarray:
    """Row positions in the dataset from Lance row addresses (fragment id << 32 | offset in the fragment)."""
    return fragment_starts[(addresses >> 32).astype(np.int64)] + (addresses & 0xFFFFFFFF).astype(np.int64)


def _digest_batch(batch: pa.Table, config: FilterConfig, fragment_starts: np.ndarray, keep_images: bool) -> pa.Table:
    """Row position, languages completed, image sha256 / pHash / byte length; the image kept only for CLIP."""
    rows = _positions(batch["_rowaddr"].to_numpy().astype(np.uint64), fragment_starts)
    if config.english_only:
        batch, _ = complete_languages(batch)
    digests = image_digests(batch["image"].to_pylist())
    batch = batch.drop_columns(["_rowaddr"] + ([] if keep_images else ["image"]))
    return (batch.append_column("row", pa.array(rows, pa.int64()))
            .append_column("image_sha256", pa.array(digests["image_sha256"], pa.string()))
            .append_column("image_bytes", pa.array(digests["image_bytes"], pa.int64()))
            .append_column("phash", pa.array(digests["phash"], pa.uint64())))


class ClipSimilarityActor:
    """One CLIP model per actor, scoring the rows of each batch whose similarity is missing."""

    def __init__(self, clip_model: str):
        import torch

        from owl_pipeline.data.clip_score import ClipScorer

        torch.set_num_threads(1)  # one core per actor, as Ray reserves it
        self.scorer = ClipScorer(clip_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = pc.is_null(batch["similarity"]).to_numpy(zero_copy_only=False)
        similarity = pc.fill_null(batch["similarity"], np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
        if missing.any():
            rows = np.flatnonzero(missing)
            captions = pc.fill_null(batch["caption"], "").take(rows).to_pylist()
            similarity[rows] = self.scorer(batch["image"].take(rows).to_pylist(), captions)
        index = batch.schema.get_field_index("similarity")
        return batch.set_column(index, "similarity", pa.array(similarity, pa.float32())).drop_columns(["image"])


def _row_rule_batch(batch: pa.Table, config: FilterConfig) -> pa.Table:
    """The per-row rules' masks, and the keys the set-wide rules group by (as the local path groups)."""
    for rule, mask in row_masks(batch, config).items():
        batch = batch.append_column(_mask_column(rule), pa.array(mask))
    for name, column in group_key_columns(batch).items():
        if name not in batch.column_names:
            batch = batch.append_column(name, column)
    return batch


# --- set-wide rules (shuffles) ----------------------------------------------------------------------------
def _joined_with(ds, aggregate, keys: tuple[str, ...], partitions: int):
    """``ds`` with ``aggregate`` of its group beside each row.

    ``ds`` is materialized first: it feeds both the aggregate and the join, and Ray Data would otherwise run its
    whole plan once per branch, so each chained rule doubled the reads and image hashing before it (8 reads of
    the source for three rules)."""
    ds = ds.materialize()
    summary = ds.groupby(list(keys), num_partitions=partitions).aggregate(aggregate)
    return ds.join(summary, join_type="left_outer", num_partitions=partitions, on=keys)


def _set_rule_batch(batch: pa.Table, rule: SetRule) -> pa.Table:
    """The rule's keep test on the group statistic joined beside each row."""
    keep = rule.keep(batch["row"].to_numpy(), batch["statistic"].to_numpy(zero_copy_only=False))
    return batch.drop_columns(["statistic"]).append_column(_mask_column(rule.name), pa.array(keep))


def _set_rules(ds, config: FilterConfig, partitions: int, key_columns: list[str]):
    """filters.set_rules, each statistic a grouped aggregate (a count, or the first row) joined back."""
    from ray.data.aggregate import Count, Min

    for rule in set_rules(config, key_columns):
        statistic = Count(alias_name="statistic") if rule.statistic == "count" else Min("row", alias_name="statistic")
        ds = _joined_with(ds, statistic, rule.keys, partitions)
        ds = ds.map_batches(_set_rule_batch, batch_format="pyarrow", batch_size=None, fn_kwargs=dict(rule=rule))
    return ds


# --- near-duplicates --------------------------------------------------------------------------------------
def _masks_of(batch: pa.Table) -> dict[str, np.ndarray]:
    """The keep-mask columns of a batch, by rule."""
    return {rule: batch[_mask_column(rule)].to_numpy(zero_copy_only=False)
            for rule in RULES if _mask_column(rule) in batch.column_names}


def _kept_by_every_rule(batch: pa.Table) -> np.ndarray:
    return combine(_masks_of(batch), batch.num_rows)[0]


def _alive_batch(batch: pa.Table) -> pa.Table:
    """``alive``: kept by every rule so far (the near-duplicate rule compares only those rows)."""
    return batch.append_column("alive", pa.array(_kept_by_every_rule(batch)))


def _band_batch(batch: pa.Table, max_distance: int) -> pa.Table:
    """One row per (distinct hash, band): the band's bits are the bucket key."""
    hashes = batch["phash"].to_numpy().astype(np.uint64)
    values = band_values(hashes, max_distance)
    return pa.table({"band": np.repeat(np.arange(len(values), dtype=np.int8), len(hashes)),
                     "band_value": values.ravel(), "phash": np.tile(hashes, len(values)),
                     "leader": np.tile(batch["leader"].to_numpy(), len(values))})


def _bucket_edges(bucket: pa.Table, max_distance: int) -> pa.Table:
    """pairs_within one bucket, as a table."""
    pairs = pairs_within(bucket["phash"].to_numpy(), bucket["leader"].to_numpy(), max_distance)
    return pa.table({"earlier": pairs[:, 0], "later": pairs[:, 1]})


def near_duplicate_edges(leaders, max_distance: int, partitions: int) -> np.ndarray:
    """(earlier, later) leader rows within ``max_distance`` bits, found bucket by bucket; shape (E, 2)."""
    from ray.data.aggregate import Count
    from ray.data.expressions import col

    if max_distance == 0:  # equal hashes were collapsed onto their first row already
        return np.zeros((0, 2), dtype=np.int64)
    banded = leaders.map_batches(_band_batch, batch_format="pyarrow",
                                 fn_kwargs=dict(max_distance=max_distance)).materialize()  # read twice below
    keys = ("band", "band_value")
    sizes = banded.groupby(list(keys), num_partitions=partitions).aggregate(Count(alias_name="members"))
    crowded = banded.join(sizes.filter(expr=col("members") >= 2), join_type="inner", num_partitions=partitions,
                          on=keys)
    edges = crowded.groupby(list(keys), num_partitions=partitions).map_groups(
        _bucket_edges, batch_format="pyarrow", fn_kwargs=dict(max_distance=max_distance))
    import ray

    tables = [table for table in ray.get(edges.to_arrow_refs()) if table.num_rows]
    if not tables:
        return np.zeros((0, 2), dtype=np.int64)
    table = pa.concat_tables(tables)
    return np.stack([table["earlier"].to_numpy(), table["later"].to_numpy()], axis=1)


def _near_duplicate_batch(batch: pa.Table, duplicates: np.ndarray) -> pa.Table:
    alive = batch["alive"].to_numpy(zero_copy_only=False)
    rows = batch["row"].to_numpy()
    leader = pc.fill_null(batch["leader"], -1).to_numpy()
    keep = ~alive | ~near_duplicate_rows(rows, leader, duplicates)
    return batch.drop_columns(["alive", "leader"]).append_column(_mask_column("near_duplicate"), pa.array(keep))


def _near_duplicate_rule(ds, config: FilterConfig, partitions: int):
    from ray.data.aggregate import Min
    from ray.data.expressions import col

    ds = ds.map_batches(_alive_batch, batch_format="pyarrow").materialize()
    # The leader of a hash: its first row among the rows still kept.
    leaders = (ds.filter(expr=col("alive")).groupby("phash", num_partitions=partitions)
               .aggregate(Min("row", alias_name="leader")).materialize())
    edges = near_duplicate_edges(leaders, config.near_dup_max_distance, partitions)
    ds = ds.join(leaders, join_type="left_outer", num_partitions=partitions, on=("phash",))
    return ds.map_batches(_near_duplicate_batch, batch_format="pyarrow",
                          fn_kwargs=dict(duplicates=first_kept(edges)))


# --- counting and writing ---------------------------------------------------------------------------------
def _count_batch(batch: pa.Table) -> pa.Table:
    _, counts = combine(_masks_of(batch), batch.num_rows)
    return pa.table({"rows_in": [counts.rows_in], "rows_out": [counts.rows_out],
                     **{f"removed.{rule}": [n] for rule, n in counts.removed.items()},
                     **{f"failed.{rule}": [n] for rule, n in counts.failed.items()}})


def rule_counts(masks) -> RuleCounts:
    """The local path's RuleCounts, summed over the batches of a dataset of mask columns."""
    total: dict[str, int] = defaultdict(int)
    for partial in masks.map_batches(_count_batch, batch_format="pyarrow").take_all():
        for name, value in partial.items():
            total[name] += int(value)
    return RuleCounts(total["rows_in"], total["rows_out"],
                      {r: total[f"removed.{r}"] for r in RULES if f"removed.{r}" in total},
                      {r: total[f"failed.{r}"] for r in RULES if f"failed.{r}" in total})


def _keep_batch(batch: pa.Table) -> pa.Table:
    return batch.append_column("keep", pa.array(_kept_by_every_rule(batch)))


def _with_images(batch: pa.Table, source: str, version: int, config: FilterConfig) -> pa.Table:
    """The kept rows in PAIR_SCHEMA: metadata as filtered (languages, similarity filled), images from the source
    (stored as the local path stores them)."""
    images = lance.dataset(source, version=version).take(batch["row"].to_pylist(), columns=["image"])["image"]
    images = stored_images(images, config)
    columns = {name: images if name == "image" else batch[name] for name in PAIR_SCHEMA.names}
    return pa.table(columns).cast(PAIR_SCHEMA)


# --- the whole step ---------------------------------------------------------------------------------------
def _missing_scores(dataset: lance.LanceDataset, config: FilterConfig) -> dict[str, int]:
    """Rows whose language / similarity the step computes (counted by Lance, before any work)."""
    missing = {}
    if config.english_only:
        missing["language"] = dataset.count_rows(filter="language IS NULL")
    if config.min_similarity is not None:
        missing["similarity"] = dataset.count_rows(filter="similarity IS NULL")
        require_clip_model(missing["similarity"], config)
    return {name: count for name, count in missing.items() if count}


def _fragment_starts(dataset: lance.LanceDataset) -> np.ndarray:
    """Position of each fragment's first row, indexed by fragment id."""
    fragments = dataset.get_fragments()
    if any(f.metadata.deletion_file is not None for f in fragments):
        raise ValueError(f"{dataset.uri} has deleted rows; compact it (lance optimize) before filtering on Ray")
    starts = np.zeros(max((f.fragment_id for f in fragments), default=0) + 1, dtype=np.int64)
    position = 0
    for fragment in fragments:
        starts[fragment.fragment_id] = position
        position += fragment.count_rows()
    return starts


def rule_masks(ray, dataset: lance.LanceDataset, config: FilterConfig, ray_config: RayConfig, computed: dict, log):
    """A Ray dataset of every row's metadata, position and one keep-mask column per rule (materialized)."""
    partitions = shuffle_partitions(ray, ray_config)
    clip = "similarity" in computed
    blocks = max(partitions, -(-dataset.count_rows() // READ_BLOCK_ROWS))
    ds = ray.data.read_lance(dataset.uri, version=dataset.version, columns=_METADATA + ["image"],
                             scanner_options={"with_row_address": True}, override_num_blocks=blocks)
    ds = ds.map_batches(_digest_batch, batch_format="pyarrow", fn_kwargs=dict(
        config=config, fragment_starts=_fragment_starts(dataset), keep_images=clip))
    if clip:
        log(f"filter (ray): scoring CLIP similarity of {computed['similarity']} rows with {config.clip_model} "
            f"in {ray_config.clip_actors} actors")
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= ray_config.clip_actors else 0
        # Materialized: the actors let go of their CPUs (or GPUs) before the shuffles' workers need them.
        ds = ds.map_batches(ClipSimilarityActor, batch_format="pyarrow", batch_size=256, num_gpus=gpus,
                            fn_constructor_kwargs=dict(clip_model=config.clip_model),
                            compute=ray.data.ActorPoolStrategy(size=ray_config.clip_actors)).materialize()
    return metadata_rule_masks(ds, config, partitions, with_digests=True)


def metadata_rule_masks(ds, config: FilterConfig, partitions: int, with_digests: bool):
    """Every rule's keep-mask (and ``keep``) beside rows of normalized metadata with a ``row`` position and, with
    ``with_digests``, the image sha256 / pHash / byte length columns (materialized)."""
    ds = ds.map_batches(_row_rule_batch, batch_format="pyarrow", fn_kwargs=dict(config=config))
    key_columns = ["caption_key", "url_key"] + (["image_sha256"] if with_digests else [])
    ds = _set_rules(ds, config, partitions, key_columns)
    if config.near_dup_max_distance is not None and with_digests:
        ds = _near_duplicate_rule(ds, config, partitions)
    return ds.map_batches(_keep_batch, batch_format="pyarrow").materialize()


def _histogram_sample(ray, masks, rows: int) -> pa.Table:
    """The histograms' columns of all rows, or of a random sample of about HISTOGRAM_SAMPLE_ROWS."""
    fraction = min(1.0, HISTOGRAM_SAMPLE_ROWS / max(rows, 1))
    sample = masks if fraction == 1.0 else masks.random_sample(fraction, seed=0)
    columns = ["similarity", "nsfw", "watermark", "caption", "width", "height", "image_bytes", "keep"]
    return pa.concat_tables(ray.get(sample.select_columns(columns).to_arrow_refs()))


def _write_kept(kept, dataset: lance.LanceDataset, output: Path, config: FilterConfig) -> int:
    """Write the kept rows (sorted into source order) as the new version of ``output``; its version."""
    import lance_ray  # Ray's own Lance sink lags pylance's fragment API; lance-ray is Lance's

    rows = kept.sort("row").map_batches(_with_images, batch_format="pyarrow",
                                        fn_kwargs=dict(source=dataset.uri, version=dataset.version, config=config))
    lance_ray.write_lance(rows, str(output), schema=PAIR_SCHEMA,
                          mode="overwrite" if (output / "_versions").exists() else "create")
    return lance.dataset(str(output)).version


def filter_pairs_ray(source: str | Path, output: str | Path, config: FilterConfig, ray_config: RayConfig,
                     log=print, histogram_path: str | Path | None = None) -> FilterReport:
    """``filter_pairs`` on Ray: the same rules, kept rows and report, computed by a Ray cluster."""
    start = time.perf_counter()
    dataset = lance.dataset(str(source))
    rows = dataset.count_rows()
    log(f"filter (ray): {rows} rows from {source} (version {dataset.version})")
    computed = _missing_scores(dataset, config)
    with ray_session(ray_config, log) as ray:
        from ray.data.expressions import col

        masks = rule_masks(ray, dataset, config, ray_config, computed, log)
        counts = rule_counts(masks)
        log(f"filter (ray): keeping {counts.rows_out}/{counts.rows_in}; removed {counts.removed}")
        if counts.rows_out == 0:
            raise EmptyDatasetError(f"no rows to write to {output}: every input was removed (see the report)")
        version = _write_kept(masks.filter(expr=col("keep")), dataset, Path(output), config)
        if histogram_path is not None:
            from owl_pipeline.data.report_plots import plot_filter_histograms

            sample = _histogram_sample(ray, masks, rows)
            keep = sample["keep"].to_numpy(zero_copy_only=False)
            plot_filter_histograms(score_panels(sample), keep, histogram_path)
    return FilterReport(counts, time.perf_counter() - start, version, computed, dataset.version)
