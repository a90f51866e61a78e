#!/usr/bin/env bash
# Where token generation spends its time: perf over `llama-bench -t 2 -n 128` on the cached speed-
# benchmark files (made by `python -m sfmp_gguf.bench.speed`), an SFMP file beside the stock one of
# the same size. Prints tg128 and the hottest functions of each. Usage: scripts/profile-tg.sh [SFMP STOCK]
set -euo pipefail
cd "$(dirname "$0")/.."
sfmp="${1:-sfmp375_k}" stock="${2:-iq4_xs}"
bench_dir="${SFMP_CACHE_DIR:-$HOME/.cache/sfmp-gguf}/bench"
bin="$(python3 -c 'from sfmp_gguf.llama.build import current_build; print(current_build().bin_dir)')"
for name in "$sfmp" "$stock"; do
    model="$(ls "$bench_dir/$name"-????????????????.gguf 2>/dev/null | head -1)"
    if [ -z "$model" ]; then
        echo "error: $bench_dir: no cached $name file; run python -m sfmp_gguf.bench.speed first" >&2
        exit 1
    fi
    data="$(mktemp)"
    echo "== $name ($(basename "$model"))"
    perf record -q -o "$data" "$bin/llama-bench" -m "$model" -p 0 -n 128 -r 2 -t 2 2>/dev/null | grep -E "tg128" || true
    perf report -i "$data" --stdio --sort dso,symbol 2>/dev/null | grep -E "^ +[0-9]" | head -6 | sed -E 's/ +$//' || true  # head closes the pipe early
    rm -f "$data"
done
