"""Inspect an SFMP GGUF: per tensor its type, shape, bits per weight and share of upgraded sub-blocks.

    python -m sfmp_gguf.inspect FILE [--json]
    python -m sfmp_gguf.inspect FILE --compare OTHER   # same tensors, types and data bytes?

The header is read by ``gguf_header``, not by gguf-py's GGUFReader, so files that stock readers reject still
open: SFMP type ids gguf-py does not know, and files of older format versions, whose ids
``format.type_for_file_id`` maps to the current types. Only the header and, of SFMP tensors, the
scale bytes are read. A sub-block is upgraded when its scale byte has ``UPGRADE_FLAG`` set (the
block layout is in format.py). Shapes are listed in GGUF order, the row length first. A missing,
foreign or damaged file gives one line naming it and exit status 2. ``--compare`` exits 0 when both
files hold the same tensors with the same types (each read through its own format version's ids)
and the same data bytes, 1 otherwise, listing the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmp_gguf import gguf_package
from sfmp_gguf.errors import InputError
from sfmp_gguf.format import FIRST_TYPE_ID, FORMAT_VERSION, GGUF_VERSION_KEY, UPGRADE_FLAG, SfmpType, type_for_file_id
from sfmp_gguf.gguf_header import read_header

EXIT_BAD_INPUT = 2
_CHUNK_BLOCKS = 1 << 20  # blocks of scale bytes read at a time


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    type_id: int  # as stored in the file
    shape: tuple[int, ...]  # GGUF order: row length first
    n_elements: int
    n_bytes: int | None  # None: a type this tool does not know
    bpw: float | None
    upgraded_share: float | None  # None: not an SFMP tensor
    upgraded: int | None = None  # upgraded sub-blocks
    sub_blocks: int | None = None
    data_offset: int | None = None  # from the file's start


@dataclass(frozen=True)
class FileInfo:
    path: str
    gguf_version: int
    format_version: int | None  # sfmp.format_version; None: not written by the converter
    architecture: str | None
    size_bytes: int
    tensors: tuple[TensorInfo, ...]

    def _bpw(self, tensors: list[TensorInfo]) -> float | None:
        elements = sum(t.n_elements for t in tensors)
        return 8 * sum(t.n_bytes or 0 for t in tensors) / elements if elements else None

    @property
    def sfmp_tensors(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.upgraded_share is not None]

    @property
    def bpw_sfmp(self) -> float | None:
        """Average bits per weight over the SFMP tensors."""
        return self._bpw(self.sfmp_tensors)

    @property
    def bpw_tensors(self) -> float | None:
        """Average bits per weight over every tensor whose type is known."""
        return self._bpw([t for t in self.tensors if t.n_bytes is not None])

    @property
    def bpw_file(self) -> float | None:
        """The whole file's bits (header included) per weight."""
        elements = sum(t.n_elements for t in self.tensors)
        return 8 * self.size_bytes / elements if elements else None

    @property
    def upgraded_share(self) -> float | None:
        sub_blocks = sum(t.sub_blocks or 0 for t in self.sfmp_tensors)
        return sum(t.upgraded or 0 for t in self.sfmp_tensors) / sub_blocks if sub_blocks else None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "gguf_version": self.gguf_version, "format_version": self.format_version,
                "architecture": self.architecture, "size_bytes": self.size_bytes, "n_tensors": len(self.tensors),
                "bpw_sfmp": self.bpw_sfmp, "bpw_tensors": self.bpw_tensors, "bpw_file": self.bpw_file,
                "upgraded_share": self.upgraded_share, "tensors": [asdict(t) for t in self.tensors]}


def _type_of(type_id: int, format_version: int | None) -> tuple[str, SfmpType | None, tuple[int, int] | None]:
    """(name, the SFMP type or None, (block size, bytes per block) or None when unknown)."""
    sfmp = type_for_file_id(type_id, FORMAT_VERSION if format_version is None else format_version)
    if sfmp is not None:
        return sfmp.name, sfmp, (sfmp.block_size, sfmp.type_size)
    if type_id < FIRST_TYPE_ID:
        gguf_package.select()
        try:
            from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

            stock = GGMLQuantizationType(type_id)
            return stock.name, None, GGML_QUANT_SIZES[stock]
        except (ImportError, ValueError, KeyError):
            pass
    return f"unknown({type_id})", None, None


def _upgraded(path: Path, offset: int, n_blocks: int, t: SfmpType) -> int:
    """How many sub-blocks of a tensor's ``n_blocks`` blocks at ``offset`` have the upgrade flag set."""
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(n_blocks, t.type_size))
    count = 0
    for start in range(0, n_blocks, _CHUNK_BLOCKS):
        scales = np.asarray(data[start:start + _CHUNK_BLOCKS, t.sc_offset:t.sc_offset + t.n_sub])
        count += int(np.count_nonzero(scales & UPGRADE_FLAG))
    del data
    return count


