#!/usr/bin/env bash
# Set up from nothing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The fuzz harness's build: ggml and llama.cpp with AddressSanitizer and UndefinedBehaviorSanitizer.
python3 -m sfmp_gguf.llama.build --sanitize --target sfmp_fuzz_loader
# llama-cli and llama-perplexity for aarch64, run under qemu (tests/test_aarch64.py).
python3 -m sfmp_gguf.llama.build --variant aarch64-dotprod
python3 -m sfmp_gguf.llama.build --variant aarch64-i8mm
# The plain-AVX2 build's SFMP_X8 buffer check and llama-perplexity (tests/test_llama_integration.py).
python3 -m sfmp_gguf.llama.build --variant avx2 --target sfmp_x8_buffer_check --target llama-perplexity
python3 -m pytest -q tests "$@"
