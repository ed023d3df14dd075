import dataclasses
import json

import lance
import numpy as np
import pyarrow as pa
import pytest

from owl_pipeline.config import FilterConfig
from owl_pipeline.data.filters import (RULES, _dictionary_indices, combine, filter_pairs, first_rows, group_ids,
                                       metadata_masks, occurrence_counts)
from owl_pipeline.data.image_hash import hamming_distances, near_duplicates
from owl_pipeline.data.ingest import ingest

from ..conftest import quiet
from .test_ingest import picture, sample, write_tar


def test_the_filter_removes_every_injected_fault_and_keeps_every_clean_row(corpus, raw_pairs, tmp_path):
    _, manifest = corpus
    uri, _ = raw_pairs
    report = filter_pairs(uri, tmp_path / "curated.lance", FilterConfig.for_shapes_world(), log=quiet,
                          histogram_path=tmp_path / "hist.png")
    kept = set(lance.dataset(str(tmp_path / "curated.lance")).to_table(columns=["key"])["key"].to_pylist())
    assert kept == manifest.keys_with("clean")
    for fault in set(manifest.faults.values()) - {"clean"}:
        assert not kept & manifest.keys_with(fault), fault
    counts = report.counts
    assert sum(counts.removed.values()) == counts.rows_in - counts.rows_out
    # Two near-duplicates of one original can be byte-identical: exact dedup then takes the second.
    assert 0.9 * len(manifest.keys_with("near_duplicate")) <= counts.removed["near_duplicate"]
    assert counts.removed["english"] == len(manifest.keys_with("non_english"))
    assert report.computed == {"language": counts.rows_in}
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"
    languages = lance.dataset(str(tmp_path / "curated.lance")).to_table(columns=["language"])["language"]
    assert set(languages.to_pylist()) == {"en"}


def test_kept_pictures_can_be_stored_smaller_without_changing_what_the_rules_decide(raw_pairs, tmp_path):
    """``store_short_side`` is storage, not a rule: the same rows and counts, each picture scaled down."""
    import io

    from PIL import Image

    uri, _ = raw_pairs
    config = FilterConfig.for_shapes_world()
    as_is = filter_pairs(uri, tmp_path / "as_is.lance", config, log=quiet)
    smaller = filter_pairs(uri, tmp_path / "smaller.lance", dataclasses.replace(config, store_short_side=48),
                           log=quiet)
    assert smaller.counts == as_is.counts
    tables = [lance.dataset(str(tmp_path / f"{n}.lance")).to_table() for n in ("as_is", "smaller")]
    assert tables[1].drop_columns(["image"]) == tables[0].drop_columns(["image"])
    sizes = {Image.open(io.BytesIO(data)).size for data in tables[1]["image"].to_pylist()[:50]}
    originals = {Image.open(io.BytesIO(data)).size for data in tables[0]["image"].to_pylist()[:50]}
    assert {min(size) for size in sizes} == {48} and {min(size) for size in originals} == {64}


def test_resized_jpeg_scales_down_never_up_and_leaves_what_it_cannot_read(tmp_path):
    import io

    from PIL import Image

    from owl_pipeline.data.images import resized_jpeg

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(buffer, format="JPEG")
    smaller = Image.open(io.BytesIO(resized_jpeg(buffer.getvalue(), 256)))
    assert smaller.size == (341, 256) and smaller.format == "JPEG"
    assert resized_jpeg(buffer.getvalue(), 480) == buffer.getvalue()  # already that small: as it is
    assert resized_jpeg(b"not a picture", 256) == b"not a picture"  # the loader skips and counts it


def table(**columns):
    return pa.table(columns)


def test_caption_rules():
    t = table(caption=["", "  hi  ", "a red circle", "one two", None, "x " * 300])
    masks = metadata_masks(t, FilterConfig())
    assert masks["caption_chars"].tolist() == [False, False, True, True, False, True]
    assert masks["caption_words"].tolist() == [False, False, True, False, False, False]


def test_size_rules_fail_missing_nan_and_negative_sizes():
    t = table(caption=["a b c"] * 5, width=pa.array([300, 300, None, -5, 900], pa.float64()),
              height=pa.array([250, 90, 300, 300, float("nan")], pa.float64()))
    masks = metadata_masks(t, FilterConfig(min_side=200, max_aspect=3.0))
    assert masks["min_side"].tolist() == [True, False, False, False, False]
    assert masks["aspect"].tolist() == [True, False, False, False, False]


def test_score_rules_and_missing_scores():
    t = table(caption=["a b c"] * 4, similarity=pa.array([0.3, 0.2, None, 0.28]), nsfw=pa.array([0.1, 0.5, 0.9, None]),
              watermark=pa.array([0.79, 0.8, 0.1, 0.1]), language=["en", "EN", "de", None])
    masks = metadata_masks(t, FilterConfig())
    assert masks["similarity"].tolist() == [True, False, False, True]
    assert masks["nsfw"].tolist() == [True, False, False, False]
    assert masks["watermark"].tolist() == [True, False, True, True]
    assert masks["english"].tolist() == [True, True, False, False]


