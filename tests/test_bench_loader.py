"""bench/loader.py runs at tiny size on CPU: samples/s per worker, pictures as downloaded and pre-resized."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "loader.py"


def test_the_loader_bench_prints_a_rate_per_worker_for_both_ways_of_storing_pictures():
    done = subprocess.run([sys.executable, str(BENCH), "--pairs", "60", "--batches", "2", "--batch-size", "8",
                           "--source-size", "160", "--store-short-side", "64", "--workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("as downloaded", "pre-resized"))]
    assert [row[0] for row in rows] == ["as", "pre-resized"]
    assert all(float(row[-3].replace(",", "")) > 0 and int(row[-1]) >= 1 for row in rows)
