"""The curation filter's perceptual hash (data/image_hash.py) against the imagehash library's phash, on JPEGs
the size of LAION images: images/s on one core, and how often the two agree on "near duplicate" (Hamming
distance <= 8) for re-encoded copies and for unrelated pictures. imagehash is not a dependency of the
project; install it to run this (`pip install imagehash`).

    python bench/phash.py [--images 200] [--side 512]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from owl_pipeline.data.image_hash import perceptual_hash  # noqa: E402


def jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photos(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random pictures with texture (photo-like spectra), ``side`` x 3/4 ``side`` pixels."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3))
        smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((side, side * 3 // 4), Image.BICUBIC))
        noise = rng.normal(0, 12, smooth.shape)
        pictures.append(np.clip(smooth + noise, 0, 255).astype(np.uint8))
    return pictures


def ours(data: bytes) -> int:
    return perceptual_hash(data)


def library(data: bytes) -> int:
    import imagehash

    with Image.open(io.BytesIO(data)) as image:
        bits = imagehash.phash(image).hash.ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def images_per_second(function, blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        function(blob)
    return len(blobs) / (time.perf_counter() - start)


def near_rate(function, pairs: list[tuple[bytes, bytes]], max_distance: int = 8) -> float:
    return float(np.mean([bin(function(a) ^ function(b)).count("1") <= max_distance for a, b in pairs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    pictures = photos(args.images, args.side)
    blobs = [jpeg(p, 90) for p in pictures]
    copies = list(zip(blobs, (jpeg(p, 60) for p in pictures)))  # the same picture re-encoded
    strangers = list(zip(blobs, blobs[1:]))  # different pictures
    print(f"{args.images} JPEGs of {args.side}x{args.side * 3 // 4}, one core")
    print(f"{'hash':<24}{'images/s':>10}{'copies found':>14}{'strangers flagged':>19}")
    for name, function in (("owl (draft + matmul DCT)", ours), ("imagehash.phash", library)):
        function(blobs[0])  # warm up imports
        print(f"{name:<24}{images_per_second(function, blobs):>10.0f}{near_rate(function, copies):>14.3f}"
              f"{near_rate(function, strangers):>19.3f}")


if __name__ == "__main__":
    main()