def inspect_file(path: Path) -> FileInfo:
    """The file's summary; InputError, one line naming the file, on anything unreadable."""
    path = Path(path)
    header = read_header(path, arrays=False)
    size, data_start = header.size, header.data_start
    format_version = header.get(GGUF_VERSION_KEY)
    format_version = format_version if isinstance(format_version, int) else None
    tensors = []
    for name, shape, type_id, offset in ((t.name, t.shape, t.type_id, t.offset) for t in header.tensors):
        type_name, sfmp, sizes = _type_of(type_id, format_version)
        n_elements = int(np.prod(shape, dtype=object))
        n_bytes = bpw = share = upgraded = sub_blocks = None
        if sizes is not None:
            block, block_bytes = sizes
            if shape[0] % block:
                raise InputError(f"{path}: tensor {name} has rows of {shape[0]}, not a multiple of {type_name}'s "
                                 f"block of {block} (a damaged file?)")
            n_bytes = n_elements // block * block_bytes
            bpw = 8 * n_bytes / n_elements if n_elements else 0.0
            end = data_start + offset + n_bytes
            if end > size:
                raise InputError(f"{path}: truncated: tensor {name}'s data ends at byte {end}, past the end of the "
                                 f"file ({size} bytes)")
            if sfmp is not None:
                n_blocks = n_elements // block
                sub_blocks = n_blocks * sfmp.n_sub
                upgraded = _upgraded(path, data_start + offset, n_blocks, sfmp) if n_blocks else 0
                share = upgraded / sub_blocks if sub_blocks else 0.0
        tensors.append(TensorInfo(name, type_name, type_id, shape, n_elements, n_bytes, bpw, share, upgraded,
                                  sub_blocks, data_start + offset))
    architecture = header.get("general.architecture")
    return FileInfo(str(path), header.version, format_version, architecture if isinstance(architecture, str) else None,
                    size, tuple(tensors))


def _same_bytes(a: FileInfo, ta: TensorInfo, b: FileInfo, tb: TensorInfo) -> bool:
    step = 1 << 26
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        fa.seek(ta.data_offset or 0)
        fb.seek(tb.data_offset or 0)
        for start in range(0, ta.n_bytes or 0, step):
            n = min(step, (ta.n_bytes or 0) - start)
            if fa.read(n) != fb.read(n):
                return False
    return True


def compare(a: FileInfo, b: FileInfo) -> tuple[int, list[str]]:
    """How many tensors are identical in both files (name, resolved type, shape, data bytes), and how
    the others differ."""
    others = {t.name: t for t in b.tensors}
    differences = [f"{name}: only in {b.path}" for name in others.keys() - {t.name for t in a.tensors}]
    same = 0
    for t in a.tensors:
        other = others.get(t.name)
        if other is None:
            differences.append(f"{t.name}: only in {a.path}")
        elif (t.type, t.shape) != (other.type, other.shape):
            differences.append(f"{t.name}: {t.type} {t.shape} against {other.type} {other.shape}")
        elif t.n_bytes is None:
            differences.append(f"{t.name}: type {t.type} is unknown, its bytes cannot be compared")
        elif not _same_bytes(a, t, b, other):
            differences.append(f"{t.name}: different data bytes")
        else:
            same += 1
    return same, differences


def render_comparison(a: FileInfo, b: FileInfo, same: int, differences: list[str]) -> str:
    def ids(info: FileInfo) -> list[int]:
        return sorted({t.type_id for t in info.sfmp_tensors})

    return "\n".join(differences + [
        f"{a.path}: format version {a.format_version}, SFMP type ids {ids(a)}",
        f"{b.path}: format version {b.format_version}, SFMP type ids {ids(b)}",
        f"{same} tensors have the same type, shape and data bytes in both; {len(differences)} differ",
    ])


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def render_table(info: FileInfo) -> str:
    rows = [("tensor", "type", "shape", "bpw", "upgraded")]
    for t in info.tensors:
        rows.append((t.name, t.type, " x ".join(map(str, t.shape)), _fmt(t.bpw, ".3f"),
                     _fmt(None if t.upgraded_share is None else 100 * t.upgraded_share, ".1f", "%")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = (False, False, False, True, True)
    lines = ["  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)).rstrip()
             for row in rows]
    version = "none (not written by sfmp_to_gguf)" if info.format_version is None else str(info.format_version)
    lines += [
        "",
        f"file: {info.path}",
        f"GGUF version {info.gguf_version}, SFMP format version {version}, architecture {info.architecture or '-'}",
        f"{len(info.tensors)} tensors ({len(info.sfmp_tensors)} SFMP), {info.size_bytes / 2**20:.2f} MiB "
        f"({info.size_bytes} bytes)",
        f"average bpw: {_fmt(info.bpw_sfmp, '.3f')} over the SFMP tensors, {_fmt(info.bpw_tensors, '.3f')} over all "
        f"tensors, {_fmt(info.bpw_file, '.3f')} for the whole file",
        f"upgraded sub-blocks: {_fmt(None if info.upgraded_share is None else 100 * info.upgraded_share, '.1f', '%')}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfmp_gguf.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a GGUF file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--compare", type=Path, metavar="OTHER",
                        help="compare the tensors with OTHER's instead: exit 0 when identical, 1 when not")
    args = parser.parse_args(argv)
    try:
        info = inspect_file(args.file)
        other = inspect_file(args.compare) if args.compare else None
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if other is not None:
        same, differences = compare(info, other)
        print(render_comparison(info, other, same, differences))
        return 1 if differences else 0
    print(json.dumps(info.to_json(), indent=1) if args.json else render_table(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
