"""Importance per weight for the sensitivity analysis: none, a llama.cpp imatrix, or one computed
from calibration text with llama-imatrix.

An imatrix holds, per weight matrix, the mean of x^2 of each input column over the calibration
tokens: the weight llama.cpp's quantizers give each column. A matrix the imatrix lacks (the token
embedding, looked up rather than multiplied, unless it is tied to the output) gets the median of
all entries' mean importance, so that its errors count on the same scale.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sfmp_gguf.assets.imatrix import load_imatrix, run_imatrix
from sfmp_gguf.errors import InputError
from sfmp_gguf.model_source import ModelSource

BUILTIN_TEXT = Path(__file__).parent / "data" / "calibration.txt"  # its source: data/SOURCE.md
CALIB_CTX = 512
CALIB_CHUNKS = 64


def match_imatrix(path: Path, entries: dict[str, np.ndarray],
                  shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per-column importance for every quantizable tensor (name -> (row length,) float32)."""
    known = {name: entries[name] for name in shapes if name in entries}
    if not known:
        raise InputError(f"{path}: no entry matches a tensor of this model (an imatrix of another model?)")
    for name, values in known.items():
        if values.ndim != 1 or values.size != shapes[name][1]:
            raise InputError(f"{path}: {name} has {values.size} values but the model's rows are "
                             f"{shapes[name][1]} long (an imatrix of another model?)")
    typical = float(np.median([v.mean() for v in known.values()]))
    return {name: known.get(name, np.full(shape[1], typical, dtype=np.float32)) for name, shape in shapes.items()}


def imatrix_from_text(source: ModelSource, text: Path, threads: int, write_f32: callable) -> dict[str, np.ndarray]:
    """Run llama-imatrix over ``text`` on an F32 copy of the model (written by ``write_f32``)."""
    if not text.is_file():
        raise InputError(f"{text}: no such calibration text file")
    with tempfile.TemporaryDirectory(prefix="sfmp-calib-") as tmp:
        model = source.path if source.path.is_file() else Path(tmp) / "model-f32.gguf"
        if model != source.path:
            write_f32(model)
        out = Path(tmp) / "imatrix.gguf"
        run_imatrix(model, text, out, CALIB_CTX, CALIB_CHUNKS, threads)
        return load_imatrix(out)
