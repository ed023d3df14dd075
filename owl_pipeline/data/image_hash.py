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


def near_duplicates(hashes: np.ndarray, candidates: np.ndarray, max_distance: int) -> np.ndarray:
    """True for each candidate row whose hash lies within ``max_distance`` bits of an earlier candidate's.

    Banding: with ``max_distance + 1`` bands, two hashes that close share at least one band exactly,
    so only rows sharing a band are compared.
    """
    bands = max_distance + 1
    width = 64 // bands
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    duplicate = np.zeros(len(hashes), dtype=bool)
    for row in np.flatnonzero(candidates):
        value = int(hashes[row])
        keys = [(value >> (b * width)) & ((1 << width) - 1) for b in range(bands)]
        seen = sorted({other for b, key in enumerate(keys) for other in buckets[b].get(key, ())})
        if seen and hamming_distances(value, hashes[seen]).min() <= max_distance:
            duplicate[row] = True
            continue  # only rows kept become references
        for b, key in enumerate(keys):
            buckets[b].setdefault(key, []).append(row)
    return duplicate
