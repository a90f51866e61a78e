"""Where the project keeps what it downloads and builds: outside the clone, so clones share it.

The llama.cpp source, its patched copy and its builds live in ``cache_dir() / source_key()``:
``pristine`` (the pinned sdist's llama.cpp, extracted), ``patched``, and one ``build-<variant>``
per ``BUILD_VARIANTS`` entry. ``llama/source.py`` fetches the source and ``llama/build.py``
builds; this module only names the places, so the core finds the kernel library (``kernels``), the
built tools (``imatrix_io``) and the tree's gguf-py (``gguf_package``) without importing
``sfmp_gguf.llama`` and without downloading anything.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONVERTER = REPO_ROOT / "convert" / "sfmp_to_gguf.py"  # the command users run
PATCH_DIR = REPO_ROOT / "ggml_patch"
FILES_DIR = PATCH_DIR / "files"  # our own source files, in llama.cpp's layout
HUNKS_FILE = PATCH_DIR / "register.patch"  # the hunks that hook them in

# The pinned llama.cpp: the llama-cpp-python sdist with this sha256 (llama/source.py fetches it).
PINNED_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
COMPLETE_MARKER = ".sfmp-complete"  # written into the extracted tree last, holding the sha256
LLAMA_CPP_DIR_ENV = "SFMP_LLAMA_CPP_DIR"  # a user's own llama.cpp checkout instead of the pinned one
KERNEL_LIBRARY = "libsfmp_kernels.so"
KERNEL_LIBRARY_VNNI = "libsfmp_kernels_vnni.so"  # built only where the host runs AVX512-VNNI
KERNEL_LIBRARY_AVX_VNNI = "libsfmp_kernels_avxvnni.so"  # built only where the host runs AVX-VNNI (VEX)


def cache_dir() -> Path:
    """Root of the shared cache; SFMP_CACHE_DIR overrides ~/.cache/sfmp-gguf."""
    root = os.environ.get("SFMP_CACHE_DIR") or Path.home() / ".cache" / "sfmp-gguf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pinned_key() -> str:
    return f"pinned-{PINNED_SDIST_SHA256[:12]}"


def checkout_key(tree: Path) -> str:
    """The cache key of a user's checkout at ``tree`` (an absolute, resolved path)."""
    return "checkout-" + hashlib.sha256(str(tree).encode()).hexdigest()[:12]


def checkout_dir() -> Path | None:
    """The user's llama.cpp checkout named by SFMP_LLAMA_CPP_DIR, resolved; None when unset."""
    checkout = os.environ.get(LLAMA_CPP_DIR_ENV)
    return Path(checkout).expanduser().resolve() if checkout else None


def source_key() -> str:
    """The cache key of the llama.cpp source in use: the checkout's when SFMP_LLAMA_CPP_DIR is set,
    else the pinned sdist's."""
    checkout = checkout_dir()
    return checkout_key(checkout) if checkout else pinned_key()


def pinned_tree() -> Path:
    """Where the pinned sdist's llama.cpp is extracted (it may not be there yet)."""
    return cache_dir() / pinned_key() / "pristine"


def llama_tree_on_disk() -> Path | None:
    """The unpatched llama.cpp tree in use if it is on disk (the checkout, or the completely extracted
    pinned tree); None otherwise. Never downloads: ``llama.source.llama_tree()`` does."""
    checkout = checkout_dir()
    if checkout is not None:
        return checkout if checkout.is_dir() else None
    tree = pinned_tree()
    marker = tree / COMPLETE_MARKER
    return tree if marker.is_file() and marker.read_text().strip() == PINNED_SDIST_SHA256 else None


def patched_tree(key: str | None = None) -> Path:
    """The patched copy of the source with cache key ``key`` (default: the source in use)."""
    return cache_dir() / (key or source_key()) / "patched"


# The build flavours, each in its own folder ``build-<name>`` (llama/build.py gives each its flags).
BUILD_VARIANTS = ("cpu", "cuda", "asan", "avx2", "avx-vnni", "aarch64-dotprod", "aarch64-i8mm")


def build_folder(key: str | None = None, variant: str = "cpu") -> Path:
    """The ``variant`` build of the source with cache key ``key`` (default: the source in use); it may
    not exist."""
    if variant not in BUILD_VARIANTS:
        raise ValueError(f"unknown build variant {variant!r}; one of {', '.join(BUILD_VARIANTS)}")
    return cache_dir() / (key or source_key()) / f"build-{variant}"


def built_tool(name: str) -> Path:
    """A llama.cpp program of the CPU build, e.g. ``llama-imatrix``; FileNotFoundError (one line)
    when it has not been built."""
    path = build_folder() / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not built; run `python -m sfmp_gguf.llama.build`")
    return path
