"""bench/train_step.py --tiny runs both models through both stages on CPU and prints the comparison table."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.mark.parametrize("options", [[], ["--activation-checkpointing"]])
def test_tiny_mode_prints_both_models_for_both_stages(options):
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "1", "--warmup", "1", *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1] in ("1", "2")]
    assert [(r[0], r[1]) for r in rows] == [("1", "ours"), ("1", "llava"), ("2", "ours"), ("2", "llava")]
    for row in rows:
        assert float(row[3]) > 0 and float(row[5]) > 0  # samples/s and TFLOP/s measured
    assert float(rows[1][-1]) > 0 and float(rows[3][-1]) > 0  # ours/peer ratio on the peer's row
