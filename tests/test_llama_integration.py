"""Stock llama.cpp tools, built with our patch, quantize to SFMP types, load the file and generate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from sfmp_gguf import gguf_types
from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.evaluate import perplexity
from sfmp_gguf.format import (BY_NAME, FIRST_TYPE_ID, FORMAT_VERSION, GGUF_VERSION_KEY, LEGACY_TYPE_IDS, SFMP_TYPES,
                              UPGRADE_FLAG)
from sfmp_gguf.llama.build import current_build
from tests.convert_helpers import quantize_with_overrides
from tests.llama_runs import EIGHT_BIT_PPL_BOUND, TWO_LEVEL_OVERRIDES, TWO_LEVEL_PPL_BOUND, eval_text
from tests.llama_runs import perplexity as run_perplexity

pytestmark = pytest.mark.integration

OVERRIDES = {"ffn_down": "sfmp425_k", "attn_v": "sfmp600_s", "attn_q": "sfmp250_s", "attn_k": "sfmp350n_s"}


@pytest.fixture(scope="module")
def sfmp_model(build, tmp_path_factory) -> Path:
    return quantize_with_overrides(build, tmp_path_factory.mktemp("sfmp") / "teacher-sfmp.gguf", OVERRIDES)


def _generate(build, model: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(build.tool("llama-cli")), "-m", str(model), "-p", "The capital of France is", "-n", "12",
           "--single-turn", "--temp", "0", "-t", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def _continuation(result: subprocess.CompletedProcess) -> str:
    """The generated text: after the prompt, before the speed line."""
    return result.stdout.split("The capital of France is", 1)[-1].split("[ Prompt:", 1)[0]


def test_quantized_file_holds_sfmp_tensors_and_the_format_version(sfmp_model):
    gguf_types.register()
    reader = GGUFReader(sfmp_model)
    types = {t.name: int(t.tensor_type) for t in reader.tensors}
    for pattern, type_name in OVERRIDES.items():
        matching = [tid for name, tid in types.items() if f".{pattern}." in name]
        assert matching and set(matching) == {BY_NAME[type_name].type_id}, pattern
    assert reader.fields[GGUF_VERSION_KEY].contents() == FORMAT_VERSION
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.data.nbytes == tensor.n_elements // 256 * BY_NAME["sfmp425_k"].type_size


def test_llama_quantize_writes_the_bytes_of_the_kernel_library(build, sfmp_model):
    """ggml-base compiles the quantizer without SIMD flags (the portable lane code), the kernel library
    with AVX2 (intrinsics): both must give the reference's bytes."""
    from sfmp_gguf import kernels

    gguf_types.register()
    lib = kernels.load(build.kernel_library)
    source = {t.name: t for t in GGUFReader(teacher().gguf_path).tensors}
    checked = set()
    for t in GGUFReader(sfmp_model).tensors:
        if t.name.startswith("blk.0.") and int(t.tensor_type) in {BY_NAME[n].type_id for n in OVERRIDES.values()}:
            weights = np.asarray(source[t.name].data, dtype=np.float32)
            sfmp_type = next(s for s in SFMP_TYPES if s.type_id == int(t.tensor_type))
            assert np.array_equal(np.asarray(t.data).reshape(weights.shape[0], -1), lib.quantize(weights, sfmp_type)), t.name
            checked.add(sfmp_type.name)
    assert checked == set(OVERRIDES.values())  # nonlinear and uniform, _k and _s


def test_llama_cli_loads_and_generates(build, sfmp_model):
    result = _generate(build, sfmp_model, "--check-tensors")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_continuation(result).strip()) > 5


