"""convert/sfmp_derive.py: a lower-rate file from a higher-rate one, with the converter's allocation
over the recorded profile, the codes cut exactly as quant.elastic cuts them, and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from sfmp_gguf import derive, gguf_types
from sfmp_gguf.allocation import TOLERANCE_BPW
from sfmp_gguf.analysis import TensorProfile
from sfmp_gguf.format import BY_ID, FORMAT_VERSION, GGUF_VERSION_KEY, SFMP_TYPES, types_for_row
from sfmp_gguf.gguf_io import OutputTensor, write_gguf
from sfmp_gguf.paths import REPO_ROOT
from sfmp_gguf.quant.elastic import derive_blocks
from sfmp_gguf.quant.reference import quantize_blocks
from tests.convert_helpers import (assert_nothing_written, assert_one_line_error, make_tiny_model, quantized_bpw,
                                    run_convert, write_float_copy)

DERIVE = REPO_ROOT / "convert" / "sfmp_derive.py"
SOURCE_BPW = 7.0


def run_derive(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DERIVE), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.unit
def test_the_recorded_profile_reads_back_as_the_derivable_candidates(tmp_path):
    t = next(t for t in SFMP_TYPES if t.name == "sfmp550_s")
    rows = quantize_blocks(np.random.default_rng(7).standard_normal((4, 128)).astype(np.float32), t)
    candidates = types_for_row(128)  # both grids, as the converter profiles
    errors = np.linspace(2.0, 0.1, len(candidates))
    profile = TensorProfile("blk.0.ffn_down.weight", (4, 128), candidates, errors)
    columns = np.random.default_rng(8).random(128).astype(np.float32)
    metadata = derive.profile_metadata([profile], {profile.name: t}, "imatrix", {profile.name: columns})
    path = tmp_path / "one.gguf"
    write_gguf(path, "llama", metadata, [OutputTensor(profile.name, (4, 128), t)], lambda o: rows)
    source = derive.read_source(path)
    (read,) = source.profiles
    kept = [k for k, c in enumerate(candidates) if c.type_size <= t.type_size]  # either grid
    assert read.candidates == tuple(candidates[k] for k in kept) and read.candidates[-1] is t
    assert np.array_equal(read.errors, errors[kept].astype(np.float32))
    assert source.sensitivity == "imatrix" and source.types == {profile.name: t}
    assert np.array_equal(source.columns[profile.name], columns)


@pytest.fixture(scope="module")
def source_file(build, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("derive")
    model = make_tiny_model(folder / "model")
    out = folder / f"tiny-{SOURCE_BPW}.gguf"
    result = run_convert(model, "-o", out, "--bpw", SOURCE_BPW, "--sensitivity", "imatrix")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _tensors(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    gguf_types.register()
    return {t.name: (int(t.tensor_type), np.asarray(t.data)) for t in GGUFReader(path).tensors}


@pytest.mark.integration
@pytest.mark.parametrize("method,bpw", [("requantize", 3.0), ("requantize", 4.5), ("cut", 4.5)])
def test_derived_tensors_are_the_allocated_types_made_by_the_method(source_file, tmp_path, method, bpw):
    """requantize: the quantizer with the recorded importance on the decoded values; cut: elastic's codes."""
    from sfmp_gguf import kernels

    lib = kernels.load()
    out = tmp_path / "derived.gguf"
    result = run_derive(source_file, "--bpw", bpw, "-o", out, "--method", method, "--threads", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out}" in result.stdout
    rate, _ = quantized_bpw(out)
    assert abs(rate - bpw) <= TOLERANCE_BPW + 1e-9
    source = derive.read_source(source_file)
    assert source.columns.keys() == source.types.keys()  # imatrix: every SFMP tensor has its importance
    expected = derive.plan(source, bpw, method).types  # the allocation over the recorded profile
    before, after = _tensors(source_file), _tensors(out)
    assert before.keys() == after.keys()
    changed = 0
    for name, (type_id, data) in after.items():
        if type_id in BY_ID:
            src, dst = BY_ID[before[name][0]], BY_ID[type_id]
            assert dst is expected[name], name
            if src is dst:
                assert np.array_equal(data, before[name][1]), name
            elif method == "cut":
                assert np.array_equal(data, derive_blocks(before[name][1], src, dst)), name
            else:
                n = data.shape[-1] // dst.type_size * dst.block_size
                values = lib.dequantize(before[name][1].reshape(1, -1), src).reshape(-1, n)
                assert np.array_equal(data.reshape(values.shape[0], -1), lib.quantize(values, dst, source.columns[name])), name
            changed += src is not dst
        else:
            assert type_id == before[name][0] and np.array_equal(data, before[name][1]), name
    assert changed > 0


