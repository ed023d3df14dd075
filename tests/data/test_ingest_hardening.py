"""Hostile and damaged inputs to ingestion (issue 14, items 1-7 and 11): each builds the bad input itself."""

import io
import json
import multiprocessing
import struct
import tarfile
import zlib

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from owl_pipeline.data.images import ImageRejected, decode_rgb, image_size
from owl_pipeline.data.ingest import INGESTED_SHARDS_FILE, ingest

from ..conftest import quiet
from .test_ingest import picture, sample, write_tar


def rows(uri, columns=("key", "caption", "similarity", "nsfw", "watermark", "shard", "width", "height")):
    return lance.dataset(str(uri)).to_table(columns=list(columns)).to_pylist()


# --- 1: scores in the shard's parquet --------------------------------------------------------------------
def test_scores_only_in_the_shard_parquet_are_joined_by_key(tmp_path):
    bare = lambda key: [(f"{key}.jpg", picture()), (f"{key}.txt", b"a red circle on the left"),  # noqa: E731
                        (f"{key}.json", json.dumps({"key": key, "url": f"u/{key}", "status": "success"}).encode())]
    write_tar(tmp_path / "00000.tar", bare("a") + bare("b"))
    pq.write_table(pa.table({"key": ["a"], "similarity": [0.33], "punsafe": [0.1], "pwatermark": [0.2],
                             "url": ["u/a"]}), tmp_path / "00000.parquet")
    report = ingest([tmp_path / "00000.tar"], tmp_path / "out.lance", log=quiet)
    got = {r["key"]: r for r in rows(tmp_path / "out.lance")}
    assert report.rows_written == 2 and not report.failed_shards
    assert got["a"]["similarity"] == pytest.approx(0.33) and got["a"]["nsfw"] == pytest.approx(0.1)
    assert got["b"]["similarity"] is None and got["b"]["nsfw"] is None  # in neither: null


# --- 2: valid JSON of the wrong shape ----------------------------------------------------------------------
def test_wrongly_shaped_metadata_is_skipped_and_counted_with_shard_and_key(tmp_path):
    def raw(key, meta):
        return [(f"{key}.jpg", picture()), (f"{key}.json", json.dumps(meta).encode())]

    members = (raw("list", [1, 2]) + raw("null", None) + raw("strscore", {"url": "u", "caption": "a red circle",
                                                                         "punsafe": "high"})
               + raw("objcaption", {"url": "u", "caption": {"text": "x"}}) + sample("good"))
    report = ingest([write_tar(tmp_path / "00000.tar", members)], tmp_path / "out.lance", log=quiet)
    assert report.rows_written == 1 and report.skipped == {"bad_metadata": 4}
    assert any(p.startswith("00000.tar strscore: bad_metadata") and "punsafe" in p for p in report.problems)
    assert [r["key"] for r in rows(tmp_path / "out.lance")] == ["good"]


# --- 3: duplicate keys and shards of the same name -----------------------------------------------------------
def test_a_key_twice_in_a_tar_keeps_the_first(tmp_path):
    members = sample("a", caption=b"the first one") + sample("a", caption=b"the second one") + sample("b")
    report = ingest([write_tar(tmp_path / "00000.tar", members)], tmp_path / "out.lance", log=quiet)
    assert report.skipped == {"duplicate_key": 1}
    assert {r["key"]: r["caption"] for r in rows(tmp_path / "out.lance")} == {"a": "the first one",
                                                                              "b": "a red circle on the left"}


def test_shards_of_one_name_in_two_folders_keep_distinct_identities(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "inbox").mkdir()
    first = write_tar(tmp_path / "shards/00000.tar", sample("a") + sample("b"))
    second = write_tar(tmp_path / "inbox/00000.tar", sample("b") + sample("c"))
    report = ingest([first, second], tmp_path / "out.lance", log=quiet)
    assert not report.skipped  # the two b's are two samples (one key in two shards): the filters judge them
    shards = sorted((r["shard"], r["key"]) for r in rows(tmp_path / "out.lance"))
    assert shards == [("inbox/00000.tar", "b"), ("inbox/00000.tar", "c"), ("shards/00000.tar", "a"),
                      ("shards/00000.tar", "b")]


