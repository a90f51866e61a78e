"""Hugging Face folder to GGUF, through the pinned llama.cpp's own convert_hf_to_gguf.py.

We never rewrite llama.cpp's architecture, metadata and tokenizer mapping; we run it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sfmp_gguf.llama.source import llama_tree


class InputError(RuntimeError):
    """A one-line, user-facing problem with the input model."""


def check_hf_folder(model_dir: Path) -> None:
    if not model_dir.exists():
        raise InputError(f"{model_dir}: no such folder")
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a folder")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    if not any(model_dir.glob("*.safetensors")):
        raise InputError(f"{model_dir}: no .safetensors files")


def hf_to_gguf(model_dir: Path, out: Path, outtype: str = "f32") -> None:
    """Convert ``model_dir`` to a GGUF at ``out`` with the pinned converter."""
    check_hf_folder(model_dir)
    script = llama_tree() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise InputError(f"{model_dir}: convert_hf_to_gguf.py failed: {lines[-1] if lines else 'no output'}")
