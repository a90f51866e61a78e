"""The pinned llama.cpp source: fetched by pip as the llama-cpp-python sdist, hash-checked, cached.

A user may point SFMP_LLAMA_CPP_DIR at an existing llama.cpp checkout instead; we warn when it is
not the pinned commit, since the patch is written against that exact tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sfmp_gguf.assets.cache import sha256_file
from sfmp_gguf.paths import (COMPLETE_MARKER, LLAMA_CPP_DIR_ENV, PINNED_SDIST_SHA256, cache_dir, checkout_key, pinned_key,
                             pinned_tree)

SDIST_PACKAGE = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = PINNED_SDIST_SHA256  # in paths.py, whose cache keys it names
SDIST_VENDOR_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
PINNED_COMMIT = "0c1e570"
CHECKOUT_ENV = LLAMA_CPP_DIR_ENV


class SourceError(RuntimeError):
    """A one-line, user-facing problem with the llama.cpp source."""


@dataclass(frozen=True)
class LlamaSource:
    """A llama.cpp tree and the key under which its patched copy and build are cached."""

    tree: Path
    key: str
    pinned: bool


def _download_sdist(dest: Path) -> Path:
    archive = dest / SDIST_FILE
    if archive.is_file() and sha256_file(archive) == SDIST_SHA256:
        return archive
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{SDIST_PACKAGE}=={SDIST_VERSION}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / SDIST_FILE
        if result.returncode != 0 or not fetched.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceError(f"pip could not download {SDIST_PACKAGE}=={SDIST_VERSION}: {last}")
        digest = sha256_file(fetched)
        if digest != SDIST_SHA256:
            raise SourceError(f"{SDIST_FILE}: sha256 {digest} differs from the pinned {SDIST_SHA256}")
        fetched.replace(archive)
    return archive


def _extract_vendor_tree(archive: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                if member.name.startswith(SDIST_VENDOR_PREFIX):
                    member.name = member.name[len(SDIST_VENDOR_PREFIX):]
                    members.append(member)
            tar.extractall(tmp, members=members, filter="data")
        (tmp / COMPLETE_MARKER).write_text(SDIST_SHA256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def pinned_sdist() -> Path:
    """The pinned llama-cpp-python sdist, downloaded and hash-checked on first use."""
    downloads = cache_dir() / "downloads"
    downloads.mkdir(exist_ok=True)
    return _download_sdist(downloads)


def pinned_source() -> LlamaSource:
    """The pristine pinned tree, downloaded and extracted on first use."""
    key = pinned_key()
    tree = pinned_tree()
    marker = tree / COMPLETE_MARKER
    if not (marker.is_file() and marker.read_text().strip() == SDIST_SHA256):
        tree.parent.mkdir(parents=True, exist_ok=True)
        _extract_vendor_tree(pinned_sdist(), tree)
    return LlamaSource(tree=tree, key=key, pinned=True)


def checkout_commit(tree: Path) -> str | None:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def checkout_source(tree: Path) -> LlamaSource:
    """A user's own llama.cpp checkout; warns when it is not the pinned commit."""
    tree = tree.expanduser().resolve()
    if not (tree / "ggml" / "include" / "ggml.h").is_file():
        raise SourceError(f"{tree}: not a llama.cpp checkout (no ggml/include/ggml.h)")
    commit = checkout_commit(tree)
    if commit is None or not commit.startswith(PINNED_COMMIT):
        found = commit[:7] if commit else "unknown (not a git checkout)"
        print(f"warning: {tree} is at commit {found}, not the pinned {PINNED_COMMIT}; "
              "the patch may not apply", file=sys.stderr)
    return LlamaSource(tree=tree, key=checkout_key(tree), pinned=False)


def llama_source() -> LlamaSource:
    """The user's checkout when SFMP_LLAMA_CPP_DIR is set, else the pinned sdist tree."""
    checkout = os.environ.get(CHECKOUT_ENV)
    return checkout_source(Path(checkout)) if checkout else pinned_source()


def llama_tree() -> Path:
    """The unpatched llama.cpp tree (for its Python scripts, such as convert_hf_to_gguf.py)."""
    return llama_source().tree
