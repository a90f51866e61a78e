"""Which ``gguf`` package the project imports: the pinned llama.cpp's own gguf-py wherever it is on disk.

Two copies can be at hand: the ``gguf`` installed from PyPI (a project dependency) and the
``gguf-py`` folder of the llama.cpp tree we patch and build (the pinned sdist, extracted into the
cache, or the checkout named by SFMP_LLAMA_CPP_DIR). Both say version 0.19.0, but the pinned one is
a later commit: it knows more architectures and tensor names (constants.py, tensor_mapping.py), its
GGUFReader rejects oversized strings, arrays and dimension counts, and Q8_1's size is right. The
Hugging Face converter classes of that tree (``conversion``, which ``model_source`` reuses) need
their own copy.

Decision: everything (the command line, the benchmarks, the tests) uses the pinned gguf-py when its
tree is on disk, which it is wherever llama.cpp has been built (``python -m sfmp_gguf.llama.build``
fetches it), and nothing here ever downloads it. Where the tree is absent the installed ``gguf``
serves, as it does for a reader of SFMP files who never built anything. ``select`` makes the choice
and must run before the first ``import gguf`` of the process: every module of ours that imports gguf
calls it first, and the tests call it in ``conftest.py``, since a test module may import gguf before
any of ours. Once gguf is imported, ``select`` changes nothing: a program that imported its own gguf
keeps it. The command line asks for the pinned copy outright (``require_pinned``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sfmp_gguf.paths import LLAMA_CPP_DIR_ENV, llama_tree_on_disk


def _gguf_py(tree: Path) -> Path | None:
    folder = tree / "gguf-py"
    return folder if (folder / "gguf" / "__init__.py").is_file() else None


def _loaded_from() -> Path | None:
    """The folder holding the imported gguf package; None when gguf is not imported."""
    loaded = sys.modules.get("gguf")
    return None if loaded is None else Path(str(loaded.__file__)).resolve().parent.parent


def select() -> Path | None:
    """Put the on-disk llama.cpp tree's gguf-py first on ``sys.path`` (and the tree itself last,
    for its ``conversion`` package), unless gguf is already imported. Returns the gguf-py folder
    that ``import gguf`` loads from, or None when that is the installed package. Idempotent; never
    downloads."""
    tree = llama_tree_on_disk()
    pinned = _gguf_py(tree) if tree is not None else None
    if pinned is None:
        return None
    loaded = _loaded_from()
    if loaded is not None and loaded != pinned.resolve():
        return None
    if str(pinned) not in sys.path:
        sys.path.insert(0, str(pinned))
    if str(tree) not in sys.path:
        sys.path.append(str(tree))
    return pinned


def require_pinned() -> Path:
    """``select``, insisting on the pinned copy: the command line needs the tree's converter classes.
    Returns the tree. FileNotFoundError when the tree is not on disk, RuntimeError when another gguf
    was imported first (one line each)."""
    tree = llama_tree_on_disk()
    if tree is None or _gguf_py(tree) is None:
        raise FileNotFoundError(f"the llama.cpp source (or {LLAMA_CPP_DIR_ENV}) is not on disk: "
                                f"run `python -m sfmp_gguf.llama.build`")
    if select() is None:
        raise RuntimeError(f"gguf was imported from {_loaded_from()} before the pinned copy in {tree} "
                           f"was chosen; call sfmp_gguf.gguf_package.select() first")
    return tree