@pytest.mark.integration
def test_derivation_is_deterministic_and_a_derived_file_derives_again(source_file, tmp_path):
    a, b, again = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "again.gguf"
    assert run_derive(source_file, "--bpw", 5.0, "-o", a).returncode == 0
    assert run_derive(source_file, "--bpw", 5.0, "-o", b).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    result = run_derive(a, "--bpw", 3.0, "-o", again)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = derive.read_source(a), derive.read_source(again)
    for p, q in zip(first.profiles, second.profiles):
        assert q.candidates == p.candidates[:len(q.candidates)]  # cut to what the new type reaches
        assert np.array_equal(q.errors, p.errors[:len(q.candidates)])


@pytest.mark.integration
def test_llama_cli_runs_a_derived_file(build, source_file, tmp_path):
    out = tmp_path / "derived.gguf"
    assert run_derive(source_file, "--bpw", 3.5, "-o", out).returncode == 0
    result = subprocess.run([str(build.tool("llama-cli")), "-m", str(out), "-p", "Once upon a time", "-n", "8",
                             "--single-turn", "--temp", "0", "-t", "2", "--check-tensors"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _renamed_key(path: Path, key: str) -> None:
    """Break one metadata key's name in place, as a file written without it would read."""
    gguf_types.register()
    field = GGUFReader(path, "r+").fields[key]
    field.parts[1][-1] = ord("#")


def _older_version(path: Path) -> None:
    gguf_types.register()
    field = GGUFReader(path, "r+").fields[GGUF_VERSION_KEY]
    field.parts[field.data[0]][0] = FORMAT_VERSION - 1


@pytest.mark.integration
def test_bad_inputs_give_one_line_errors_and_leave_no_file(source_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    plain = inputs / "plain.gguf"
    write_float_copy(source_file.parent / "model", plain)
    older, unprofiled = inputs / "older.gguf", inputs / "unprofiled.gguf"
    shutil.copy(source_file, older)
    _older_version(older)
    shutil.copy(source_file, unprofiled)
    _renamed_key(unprofiled, derive.KEY_ERRORS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.gguf"
    cases = [
        ((inputs / "missing.gguf", "--bpw", 3), ("missing.gguf", "no such file")),
        ((plain, "--bpw", 3), ("plain.gguf", "not an SFMP file")),
        ((older, "--bpw", 3), ("older.gguf", f"format version {FORMAT_VERSION - 1}")),
        ((unprofiled, "--bpw", 3), ("unprofiled.gguf", "no allocation profile")),
        ((source_file, "--bpw", SOURCE_BPW + 1), (source_file.name, "above the file's own")),
        ((source_file, "--bpw", 1.0), ("--bpw 1",)),
        ((source_file, "--bpw", 3, "-o", out_dir / "none" / "x.gguf"), ("does not exist",)),
        ((source_file, "--bpw", 3, "-o", source_file), ("is the input",)),
    ]
    for args, needles in cases:
        result = run_derive(*args, *(("-o", out) if "-o" not in args else ()))
        assert_one_line_error(result, *needles)
        assert_nothing_written(out_dir)
