"""Our C kernels, loaded through cffi from the standalone library built from ggml_patch/.

The library is compiled from the very files the patch puts into ggml, so a test of it is a test of
what llama.cpp runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cffi

from sfmp_gguf.llama.build import current_build

CDEF = """
int32_t sfmp_format_version(void);
"""


@lru_cache(maxsize=None)
def load(path: Path | None = None):
    """The loaded library (ffi, lib); ``path`` defaults to the cached build's copy."""
    library = path or current_build().kernel_library
    if not library.is_file():
        raise FileNotFoundError(f"{library}: kernel library not built; run `python -m sfmp_gguf.llama.build`")
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(str(library))
