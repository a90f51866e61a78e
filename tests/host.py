"""What the host CPU can run, for tests that check one instruction-set path: they skip, with the
reason, where the host lacks it (an ARM machine, an x86 one without AVX2, AVX512-VNNI or AVX-VNNI)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


X86 = platform.machine().lower() in ("x86_64", "amd64")
AARCH64 = platform.machine().lower() in ("aarch64", "arm64")
# What the kernel library's AVX2 build needs (-mavx2 -mfma -mf16c), and its VNNI build on top.
AVX2 = X86 and {"avx2", "fma", "f16c"} <= cpu_flags()
AVX512_VNNI = AVX2 and {"avx512_vnni", "avx512vl"} <= cpu_flags()
AVX_VNNI = AVX2 and "avx_vnni" in cpu_flags()
