"""Hostile inputs to ingestion, second pass (issue 24, items 2, 4 and 5): each builds the bad input itself."""

import json
import os

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from owl_pipeline.data.ingest import ingest
from owl_pipeline.safe_text import printable

from ..conftest import quiet
from .test_ingest import picture, sample, write_tar


def keys(uri):
    return lance.dataset(str(uri)).to_table(columns=["key"])["key"].to_pylist()


# --- 2: numbers out of range -------------------------------------------------------------------------------
def test_out_of_range_and_non_finite_numbers_are_bad_metadata_and_the_other_shards_are_written(tmp_path):
    def raw(key, meta_json: bytes):
        return [(f"{key}.jpg", picture()), (f"{key}.txt", b"a red circle"), (f"{key}.json", meta_json)]

    hostile = (raw("huge", b'{"url": "u1", "WIDTH": 100000000000000000000}')
               + raw("overflow", b'{"url": "u2", "similarity": 1e400}')
               + raw("minus", b'{"url": "u3", "punsafe": -Infinity}')
               + raw("nan", b'{"url": "u4", "pwatermark": NaN}')
               + raw("negative", b'{"url": "u5", "HEIGHT": -3}')
               + raw("bigint", b'{"url": "u6", "similarity": 1' + b"0" * 400 + b'}') + sample("fine"))
    write_tar(tmp_path / "00000.tar", hostile)
    write_tar(tmp_path / "00001.tar", sample("other"))
    # a non-finite score in the shard's parquet is caught the same way
    write_tar(tmp_path / "00002.tar", sample("sidecar", meta={"similarity": None}))
    pq.write_table(pa.table({"key": ["sidecar"], "similarity": [float("inf")]}), tmp_path / "00002.parquet")
    shards = sorted(tmp_path.glob("*.tar"))
    report = ingest(shards, tmp_path / "out.lance", log=quiet)
    assert report.skipped == {"bad_metadata": 7} and not report.failed_shards
    assert sorted(keys(tmp_path / "out.lance")) == ["fine", "other"]
    assert any("huge: bad_metadata (WIDTH is 100000000000000000000, outside" in p for p in report.problems)
    assert any("overflow: bad_metadata (similarity is inf, not a finite number)" in p for p in report.problems)


# --- 4: odd entries in the shard folder ----------------------------------------------------------------------
def test_only_regular_files_inside_the_folder_are_read_as_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_tar(folder / "00000.tar", sample("good"))
    os.mkfifo(folder / "00001.tar")  # opened for reading it would block forever
    (folder / "00002.tar").symlink_to(folder / "gone.tar")
    (folder / "00003.tar").symlink_to("/dev/zero")
    outside = write_tar(tmp_path / "elsewhere.tar", sample("outside"))
    (folder / "00004.tar").symlink_to(outside)
    (folder / "00005.tar").symlink_to(folder / "00000.tar")  # a link inside the folder is a shard
    said = []
    report = ingest(sorted(folder.glob("*.tar")), tmp_path / "out.lance", log=said.append)
    assert report.skipped["not_a_regular_file"] == 4 and report.skipped["duplicate_key"] == 1
    assert keys(tmp_path / "out.lance") == ["good"]
    named = "\n".join(report.problems)
    for name, why in (("00001.tar", "not a regular file"), ("00002.tar", "a link to nothing"),
                      ("00003.tar", "a link out of its folder, to /dev/zero"), ("00004.tar", "a link out of")):
        assert f"{name} : not_a_regular_file ({why}" in named
    assert any("00001.tar is not read" in line for line in said)


# --- 5: control characters never reach the console raw -------------------------------------------------------
def test_control_characters_in_names_are_stored_as_given_and_shown_escaped(tmp_path):
    hostile_key = "k\x1b[2J\u202e"
    members = [(f"{hostile_key}.jpg", picture()), (f"{hostile_key}.txt", b"a caption"),
               (f"{hostile_key}.json", b"[1]")] + sample("good", caption="red \x1b[31mcircle\x00".encode())
    said = []
    report = ingest([write_tar(tmp_path / "00000.tar", members)], tmp_path / "out.lance", log=said.append)
    shown = "\n".join(said + report.problems)
    assert "\x1b" not in shown and "\u202e" not in shown and "\\x1b[2J\\u202e: bad_metadata" in shown
    stored = lance.dataset(str(tmp_path / "out.lance")).to_table(columns=["caption"])["caption"].to_pylist()
    assert stored == ["red \x1b[31mcircle\x00"]  # the data itself is kept as given


