#!/usr/bin/env bash
# The GPU numbers of issue 20 (items 1, 2 and 5) in ONE device call on a single H100 / H200; the steps'
# time limits add up to 540 s, largest first in value:
#   1. official (230 s) bench_train --molmo-only --molmo-remat full: the Molmo-7B-D-shaped train step (ViT-L/14
#             336 px on one image's 13 crops, 2x2 attention pooling, as many Qwen2-7B-width decoder layers as
#             fit, two packed 2304-token rows, bf16, full remat), tokens/s and MFU, next to the official
#             allenai/molmo train step (experiments/official_train.py: bf16 autocast, whole_layer
#             checkpointing, AdamW; its own process, our initial params) at the same geometry: the layers
#             ours fits, else the fewer the official step fits, then ours again at those;
#   2. molmo  (100 s) bench_train --molmo --molmo-remat dots_no_batch: the best remat policy's row, plus the
#             tiny row vs transformers' Qwen2, LoRA memory and the crop-budget row;
#   3. profile (55 s) one jax.profiler trace of the full-remat Molmo row (4 layers), its top device ops;
#   4. moe    (40 s) bench_moe (full mode: the small and the MolmoE-1B layer): ragged_dot vs the dense path
#             vs transformers' OlmoeSparseMoeBlock on "cuda" (the official MolmoE trains through megablocks'
#             dMoE, a CUDA build the image lacks);
#   5. decode (90 s) bench_generate --quick at Molmo-7B-D width (2 Qwen2-7B-width layers, ViT-L/14 336 px):
#             text rows (batch 1, 8) vs transformers' Qwen2 generate, the image row vs the official
#             `Molmo.generate` (in this process: the official modules import under transformers 5), float32;
#   6. forward (25 s) bench_forward --quick (tiny and small prefill vs transformers' Qwen2).
# Compilations are cached in /tmp/jax-cache (a row compiled to find the layers that fit is not compiled again).
# Results: one JSON per step naming commit, command and machine, and its log, in $STEPS, packed into
# $OUT/results.tgz after every step (the device call returns at most 8 files), the trace in $OUT/trace.tgz;
# $OUT is ./out unless set, $STEPS /tmp/gpu_bench_steps on the GPU and $OUT/steps with --smoke.
#
# Before the device call, on a machine with network (once; both folders ignore themselves in git):
#   experiments/gpu_bench.sh --prepare /path/to/allenai-molmo-checkout
# downloads into .whl/ the py3.12 wheels the GPU image lacks (ml_collections, grain, array_record,
# portpicker, and omegaconf, which the official modules import in our process too: step 5; every
# Requires-Dist of theirs is in the image) and into .whl/official/ what only the official process uses
# (transformers 4.46.3, tokenizers 0.20.3, huggingface_hub 0.36.2; boto3, botocore and cached_path are stood
# in by bench_common.stub_official_downloads), and copies the official modules the model imports into
# official-molmo/olmo/ (18.7 MB in all; the tracked tree is 30.0 MB).
# The device call (the `run` tool; carry and command exactly):
#   carry:   [".whl", "official-molmo"]
#   command: bash experiments/gpu_bench.sh 2>&1 | tee $OUT/gpu_bench.log
#   timeout_s: 600
# The image's transformers 5.17.0 stays for our code; the official process alone gets /tmp/official-site
# (transformers 4.46.3) first on its path (bench_train --official-pythonpath).
#
# experiments/gpu_bench.sh --smoke: every step at smoke size on this machine's CPU (each step's JSON
# written, the official step included), so the script is known to run before a GPU minute is spent.
# Set PY (our interpreter) and OFFICIAL_PY (the official process's: a venv with transformers 4.46.3)
# where python3 is not the one; OFFICIAL_SRC where official-molmo/ is not prepared; each step's limit is
# LIMIT_SCALE (default 5) times its GPU limit. MOLMO_LAYERS=N fixes the Molmo rows' decoder layers.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OFFICIAL_SRC=${OFFICIAL_SRC:-official-molmo}

