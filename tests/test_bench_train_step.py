"""The GPU benchmarks run on CPU at tiny size: bench/train_step.py --tiny prints its comparison table,
bench/fast_path_check.py compares the compiled bf16 path with fp32."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


def test_tiny_mode_prints_the_peer_and_each_variant_of_ours_for_both_stages():
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "1", "--warmup", "1",
                           "--variants", "base", "ckpt+fp32-frozen"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1] in ("1", "2")]
    assert [(r[0], r[1]) for r in rows] == [(stage, model) for stage in "12"
                                            for model in ("llava", "ours", "ours+ckpt+fp32-frozen")]
    for row in rows:
        assert float(row[3]) > 0 and float(row[5]) > 0  # samples/s and TFLOP/s measured
    assert all(float(row[-1]) > 0 for row in rows if row[1] != "llava")  # ours/peer ratio on our rows


def test_the_sweep_finds_the_largest_micro_batch_within_the_memory_budget():
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "1", "--warmup", "1", "--variants",
                           "default", "--sweep-memory-gib", "1000", "--sweep-max-batch", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = [line.split() for line in done.stdout.splitlines() if "ours sweep" in line]
    assert [(row[0], row[3]) for row in sweep] == [("1", "4"), ("1", "8"), ("2", "2"), ("2", "4"), ("2", "8")]
    assert all(row[-1] == "fits" and float(row[-2]) > 0 for row in sweep)  # peak memory measured
    assert "within 1000 GiB, default path: stage 1 8, stage 2 8" in done.stdout


def test_an_unknown_variant_option_is_a_clear_error():
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--variants", "compile+fast"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown variant option(s) ['fast']" in done.stderr


@pytest.mark.slow
def test_fast_path_check_compares_fp32_with_the_compiled_bf16_path():
    check = BENCH.parent / "fast_path_check.py"
    done = subprocess.run([sys.executable, str(check), "--stages", "1", "--steps", "2"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1] == "1"]
    assert [row[:2] for row in rows] == [["1", "1"], ["1", "2"]]
    assert all(float(row[4]) < 2e-2 for row in rows) and "within the bf16 tolerance" in done.stdout