# --- 4: decoding to the RGB a person sees ----------------------------------------------------------------------
def png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def test_a_sixteen_bit_png_is_scaled_not_clipped_to_white():
    gray = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))  # mid gray in 16 bits
    decoded = np.asarray(decode_rgb(png(gray)))
    assert decoded.shape == (8, 8, 3) and abs(int(decoded[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied_to_pixels_and_size():
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    image.paste((0, 0, 200), (0, 0, 10, 20))  # a blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_rgb(buffer.getvalue())
    assert decoded.size == (20, 40) and image_size(buffer.getvalue()) == (20, 40)
    top = np.asarray(decoded)[2, 10]  # the left band is now at the top
    assert top[2] > 150 and top[0] < 80


def test_cmyk_palette_and_alpha_images_become_correct_rgb():
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, format="JPEG", quality=95)  # red in CMYK
    assert tuple(np.asarray(decode_rgb(cmyk.getvalue()))[4, 4]) == pytest.approx((255, 0, 0), abs=12)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    transparent = png(palette, transparency=0)  # fully transparent: white, not palette green
    assert tuple(np.asarray(decode_rgb(transparent))[0, 0]) == (255, 255, 255)
    la = Image.new("LA", (8, 8), (0, 0))  # black, fully transparent
    assert tuple(np.asarray(decode_rgb(png(la)))[0, 0]) == (255, 255, 255)
    assert tuple(np.asarray(decode_rgb(png(Image.new("L", (8, 8), 77))))[0, 0]) == (77, 77, 77)


# --- 5: pixel bombs ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pixel_bomb(side: int = 13000) -> bytes:
    """A PNG whose header declares side x side gray pixels, in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def test_a_pixel_bomb_is_refused_from_its_header():
    bomb = pixel_bomb()
    assert len(bomb) < 2000
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        decode_rgb(bomb)
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        image_size(png(Image.new("L", (100, 100))), max_pixels=5000)


def test_ingestion_skips_and_counts_pixel_bombs(tmp_path):
    members = sample("bomb", image=pixel_bomb()) + sample("fine")
    report = ingest([write_tar(tmp_path / "00000.tar", members)], tmp_path / "out.lance", log=quiet)
    assert report.skipped == {"too_many_pixels": 1} and report.rows_written == 1
    shard = write_tar(tmp_path / "00001.tar", sample("big", image=png(Image.new("RGB", (100, 100)))) + sample("ok"))
    report = ingest([shard], tmp_path / "capped.lance", log=quiet, max_pixels=64 * 64)
    assert report.skipped == {"too_many_pixels": 1} and report.rows_written == 1


# --- 6: links and directories ---------------------------------------------------------------------------------
def test_link_and_directory_members_are_counted(tmp_path):
    path = write_tar(tmp_path / "00000.tar", sample("a"))
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        folder = tarfile.TarInfo("somewhere")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    report = ingest([path], tmp_path / "out.lance", log=quiet)
    assert report.skipped == {"unsafe_member_name": 1, "not_a_file": 1} and report.rows_written == 1


# --- 7: two ingestions at once ---------------------------------------------------------------------------------
def _ingest_in_a_process(shards, uri):
    ingest(shards, uri, log=lambda *_: None)


def test_two_ingestions_of_the_same_new_shards_append_them_once(tmp_path):
    uri = tmp_path / "out.lance"
    first = write_tar(tmp_path / "00000.tar", sample("a") + sample("b"))
    ingest([first], uri, log=quiet)
    new = [write_tar(tmp_path / f"0000{i}.tar", [m for k in range(40) for m in sample(f"{i}-{k}")])
           for i in (1, 2)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_ingest_in_a_process, args=([first, *new], uri)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    keys = [r["key"] for r in rows(uri, ("key",))]
    assert len(keys) == len(set(keys)) == 2 + 80
    record = json.loads((uri / INGESTED_SHARDS_FILE).read_text())
    assert record["version"] == lance.dataset(str(uri)).version and len(record["shards"]) == 3


# --- 11: a half-written record ---------------------------------------------------------------------------------
def test_a_damaged_record_of_ingested_shards_is_ignored_with_a_warning(tmp_path):
    uri = tmp_path / "out.lance"
    first = write_tar(tmp_path / "00000.tar", sample("a"))
    ingest([first], uri, log=quiet)
    (uri / INGESTED_SHARDS_FILE).write_text('{"version": 1, "shards": {')  # cut mid-write
    lines = []
    report = ingest([first], uri, log=lines.append)
    assert report.mode == "full" and report.rows_written == 1  # everything is read again, nothing lost
    assert any(INGESTED_SHARDS_FILE in line and "cannot be read" in line for line in lines)


def test_instruction_images_outside_their_root_or_too_large_are_skipped_and_counted(tmp_path):
    from owl_pipeline.data.instructions import InstructionSource, build_instruction_table

    (tmp_path / "images").mkdir()
    (tmp_path / "images/ok.jpg").write_bytes(picture())
    (tmp_path / "images/bomb.png").write_bytes(pixel_bomb())
    (tmp_path / "secret.jpg").write_bytes(picture())

    def record(name):
        return {"id": name, "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "red"}]}

    (tmp_path / "llava.json").write_text(json.dumps([record("ok.jpg"), record("../secret.jpg"),
                                                     record(str(tmp_path / "secret.jpg")), record("bomb.png")]))
    report = build_instruction_table([InstructionSource("llava", tmp_path / "llava.json", tmp_path / "images")],
                                     tmp_path / "out.lance", log=quiet)
    assert report.rows_written == 1
    assert report.skipped == {"llava: image_outside_root": 2, "llava: too_many_pixels": 1}
