#!/usr/bin/env bash
# Set up from nothing, convert the built-in demo model, and generate text with llama-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m sfmp_gguf.cli.demo "$@"
