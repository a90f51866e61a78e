"""A content-checked cache of built artifacts.

Each artifact is a folder under ``<cache>/assets/<name>`` with a ``manifest.json`` that records the
recipe it was built from and the sha256 of every file. It is rebuilt when it is missing, when the
recipe changed, or when any file's hash differs (a half-written or edited file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from sfmp_gguf.paths import cache_dir

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _is_valid(folder: Path, recipe: dict) -> bool:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("recipe") == recipe and manifest.get("files") == _hash_tree(folder)


def ensure_artifact(name: str, recipe: dict, build: Callable[[Path], None]) -> Path:
    """Return the folder of artifact ``name``, building it with ``build(tmp_folder)`` if needed.

    ``recipe`` must be JSON-serialisable and change whenever the inputs or the code that builds
    the artifact change. The build runs in a temporary folder that replaces the old one only
    once it is complete, so an interrupted build never leaves a valid-looking artifact.
    """
    root = cache_dir() / "assets"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / name
    if _is_valid(folder, recipe):
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        build(tmp)
        manifest = {"recipe": recipe, "files": _hash_tree(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def artifact_files(name: str) -> dict[str, str]:
    """The recorded sha256 of each file of a built artifact (for determinism checks)."""
    manifest = json.loads((cache_dir() / "assets" / name / MANIFEST).read_text())
    return manifest["files"]
