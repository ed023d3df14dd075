#!/usr/bin/env bash
# Everything the GPU speed work needs from a lent GPU, in one call (the `device` tool), each row printed as it is
# measured. Estimate for an H100 (not yet run there): fast-path check ~1.5 min; 8 rows of train_step at owl-1b
# (peer, default = compiled with the chunked loss, eager, whole-loss; two stages) ~5 min, of which ~4 compiling;
# the eager memory sweep (4 sizes a stage) ~1.5 min: ~8 min. The GPU image has torch,
# transformers, peft and accelerate and nothing of the pipeline stack, which these scripts do not import.
# Results also go to $OUT (the device tool brings that folder back).
#
#     bash bench/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}

$PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no GPU visible to torch: this script \
is for a GPU machine; on a CPU run bench/train_step.py --tiny and bench/fast_path_check.py")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c 'import torch, transformers, peft, accelerate; print("torch", torch.__version__, "transformers",
transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)' | tee -a "$OUT/gpu.txt"
# The numerical check first (a fast path that changes results is not worth having); the timing runs even if
# it fails, so one call brings back both, and the exit status says whether either failed.
status=0
$PY bench/fast_path_check.py | tee "$OUT/fast_path_check.txt" || status=1
# The default path is what a user gets with the committed settings (compile auto = on, loss in chunks).
$PY bench/train_step.py --steps 5 --warmup 2 --variants default eager whole-loss \
    --sweep-memory-gib 70 --sweep-variant eager --sweep-max-batch 512 | tee "$OUT/train_step.txt" || status=1
exit $status