if [[ ${1:-} == --prepare ]]; then
  checkout=${2:?usage: experiments/gpu_bench.sh --prepare ALLENAI_MOLMO_CHECKOUT}
  download() {  # folder, wheels...
    local dir=$1; shift
    ${PY:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$dir" "$@" || exit
  }
  mkdir -p .whl/official official-molmo/olmo
  echo '*' > .whl/.gitignore && echo '*' > official-molmo/.gitignore
  download .whl ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 omegaconf==2.4.0
  download .whl/official transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.36.2
  for f in __init__ aliases beam_search config exceptions image_vit initialization model safetensors_util \
           tokenizer torch_util util; do
    cp "$checkout/olmo/$f.py" official-molmo/olmo/ || exit
  done
  cp "$checkout/LICENSE" official-molmo/
  du -sh .whl official-molmo
  exit
fi

SMOKE=${SMOKE:-0}
[[ ${1:-} == --smoke ]] && SMOKE=1
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
OFFICIAL_PY=${OFFICIAL_PY:-$PY}
OFFICIAL_SITE=""
if ((SMOKE)); then
  MODE=--smoke DECODE_CONFIGS=tiny STEPS=${STEPS:-$OUT/steps}  # the venvs here hold every package
  SCALE=${LIMIT_SCALE:-5}  # the limits are the GPU's; a contended 2-core CPU runs the smoke sizes slower
else
  MODE=--quick DECODE_CONFIGS=7b-d-width SCALE=1 STEPS=${STEPS:-/tmp/gpu_bench_steps}
  install() {  # target, wheels...: after the image's packages (they are only the image's missing ones)
    local target=$1; shift
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@" || exit
  }
  install /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
  install /tmp/official-site .whl/official/*.whl && OFFICIAL_SITE=/tmp/official-site
  # Preallocating would leave the official process (step 1) no device memory; the limit stays 95%.
  export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
fi
mkdir -p "$STEPS"
((SMOKE)) || nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$STEPS/gpu.txt"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)" 2>&1 \
  | tee -a "$STEPS/gpu.txt"

LAYERS=${MOLMO_LAYERS:+--molmo-layers $MOLMO_LAYERS}  # set: no search for the layers that fit (compiles)
failed=()
run() {  # name, time limit (s), command...: its log in $STEPS/name.log, the end of it here
  local name=$1 limit=$(($2 * SCALE)); shift 2
  echo "== $name (<= ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$STEPS/$name.log" 2>&1
  local rc=$?
  grep -v "^\[transformers\]" "$STEPS/$name.log" | tail -25
  echo "== $name: exit $rc after $((SECONDS - start))s"
  ((rc == 0)) || failed+=("$name")
  tar -czf "$OUT/results.tgz" -C "$STEPS" --exclude trace .
}

run official 230 "$PY" -m experiments.bench_train $MODE --molmo-only --molmo-remat full $LAYERS \
  --official-src "$OFFICIAL_SRC" --official-python "$OFFICIAL_PY" --official-pythonpath "$OFFICIAL_SITE" \
  --out "$STEPS/bench_train_official_gpu.json"
run molmo 100 "$PY" -m experiments.bench_train $MODE --molmo --molmo-remat dots_no_batch --sizes tiny $LAYERS \
  --out "$STEPS/bench_train_gpu.json"
run profile 55 "$PY" -m experiments.bench_train --profile "$STEPS/trace" $([[ $MODE == --smoke ]] && echo --smoke) \
  --out "$STEPS/profile_gpu.json"
run moe 40 "$PY" -m experiments.bench_moe $([[ $MODE == --smoke ]] && echo --smoke) --out "$STEPS/bench_moe_gpu.json"
run decode 90 "$PY" -m experiments.bench_generate $MODE --configs "$DECODE_CONFIGS" --official-src "$OFFICIAL_SRC" \
  --out "$STEPS/bench_generate_gpu.json"
run forward 25 "$PY" -m experiments.bench_forward $MODE --out "$STEPS/bench_forward_gpu.json"
tar -czf "$OUT/trace.tgz" -C "$STEPS" trace
if ((${#failed[@]})); then
  echo "gpu_bench: FAILED steps: ${failed[*]} (their logs in $OUT/results.tgz: <step>.log)"
  exit 1
fi
echo "gpu_bench: every step done; $OUT/results.tgz holds each step's JSON and log"
