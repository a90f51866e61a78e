#!/usr/bin/env bash
# Set up from nothing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The fuzz harness's build: ggml and llama.cpp with AddressSanitizer and UndefinedBehaviorSanitizer.
python3 -m sfmp_gguf.llama.build --sanitize --target sfmp_fuzz_loader
python3 -m pytest -q tests "$@"
