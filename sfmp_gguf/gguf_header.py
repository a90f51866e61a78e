"""A GGUF file's header, read directly: metadata with its value types, tensor infos, data offset.

Faster than gguf-py's GGUFReader on large tokenizer arrays (one memmap view per item there), and it
opens files whose tensor types gguf-py does not know (older SFMP format versions). Every read is
bounds-checked: a missing, foreign or damaged file gives an InputError, one line naming it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sfmp_gguf.errors import InputError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF metadata value types: id -> struct format of a fixed-size value (STRING = 8, ARRAY = 9)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Value:
    value: Any  # None for an array read with arrays=False
    type: int  # GGUF value type
    sub_type: int | None = None  # an array's item type


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # GGUF order: the row length first
    type_id: int
    offset: int  # from the data section's start


@dataclass(frozen=True)
class Header:
    path: Path
    version: int
    metadata: dict[str, Value]
    tensors: tuple[TensorEntry, ...]
    data_start: int
    size: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata[key].value if key in self.metadata else default


class _Reader:
    """Bounds-checked little-endian reads from the start of a file."""

    def __init__(self, path: Path, f: BinaryIO, size: int) -> None:
        self.path, self.f, self.size = path, f, size

    def _check(self, n: int, what: str) -> None:
        pos = self.f.tell()
        if n < 0 or pos + n > self.size:
            raise InputError(f"{self.path}: truncated: {what} at byte {pos} runs past the end of the file "
                             f"({self.size} bytes)")

    def take(self, n: int, what: str) -> bytes:
        self._check(n, what)
        return self.f.read(n)

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("<Q", f"{what}'s length"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: {what} is not UTF-8 (a damaged file?)") from None

    def value(self, kind: int, what: str, arrays: bool) -> Value:
        if kind in SCALARS:
            return Value(self.unpack(SCALARS[kind], what), kind)
        if kind == STRING:
            return Value(self.string(what), kind)
        if kind == ARRAY:
            item = self.unpack("<I", f"{what}'s item type")
            count = self.unpack("<Q", f"{what}'s length")
            if item in SCALARS:
                raw = self.take(count * struct.calcsize(SCALARS[item]), what)
                values = np.frombuffer(raw, dtype=np.dtype(SCALARS[item])) if arrays else None
            elif item in (STRING, ARRAY):
                values = [self.value(item, f"an item of {what}", arrays).value for _ in range(count)]
                values = values if arrays else None
            else:
                raise InputError(f"{self.path}: {what} is an array of unknown value type {item} (a damaged file?)")
            return Value(values, kind, item)
        raise InputError(f"{self.path}: {what} has unknown value type {kind} (a damaged file?)")


def read_header(path: Path, arrays: bool = True) -> Header:
    """The header of the GGUF at ``path``; numeric arrays as numpy arrays, string arrays as lists
    (``arrays=False``: their values are skipped, None)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a GGUF file")
    try:
        f = open(path, "rb")
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    with f:
        size = path.stat().st_size
        h = _Reader(path, f, size)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise InputError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
        version = h.unpack("<I", "the GGUF version")
        if version not in (2, 3):
            raise InputError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = h.unpack("<Q", "the tensor count")
        n_kv = h.unpack("<Q", "the metadata count")
        if n_tensors > size or n_kv > size:  # every entry takes bytes
            raise InputError(f"{path}: truncated or damaged: the header claims {n_tensors} tensors and {n_kv} "
                             f"metadata entries in {size} bytes")
        metadata: dict[str, Value] = {}
        for i in range(n_kv):
            key = h.string(f"metadata key {i + 1}")
            metadata[key] = h.value(h.unpack("<I", f"{key}'s type"), key, arrays)
        tensors = []
        for i in range(n_tensors):
            name = h.string(f"tensor {i + 1}'s name")
            n_dims = h.unpack("<I", f"{name}'s dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                raise InputError(f"{path}: tensor {name} has {n_dims} dimensions (a damaged file?)")
            shape = tuple(h.unpack("<Q", f"{name}'s shape") for _ in range(n_dims))
            tensors.append(TensorEntry(name, shape, h.unpack("<I", f"{name}'s type"), h.unpack("<Q", f"{name}'s offset")))
        header_end = f.tell()
    alignment = metadata["general.alignment"].value if "general.alignment" in metadata else DEFAULT_ALIGNMENT
    if not isinstance(alignment, int) or alignment <= 0:
        raise InputError(f"{path}: general.alignment is {alignment!r} (a damaged file?)")
    return Header(path, version, metadata, tuple(tensors), -(-header_end // alignment) * alignment, size)
