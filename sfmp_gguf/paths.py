"""Where the project keeps what it downloads and builds: outside the clone, so clones share it."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONVERTER = REPO_ROOT / "convert" / "sfmp_to_gguf.py"  # the command users run


def cache_dir() -> Path:
    """Root of the shared cache; SFMP_CACHE_DIR overrides ~/.cache/sfmp-gguf."""
    root = os.environ.get("SFMP_CACHE_DIR") or Path.home() / ".cache" / "sfmp-gguf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
