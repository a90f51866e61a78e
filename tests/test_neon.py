"""NEON dot products, cross-compiled for aarch64 and run under qemu, against the scalar reference."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sfmp_gguf import kernels
from sfmp_gguf.format import SFMP_TYPES, UPGRADE_FLAG
from sfmp_gguf.quant import activations
from tests.levels import hi_only
from tests.native_build import AARCH64_TARGETS, QEMU, compile_driver

pytestmark = pytest.mark.qemu

OBJDUMP = "aarch64-linux-gnu-objdump"


@pytest.fixture(scope="module", params=sorted(AARCH64_TARGETS))
def neon_binary(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("neon") / f"check-{request.param}"
    return request.param, compile_driver("vec_dot_check.c", out, aarch64=request.param)


def _cases() -> tuple[bytes, list[float]]:
    """Every type on several kinds of weights, plus the x86 generic result for each case."""
    lib = kernels.load()
    rng = np.random.default_rng(42)
    stream, expected = bytearray(), []
    for t in SFMP_TYPES:
        for scale in (0.02, 1.0):
            x = (rng.standard_t(3, size=(1, 512)) * scale).astype(np.float32)
            w = lib.quantize(x, t)[0]
            y_f = rng.standard_normal(512).astype(np.float32)
            y = activations.quantize_for(t, y_f)
            stream += struct.pack("<4i", t.type_id, 512, w.size, y.size) + w.tobytes() + y.tobytes()
            expected.append(lib.vec_dot(w, y, t))
    return bytes(stream), expected


def test_neon_matches_the_scalar_reference(neon_binary):
    path, binary = neon_binary
    stream, x86_generic = _cases()
    result = subprocess.run([*QEMU, str(binary)], input=stream, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == f"path {path}"  # the NEON path ran, not the fallback
    pairs = [tuple(float.fromhex(v) for v in line.split()) for line in lines[1:]]
    assert len(pairs) == len(x86_generic)
    for (generic, simd), reference in zip(pairs, x86_generic):
        assert simd == generic  # NEON is bit-identical to the scalar code on the same machine
        assert generic == pytest.approx(reference, rel=1e-6, abs=1e-6)  # and within 1e-6 of x86's scalar result


def test_dotprod_build_uses_sdot(neon_binary):
    path, binary = neon_binary
    disassembly = subprocess.run([OBJDUMP, "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    assert ("\tsdot\t" in disassembly) == (path == "neon-dotprod")
    assert "\tsmull" in disassembly or "\tsdot\t" in disassembly


@pytest.fixture(scope="module", params=sorted(AARCH64_TARGETS))
def neon_x8_binary(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("neon-x8") / f"x8-check-{request.param}"
    return request.param, compile_driver("x8_check.c", out, aarch64=request.param)


def test_neon_interleaved_kernel_matches_the_scalar_reference(neon_x8_binary):
    """The SFMP_X8 kernel's NEON path: every type, 16 rows, 1 and 5 columns (a call of 4, then 1),
    malformed blocks among them, exactly the scalar reference's results on the same machine. Types
    with two-level activations take both levels in their wide form (calls of 2, then 1), as the
    buffer runs them by default, and their hi level alone as 8-bit columns, as under
    SFMP_ACTIVATIONS=8bit, against the reference with lo = 0 (tests/levels.py)."""
    path, binary = neon_x8_binary
    lib = kernels.load()
    rng = np.random.default_rng(7)
    stream, cases = bytearray(), 0
    for t in SFMP_TYPES:
        x = (rng.standard_t(3, size=(16, 512)) * 0.02).astype(np.float32)
        w = lib.quantize(x, t)
        w[3, t.sc_offset:t.base_offset] |= UPGRADE_FLAG  # more flags than upgrades
        w[5, t.sc_offset:t.base_offset:3] &= 0x7F  # fewer
        for columns in (1, 5):
            y = np.stack([activations.quantize_for(t, rng.standard_normal(512).astype(np.float32)) for _ in range(columns)])
            for wide in (0, 1) if t.fine_activations else (0,):
                levels = y if wide or not t.fine_activations else hi_only(y, t)[1]
                stream += struct.pack("<5i", t.type_id, 512, 16, columns, wide) + w.tobytes() + levels.tobytes()
                cases += 16 * columns
    result = subprocess.run([*QEMU, str(binary)], input=bytes(stream), capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == f"path {path}"  # the NEON kernel ran
    pairs = [tuple(float.fromhex(v) for v in line.split()) for line in lines[1:]]
    assert len(pairs) == cases
    assert all(interleaved == generic for generic, interleaved in pairs)
