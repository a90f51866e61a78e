"""The Austen text artifact, and the R serialization reader it rests on (tested on bytes built by hand)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from sfmp_gguf.assets import austen
from sfmp_gguf.assets.cache import artifact_files, sha256_file
from sfmp_gguf.assets.rdata import NA_INTEGER, RDataError, Symbol, read_lazyload_db, read_rds

# ---- hand-made R serialization streams -------------------------------------------------------

UTF8, LATIN1, ASCII = 1 << 3, 1 << 2, 1 << 6


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def flags(sxp: int, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return i32(sxp | (attr << 9) | (tag << 10) | (levels << 12))


def header(version: int = 3) -> bytes:
    out = b"X\n" + i32(version, 0x040201, 0x030500)
    return out + (i32(5) + b"UTF-8" if version == 3 else b"")


def char(s: str | None, levels: int = UTF8, encoding: str = "utf-8") -> bytes:
    if s is None:
        return flags(9) + i32(-1)
    raw = s.encode(encoding)
    return flags(9, levels=levels) + i32(len(raw)) + raw


def sym(name: str) -> bytes:
    return flags(1) + char(name, ASCII)


def ref(index: int) -> bytes:
    return i32((index << 8) | 255)


NULL = i32(254)


def strs(*items: str | None) -> bytes:
    return flags(16) + i32(len(items)) + b"".join(char(s) for s in items)


def ints(*values: int, attr: bool = False) -> bytes:
    return flags(13, attr=attr) + i32(len(values)) + i32(*values)


def reals(*values: float) -> bytes:
    return flags(14) + i32(len(values)) + struct.pack(f">{len(values)}d", *values)


def pairlist(*entries: tuple[bytes | None, bytes]) -> bytes:
    """Cells of (tag item or None, value item), ending in NULL."""
    return b"".join(flags(2, tag=t is not None) + (t or b"") + v for t, v in entries) + NULL


def names_attr(names_sym: bytes, *names: str) -> bytes:
    return pairlist((names_sym, strs(*names)))


def named_list(names_sym: bytes, **items: bytes) -> bytes:
    body = flags(19, attr=True) + i32(len(items)) + b"".join(items.values())
    return body + names_attr(names_sym, *items)


def rds(body: bytes, version: int = 3) -> bytes:
    return header(version) + body


# ---- rdata unit tests --------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("version", [2, 3])
def test_null_in_both_versions(version: int) -> None:
    assert read_rds(rds(NULL, version)) is None


@pytest.mark.unit
def test_integer_and_logical_vectors() -> None:
    v = read_rds(rds(ints(1, NA_INTEGER, -3)))
    assert isinstance(v, np.ndarray) and v.dtype == np.int32
    assert v.tolist() == [1, NA_INTEGER, -3]
    assert read_rds(rds(flags(10) + i32(3, 1, 0, NA_INTEGER))) == [True, False, None]


@pytest.mark.unit
def test_real_and_complex_vectors() -> None:
    v = read_rds(rds(reals(1.5, -2.0, float("nan"))))
    assert v.dtype == np.float64 and v[:2].tolist() == [1.5, -2.0] and np.isnan(v[2])
    c = read_rds(rds(flags(15) + i32(1) + struct.pack(">2d", 1.0, -2.0)))
    assert c.tolist() == [1 - 2j]


@pytest.mark.unit
def test_strings_na_and_encodings() -> None:
    latin1 = char("é", LATIN1, "latin-1")
    body = flags(16) + i32(4) + char("a", ASCII) + char(None) + char("é", UTF8) + latin1
    assert read_rds(rds(body)) == ["a", None, "é", "é"]


@pytest.mark.unit
def test_raw_and_long_length() -> None:
    assert read_rds(rds(flags(24) + i32(3) + b"\x00\x01\xff")) == b"\x00\x01\xff"
    # length -1 announces a long vector: upper and lower 32 bits follow
    assert read_rds(rds(flags(13) + i32(-1, 0, 2) + i32(7, 8))).tolist() == [7, 8]


@pytest.mark.unit
def test_named_lists_and_symbol_back_references() -> None:
    # list(a = list(x = 1L), b = "s"): the second use of the symbol `names` is a REFSXP to ref 1
    inner = named_list(sym("names"), x=ints(1))
    outer = named_list(ref(1), a=inner, b=strs("s"))
    value = read_rds(rds(outer))
    assert list(value) == ["a", "b"]
    assert value["a"]["x"].tolist() == [1] and value["b"] == ["s"]


@pytest.mark.unit
def test_unnamed_list_and_duplicate_names_stay_lists() -> None:
    assert read_rds(rds(flags(19) + i32(2) + NULL + strs("z"))) == [None, ["z"]]
    dup = flags(19, attr=True) + i32(2) + ints(1) + ints(2) + names_attr(sym("names"), "k", "k")
    assert [v.tolist() for v in read_rds(rds(dup))] == [[1], [2]]


@pytest.mark.unit
def test_pairlists_and_symbols() -> None:
    value = read_rds(rds(pairlist((sym("x"), ints(1)), (sym("y"), sym("z")))))
    assert list(value) == ["x", "y"] and isinstance(value["y"], Symbol) and value["y"] == "z"
    assert read_rds(rds(pairlist((None, strs("a")), (None, NULL)))) == [["a"], None]


@pytest.mark.unit
def test_attributes_other_than_names_are_dropped() -> None:
    body = ints(1, 2, attr=True) + pairlist((sym("dim"), ints(1, 2)))
    assert read_rds(rds(body)).tolist() == [1, 2]


def altrep(cls: str, state: bytes, attr: bytes = NULL) -> bytes:
    info = pairlist((None, sym(cls)), (None, sym("base")), (None, ints(13)))
    return i32(238) + info + state + attr


@pytest.mark.unit
def test_altrep_compact_sequences() -> None:
    v = read_rds(rds(altrep("compact_intseq", reals(5, 10, -1))))
    assert v.dtype == np.int32 and v.tolist() == [10, 9, 8, 7, 6]
    assert read_rds(rds(altrep("compact_realseq", reals(3, 0.5, 1)))).tolist() == [0.5, 1.5, 2.5]


@pytest.mark.unit
def test_altrep_wrappers_and_deferred_strings() -> None:
    meta = ints(0, 0)
    assert read_rds(rds(altrep("wrap_string", pairlist((None, strs("p", "q")), (None, meta))))) == ["p", "q"]
    wrapped_list = altrep("wrap_list", pairlist((None, flags(19) + i32(1) + ints(4)), (None, meta)),
                          names_attr(sym("names"), "n"))
    assert read_rds(rds(wrapped_list))["n"].tolist() == [4]
    deferred = altrep("deferred_string", pairlist((None, ints(3, NA_INTEGER)), (None, NULL)))
    assert read_rds(rds(deferred)) == ["3", None]


@pytest.mark.unit
def test_compressed_rds_files() -> None:
    data = rds(strs("x"))
    for packed in (gzip.compress(data, mtime=0), bz2.compress(data), lzma.compress(data)):
        assert read_rds(packed) == ["x"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "name"),
    [(flags(3), "CLOSXP"), (flags(4), "ENVSXP"), (i32(253), "GLOBALENV_SXP"), (flags(6), "LANGSXP")],
)
def test_unsupported_types_are_named(body: bytes, name: str) -> None:
    with pytest.raises(RDataError, match=name):
        read_rds(rds(body))


@pytest.mark.unit
def test_unsupported_altrep_class_is_named() -> None:
    with pytest.raises(RDataError, match="ALTREP_SXP.*mmap_integer"):
        read_rds(rds(altrep("mmap_integer", NULL)))


@pytest.mark.unit
def test_bad_streams() -> None:
    with pytest.raises(RDataError, match="XDR"):
        read_rds(b"A\n1\n")
    with pytest.raises(RDataError, match="version 4"):
        read_rds(b"X\n" + i32(4, 0, 0) + NULL)
    with pytest.raises(RDataError, match="truncated"):
        read_rds(rds(ints(1, 2))[:-2])
    with pytest.raises(RDataError, match="REFSXP"):
        read_rds(rds(ref(3)))


def _compress(kind: int, data: bytes) -> bytes:
    size = struct.pack(">I", len(data))
    if kind == 1:
        return size + zlib.compress(data)
    if kind == 2:
        return size + b"2" + bz2.compress(data)
    raw_lzma2 = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
    return size + b"Z" + lzma.compress(data, format=lzma.FORMAT_RAW, filters=raw_lzma2)


@pytest.mark.unit
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_lazyload_db(tmp_path: Path, kind: int) -> None:
    values = {"first": rds(strs("one", "two")), "second": rds(reals(2.5))}
    rdb, keys = b"", {}
    for name, data in values.items():
        blob = data if kind == 0 else _compress(kind, data)
        keys[name] = ints(len(rdb), len(blob))
        rdb += blob
    compressed = flags(10) + i32(1, 1) if kind == 1 else ints(kind)
    # the inner list's attributes come first in the stream, so it defines the `names` symbol
    index = named_list(ref(1), variables=named_list(sym("names"), **keys),
                       references=flags(19) + i32(0), compressed=compressed)
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(rds(index), mtime=0))
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    db = read_lazyload_db(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb")
    assert db["first"] == ["one", "two"] and db["second"].tolist() == [2.5]


@pytest.mark.unit
def test_lazyload_db_stored_entry(tmp_path: Path) -> None:
    data = rds(strs("plain"))
    blob = struct.pack(">I", len(data)) + b"0" + data  # method '0': compression did not pay off
    # the inner list's attributes come first in the stream, so it defines the `names` symbol
    index = named_list(ref(1), variables=named_list(sym("names"), v=ints(0, len(blob))), compressed=ints(2))
    (tmp_path / "x.rdx").write_bytes(rds(index))
    (tmp_path / "x.rdb").write_bytes(blob)
    assert read_lazyload_db(tmp_path / "x.rdx", tmp_path / "x.rdb") == {"v": ["plain"]}


# ---- the real artifact ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def texts() -> austen.AustenTexts:
    return austen.austen_texts()


@pytest.mark.integration
def test_six_novels_present_and_plausible(texts: austen.AustenTexts) -> None:
    assert sorted(p.name for p in texts.folder.glob("*.txt")) == sorted(
        [f"{n}.txt" for n in austen.NOVELS] + ["eval.txt", "calib.txt"])
    openings = {
        "prideprejudice": "It is a truth universally acknowledged",
        "emma": "Emma Woodhouse, handsome, clever, and rich",
        "sensesensibility": "The family of Dashwood",
        "mansfieldpark": "Maria Ward",
        "northangerabbey": "Catherine Morland",
        "persuasion": "Sir Walter Elliot, of Kellynch Hall",
    }
    for name, phrase in openings.items():
        text = texts.novel(name).read_text(encoding="utf-8")
        assert phrase in text, name
        assert 300_000 < len(text) < 1_000_000, name
    with pytest.raises(KeyError):
        texts.novel("middlemarch")


@pytest.mark.integration
def test_eval_and_calib_split(texts: austen.AustenTexts) -> None:
    pp = texts.novel("prideprejudice").read_text(encoding="utf-8")
    eval_text = texts.eval_text.read_text(encoding="utf-8")
    calib = texts.calib_text.read_text(encoding="utf-8")
    # eval: the shortest opening run of whole lines reaching 100,000 characters
    assert pp.startswith(eval_text + "\n")
    assert len(eval_text) >= austen.EVAL_CHARS
    assert len(eval_text[: eval_text.rindex("\n")]) < austen.EVAL_CHARS
    assert "It is a truth universally acknowledged" in eval_text
    # calib: all of Emma
    assert calib == texts.novel("emma").read_text(encoding="utf-8")
    assert calib.startswith("EMMA") and len(calib) > 800_000
    # disjoint: different novels, so no substantial line is shared
    long_lines = {line for line in eval_text.splitlines() if len(line) >= 40}
    assert long_lines and not long_lines & set(calib.splitlines())


@pytest.mark.integration
def test_the_built_in_calibration_text_is_persuasion_as_its_source_note_says(texts: austen.AustenTexts) -> None:
    from sfmp_gguf.importance import BUILTIN_TEXT

    assert BUILTIN_TEXT.read_bytes() == texts.novel("persuasion").read_bytes()
    assert "Persuasion" in (BUILTIN_TEXT.parent / "SOURCE.md").read_text()
    eval_lines = {line for line in texts.eval_text.read_text(encoding="utf-8").splitlines() if len(line) >= 40}
    assert not eval_lines & set(BUILTIN_TEXT.read_text(encoding="utf-8").splitlines())


@pytest.mark.integration
def test_rebuild_is_byte_identical(texts: austen.AustenTexts) -> None:
    before = artifact_files(austen.ARTIFACT)
    assert before["eval.txt"] == sha256_file(texts.eval_text)
    shutil.rmtree(texts.folder)
    rebuilt = austen.austen_texts()
    assert rebuilt == texts
    assert artifact_files(austen.ARTIFACT) == before


@pytest.mark.integration
def test_fetch_deb_verifies_and_reuses(tmp_path: Path) -> None:
    deb = austen.fetch_deb(tmp_path)
    assert deb == tmp_path / austen.DEB_FILE and sha256_file(deb) == austen.DEB_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [austen.DEB_FILE]  # its temp dir is gone
    mtime = deb.stat().st_mtime_ns
    assert austen.fetch_deb(tmp_path) == deb and deb.stat().st_mtime_ns == mtime
