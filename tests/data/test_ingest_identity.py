"""A sample is its shard and key, a shard file is its place in the project (issue 42, items 1, 2 and 9): a second
download, a re-copy cut short and a moved project lose no row."""

import json
import shutil

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from owl_pipeline.data.ingest import INGESTED_SHARDS_FILE, ingest

from ..conftest import quiet
from .test_ingest import picture, sample, write_tar


def download(folder, shards: int, per_shard: int):
    """An img2dataset download: shards 00000.tar, 00001.tar, ... with keys numbered from 0 in each download
    (shard number, then the sample's place in it), and each tar's .parquet listing what it downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(shards):
        keys = [f"{number:05d}{index:04d}" for index in range(per_shard)]
        members = [member for key in keys for member in sample(key, image=picture(number * 100 + int(key[-4:])))]
        paths.append(write_tar(folder / f"{number:05d}.tar", members))
        pq.write_table(pa.table({"key": keys, "url": [f"u/{k}" for k in keys], "status": ["success"] * per_shard}),
                       folder / f"{number:05d}.parquet")
    return paths


def table_rows(uri) -> list[tuple[str, str]]:
    return sorted(zip(*lance.dataset(str(uri)).to_table(columns=["shard", "key"]).to_pydict().values()))


def test_a_second_download_numbered_from_zero_keeps_every_row(tmp_path):
    base = download(tmp_path / "shards", shards=2, per_shard=5)
    drop = download(tmp_path / "inbox", shards=3, per_shard=5)
    uri = tmp_path / "raw.lance"
    ingest(base, uri, log=quiet)
    report = ingest(base + drop, uri, log=quiet)
    assert report.mode == "append" and report.rows_written == 15 and not report.skipped
    assert len(table_rows(uri)) == 25 == len(set(table_rows(uri)))


def test_a_key_twice_in_one_shard_is_still_a_duplicate(tmp_path):
    shard = write_tar(tmp_path / "00000.tar", sample("a") + sample("a", caption=b"again") + sample("b"))
    report = ingest([shard], tmp_path / "raw.lance", log=quiet)
    assert report.skipped == {"duplicate_key": 1} and table_rows(tmp_path / "raw.lance") == [
        ("00000.tar", "a"), ("00000.tar", "b")]


def cut_short(path, keep_members: int):
    """``path`` replaced by a copy that stopped after its first ``keep_members`` members (no end marker)."""
    import tarfile

    with tarfile.open(path) as tar:
        end = tar.getmembers()[keep_members].offset
    data = path.read_bytes()[:end]
    path.write_bytes(data)


def test_a_shard_replaced_by_a_copy_cut_short_keeps_its_earlier_rows_until_it_is_whole(tmp_path):
    shards = download(tmp_path / "shards", shards=2, per_shard=6)
    whole = shards[0].read_bytes()
    uri = tmp_path / "raw.lance"
    ingest(shards, uri, log=quiet)
    cut_short(shards[0], keep_members=6)  # two of six samples left
    lines = []
    report = ingest(shards, uri, log=lines.append)
    assert len(table_rows(uri)) == 12 and "00000.tar" in report.kept_shards
    assert any("replaced by an incomplete copy" in line for line in lines)
    # Another change makes it re-read everything: the earlier rows still stand for the cut shard.
    (tmp_path / "shards" / "00001.tar").unlink()
    report = ingest(shards[:1], uri, log=quiet)
    assert report.mode == "full" and table_rows(uri) == [("00000.tar", f"0000000{i:02d}") for i in range(6)]
    shards[0].write_bytes(whole)  # the copy is made whole: read again
    report = ingest(shards[:1], uri, log=quiet)
    assert report.rows_written == 6 and not report.kept_shards and len(table_rows(uri)) == 6


def test_a_moved_project_knows_its_shards(tmp_path):
    project = tmp_path / "project"
    shards = download(project / "assets" / "shards", shards=2, per_shard=3)
    ingest(shards, project / "assets" / "raw.lance", log=quiet, root=project)
    recorded = json.loads((project / "assets" / "raw.lance" / INGESTED_SHARDS_FILE).read_text())
    assert sorted(recorded["shards"]) == ["assets/shards/00000.tar", "assets/shards/00001.tar"]
    moved = shutil.move(project, tmp_path / "moved")
    drop = download(tmp_path / "moved" / "inbox", shards=1, per_shard=3)
    moved_shards = sorted((tmp_path / "moved" / "assets" / "shards").glob("*.tar"))
    # The drop's partition run (the base shards deferred to their own): the drop is appended to the base.
    report = ingest(moved_shards + drop, tmp_path / "moved" / "assets" / "raw.lance", log=quiet,
                    root=moved, defer=moved_shards)
    assert report.mode == "append" and report.shards_already_ingested == 2 and report.rows_written == 3
    assert len(table_rows(tmp_path / "moved" / "assets" / "raw.lance")) == 9


def test_a_record_naming_shards_by_absolute_path_still_knows_them_in_a_partition_run(tmp_path):
    """A record written before shards were named relative to the project: the drop's partition run appends."""
    base = download(tmp_path / "assets" / "shards", shards=2, per_shard=3)
    uri = tmp_path / "assets" / "raw.lance"
    ingest(base, uri, log=quiet, root=tmp_path)
    record = json.loads((uri / INGESTED_SHARDS_FILE).read_text())
    record["shards"] = {str(tmp_path / name): stat for name, stat in record["shards"].items()}
    del record["names"]
    (uri / INGESTED_SHARDS_FILE).write_text(json.dumps(record))
    drop = download(tmp_path / "inbox", shards=1, per_shard=3)
    report = ingest(base + drop, uri, log=quiet, root=tmp_path, defer=base)
    assert report.mode == "append" and report.rows_written == 3 and len(table_rows(uri)) == 9


def test_a_partition_run_that_must_reread_the_table_reads_the_deferred_shards_too(tmp_path):
    """Whatever the record says, a whole re-read never leaves rows of a deferred shard out of the table."""
    base = download(tmp_path / "shards", shards=2, per_shard=3)
    uri = tmp_path / "raw.lance"
    ingest(base, uri, log=quiet)
    (uri / INGESTED_SHARDS_FILE).write_text(json.dumps({"version": lance.dataset(str(uri)).version,
                                                        "shards": {"/elsewhere/00000.tar": [1, 2]}}))
    drop = download(tmp_path / "inbox", shards=1, per_shard=3)
    report = ingest(base + drop, uri, log=quiet, defer=base)
    assert report.mode == "full" and len(table_rows(uri)) == 9
