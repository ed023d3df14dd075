"""Image hashing for curation: a 64-bit perceptual hash (DCT of a 32x32 thumbnail) and the near-duplicate
search over those hashes (banding, so only rows sharing a band are compared).

Hand-written rather than imagehash.phash because it is 2.2x faster on LAION-sized JPEGs (1,172 vs 541 images/s
on one core at 512x384, `bench/phash.py`: JPEG draft decoding and a matrix DCT) with the same near-duplicate
decisions on re-encoded copies and unrelated pictures."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT32 = _dct_matrix(32)
_BIT_WEIGHTS = (1 << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def perceptual_hash(data: bytes) -> int:
    """64-bit pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32 gray thumbnail vs their median."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (64, 64))
        gray = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64)
    low = (_DCT32 @ gray @ _DCT32.T)[:8, :8].ravel()
    bits = (low > np.median(low)).astype(np.uint64)
    return int((bits * _BIT_WEIGHTS).sum(dtype=np.uint64))


def hamming_distances(value: int, hashes: np.ndarray) -> np.ndarray:
    """Bits that differ between one 64-bit hash and each of ``hashes`` (uint64)."""
    xor = np.bitwise_xor(hashes.astype(np.uint64), np.uint64(value))
    return np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


BUCKET_CHUNK = 1024  # rows of a bucket compared against the whole bucket at once (bounds memory, not results)


def band_values(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Each hash cut into ``max_distance + 1`` bands of equal width; shape (bands, N). Two hashes within
    ``max_distance`` bits agree exactly on at least one band, so only hashes sharing a band need comparing."""
    bands = max_distance + 1
    width = 64 // bands
    hashes = hashes.astype(np.uint64)
    mask = np.uint64((1 << width) - 1)
    return np.stack([(hashes >> np.uint64(b * width)) & mask for b in range(bands)]).reshape(bands, len(hashes))


def pairs_within(hashes: np.ndarray, rows: np.ndarray, max_distance: int) -> np.ndarray:
    """(earlier, later) rows of one bucket whose hashes lie within ``max_distance`` bits; shape (E, 2)."""
    hashes = hashes.astype(np.uint64)
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(hashes), BUCKET_CHUNK):
        distance = np.bitwise_count(hashes[start:start + BUCKET_CHUNK, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i += start
        upper = i < j
        first, second = rows[i[upper]], rows[j[upper]]
        pairs.append(np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1).astype(np.int64))
    return np.concatenate(pairs)


def first_kept(edges: np.ndarray) -> np.ndarray:
    """The rows that are near-duplicates under the first-kept rule: visiting rows in table order, a row is one
    when an edge joins it to an earlier row that was kept. ``edges`` holds (earlier, later) rows; sorted."""
    earlier_of: dict[int, list[int]] = {}
    for earlier, later in edges.tolist():
        earlier_of.setdefault(later, []).append(earlier)
    duplicates: set[int] = set()
    for later in sorted(earlier_of):
        if any(row not in duplicates for row in earlier_of[later]):
            duplicates.add(later)
    return np.array(sorted(duplicates), dtype=np.int64)


def near_duplicate_rows(rows: np.ndarray, leaders: np.ndarray, duplicate_leaders: np.ndarray) -> np.ndarray:
    """True for rows that are near-duplicates: a row whose hash an earlier row already has (it is not its hash's
    leader, the hash's first row), or a leader the first-kept rule found to be one."""
    return (rows != leaders) | np.isin(rows, duplicate_leaders)


def _leaders(hashes: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The first candidate row of each candidate's hash (-1 for rows that are not candidates)."""
    rows = np.flatnonzero(candidates)
    values, first = np.unique(hashes[rows], return_index=True)
    leaders = np.full(len(hashes), -1, dtype=np.int64)
    leaders[rows] = rows[first][np.searchsorted(values, hashes[rows])]
    return leaders


def _bucket_pairs(hashes: np.ndarray, rows: np.ndarray, max_distance: int) -> np.ndarray:
    """pairs_within of every bucket (band, band value) with two or more members, grouped in this process."""
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for values in band_values(hashes, max_distance):
        order = np.argsort(values, kind="stable")
        starts = np.flatnonzero(np.r_[True, values[order][1:] != values[order][:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            if end - start >= 2:
                members = order[start:end]
                pairs.append(pairs_within(hashes[members], rows[members], max_distance))
    return np.concatenate(pairs)


def near_duplicates(hashes: np.ndarray, candidates: np.ndarray, max_distance: int) -> np.ndarray:
    """True for each candidate row whose hash lies within ``max_distance`` bits of an earlier kept candidate's.

    Equal hashes collapse onto their first row (the leader); the distinct hashes are banded and compared within
    a bucket; the first-kept rule resolves the pairs found. data/ray_filters.py does the same with Ray's shuffles.
    """
    leaders = _leaders(hashes, candidates)
    distinct = np.unique(leaders[candidates])
    pairs = _bucket_pairs(hashes[distinct], distinct, max_distance) if max_distance > 0 else np.zeros((0, 2))
    rows = np.arange(len(hashes))
    return candidates & near_duplicate_rows(rows, leaders, first_kept(pairs.astype(np.int64)))
