"""Quantization execution: one tensor to SFMP bytes through the C kernels, rows split over threads.

cffi releases the GIL for the duration of each C call, so plain Python threads run the kernels in
parallel. Each row is quantized independently, so the bytes do not depend on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sfmp_gguf import kernels
from sfmp_gguf.format import SfmpType

ROWS_PER_TASK = 64


def quantize_tensor(w: np.ndarray, t: SfmpType, importance: np.ndarray | None, pool: ThreadPoolExecutor) -> np.ndarray:
    """(rows, n) float32 -> (rows, n / block_size * type_size) uint8; importance: (n,) or None."""
    lib = kernels.load()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows = w.shape[0]
    out = np.empty((rows, w.shape[1] // t.block_size * t.type_size), dtype=np.uint8)

    def run(start: int) -> None:
        stop = min(start + ROWS_PER_TASK, rows)
        out[start:stop] = lib.quantize(w[start:stop], t, importance)

    list(pool.map(run, range(0, rows, ROWS_PER_TASK)))
    return out