def test_repeats_and_exact_dedup():
    captions = ["spam"] * 12 + ["a", "b", "a"]
    counts = occurrence_counts(_dictionary_indices(pa.array(captions)))
    assert counts.tolist() == [12] * 12 + [2, 1, 2]
    urls = ["u"] * 12 + ["u1", "u2", "u1"]
    first = first_rows(group_ids(pa.array(urls), pa.array(captions))) == np.arange(15)
    assert first.tolist() == [True] + [False] * 11 + [True, True, False]
    masks = metadata_masks(table(caption=captions, url=urls), FilterConfig(max_caption_repeats=10))
    assert masks["caption_repeats"].tolist() == [False] * 12 + [True] * 3


def test_removals_are_attributed_to_the_first_rule_in_order():
    masks = {"nsfw": np.array([False, True, False]), "caption_chars": np.array([False, True, True])}
    keep, counts = combine(masks, 3)
    assert keep.tolist() == [False, True, False]
    assert counts.removed == {"caption_chars": 1, "nsfw": 1} and counts.failed == {"caption_chars": 1, "nsfw": 2}
    assert list(counts.removed) == [r for r in RULES if r in masks]


def test_near_duplicate_banding_finds_what_brute_force_finds():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    for i in range(0, 400, 7):  # plant near copies: flip up to 4 bits of an earlier hash
        if i > 0:
            flips = rng.choice(64, size=int(rng.integers(0, 5)), replace=False)
            hashes[i] = np.uint64(int(hashes[i - 1]) ^ sum(1 << int(b) for b in flips))
    alive = np.ones(400, dtype=bool)
    found = near_duplicates(hashes, alive, max_distance=4)
    expected = np.zeros(400, dtype=bool)
    for i in range(400):
        earlier_refs = [j for j in range(i) if not expected[j]]
        expected[i] = bool(earlier_refs) and hamming_distances(int(hashes[i]), hashes[earlier_refs]).min() <= 4
    assert found.tolist() == expected.tolist() and found.sum() >= 50


@pytest.mark.parametrize("max_distance", [0, 1, 4, 9])
def test_near_duplicates_follow_the_first_kept_rule_at_every_distance_and_only_among_candidates(max_distance):
    """Equal hashes, chains of near copies and rows the other rules removed (not candidates): the banded search,
    its first-kept resolution and the collapse of equal hashes give what a brute-force scan in table order gives."""
    rng = np.random.default_rng(max_distance)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    for i in range(1, 300, 3):  # chains: each a few bits from the row before it, some exactly equal
        flips = rng.choice(64, size=int(rng.integers(0, max_distance + 2)), replace=False)
        hashes[i] = np.uint64(int(hashes[i - 1]) ^ sum(1 << int(b) for b in flips))
    candidates = rng.random(300) < 0.8
    found = near_duplicates(hashes, candidates, max_distance)
    expected = np.zeros(300, dtype=bool)
    for i in np.flatnonzero(candidates):
        kept = [j for j in range(i) if candidates[j] and not expected[j]]
        expected[i] = bool(kept) and hamming_distances(int(hashes[i]), hashes[kept]).min() <= max_distance
    assert found.tolist() == expected.tolist() and 0 < found.sum() < candidates.sum()


def test_missing_similarity_is_computed_with_the_configured_clip(tiny_clip, tmp_path):
    rows = []
    for key in "abcd":
        rows += sample(key)
    shard = write_tar(tmp_path / "00000.tar", rows)
    for member in shard.parent.glob("*.json"):
        member.unlink()
    meta = {"URL": "u", "TEXT": "t", "punsafe": 0.1, "pwatermark": 0.1}  # no similarity column
    shard = write_tar(tmp_path / "00000.tar", [m for key in "abcd" for m in
                                               [(f"{key}.jpg", picture(ord(key))), (f"{key}.txt", b"a red circle"),
                                                (f"{key}.json", json.dumps({**meta, "URL": key}).encode())]])
    ingest([shard], tmp_path / "raw.lance", log=quiet)
    with pytest.raises(ValueError, match="4 rows have no similarity score and filters.clip_model is not set"):
        filter_pairs(tmp_path / "raw.lance", tmp_path / "cur.lance", FilterConfig.for_shapes_world(), log=quiet)
    config = FilterConfig(min_similarity=-1.0, min_side=1, min_image_bytes=None, min_caption_words=1,
                          clip_model=str(tiny_clip))
    report = filter_pairs(tmp_path / "raw.lance", tmp_path / "cur.lance", config, log=quiet)
    assert report.computed["similarity"] == 4 and report.counts.rows_out >= 1
    scores = lance.dataset(str(tmp_path / "cur.lance")).to_table(columns=["similarity"])["similarity"].to_numpy()
    assert np.all(np.abs(scores) <= 1.0) and len(set(scores.round(6))) > 1
