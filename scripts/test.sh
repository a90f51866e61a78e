#!/usr/bin/env bash
# Set up from nothing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q tests "$@"
