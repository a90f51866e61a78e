"""Importance per weight for the sensitivity analysis: none, a llama.cpp imatrix, or one computed
from calibration text with llama-imatrix.

An imatrix holds, per weight matrix, the mean of x^2 of each input column over the calibration
tokens: the weight llama.cpp's quantizers give each column. A matrix the imatrix lacks (the token
embedding, looked up rather than multiplied, unless it is tied to the output) gets the median of
all entries' mean importance, so that its errors count on the same scale.

Stacked experts get importance per expert. An imatrix counts the tokens each expert saw; an expert
with few is pulled towards the tensor's pooled mean (``imatrix_io.py``, EXPERT_PRIOR_TOKENS),
and one with none takes that mean. Under Fisher, an expert no calibration token reached has zero
gradient everywhere; it takes the per-column mean of the other experts' Fisher (the experts share
their input, so their columns matter alike), spread over its rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sfmp_gguf.errors import InputError
from sfmp_gguf.imatrix_io import load_imatrix, run_imatrix
from sfmp_gguf.model_source import ModelSource

BUILTIN_TEXT = Path(__file__).parent / "data" / "calibration.txt"  # its source: data/SOURCE.md
CALIB_CTX = 512
CALIB_CHUNKS = 64


SILENT_EXPERTS = "experts that no calibration token reached take the mean Fisher of the others"


def match_imatrix(path: Path, entries: dict[str, np.ndarray],
                  shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Per-column importance for every quantizable tensor: name -> (row length,) float32, or
    (experts, row length) for stacked experts."""
    known = {}
    for name, shape in shapes.items():
        if name not in entries:
            continue
        values, want = entries[name], (shape[0], shape[-1]) if len(shape) == 3 else (shape[-1],)
        if values.size != int(np.prod(want)) or values.ndim > len(want):
            raise InputError(f"{path}: {name} has {values.size} values but the model's tensor needs "
                             f"{' x '.join(map(str, want))} (an imatrix of another model?)")
        known[name] = values.reshape(want)  # the legacy format stores experts flat
    if not known:
        raise InputError(f"{path}: no entry matches a tensor of this model (an imatrix of another model?)")
    typical = float(np.median([v.mean() for v in known.values()]))
    return {name: known.get(name, np.full(shape[-1], typical, dtype=np.float32)) for name, shape in shapes.items()}


def fill_silent_experts(h: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-weight importance with every all-zero expert of a (experts, rows, n) tensor given the
    per-column mean of the others; and how many were filled. Matrices pass through."""
    if h.ndim != 3:
        return h, 0
    silent = ~h.reshape(h.shape[0], -1).any(axis=1)
    if not silent.any() or silent.all():
        return h, 0
    h = np.array(h, dtype=np.float32)
    h[silent] = h[~silent].mean(axis=(0, 1))
    return h, int(silent.sum())


def column_importance(h: np.ndarray) -> np.ndarray:
    """Per-column importance from per-weight importance: (n,) for a matrix, (experts, n) for experts."""
    return h.mean(axis=-2)


def imatrix_from_text(source: ModelSource, text: Path, threads: int, write_copy: callable) -> dict[str, np.ndarray]:
    """Run llama-imatrix over ``text`` on the input GGUF, or on a temporary copy of a Hugging Face
    model (written by ``write_copy``, F16 matrices), removed on every exit."""
    if not text.is_file():
        raise InputError(f"{text}: no such calibration text file")
    with tempfile.TemporaryDirectory(prefix="sfmp-calib-") as tmp:
        model = source.path if source.path.is_file() else Path(tmp) / "model-f16.gguf"
        if model != source.path:
            write_copy(model)
        out = Path(tmp) / "imatrix.gguf"
        run_imatrix(model, text, out, CALIB_CTX, CALIB_CHUNKS, threads)
        return load_imatrix(out)