def test_printable_escapes_controls_and_caps_length():
    assert printable("a\x00b\x7f\u200bc\U000e0001") == "a\\x00b\\x7f\\u200bc\\U000e0001"
    assert printable("x" * 500, limit=10) == "x" * 10 + "... (500 characters)"
    assert printable("Grüße, 日本") == "Grüße, 日本"


# --- 1: members too large to read ----------------------------------------------------------------------------
def test_members_over_their_kinds_cap_are_passed_over_unread_and_shards_stream_in_chunks(tmp_path, monkeypatch):
    import gzip
    import io
    import tarfile

    from owl_pipeline.data import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "MAX_MEMBER_BYTES", {"txt": 1000, "json": 1000, "image": 1 << 20})
    monkeypatch.setattr(ingest_module, "RECORDS_PER_CHUNK", 2)
    members = (sample("huge_caption", caption=b"a red circle " * 100_000)  # 1.3 MB, compresses to almost nothing
               + sample("huge_json", meta={"note": "x" * 5000}) + sample("a") + sample("b") + sample("c"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "00000.tar").write_bytes(gzip.compress(buffer.getvalue()))
    assert (tmp_path / "00000.tar").stat().st_size < 20_000
    report = ingest([tmp_path / "00000.tar"], tmp_path / "out.lance", log=quiet)
    assert report.skipped["member_too_large"] == 2 and report.rows_written == 3
    assert sorted(keys(tmp_path / "out.lance")) == ["a", "b", "c"]


# --- 3: incomplete shards ------------------------------------------------------------------------------------
def test_a_shard_cut_at_a_member_boundary_is_incomplete_and_read_again_once_it_is_whole(tmp_path):
    import tarfile

    from owl_pipeline.data.ingest import INGESTED_SHARDS_FILE

    whole = write_tar(tmp_path / "whole.tar", sample("a") + sample("b") + sample("c"))
    with tarfile.open(whole) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name.startswith("c."))
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    shard.write_bytes(whole.read_bytes()[:cut])  # as a copy still under way leaves it: no error reading it
    report = ingest([shard], tmp_path / "out.lance", log=quiet)
    assert sorted(keys(tmp_path / "out.lance")) == ["a", "b"] and report.skipped == {"incomplete_shard": 1}
    assert "end-of-archive marker" in report.incomplete_shards["00000.tar"]
    assert any("00000.tar : incomplete_shard" in p for p in report.problems)
    recorded = json.loads((tmp_path / "out.lance" / INGESTED_SHARDS_FILE).read_text())
    assert set(recorded["incomplete"]) == {"00000.tar"}
    shard.write_bytes(whole.read_bytes())  # the copy finishes
    report = ingest([shard], tmp_path / "out.lance", log=quiet)
    assert sorted(keys(tmp_path / "out.lance")) == ["a", "b", "c"] and not report.skipped
    assert json.loads((tmp_path / "out.lance" / INGESTED_SHARDS_FILE).read_text())["incomplete"] == {}


def test_a_shard_missing_samples_its_parquet_lists_as_downloaded_is_incomplete(tmp_path):
    write_tar(tmp_path / "00000.tar", sample("a") + sample("b"))
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"],
                             "status": ["success", "success", "success", "failed_to_download"]}),
                   tmp_path / "00000.parquet")
    write_tar(tmp_path / "00001.tar", sample("e"))
    pq.write_table(pa.table({"key": ["e", "f"], "status": ["success", "failed_to_download"]}),
                   tmp_path / "00001.parquet")
    report = ingest(sorted(tmp_path.glob("*.tar")), tmp_path / "out.lance", log=quiet)
    assert report.incomplete_shards == {"00000.tar": "1 samples its .parquet lists as downloaded are not in it, e.g. c"}
    assert report.skipped == {"incomplete_shard": 1} and sorted(keys(tmp_path / "out.lance")) == ["a", "b", "e"]
