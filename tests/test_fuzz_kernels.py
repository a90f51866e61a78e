"""Direct kernel fuzzing: random and mutated blocks through every kernel entry point, on AVX2 (under
AddressSanitizer and UndefinedBehaviorSanitizer) and on NEON and NEON with dotprod (under qemu).
The AVX512-VNNI path of the interleaved kernel is not fuzzed here; test_kernels compares it with
the scalar reference."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from sfmp_gguf import kernels
from sfmp_gguf.format import SFMP_TYPES, SfmpType
from sfmp_gguf.quant.reference import dequantize_blocks
from tests import host
from tests.native_build import AARCH64_TARGETS, QEMU, compile_driver
from tests.seeds import stable_seed

X86_CASES = 5000  # at least 2,000 cases on x86
NEON_CASES = 1000


def _summary(result: subprocess.CompletedProcess) -> tuple[int, int]:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "runtime error" not in result.stderr and "Sanitizer" not in result.stderr, result.stderr[-3000:]
    words = result.stdout.split()
    return int(words[3]), int(words[5])  # "<path> (interleaved: <path>): N cases, V valid, 0 failures"


@pytest.mark.native
@pytest.mark.skipif(not host.AVX2, reason="the x86 driver is built for AVX2, which this CPU lacks")
def test_x86_kernels_survive_fuzzing_under_sanitizers(tmp_path):
    binary = compile_driver("fuzz_kernels.c", tmp_path / "fuzz", sanitize=True)
    result = subprocess.run([str(binary), "1", str(X86_CASES)], capture_output=True, text=True, timeout=600,
                            env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    cases, valid = _summary(result)
    assert result.stdout.startswith("avx2 (interleaved: avx2):") and cases == X86_CASES
    assert 0.2 * cases < valid < 0.8 * cases  # both branches exercised: accepted and rejected blocks


@pytest.mark.qemu
@pytest.mark.parametrize("target", sorted(AARCH64_TARGETS))
def test_neon_kernels_survive_fuzzing(tmp_path, target):
    binary = compile_driver("fuzz_kernels.c", tmp_path / f"fuzz-{target}", aarch64=target)
    result = subprocess.run([*QEMU, str(binary), "2", str(NEON_CASES)], capture_output=True, text=True, timeout=600)
    cases, valid = _summary(result)
    assert result.stdout.startswith(f"{target} (interleaved: {target}):") and cases == NEON_CASES and valid > 0


@pytest.mark.native
@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_random_bytes_decode_like_the_reference_and_validate_consistently(t: SfmpType):
    """Any bytes at all: the C dequantizer gives the numpy reference's values, and validation
    accepts exactly the blocks with a finite scale and the type's upgrade count."""
    lib = kernels.load()
    seed = stable_seed("random bytes", t.name)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(64, t.type_size), dtype=np.uint8)
    data[:, 1] &= 0x3F  # mostly finite scales, so the comparison sees numbers
    data[::9, 1] |= 0x7C  # and some NaN / Inf
    with np.errstate(invalid="ignore", over="ignore"):
        expected = dequantize_blocks(data, t)
    got = lib.dequantize(data, t)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), f"seed {seed}"
    assert np.array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)]), f"seed {seed}"
    flags = np.unpackbits(data[:, t.sc_offset:t.base_offset] >> 7, axis=1).sum(axis=1)
    finite = (data[:, 1] & 0x7C) != 0x7C
    for k, (block, ok) in enumerate(zip(data, (flags == t.upgrades) & finite)):
        assert lib.validate(block, t) == bool(ok), f"seed {seed}, block {k}"
