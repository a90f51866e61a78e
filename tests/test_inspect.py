"""python -m sfmp_gguf.inspect: every tensor listed, the upgraded share counted from the bytes, files of
older format versions read, and one-line errors with exit status 2 on bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from sfmp_gguf import inspect
from sfmp_gguf.format import (FIRST_TYPE_ID, FORMAT_VERSION, GGUF_VERSION_KEY, GRID_NONLINEAR, LEGACY_TYPE_IDS, SFMP_TYPES,
                              UPGRADE_FLAG, VARIANT_S)
from sfmp_gguf.gguf_io import OutputTensor, write_gguf
from sfmp_gguf.quant.reference import decode_blocks, quantize_blocks

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
K_TYPE = next(t for t in SFMP_TYPES if t.block_size == 256 and t.upgrades == 2 and t.base_bits == 4)
S_TYPE = next(t for t in SFMP_TYPES if t.variant is VARIANT_S and t.upgrades == 1 and t.base_bits == 3)
NL_TYPE = next(t for t in SFMP_TYPES if t.grid == GRID_NONLINEAR and t.block_size == 256 and t.upgrades == 6)


def _quantized(t, rows: int, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)
    return quantize_blocks(x, t)


def _scale_bytes(data: np.ndarray, t) -> np.ndarray:
    return data.reshape(-1, t.type_size)[:, t.sc_offset:t.sc_offset + t.n_sub]


@pytest.fixture(scope="module")
def sfmp_file(tmp_path_factory) -> tuple[Path, dict[str, tuple]]:
    """A small SFMP GGUF written by the converter's writer, and per tensor what inspect must find:
    (type name, GGUF shape, bpw, upgraded sub-blocks, sub-blocks)."""
    rng = np.random.default_rng(2024)
    k = _quantized(K_TYPE, 4, 512, 1)
    nl = _quantized(NL_TYPE, 2, 256, 2)
    s = _quantized(S_TYPE, 3, 128, 3)
    # Scramble the S tensor's flags: the count must then come from the stored bits, not from the type.
    flags = rng.random(_scale_bytes(s, S_TYPE).shape) < 0.3
    blocks = s.reshape(-1, S_TYPE.type_size)
    blocks[:, S_TYPE.sc_offset:S_TYPE.sc_offset + S_TYPE.n_sub] = (
        (blocks[:, S_TYPE.sc_offset:S_TYPE.sc_offset + S_TYPE.n_sub] & 0x7F) | np.where(flags, UPGRADE_FLAG, 0))
    norm = np.ones(512, dtype=np.float32)
    data = {"blk.0.attn_q.weight": (K_TYPE, (4, 512), k), "blk.0.ffn_up.weight": (NL_TYPE, (2, 256), nl),
            "blk.0.ffn_down.weight": (S_TYPE, (3, 128), s), "output_norm.weight": (None, (512,), norm)}
    outputs = [OutputTensor(name, shape, t) for name, (t, shape, _) in data.items()]
    path = tmp_path_factory.mktemp("inspect") / "model-sfmp.gguf"
    write_gguf(path, "llama", {}, outputs, lambda o: data[o.name][2])
    expected = {}
    for name, (t, shape, array) in data.items():
        n = int(np.prod(shape))
        if t is None:
            expected[name] = ("F32", tuple(reversed(shape)), 32.0, None, None)
        else:
            upgraded = int(np.unpackbits(_scale_bytes(array, t)[..., None], axis=-1)[..., 0].sum())  # each byte's top bit
            expected[name] = (t.name, tuple(reversed(shape)), t.bpw, upgraded, n // 32)
    assert expected["blk.0.ffn_down.weight"][3] == int(flags.sum())
    return path, expected


def test_lists_every_tensor_with_type_shape_bpw_and_upgraded_share(sfmp_file):
    path, expected = sfmp_file
    info = inspect.inspect_file(path)
    assert [t.name for t in info.tensors] == list(expected)
    for t in info.tensors:
        type_name, shape, bpw, upgraded, sub_blocks = expected[t.name]
        assert (t.type, t.shape, t.upgraded, t.sub_blocks) == (type_name, shape, upgraded, sub_blocks), t
        assert t.bpw == pytest.approx(bpw)
        assert t.upgraded_share == (None if upgraded is None else pytest.approx(upgraded / sub_blocks))
    assert info.format_version == FORMAT_VERSION and info.size_bytes == path.stat().st_size
    sfmp = [e for e in expected.values() if e[3] is not None]
    assert info.upgraded_share == pytest.approx(sum(e[3] for e in sfmp) / sum(e[4] for e in sfmp))


def test_upgraded_share_of_well_formed_blocks_is_the_types_own(sfmp_file):
    path, _ = sfmp_file
    by_name = {t.name: t for t in inspect.inspect_file(path).tensors}
    for name, t in (("blk.0.attn_q.weight", K_TYPE), ("blk.0.ffn_up.weight", NL_TYPE)):
        assert by_name[name].upgraded_share == pytest.approx(t.upgrades / t.n_sub)
        # and the decoder agrees on which sub-blocks those are
        reader_data = next(r for r in GGUFReader(path).tensors if r.name == name).data
        _, _, bits, _ = decode_blocks(np.asarray(reader_data).reshape(-1, t.type_size), t)
        assert int((bits > t.base_bits).sum()) == by_name[name].upgraded


def test_table_and_json_from_the_command_line(sfmp_file):
    path, expected = sfmp_file
    table = subprocess.run([sys.executable, "-m", "sfmp_gguf.inspect", str(path)], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for name, (type_name, shape, _, upgraded, sub_blocks) in expected.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert type_name in row and " x ".join(map(str, shape)) in row
        assert row.endswith("-" if upgraded is None else f"{100 * upgraded / sub_blocks:.1f}%")
    assert f"SFMP format version {FORMAT_VERSION}" in table.stdout and str(path.stat().st_size) in table.stdout
    out = subprocess.run([sys.executable, "-m", "sfmp_gguf.inspect", str(path), "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    data = json.loads(out.stdout)
    assert [t["name"] for t in data["tensors"]] == list(expected)
    assert data["format_version"] == FORMAT_VERSION and data["size_bytes"] == path.stat().st_size
    sfmp_bytes = sum(t["n_bytes"] for t in data["tensors"] if t["upgraded_share"] is not None)
    sfmp_elements = sum(t["n_elements"] for t in data["tensors"] if t["upgraded_share"] is not None)
    assert data["bpw_sfmp"] == pytest.approx(8 * sfmp_bytes / sfmp_elements)


def write_raw_gguf(path: Path, metadata: dict[str, int], tensors: list[tuple[str, tuple[int, ...], int, bytes]],
                   alignment: int = 32) -> Path:
    """A GGUF v3 written byte by byte (uint32 metadata only), so any type id can go in."""
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(string(k) + struct.pack("<II", 4, v) for k, v in metadata.items())
    blobs, offset = [], 0
    for name, shape, type_id, data in tensors:
        head += string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        head += struct.pack("<IQ", type_id, offset)
        padded = data + bytes(-len(data) % alignment)
        blobs.append(padded)
        offset += len(padded)
    path.write_bytes(head + bytes(-len(head) % alignment) + b"".join(blobs))
    return path


def test_files_of_an_older_format_version_are_read_with_their_type_ids(tmp_path):
    version = 3
    first, _ = LEGACY_TYPE_IDS[version]
    k = _quantized(K_TYPE, 2, 256, 4)
    s = _quantized(S_TYPE, 2, 64, 5)
    path = write_raw_gguf(tmp_path / "old.gguf", {GGUF_VERSION_KEY: version}, [
        ("a.weight", (256, 2), first + SFMP_TYPES.index(K_TYPE), k.tobytes()),
        ("b.weight", (64, 2), first + SFMP_TYPES.index(S_TYPE), s.tobytes()),
    ])
    with pytest.raises(ValueError, match="GGMLQuantizationType"):  # gguf-py knows only the current ids
        GGUFReader(path)
    info = inspect.inspect_file(path)
    assert info.format_version == version
    assert [(t.type, t.type_id, t.shape) for t in info.tensors] == [
        (K_TYPE.name, first + SFMP_TYPES.index(K_TYPE), (256, 2)), (S_TYPE.name, first + SFMP_TYPES.index(S_TYPE), (64, 2))]
    assert info.tensors[0].upgraded == 2 * K_TYPE.upgrades and info.tensors[1].upgraded == 2 * S_TYPE.upgrades


def test_compare_matches_an_old_files_tensors_through_its_type_ids_and_finds_a_changed_byte(tmp_path, capsys):
    version = 3
    first, _ = LEGACY_TYPE_IDS[version]
    k = _quantized(K_TYPE, 2, 256, 4).tobytes()
    s = _quantized(S_TYPE, 2, 64, 5).tobytes()

    def write(name: str, metadata: dict[str, int], first_id: int, s_bytes: bytes) -> Path:
        return write_raw_gguf(tmp_path / name, metadata, [
            ("a.weight", (256, 2), first_id + SFMP_TYPES.index(K_TYPE), k),
            ("b.weight", (64, 2), first_id + SFMP_TYPES.index(S_TYPE), s_bytes)])
    old = write("old.gguf", {GGUF_VERSION_KEY: version}, first, s)
    new = write("new.gguf", {GGUF_VERSION_KEY: FORMAT_VERSION}, FIRST_TYPE_ID, s)
    changed = write("changed.gguf", {GGUF_VERSION_KEY: FORMAT_VERSION}, FIRST_TYPE_ID,
                    s[:-1] + bytes([s[-1] ^ 1]))
    assert inspect.main([str(new), "--compare", str(old)]) == 0
    assert "2 tensors have the same type, shape and data bytes in both; 0 differ" in capsys.readouterr().out
    assert inspect.main([str(changed), "--compare", str(old)]) == 1
    out = capsys.readouterr().out
    assert "b.weight: different data bytes" in out and "1 tensors have the same" in out
    renamed = write_raw_gguf(tmp_path / "renamed.gguf", {GGUF_VERSION_KEY: FORMAT_VERSION},
                             [("a.weight", (256, 2), FIRST_TYPE_ID + SFMP_TYPES.index(S_TYPE), k)])
    same, differences = inspect.compare(inspect.inspect_file(renamed), inspect.inspect_file(new))
    assert same == 0 and sorted(differences) == [f"a.weight: {S_TYPE.name} (256, 2) against {K_TYPE.name} (256, 2)",
                                                 f"b.weight: only in {new}"]


def test_an_unknown_type_is_listed_not_fatal(tmp_path):
    path = write_raw_gguf(tmp_path / "odd.gguf", {}, [("x", (32,), 999, bytes(32))])
    (t,) = inspect.inspect_file(path).tensors
    assert (t.type, t.bpw, t.upgraded_share) == ("unknown(999)", None, None)


def _bad_inputs(tmp_path: Path, sfmp_file: Path) -> dict[str, tuple[Path, str]]:
    good = sfmp_file.read_bytes()
    text = tmp_path / "notes.gguf"
    text.write_text("these are not the weights you are looking for\n")
    head = tmp_path / "head.gguf"
    head.write_bytes(good[:40])
    tail = tmp_path / "tail.gguf"
    tail.write_bytes(good[:-100])
    return {"missing": (tmp_path / "absent.gguf", "no such file"), "folder": (tmp_path, "folder"),
            "not gguf": (text, "not a GGUF file"), "truncated header": (head, "truncated"),
            "truncated data": (tail, "truncated")}


@pytest.mark.parametrize("case", ["missing", "folder", "not gguf", "truncated header", "truncated data"])
def test_bad_input_gives_one_line_naming_the_file_and_exit_2(tmp_path, sfmp_file, capsys, case):
    path, needle = _bad_inputs(tmp_path, sfmp_file[0])[case]
    assert inspect.main([str(path)]) == inspect.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and needle in lines[0], captured.err
    assert captured.out == ""


def test_bad_input_from_the_command_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.inspect", str(text), "--json"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {text}: not a GGUF file")
