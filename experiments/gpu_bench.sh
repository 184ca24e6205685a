#!/usr/bin/env bash
# The GPU benchmarks of issue 20 in one go on a single H100 / H200, within one
# device call's 10 minutes (the timeouts below add up to 580 s):
#   1. bench_train --molmo: the Molmo-7B-D-shaped train step (ViT-L/14 336 px on one image's 13 crops, 2x2
#      attention pooling, as many Qwen2-7B-width decoder layers as fit, two packed 2304-token rows, bf16),
#      full remat and dots_no_batch; tokens/s and MFU against the spec bf16 peak; plus the tiny row
#      against transformers' Qwen2 and the crop-budget row;
#   2. bench_moe: ragged_dot (GPU grouped kernel) vs the dense-dispatch path vs transformers' OLMoE block;
#   3. bench_forward / bench_generate --quick (text rows vs transformers);
#   4. one jax.profiler trace of the Molmo row (its top ops: tools/ or TensorBoard's profile plugin).
# Results land in $OUT (or ./out): JSONs naming commit, command and machine, logs, the trace.
#
# The device image has jax, flax, optax, orbax, torch and transformers but not ml_collections, grain,
# array_record or portpicker: download their wheels into .whl first (the device README's pip download
# command, Python 3.12) and carry .whl; this script installs them when present.
# The official allenai/molmo comparison needs transformers 4.46.3 (its own wheels) and a checkout carried as
# official-molmo/: not wired in here (see the README's Speed section).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"

run() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\[transformers\]" | tail -25
}
run bench_train 280 "$PY" -m experiments.bench_train --molmo --sizes tiny --quick \
  --out "$OUT/bench_train_gpu.json"
run bench_moe 80 "$PY" -m experiments.bench_moe --quick --out "$OUT/bench_moe_gpu.json"
run bench_forward 60 "$PY" -m experiments.bench_forward --quick --out "$OUT/bench_forward_gpu.json"
run bench_generate 60 "$PY" -m experiments.bench_generate --quick --out "$OUT/bench_generate_gpu.json"
run profile 100 "$PY" -c "
import jax, numpy as np
from experiments import bench_train as bt
cfg = bt.molmo_config(4, 'full', smoke=False)
batch = bt.image_batch(cfg, 2, bt.MOLMO_SEQ, [13, 13])
step, _ = bt.ours(cfg, batch)
step(); step()
jax.profiler.start_trace('$OUT/trace')
for _ in range(3):
    step()
jax.profiler.stop_trace()
print('trace written')
"
tar -C "$OUT" -czf "$OUT/trace.tgz" trace 2>/dev/null && rm -rf "$OUT/trace"
