"""Writing the output GGUF through the ``gguf`` package, one tensor at a time, atomically.

The file is written to a hidden temporary name next to the target (``.NAME.sfmp-partial-PID``) and
renamed into place only when complete, so the target never holds a partial file. A partial file
left by a killed run is recognisable by that name and removed by the next run for the same target.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sfmp_gguf import gguf_types
from sfmp_gguf.errors import InputError, is_full_disk
from sfmp_gguf.format import FORMAT_VERSION, GGUF_VERSION_KEY, SfmpType

PARTIAL_MARK = ".sfmp-partial-"


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    sfmp_type: SfmpType | None  # None: stored as a float
    half: bool = False  # a float tensor stored as F16 rather than F32

    @property
    def float_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.half else np.float32)

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape))
        if self.sfmp_type is None:
            return self.float_dtype.itemsize * n
        return n // self.sfmp_type.block_size * self.sfmp_type.type_size


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}"


def scratch_path(out: Path) -> Path:
    """The folder for temporary work (Fisher's stores) next to ``out``; removed like a partial file."""
    return out.parent / f".{out.name}{PARTIAL_MARK}scratch-{os.getpid()}"


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete partial files of ``out`` left by runs that are no longer alive; returns them."""
    removed = []
    for path in out.parent.glob(f".{out.name}{PARTIAL_MARK}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{out}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{out}: output folder {folder} is not writable")
    if out.is_dir():
        raise InputError(f"{out}: is a folder")


def write_gguf(out: Path, arch: str, metadata: dict[str, Any], tensors: list[OutputTensor],
               produce: Callable[[OutputTensor], np.ndarray], progress: Callable[[Iterator], Iterator] = iter) -> None:
    """Write ``tensors`` (data from ``produce``, in order) with ``metadata`` to ``out``, atomically."""
    import gguf

    gguf_types.register()
    check_output(out)
    remove_stale_partials(out)
    partial = partial_path(out)
    writer = None
    try:
        writer = gguf.GGUFWriter(partial, arch)
        writer.kv_data[0].update({k: v for k, v in metadata.items() if k != GGUF_VERSION_KEY})  # an input's own is stale
        writer.add_uint32(GGUF_VERSION_KEY, FORMAT_VERSION)
        for t in tensors:
            if t.sfmp_type is None:
                writer.add_tensor_info(t.name, t.shape, t.float_dtype, t.nbytes)
            else:
                byte_shape = (*t.shape[:-1], t.shape[-1] // t.sfmp_type.block_size * t.sfmp_type.type_size)
                writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes,
                                       raw_dtype=gguf_types.gguf_type(t.sfmp_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in progress(tensors):
            data = produce(t)
            if data.nbytes != t.nbytes:
                raise RuntimeError(f"{t.name}: produced {data.nbytes} bytes, expected {t.nbytes}")
            writer.write_tensor_data(data)
        writer.close()
        writer = None
        os.replace(partial, out)
    except OSError as err:
        if is_full_disk(err):
            raise InputError(f"{out}: no space left to write the output ({err.strerror})") from None
        raise InputError(f"{out}: cannot write: {err.strerror or err}") from None
    finally:
        if writer is not None and writer.fout:
            for f in writer.fout:
                f.close()
        partial.unlink(missing_ok=True)
