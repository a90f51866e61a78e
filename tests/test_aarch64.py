"""The whole patched llama.cpp for aarch64 (Debian's cross compiler, ``python -m sfmp_gguf.llama.build
--variant aarch64-dotprod`` and ``aarch64-i8mm``) running an SFMP file under qemu-aarch64: llama-cli's
greedy tokens equal the x86 build's, and llama-perplexity agrees within PPL_BOUND.

The two builds cannot agree bit for bit. F32 work sums in another order on NEON than on AVX2, and a
last-bit difference in a matmul's input can move an 8-bit activation (Q8_0, Q8_K) by a whole step,
which is large next to the other values of a block that holds one of this model's outlier
activations. llama.cpp's own Q8_0 file misses the 1e-3 the issue asked for (the perplexity test
prints both gaps), so the bound is 3%: a broken kernel is off by far more. The kernels themselves are bit-identical
to the scalar reference under qemu (tests/test_neon.py). Both runs take SFMP_X8 for the SFMP
matmuls, the path a phone runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sfmp_gguf.llama.build import AARCH64_SYSROOT, VARIANTS, current_build
from tests.convert_helpers import quantize_with_overrides
from tests import native_build
from tests.llama_runs import MIXED_OVERRIDES, continuation, eval_text, perplexity

pytestmark = pytest.mark.qemu

CROSS = sorted(name for name, variant in VARIANTS.items() if variant.cross)
# Where the shared libraries (libstdc++, libgomp) of the cross compiler's target live.
QEMU = (*native_build.QEMU, "-L", str(AARCH64_SYSROOT))
CHUNKS = 2  # two 128-token windows: about 40 s under qemu
PPL_BOUND = 0.03


@pytest.fixture(scope="module")
def sfmp_model(build, tmp_path_factory) -> Path:
    return quantize_with_overrides(build, tmp_path_factory.mktemp("aarch64") / "teacher-sfmp.gguf", MIXED_OVERRIDES)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    return eval_text(tmp_path_factory.mktemp("aarch64-text"))


@pytest.fixture(scope="module")
def q8_0_model(build, tmp_path_factory) -> Path:
    return quantize_with_overrides(build, tmp_path_factory.mktemp("aarch64-q8_0") / "teacher-q8_0.gguf", {})


@pytest.fixture(scope="module")
def x86(build, sfmp_model, q8_0_model, text) -> tuple[str, float, float]:
    """The x86 build's greedy text and perplexity of the SFMP file, and perplexity of the Q8_0 one."""
    return (continuation(build.tool("llama-cli"), sfmp_model),
            perplexity(build.tool("llama-perplexity"), sfmp_model, text, chunks=CHUNKS)[0],
            perplexity(build.tool("llama-perplexity"), q8_0_model, text, chunks=CHUNKS)[0])


@pytest.fixture(scope="module", params=CROSS)
def arm_build(request):
    found = current_build(request.param)
    assert (found.bin_dir / "llama-cli").is_file(), (
        f"{found.folder}: not built; the test command builds it (`python -m sfmp_gguf.llama.build --variant "
        f"{request.param}`)")
    return request.param, found


def test_the_builds_are_aarch64_with_their_extensions(arm_build):
    variant, found = arm_build
    header = subprocess.run(["aarch64-linux-gnu-readelf", "-h", str(found.tool("llama-cli"))], capture_output=True,
                            text=True, check=True).stdout
    assert re.search(r"Machine:\s+AArch64", header)
    cpu_library = found.bin_dir / "libggml-cpu.so"
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(cpu_library)], capture_output=True,
                                 text=True, check=True).stdout
    assert "\tsdot\t" in disassembly  # both variants have the dot-product extension
    assert ("\tsmmla\t" in disassembly) == (variant == "aarch64-i8mm")  # llama.cpp's Q8_0 repack uses i8mm


def test_llama_cli_under_qemu_generates_the_x86_tokens(arm_build, sfmp_model, x86):
    _, found = arm_build
    tokens, _, _ = x86
    assert len(tokens.strip()) > 5
    assert continuation(found.tool("llama-cli"), sfmp_model, prefix=QEMU, timeout=900) == tokens


def test_llama_perplexity_under_qemu_agrees_with_x86(arm_build, sfmp_model, q8_0_model, text, x86):
    variant, found = arm_build
    _, x86_ppl, x86_q8_0 = x86
    arm_ppl, log = perplexity(found.tool("llama-perplexity"), sfmp_model, text, prefix=QEMU, chunks=CHUNKS,
                              timeout=1200)
    arm_q8_0, _ = perplexity(found.tool("llama-perplexity"), q8_0_model, text, prefix=QEMU, chunks=CHUNKS,
                             timeout=1200)
    gaps = f"{variant} / x86 perplexity: SFMP {arm_ppl} / {x86_ppl}, llama.cpp's Q8_0 {arm_q8_0} / {x86_q8_0}"
    print(gaps)
    assert re.search(r"SFMP_X8 model buffer size = +[1-9]", log)  # the repacked path, as on a phone
    assert 1 < x86_ppl < 1e3 and 1 < x86_q8_0 < 1e3
    assert arm_ppl == pytest.approx(x86_ppl, rel=PPL_BOUND), gaps
