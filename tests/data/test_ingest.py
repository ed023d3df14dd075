import io
import json
import tarfile

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from owl_pipeline.data import ingest as ingest_module
from owl_pipeline.data.ingest import PAIR_SCHEMA, SchemaError, find_shards, ingest, match_schema
from owl_pipeline.data.lance_io import EmptyDatasetError
from owl_pipeline.data.scenes import random_scene, render
from owl_pipeline.data.synthetic import jpeg_bytes

from ..conftest import quiet

LAION_META = {"URL": "https://x/1.jpg", "TEXT": "a red circle on the left", "similarity": 0.35, "punsafe": 0.1,
              "pwatermark": 0.1, "WIDTH": 64, "HEIGHT": 64}


def picture(seed=0) -> bytes:
    import numpy as np

    return jpeg_bytes(render(random_scene(np.random.default_rng(seed))))


def write_tar(path, members):
    """members: (name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample(key, caption=b"a red circle on the left", image=None, meta=None):
    meta = {**LAION_META, **(meta or {})}
    return [(f"{key}.jpg", image if image is not None else picture()), (f"{key}.txt", caption),
            (f"{key}.json", json.dumps(meta).encode())]


def test_the_default_corpus_lands_in_lance(corpus, raw_pairs):
    _, manifest = corpus
    uri, report = raw_pairs
    dataset = lance.dataset(str(uri))
    assert dataset.schema == PAIR_SCHEMA
    lost = manifest.keys_with("corrupt_jpeg") | manifest.keys_with("truncated_member")
    keys = set(dataset.to_table(columns=["key"])["key"].to_pylist())
    assert keys == set(manifest.faults) - lost
    # the last shard is cut inside a member: its sample is lost, and the shard is incomplete (read again later)
    assert report.skipped == {"corrupt_image": len(manifest.keys_with("corrupt_jpeg")), "truncated_shard": 1,
                              "incomplete_shard": 1}
    row = dataset.take([0], columns=["source", "shard", "width", "height", "language"]).to_pylist()[0]
    assert row == {"source": "laion", "shard": "00000.tar", "width": 64, "height": 64, "language": None}


def test_bad_members_are_skipped_and_counted(tmp_path):
    members = (sample("a") + [("../../escape.jpg", picture()), ("/abs/path.jpg", picture())]
               + sample("b", caption=b"\xff\xfe caption") + sample("c", image=b"\xff\xd8not a jpeg")
               + [("d.jpg", picture())] + sample("e"))
    shard = write_tar(tmp_path / "00000.tar", members)
    report = ingest([shard], tmp_path / "out.lance", log=quiet)
    assert report.rows_written == 2
    assert report.skipped == {"unsafe_member_name": 2, "bad_caption_encoding": 1, "corrupt_image": 1,
                              "incomplete_sample": 1}
    assert not (tmp_path.parent / "escape.jpg").exists() and not list(tmp_path.rglob("escape.jpg"))


def test_unreadable_shards_are_recorded_and_the_run_goes_on(tmp_path):
    good = write_tar(tmp_path / "00000.tar", sample("a"))
    empty_file = tmp_path / "00001.tar"
    empty_file.write_bytes(b"")
    no_members = write_tar(tmp_path / "00002.tar", [])
    no_url = write_tar(tmp_path / "00003.tar", sample("z")[:2] + [
        ("z.json", json.dumps({"key": "z", "caption": "a blue square on the right"}).encode())])
    report = ingest([good, empty_file, no_members, no_url], tmp_path / "out.lance", log=quiet)
    assert report.rows_written == 1
    assert set(report.failed_shards) == {"00001.tar", "00003.tar"}
    assert "matches neither LAION (missing: url or URL)" in report.failed_shards["00003.tar"]


def test_schema_errors_name_the_missing_columns():
    with pytest.raises(SchemaError, match=r"LAION \(missing: url or URL\) nor COYO \(missing: url, caption or text"):
        match_schema({"TEXT", "punsafe", "pwatermark"}, where="meta.parquet")
    assert match_schema({"url", "text", "nsfw_score_opennsfw2", "nsfw_score_gantman", "watermark_score",
                         "extra_column"}, "x").name == "coyo"


def test_parquet_shards_with_image_bytes_and_coyo_columns(tmp_path):
    table = pa.table({"url": ["u1", "u2"], "text": ["a red circle on the left", "a blue square on the right"],
                      "nsfw_score_opennsfw2": [0.1, 0.2], "nsfw_score_gantman": [0.7, 0.1],
                      "watermark_score": [0.1, 0.1], "clip_similarity_vitb32": [0.3, 0.4],
                      "jpg": [picture(1), picture(2)]})
    pq.write_table(table, tmp_path / "shard.parquet")
    assert find_shards(tmp_path) == [tmp_path / "shard.parquet"]
    report = ingest(find_shards(tmp_path), tmp_path / "out.lance", log=quiet)
    rows = lance.dataset(str(tmp_path / "out.lance")).to_table(columns=["key", "caption", "nsfw", "source"]).to_pylist()
    assert report.rows_written == 2
    assert [r["source"] for r in rows] == ["coyo", "coyo"]
    assert rows[0]["nsfw"] == pytest.approx(0.7)  # the larger of COYO's two NSFW scores
    assert rows[0]["key"] == "shard000000"


def test_a_failed_run_leaves_the_previous_version_intact(tmp_path, monkeypatch):
    uri = tmp_path / "out.lance"
    first = write_tar(tmp_path / "00000.tar", sample("a") + sample("b"))
    ingest([first], uri, log=quiet)
    second = write_tar(tmp_path / "00001.tar", sample("c"))
    real = ingest_module._to_table

    def crash_on_second_shard(records, shard, report):
        if shard == "00001.tar":
            raise RuntimeError("disk on fire")
        return real(records, shard, report)

    monkeypatch.setattr(ingest_module, "_to_table", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest([first, second], uri, log=quiet)
    dataset = lance.dataset(str(uri))
    assert dataset.version == 1 and dataset.count_rows() == 2


def test_new_shards_are_appended_and_a_changed_shard_rereads_all(tmp_path):
    uri = tmp_path / "out.lance"
    first = write_tar(tmp_path / "00000.tar", sample("a") + sample("b"))
    assert ingest([first], uri, log=quiet).mode == "full"
    second = write_tar(tmp_path / "00001.tar", sample("c"))
    report = ingest([first, second], uri, log=quiet)
    assert (report.mode, report.shards, report.shards_already_ingested, report.rows_written) == ("append", 1, 1, 1)
    dataset = lance.dataset(str(uri))
    assert dataset.version == 2 and sorted(dataset.to_table()["key"].to_pylist()) == ["a", "b", "c"]
    assert ingest([first, second], uri, log=quiet).shards == 0 and lance.dataset(str(uri)).version == 2
    bad = write_tar(tmp_path / "00002.tar", sample("d", image=b"garbage"))
    report = ingest([first, second, bad], uri, log=quiet)  # unreadable new shard: counted, nothing lost
    assert report.skipped and lance.dataset(str(uri)).count_rows() == 3
    write_tar(first, sample("a") + sample("e"))  # a shard rewritten in place: everything is read again
    report = ingest([first, second], uri, log=quiet)
    assert report.mode == "full" and sorted(lance.dataset(str(uri)).to_table()["key"].to_pylist()) == ["a", "c", "e"]


def test_a_partition_ingests_its_shard_once_and_leaves_the_others_to_their_own(tmp_path):
    """A Dagster partition run passes every shard and defers those of other partitions: a deferred new shard is
    not read, a deferred known one keeps its rows, and running the same partition again adds nothing."""
    uri = tmp_path / "out.lance"
    base = write_tar(tmp_path / "00000.tar", sample("a") + sample("b"))
    ingest([base], uri, log=quiet)
    one, two = write_tar(tmp_path / "drop-1.tar", sample("c")), write_tar(tmp_path / "drop-2.tar", sample("d"))
    report = ingest([base, one, two], uri, log=quiet, defer=[base, two])
    assert (report.mode, report.rows_written) == ("append", 1)
    assert sorted(lance.dataset(str(uri)).to_table()["key"].to_pylist()) == ["a", "b", "c"]
    version = lance.dataset(str(uri)).version
    again = ingest([base, one, two], uri, log=quiet, defer=[base, two])  # the same partition, run again
    assert again.rows_written == 0 and lance.dataset(str(uri)).version == version
    ingest([base, one, two], uri, log=quiet, defer=[base, one])  # the other drop's own run
    assert sorted(lance.dataset(str(uri)).to_table()["key"].to_pylist()) == ["a", "b", "c", "d"]
    write_tar(one, sample("c") + sample("e"))  # a drop replaced in place: re-read whole, the others kept
    ingest([base, one, two], uri, log=quiet, defer=[base, two])
    assert sorted(lance.dataset(str(uri)).to_table()["key"].to_pylist()) == ["a", "b", "c", "d", "e"]


def test_nothing_readable_raises_and_writes_nothing(tmp_path):
    bad = write_tar(tmp_path / "00000.tar", sample("a", image=b"garbage"))
    with pytest.raises(EmptyDatasetError, match="every input was skipped"):
        ingest([bad], tmp_path / "out.lance", log=quiet)
    assert not (tmp_path / "out.lance" / "_versions").exists() or not list((tmp_path / "out.lance/_versions").iterdir())
