"""Compiling the kernel sources with one of the small C drivers in tests/native/: for x86 (optionally
with AddressSanitizer and UndefinedBehaviorSanitizer) or for aarch64, to run under qemu."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sfmp_gguf.llama.patch import FILES_DIR

NATIVE = Path(__file__).parent / "native"
KERNEL_SOURCES = [FILES_DIR / "ggml/src/sfmp/sfmp-quants.c", FILES_DIR / "ggml/src/ggml-cpu/sfmp/sfmp-cpu.c",
                  FILES_DIR / "ggml/src/ggml-cpu/sfmp/sfmp-x8.c"]
INCLUDES = [f"-I{FILES_DIR / 'ggml/include'}", f"-I{FILES_DIR / 'ggml/src/sfmp'}", f"-I{FILES_DIR / 'ggml/src/ggml-cpu/sfmp'}"]
# Baseline NEON (widening multiplies) and the dot-product extension (sdot).
AARCH64_TARGETS = {"neon": "-march=armv8-a", "neon-dotprod": "-march=armv8.2-a+dotprod"}
QEMU = ["qemu-aarch64", "-cpu", "max"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def compile_driver(driver: str, out: Path, aarch64: str | None = None, sanitize: bool = False) -> Path:
    """Build tests/native/<driver> with the kernels: for the host (AVX2), or for an aarch64 target."""
    if aarch64:
        cmd = ["aarch64-linux-gnu-gcc", "-O2", "-static", AARCH64_TARGETS[aarch64]]
    else:
        cmd = ["gcc", "-O1" if sanitize else "-O2", "-mavx2", "-mfma", "-mf16c", *(SANITIZE if sanitize else [])]
    cmd += ["-std=c11", "-ffp-contract=off", *INCLUDES, *map(str, KERNEL_SOURCES), str(NATIVE / driver),
            "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out
