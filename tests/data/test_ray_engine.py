"""The Ray engine keeps exactly what the local engine keeps: the same rows, in the same order, with the same
per-rule counts, on shapes world and on a mixed LAION + COYO set with every injected fault (the session's local
Ray, 2 logical CPUs; the shuffles still split into 1, 3 or 4 partitions as each test sets)."""

import json
import os
import subprocess
import sys

import lance
import numpy as np
import yaml
import pytest

from owl_pipeline.config import FaultRates, FilterConfig, RayConfig, SyntheticConfig
from owl_pipeline.data.filters import filter_pairs
from owl_pipeline.data.image_hash import first_kept, near_duplicates
from owl_pipeline.data.ingest import find_shards, ingest
from owl_pipeline.data.ray_filters import filter_pairs_ray
from owl_pipeline.data.ray_ingest import ingest_ray
from owl_pipeline.data.synthetic import generate_corpus

from ..conftest import SMALL, quiet
from .test_ingest import picture, sample, write_tar

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves these out

RAY = RayConfig(partitions=4)


def same_table(a, b):
    assert lance.dataset(str(a)).to_table().equals(lance.dataset(str(b)).to_table())


def same_filter_report(local, remote):
    assert (remote.counts, remote.computed) == (local.counts, local.computed)


def test_filtering_on_ray_keeps_the_local_rows_with_the_local_counts(local_ray, raw_pairs, tmp_path):
    uri, _ = raw_pairs
    config = FilterConfig.for_shapes_world()
    local = filter_pairs(uri, tmp_path / "local.lance", config, log=quiet)
    remote = filter_pairs_ray(uri, tmp_path / "ray.lance", config, RAY, log=quiet, histogram_path=tmp_path / "h.png")
    same_filter_report(local, remote)
    same_table(tmp_path / "local.lance", tmp_path / "ray.lance")
    assert remote.counts.removed["near_duplicate"] > 0 and remote.counts.removed["dup_url_text"] > 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def hostile_shard(path, repeated_key: str):
    """A shard of what ingestion skips and counts, plus a key another shard has too (another sample)."""
    members = (sample("h1") + sample("h1", caption=b"the same key twice") + sample(repeated_key)
               + sample("h2", caption=b"\xff\xfe bad utf-8") + sample("h3", image=b"\xff\xd8not a jpeg")
               + [("h4.jpg", picture())] + [("h5.json", b"[1, 2]"), ("h5.jpg", picture(5))]
               + sample("h6", meta={"punsafe": "high"}) + sample("h7", meta={"TEXT": "a blue square"}))
    return write_tar(path, members)


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    """LAION and COYO shapes world with twice the faults, and a hostile shard."""
    root = tmp_path_factory.mktemp("mixed")
    faults = FaultRates(**{name: 2 * rate for name, rate in vars(FaultRates()).items() if name != "truncated_member"})
    shards = []
    for seed, metadata in ((1, "laion"), (2, "coyo")):
        config = SyntheticConfig(**{**SMALL, "num_pairs": 600}, seed=seed, metadata_format=metadata, faults=faults)
        manifest = generate_corpus(root / metadata, config, log=quiet)
        shards += find_shards(root / metadata / "shards")
    return shards + [hostile_shard(root / "hostile.tar", repeated_key=sorted(manifest.faults)[0])]


def test_ingestion_on_ray_writes_the_local_rows_and_skips_what_the_local_path_skips(local_ray, mixed_shards,
                                                                                      tmp_path):
    local = ingest(mixed_shards, tmp_path / "local.lance", log=quiet)
    assert {"duplicate_key", "bad_metadata", "corrupt_image", "bad_caption_encoding"} <= set(local.skipped)
    # The small hostile shard, read last, finishes first: the rows must still come out in shard order.
    for partitions in (1, 3, 4):
        remote = ingest_ray(mixed_shards, tmp_path / f"ray{partitions}.lance", RayConfig(partitions=partitions),
                            log=quiet)
        assert remote.skipped == local.skipped and remote.failed_shards == local.failed_shards
        assert remote.rows_written == local.rows_written
        same_table(tmp_path / "local.lance", tmp_path / f"ray{partitions}.lance")
    # Appending a copy of a shard under another name: another shard, its rows appended (the filters' exact
    # duplicates).
    copy = tmp_path / "copy" / "00000.tar"
    copy.parent.mkdir()
    copy.write_bytes(mixed_shards[0].read_bytes())
    appended = [ingest(mixed_shards + [copy], tmp_path / "local.lance", log=quiet),
                ingest_ray(mixed_shards + [copy], tmp_path / "ray4.lance", RAY, log=quiet)]
    copied = ingest([copy], tmp_path / "copy.lance", log=quiet)
    assert [(r.mode, r.rows_written, dict(r.skipped)) for r in appended] == [
        ("append", copied.rows_written, dict(copied.skipped))] * 2
    same_table(tmp_path / "local.lance", tmp_path / "ray4.lance")


