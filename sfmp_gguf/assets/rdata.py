"""A small reader of R's serialization format (XDR, versions 2 and 3) and lazy-load databases.

It covers what data packages hold (atomic vectors, lists, pairlists, symbols, compact ALTREP
forms), so that R data can be read without installing R. Values become plain Python objects:

- NULL -> None; a symbol -> ``Symbol`` (a str subclass)
- STRSXP -> ``list[str | None]`` (None is NA); LGLSXP -> ``list[bool | None]``
- INTSXP -> int32 array (NA stays ``NA_INTEGER``); REALSXP -> float64; CPLXSXP -> complex128
- RAWSXP -> bytes; VECSXP/EXPRSXP and pairlists -> dict when every element has a distinct
  non-empty name, else list

Attributes other than the names of lists and pairlists are read and dropped.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

NA_INTEGER = -(2**31)

# SEXP type codes (Rinternals.h) and the pseudo-types used only in serialized streams.
_SXP_NAMES = {
    0: "NILSXP", 1: "SYMSXP", 2: "LISTSXP", 3: "CLOSXP", 4: "ENVSXP", 5: "PROMSXP",
    6: "LANGSXP", 7: "SPECIALSXP", 8: "BUILTINSXP", 9: "CHARSXP", 10: "LGLSXP", 13: "INTSXP",
    14: "REALSXP", 15: "CPLXSXP", 16: "STRSXP", 17: "DOTSXP", 18: "ANYSXP", 19: "VECSXP",
    20: "EXPRSXP", 21: "BCODESXP", 22: "EXTPTRSXP", 23: "WEAKREFSXP", 24: "RAWSXP", 25: "S4SXP",
    238: "ALTREP_SXP", 239: "ATTRLISTSXP", 240: "ATTRLANGSXP", 241: "BASEENV_SXP",
    242: "EMPTYENV_SXP", 243: "BCREPREF", 244: "BCREPDEF", 245: "GENERICREFSXP",
    246: "CLASSREFSXP", 247: "PERSISTSXP", 248: "PACKAGESXP", 249: "NAMESPACESXP",
    250: "BASENAMESPACE_SXP", 251: "MISSINGARG_SXP", 252: "UNBOUNDVALUE_SXP",
    253: "GLOBALENV_SXP", 254: "NILVALUE_SXP", 255: "REFSXP",
}
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP = 0, 1, 2, 9, 10, 13, 14
CPLXSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP = 15, 16, 19, 20, 24
ALTREP_SXP, NILVALUE_SXP, REFSXP = 238, 254, 255

# Flag bits of an item header, and the CHARSXP encoding bits kept in its "levels".
_IS_OBJECT, _HAS_ATTR, _HAS_TAG = 1 << 8, 1 << 9, 1 << 10
_BYTES, _LATIN1, _UTF8, _ASCII = 1 << 1, 1 << 2, 1 << 3, 1 << 6


class RDataError(ValueError):
    """The bytes are not R serialization data this reader understands."""


class Symbol(str):
    """An R symbol (name), kept apart from character strings."""


def sxp_name(code: int) -> str:
    return _SXP_NAMES.get(code, f"unknown SEXP type {code}")


def _named(entries: list[tuple[str | None, object]]) -> dict[str, object] | list[object]:
    names = [name for name, _ in entries]
    if names and all(names) and len(set(names)) == len(names):
        return {str(name): value for name, value in entries}
    return [value for _, value in entries]


def _values(x: object) -> list[object]:
    if isinstance(x, dict):
        return list(x.values())
    return list(x) if isinstance(x, (list, np.ndarray)) else []


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[object] = []
        self.native = "utf-8"

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RDataError(f"truncated data: need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def length(self) -> int:
        n = self.int32()
        if n == -1:  # long vector: two more ints, upper and lower halves
            upper, lower = struct.unpack(">II", self.take(8))
            return int(upper << 32 | lower)
        if n < 0:
            raise RDataError(f"negative vector length {n}")
        return n

    def array(self, dtype: str, n: int, width: int) -> np.ndarray:
        return np.frombuffer(self.take(n * width), dtype=dtype).astype(dtype.lstrip(">"))

    def header(self) -> None:
        fmt = self.take(2)
        if fmt != b"X\n":
            kinds = {b"A\n": "ASCII", b"B\n": "native binary"}
            raise RDataError(f"only XDR serialization is supported, got {kinds.get(fmt, repr(fmt))}")
        version = self.int32()
        self.int32(), self.int32()  # writer's R version, oldest R version that can read it
        if version == 3:
            name = self.take(self.int32()).decode("ascii", "replace")
            try:
                self.native = codecs.lookup(name).name
            except LookupError:  # an R locale name Python lacks: UTF-8 is the likeliest
                self.native = "utf-8"
        elif version != 2:
            raise RDataError(f"unsupported serialization version {version}")

    def item(self) -> object:
        return self.dispatch(self.int32())

    def dispatch(self, flags: int) -> object:
        sxp = flags & 0xFF
        if sxp == NILVALUE_SXP:
            return None
        if sxp == REFSXP:
            index = (flags >> 8) or self.int32()
            if not 1 <= index <= len(self.refs):
                raise RDataError(f"REFSXP index {index} out of range ({len(self.refs)} refs)")
            return self.refs[index - 1]
        if sxp == SYMSXP:
            name = self.item()
            if not isinstance(name, str):
                raise RDataError("SYMSXP without a character name")
            symbol = Symbol(name)
            self.refs.append(symbol)
            return symbol
        if sxp == LISTSXP:
            return self.pairlist(flags)
        if sxp == CHARSXP:
            return self.charsxp(flags)
        if sxp == ALTREP_SXP:
            return self.altrep()
        if sxp in (LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP):
            value = self.vector(sxp)
            if flags & _HAS_ATTR:
                value = _with_attributes(value, self.attributes())
            return value
        raise RDataError(f"unsupported SEXP type {sxp_name(sxp)} ({sxp})")

    def pairlist(self, flags: int) -> dict[str, object] | list[object]:
        entries: list[tuple[str | None, object]] = []
        while flags & 0xFF == LISTSXP:  # iterate the CDR chain: R lists can be long
            if flags & _HAS_ATTR:
                self.item()
            tag = self.item() if flags & _HAS_TAG else None
            if tag is not None and not isinstance(tag, str):
                raise RDataError("pairlist tag is not a symbol")
            entries.append((tag, self.item()))
            flags = self.int32()
        if self.dispatch(flags) is not None:
            raise RDataError("pairlist does not end in NULL")
        return _named(entries)

    def attributes(self) -> dict[str, object]:
        flags = self.int32()
        if flags & 0xFF != LISTSXP:
            raise RDataError(f"attributes must be a pairlist, got {sxp_name(flags & 0xFF)}")
        attrs = self.pairlist(flags)
        return attrs if isinstance(attrs, dict) else {}

    def charsxp(self, flags: int) -> str | None:
        n = self.int32()
        levels = flags >> 12
        text = None
        if n != -1:  # -1 is NA_STRING
            raw = self.take(n)
            try:
                if levels & _UTF8:
                    text = raw.decode("utf-8")
                elif levels & _LATIN1:
                    text = raw.decode("latin-1")
                elif levels & _BYTES:
                    text = raw.decode("utf-8", "surrogateescape")  # arbitrary bytes, kept losslessly
                elif levels & _ASCII:
                    text = raw.decode("ascii")
                else:
                    text = raw.decode(self.native)
            except UnicodeDecodeError as e:
                raise RDataError(f"CHARSXP is not valid in its declared encoding: {e}") from None
        if flags & _HAS_ATTR:
            self.item()
        return text

    def vector(self, sxp: int) -> object:
        n = self.length()
        if sxp == LGLSXP:
            return [None if v == NA_INTEGER else bool(v) for v in self.array(">i4", n, 4).tolist()]
        if sxp == INTSXP:
            return self.array(">i4", n, 4)
        if sxp == REALSXP:
            return self.array(">f8", n, 8)
        if sxp == CPLXSXP:
            return self.array(">f8", 2 * n, 8).view(np.complex128)
        if sxp == RAWSXP:
            return self.take(n)
        if sxp == STRSXP:
            out: list[str | None] = []
            for _ in range(n):
                s = self.item()
                if s is not None and not isinstance(s, str):
                    raise RDataError("STRSXP element is not a CHARSXP")
                out.append(s)
            return out
        return [self.item() for _ in range(n)]  # VECSXP, EXPRSXP

    def altrep(self) -> object:
        info = _values(self.item())  # pairlist (class symbol, package symbol, base type)
        state = self.item()
        attr = self.item()
        cls = str(info[0]) if info else "?"
        value = _expand_altrep(cls, state)
        if isinstance(attr, dict):
            value = _with_attributes(value, attr)
        return value


def _expand_altrep(cls: str, state: object) -> object:
    if cls in ("compact_intseq", "compact_realseq"):
        n, start, step = (float(v) for v in np.asarray(state, dtype=np.float64)[:3])
        seq = start + step * np.arange(int(n), dtype=np.float64)
        return seq.astype(np.int32) if cls == "compact_intseq" else seq
    if cls.startswith("wrap_"):  # state is (wrapped vector, metadata)
        return _values(state)[0]
    if cls == "deferred_string":  # state is (numeric vector, scipen info), not yet formatted
        arg = np.asarray(_values(state)[0])
        if arg.dtype.kind == "i":
            return [None if v == NA_INTEGER else str(v) for v in arg.tolist()]
        return [None if np.isnan(v) else f"{v:.15g}" for v in arg.tolist()]
    raise RDataError(f"unsupported SEXP type ALTREP_SXP (class {cls})")


def _with_attributes(value: object, attrs: dict[str, object]) -> object:
    names = attrs.get("names")
    if isinstance(value, list) and isinstance(names, list) and len(names) == len(value):
        return _named(list(zip(names, value)))
    return value


def _decompress_file(data: bytes) -> bytes:
    # saveRDS() files are gzip by default; bzip2 and xz are its other options.
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rds(data: bytes) -> Any:
    """Unserialize one R object (as written by serialize() or saveRDS(), compressed or not)."""
    reader = _Reader(_decompress_file(data))
    reader.header()
    return reader.item()


def _scalar_int(x: object) -> int:
    if isinstance(x, list) and len(x) == 1 and isinstance(x[0], bool):
        return int(x[0])
    if isinstance(x, np.ndarray) and x.size == 1:
        return int(x.reshape(-1)[0])
    raise RDataError(f"expected a scalar, got {type(x).__name__}")


def _decompress_entry(blob: bytes, kind: int) -> bytes:
    """Undo R_compress1/2/3: a big-endian length, then (for 2 and 3) a method byte, then data."""
    if kind == 0:
        return blob
    if len(blob) < 5:
        raise RDataError("lazy-load entry too short")
    size = struct.unpack(">I", blob[:4])[0]
    try:
        if kind == 1:
            out = zlib.decompress(blob[4:])
        else:
            method, body = blob[4:5], blob[5:]
            if method == b"0":
                out = body[:size]
            elif method == b"1":
                out = zlib.decompress(body)
            elif method == b"2":
                out = bz2.decompress(body)
            elif method == b"Z":  # raw LZMA2; a 64 MiB dictionary covers any preset R uses
                filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 26}]
                out = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=filters)
            else:
                raise RDataError(f"unknown lazy-load compression method {method!r}")
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as e:
        raise RDataError(f"corrupt lazy-load entry: {e}") from None
    if len(out) != size:
        raise RDataError(f"lazy-load entry is {len(out)} bytes, expected {size}")
    return out


def read_lazyload_db(rdx_path: Path | str, rdb_path: Path | str) -> dict[str, Any]:
    """Read every variable of an R lazy-load database (``<name>.rdx`` index, ``<name>.rdb`` data)."""
    index = read_rds(Path(rdx_path).read_bytes())
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError(f"{rdx_path}: not a lazy-load index (no named 'variables' list)")
    kind = _scalar_int(index["compressed"]) if index.get("compressed") is not None else 0
    if kind not in (0, 1, 2, 3):
        raise RDataError(f"{rdx_path}: unknown compression type {kind}")
    rdb = Path(rdb_path).read_bytes()
    out: dict[str, Any] = {}
    for name, key in index["variables"].items():
        offset, size = (int(v) for v in np.asarray(key).reshape(-1)[:2])
        if offset < 0 or offset + size > len(rdb):
            raise RDataError(f"{rdb_path}: entry {name!r} lies outside the file")
        out[name] = read_rds(_decompress_entry(rdb[offset:offset + size], kind))
    return out
