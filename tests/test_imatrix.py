"""The teacher's importance matrix: complete, sane, and read back from both llama.cpp formats."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGUFReader

from sfmp_gguf.assets.imatrix import teacher_imatrix
from sfmp_gguf.imatrix_io import ImatrixError, load_imatrix
from sfmp_gguf.assets.teacher import teacher


@pytest.fixture(scope="module")
def imatrix_path(build):
    return teacher_imatrix()


@pytest.mark.integration
def test_teacher_imatrix_covers_every_block_matrix(imatrix_path):
    means = load_imatrix(imatrix_path)
    weights = [t for t in GGUFReader(teacher().gguf_path).tensors
               if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2]
    assert len(weights) == 30 * 7
    for t in weights:
        assert t.name in means, t.name
        h = means[t.name]
        assert h.shape == (int(t.shape[0]),), t.name  # gguf shapes are ne0 first: the row length
        assert np.all(np.isfinite(h)) and np.all(h > 0), t.name


def _write_legacy(path, entries, ncall, trailer=True):
    """llama-imatrix's legacy layout (tools/imatrix save_imatrix_legacy), written independently."""
    out = struct.pack("<i", len(entries))
    for name, values in entries.items():
        raw = name.encode()
        stored = np.asarray(values, dtype="<f4") * np.float32(max(ncall, 1))
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, stored.size) + stored.tobytes()
    if trailer:
        dataset = b"calib.txt"
        out += struct.pack("<ii", 7, len(dataset)) + dataset
    path.write_bytes(out)


@pytest.mark.unit
@pytest.mark.parametrize("trailer", [True, False])
def test_legacy_dat_round_trips(tmp_path, trailer):
    rng = np.random.default_rng(0)
    entries = {"blk.0.attn_q.weight": rng.random(576, dtype=np.float32) + 0.01,
               "blk.0.ffn_down.weight": rng.random(1536, dtype=np.float32) + 0.01}
    path = tmp_path / "imatrix.dat"
    _write_legacy(path, entries, ncall=12, trailer=trailer)
    loaded = load_imatrix(path)
    assert sorted(loaded) == sorted(entries)
    for name, values in entries.items():
        np.testing.assert_allclose(loaded[name], values, rtol=1e-6)


@pytest.mark.unit
def test_legacy_dat_with_no_calls_keeps_raw_values(tmp_path):
    path = tmp_path / "imatrix.dat"
    _write_legacy(path, {"w": np.array([0.5, 2.0], dtype=np.float32)}, ncall=0)
    np.testing.assert_array_equal(load_imatrix(path)["w"], [0.5, 2.0])


def _one_line_error(path) -> str:
    with pytest.raises(ImatrixError) as info:
        load_imatrix(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.integration
def test_malformed_files_give_one_line_errors(tmp_path, imatrix_path):
    truncated = tmp_path / "truncated.dat"
    good = tmp_path / "good.dat"
    _write_legacy(good, {"blk.0.attn_q.weight": np.ones(576, dtype=np.float32)}, ncall=3)
    truncated.write_bytes(good.read_bytes()[:100])
    assert "truncated" in _one_line_error(truncated)

    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    _one_line_error(empty)

    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"\xff\xff\xff\x7f" + b"not an imatrix" * 10)
    _one_line_error(garbage)

    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(imatrix_path.read_bytes()[:200])
    _one_line_error(bad_gguf)

    _one_line_error(tmp_path / "missing.gguf")


@pytest.mark.unit
def test_gguf_without_imatrix_tensors_is_rejected(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "not-imatrix.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "no imatrix entries" in _one_line_error(path)


@pytest.mark.integration
def test_the_copy_llama_imatrix_reads_holds_f16_matrices_and_f32_vectors(build, tmp_path):
    """The temporary model behind ``--sensitivity imatrix`` on a Hugging Face folder: 2 bytes per
    matrix weight on disk, and llama-imatrix runs on it."""
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.imatrix_io import run_imatrix
    from tests.convert_helpers import make_tiny_model, write_float_copy

    model, copy = make_tiny_model(tmp_path / "hf"), tmp_path / "copy.gguf"
    write_float_copy(model, copy, half=True)
    tensors = GGUFReader(copy).tensors
    assert {t.tensor_type.name for t in tensors if len(t.shape) >= 2} == {"F16"}
    assert {t.tensor_type.name for t in tensors if len(t.shape) == 1} == {"F32"}
    run_imatrix(copy, austen_texts().calib_text, tmp_path / "imatrix.gguf", 64, 2, 2)
    means = load_imatrix(tmp_path / "imatrix.gguf")
    assert "blk.0.ffn_down.weight" in means and np.isfinite(means["blk.0.ffn_down.weight"]).all()