def test_llama_names_an_sfmp_file_type_without_guessing(build, tmp_path):
    """An SFMP ftype is its type id (1024 and up), whose bit 1024 llama.cpp reads as its "guessed"
    flag: the loader names it as the SFMP type, not as "(guessed)" and the stock type of the low bits."""
    model = quantize_with_overrides(build, tmp_path / "teacher-sfmp425_k.gguf", {}, base="sfmp425_k")
    result = _generate(build, model, "-n", "1", "-lv", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert re.search(r"file type += SFMP425_K - SFMP mixed precision\n", log), log[-3000:]
    assert "(guessed)" not in log


def _copy_with(tmp_path: Path, model: Path, edit) -> Path:
    copy = tmp_path / "edited.gguf"
    shutil.copyfile(model, copy)
    gguf_types.register()
    edit(GGUFReader(copy, "r+"))
    return copy


def test_loader_refuses_a_newer_format_version(build, sfmp_model, tmp_path):
    def bump(reader):
        field = reader.fields[GGUF_VERSION_KEY]
        field.parts[field.data[0]][0] = FORMAT_VERSION + 1
    result = _generate(build, _copy_with(tmp_path, sfmp_model, bump))
    assert result.returncode != 0
    assert f"SFMP format version {FORMAT_VERSION + 1}" in result.stderr


def test_a_format_3_file_loads_with_its_old_type_ids(build, sfmp_model, tmp_path):
    first, _ = LEGACY_TYPE_IDS[3]
    written = set()

    def renumber(reader):
        field = reader.fields[GGUF_VERSION_KEY]
        field.parts[field.data[0]][0] = 3
        for tensor in reader.tensors:
            raw_type = tensor.field.parts[4]  # name length, name, n_dims, dims, type, offset
            if raw_type[0] >= FIRST_TYPE_ID:
                raw_type[0] = raw_type[0] - FIRST_TYPE_ID + first
                written.add(int(raw_type[0]))
    legacy = _copy_with(tmp_path, sfmp_model, renumber)
    assert written == {BY_NAME[n].type_id - FIRST_TYPE_ID + first for n in OVERRIDES.values()}
    current, old = _generate(build, sfmp_model), _generate(build, legacy, "--check-tensors")
    assert old.returncode == 0, old.stderr[-3000:]
    assert len(_continuation(current).strip()) > 5 and _continuation(old) == _continuation(current)


def test_check_tensors_rejects_a_malformed_block(build, sfmp_model, tmp_path):
    t = BY_NAME["sfmp425_k"]

    def corrupt(reader):
        tensor = next(x for x in reader.tensors if x.name == "blk.3.ffn_down.weight")
        raw = tensor.data.reshape(-1).view(np.uint8)
        raw[t.type_size * 5 + t.sc_offset:t.type_size * 5 + t.base_offset] |= UPGRADE_FLAG  # too many upgrades
    result = _generate(build, _copy_with(tmp_path, sfmp_model, corrupt), "--check-tensors")
    assert result.returncode != 0
    assert "malformed sfmp425_k block" in result.stderr


# Largest |MUL_MAT - the same on the dequantized weights in F32| over the largest |output|: with
# two-level activations the activations' rounding is ~1e-5 of the output, with 8-bit ones ~1e-2.
FINE_ACTIVATION_BOUND = 2e-4
INT8_ACTIVATION_BOUND = 5e-2


def _check_buffers(build, t, *args: int, activations: str = "two-level") -> None:
    """sfmp_x8_buffer_check's verdict: the SFMP_X8 buffer agrees with the plain one, and the plain one
    with F32 as closely as the type's activations allow (``activations``: SFMP_ACTIVATIONS)."""
    result = subprocess.run([str(build.tool("sfmp_x8_buffer_check")), str(t.type_id), *map(str, args)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SFMP_ACTIVATIONS": activations})
    assert result.returncode == 0, result.stderr[-2000:]
    max_diff, max_abs, buffer_name, max_f32_diff = result.stdout.split()
    assert buffer_name == "SFMP_X8"
    # Both paths are exactly the scalar reference for _k types; the plain AVX2 _s kernel sums in lanes.
    assert float(max_abs) > 0 and float(max_diff) <= (0 if t.block_size == 256 else 1e-5 * float(max_abs)), args
    if t.fine_activations and activations == "two-level":
        assert float(max_f32_diff) <= FINE_ACTIVATION_BOUND * float(max_abs), args
    else:
        assert FINE_ACTIVATION_BOUND * float(max_abs) < float(max_f32_diff) <= INT8_ACTIVATION_BOUND * float(max_abs)


@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_sfmp_x8_buffer_mul_mat_agrees_with_the_plain_cpu_path(build, t):
    """Inside ggml's CPU backend: MUL_MAT with the weights in the SFMP_X8 buffer (interleaved at
    upload) against the same MUL_MAT from the plain buffer, for one column (token generation) and
    many (prompt processing), on two threads. For _k types the two are equal: both kernels are
    exactly the scalar reference (test_kernels), with two-level activations too. The plain AVX2 _s
    kernel sums in lanes, so there they differ by float rounding. Types with two-level activations
    err far less against the same product in F32."""
    n = 512 if t.block_size == 256 else 576
    # The last shape holds 2M weights: the upload interleaves it on several threads.
    for n, rows, columns in ((n, 64, 1), (n, 64, 37), (1024, 2048, 5)):
        _check_buffers(build, t, n, rows, columns, 2)


@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_sfmp_x8_buffer_mul_mat_id_agrees_with_the_plain_cpu_path(build, t):
    """Mixture of experts: MUL_MAT_ID over 8 experts with 2 used per token, the weights in the SFMP_X8
    buffer against the plain buffer, for one token and 37, with one activation row per token shared
    by its experts (ffn_up/gate) and one per used expert (ffn_down), on two threads."""
    n = 512 if t.block_size == 256 else 576
    for tokens in (1, 37):
        for act_rows in (1, 2):
            _check_buffers(build, t, n, 64, tokens, 2, 8, 2, act_rows)


@pytest.fixture(scope="module")
def avx2_build():
    """The plain-AVX2 build (no AVX-512, no VNNI), whose SFMP_X8 layout widens more codes."""
    found = current_build("avx2")
    assert found.tool("sfmp_x8_buffer_check").is_file(), (
        f"{found.folder}: not built; the test command builds it (`python -m sfmp_gguf.llama.build --variant avx2 "
        f"--target sfmp_x8_buffer_check`)")
    disassembly = subprocess.run(["objdump", "-d", str(found.bin_dir / "libggml-cpu.so")], capture_output=True,
                                 text=True, check=True).stdout
    assert "vpdpbusd" not in disassembly and "zmm" not in disassembly  # no VNNI, no AVX-512
    return found


@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_sfmp_x8_buffer_on_the_plain_avx2_build_agrees_with_the_plain_cpu_path(avx2_build, t):
    """The plain-AVX2 build, as most laptops run it: its own SFMP_X8 layout (B = 5 and 7 widened, 8-bit
    codes as signed bytes) against its plain buffer, MUL_MAT for one column and many, and MUL_MAT_ID."""
    n = 512 if t.block_size == 256 else 576
    for args in ((n, 64, 1, 2), (n, 64, 37, 2), (n, 64, 37, 2, 8, 2, 2)):
        _check_buffers(avx2_build, t, *args)


@pytest.mark.parametrize(("overrides", "bound"), [(TWO_LEVEL_OVERRIDES, TWO_LEVEL_PPL_BOUND),
                                                   (OVERRIDES, EIGHT_BIT_PPL_BOUND)], ids=["two-level", "sfmp"])
def test_the_plain_avx2_build_scores_a_file_as_the_native_build_does(build, avx2_build, overrides, bound, tmp_path):
    """The whole model on the plain-AVX2 build, as a laptop without AVX-512 runs it, against this
    machine's build: within 1e-3 where every matmul takes two-level activations, within 3% with 8-bit
    ones (llama_runs: their rounding turns the builds' last-bit F32 differences into whole steps)."""
    tool = avx2_build.tool("llama-perplexity")
    assert tool.is_file(), f"{tool}: not built; the test command builds it"
    model = quantize_with_overrides(build, tmp_path / "teacher.gguf", overrides)
    text = eval_text(tmp_path)
    native, _ = run_perplexity(build.tool("llama-perplexity"), model, text)
    avx2, log = run_perplexity(tool, model, text)
    gap = f"plain AVX2 / native perplexity: {avx2} / {native}, relative gap {abs(avx2 / native - 1):.2e}"
    print(gap)
    assert re.search(r"SFMP_X8 model buffer size = +[1-9]", log)
    assert avx2 == pytest.approx(native, rel=bound), gap


@pytest.mark.parametrize("t", [t for t in SFMP_TYPES if t.fine_activations], ids=lambda t: t.name)
def test_sfmp_activations_8bit_gives_two_level_types_8_bit_activations_on_both_paths(build, t):
    """SFMP_ACTIVATIONS=8bit: the SFMP_X8 buffer (on hi alone) and the plain per-row path (lo all
    zeros) still agree, and both err against F32 as 8-bit activations do, for MUL_MAT with one column
    and many, and MUL_MAT_ID."""
    n = 512 if t.block_size == 256 else 576
    for args in ((n, 64, 1, 2), (n, 64, 37, 2), (n, 64, 37, 2, 8, 2, 2)):
        _check_buffers(build, t, *args, activations="8bit")


def test_llama_tools_put_sfmp_weights_in_the_x8_buffer_and_score_like_the_plain_path(build, sfmp_model):
    result = _generate(build, sfmp_model, "-lv", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"SFMP_X8 model buffer size = +[1-9]", result.stdout + result.stderr)
    text = austen_texts().eval_text.read_text(encoding="utf-8")[:8_000]
    interleaved, _ = perplexity(sfmp_model, text, ctx=128, chunks=4)
    plain, _ = perplexity(sfmp_model, text, ctx=128, chunks=4, extra_args=("--no-repack",))
    # Rounding-level differences move this model's PPL by tenths of a percent (stock IQ4_XS with and
    # without CPU_REPACK does the same); a wrong kernel would move it by far more.
    assert abs(interleaved / plain - 1) < 0.02


def test_a_program_builds_against_the_installed_headers_alone(build, tmp_path):
    """ggml.h and llama.h include the generated type list: it installs with them."""
    prefix, cmake_dir = tmp_path / "prefix", build.folder / "llama.cpp"
    for cmd in (["cmake", "--install", str(cmake_dir / "ggml"), "--prefix", str(prefix)],
                ["cmake", "-DCMAKE_INSTALL_LOCAL_ONLY=ON", f"-DCMAKE_INSTALL_PREFIX={prefix}",
                 "-P", str(cmake_dir / "cmake_install.cmake")]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    t = BY_NAME["sfmp425_k"]
    source = tmp_path / "uses_sfmp.c"
    source.write_text('#include <stdio.h>\n#include "llama.h"\n'
                      f'int main(void) {{ printf("%s %zu %d", ggml_type_name(GGML_TYPE_{t.name.upper()}), '
                      f'ggml_type_size(GGML_TYPE_{t.name.upper()}), (int) GGML_TYPE_{t.name.upper()}); }}\n')
    for compiler, language in (("cc", "c"), ("c++", "c++")):
        program = tmp_path / f"uses_sfmp_{language}"
        result = subprocess.run([compiler, "-x", language, str(source), "-I", str(prefix / "include"),
                                 "-L", str(prefix / "lib"), "-lllama", "-lggml-base", "-o", str(program)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        ran = subprocess.run([str(program)], capture_output=True, text=True, check=True,
                             env={"LD_LIBRARY_PATH": str(prefix / "lib")})
        assert ran.stdout == f"{t.name} {t.type_size} {t.type_id}"