def test_filtering_on_ray_agrees_on_the_mixed_set_with_near_duplicate_chains(local_ray, mixed_shards, tmp_path):
    ingest(mixed_shards, tmp_path / "raw.lance", log=quiet)
    # A wide distance links near-duplicates into chains, where the first-kept rule decides.
    # Kept pictures stored smaller too: both engines write them through the same function.
    config = FilterConfig(min_side=32, min_image_bytes=None, near_dup_max_distance=12, max_caption_repeats=3,
                          store_short_side=40)
    local = filter_pairs(tmp_path / "raw.lance", tmp_path / "local.lance", config, log=quiet)
    remote = filter_pairs_ray(tmp_path / "raw.lance", tmp_path / "ray.lance", config, RAY, log=quiet)
    same_filter_report(local, remote)
    same_table(tmp_path / "local.lance", tmp_path / "ray.lance")
    assert local.counts.removed["near_duplicate"] > 0 and local.counts.removed["caption_repeats"] > 0


def test_missing_similarity_is_scored_by_the_clip_actors_as_locally(local_ray, tiny_clip, tmp_path):
    members = []
    for index, key in enumerate("abcdef"):
        meta = {"URL": key, "TEXT": "t", "punsafe": 0.1, "pwatermark": 0.1}
        members += [(f"{key}.jpg", picture(index)), (f"{key}.txt", b"a red circle"),
                    (f"{key}.json", json.dumps(meta).encode())]
    ingest([write_tar(tmp_path / "00000.tar", members)], tmp_path / "raw.lance", log=quiet)
    config = FilterConfig(min_similarity=-1.0, min_side=1, min_image_bytes=None, min_caption_words=1,
                          near_dup_max_distance=None, clip_model=str(tiny_clip))
    local = filter_pairs(tmp_path / "raw.lance", tmp_path / "local.lance", config, log=quiet)
    remote = filter_pairs_ray(tmp_path / "raw.lance", tmp_path / "ray.lance", config, RAY, log=quiet)
    assert remote.computed == local.computed == {"language": 6, "similarity": 6}
    scores = [lance.dataset(str(tmp_path / f"{n}.lance")).to_table()["similarity"].to_numpy() for n in ("local", "ray")]
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
    with pytest.raises(ValueError, match="6 rows have no similarity score and filters.clip_model is not set"):
        filter_pairs_ray(tmp_path / "raw.lance", tmp_path / "x.lance", FilterConfig(), RAY, log=quiet)


def test_resolving_edges_follows_the_local_first_kept_rule():
    # 0~1, 1~2, 0 !~ 2: 1 is a duplicate of 0; 2's only earlier neighbour was dropped, so 2 stays.
    assert first_kept(np.array([[0, 1], [1, 2], [5, 7], [3, 7]])).tolist() == [1, 7]
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[100:200] = hashes[:100] ^ (np.uint64(1) << rng.integers(0, 64, 100).astype(np.uint64))
    edges = np.array([(i, j) for i in range(300) for j in range(i + 1, 300)
                      if np.bitwise_count(hashes[i] ^ hashes[j]) <= 4])
    local = np.flatnonzero(near_duplicates(hashes, np.ones(300, dtype=bool), 4))
    assert first_kept(edges).tolist() == local.tolist() and len(local) >= 100


def test_the_data_steps_run_on_ray_when_params_say_so(local_ray, tmp_path):
    from owl_pipeline.cli import main
    from owl_pipeline.pipeline.records import StepRecord

    from ..test_pipeline import TINY_PARAMS

    params = {**TINY_PARAMS, "engine": {"raw_pairs": "ray", "curated_pairs": "ray"}, "ray": {"partitions": 4}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for step in ("raw_shards", "raw_pairs", "curated_pairs"):
        assert main(["step", step, "--project", str(tmp_path), "--no-tracking"]) == 0
    records = {step: StepRecord.read(tmp_path / f"assets/reports/{step}.json").metadata
               for step in ("raw_pairs", "curated_pairs")}
    assert records["raw_pairs"]["engine"] == records["curated_pairs"]["engine"] == "ray"
    config = FilterConfig(**params["filters"])
    local = filter_pairs(tmp_path / "assets/raw_pairs.lance", tmp_path / "local.lance", config, log=quiet)
    assert records["curated_pairs"]["rows_out"] == local.counts.rows_out
    assert records["curated_pairs"]["removed"] == local.counts.removed


def test_a_step_without_a_ray_starts_a_local_one_and_stops_it(tmp_path):
    code = ("import ray\nfrom owl_pipeline.config import RayConfig\nfrom owl_pipeline.data.ray_session import "
            "ray_session\nwith ray_session(RayConfig(num_cpus=1)) as started:\n    assert ray.is_initialized()\n"
            "    print('cpus', started.cluster_resources()['CPU'])\nprint('after', ray.is_initialized())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ray: local, 1 CPUs, 0 GPUs" in done.stdout and "cpus 1.0" in done.stdout and "after False" in done.stdout
