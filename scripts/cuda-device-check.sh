#!/usr/bin/env bash
# The CUDA check for a lent NVIDIA GPU machine (no network there). Prepare here, then run there:
#
#   here:   python3 -m sfmp_gguf.llama.cuda pack-device        # writes .device/llama-src.tar.xz
#   device: bash scripts/cuda-device-check.sh                  # with .device carried along
#
# It builds the patched llama.cpp with CUDA for the local GPU only, runs test-backend-ops on CUDA0
# for every SFMP type (MUL_MAT, MUL_MAT_ID, GET_ROWS against the CPU), and measures MUL_MAT
# throughput of the SFMP types beside Q4_K, IQ4_XS and Q6_K. Results go to $OUT (or ./device-results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device-results}"
mkdir -p "$OUT" /tmp/sfmp-llama
tar xf .device/llama-src.tar.xz -C /tmp/sfmp-llama
export SFMP_LLAMA_CPP_DIR=/tmp/sfmp-llama SFMP_CACHE_DIR=/tmp/sfmp-cache PYTHONUNBUFFERED=1
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')"
python3 -m sfmp_gguf.llama.build --cuda --cuda-archs "$arch" --target test-backend-ops -j "$(nproc)" \
    2>&1 | tail -5 | tee "$OUT/build.log"
bin="$(ls -d /tmp/sfmp-cache/checkout-*/build-cuda/bin)"
status=0
for op in MUL_MAT MUL_MAT_ID GET_ROWS; do
    "$bin/test-backend-ops" -b CUDA0 -o "$op" -p sfmp 2>&1 | tee "$OUT/test-$op.log" | tail -3 || status=1
done
"$bin/test-backend-ops" perf -b CUDA0 -o MUL_MAT -p "type_a=(sfmp[0-9a-z_]+|q4_K|iq4_xs|q6_K),.*n=1," \
    2>&1 | tee "$OUT/perf-mul-mat.log" | tail -40 || true
exit $status
