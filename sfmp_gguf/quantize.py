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
    """(rows, n) float32 -> (rows, n / block_size * type_size) uint8; importance: (n,), None, or
    (experts, n) for stacked experts, whose rows are the experts' rows in order."""
    lib = kernels.load()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows = w.shape[0]
    out = np.empty((rows, w.shape[1] // t.block_size * t.type_size), dtype=np.uint8)
    experts = 1 if importance is None or importance.ndim == 1 else importance.shape[0]
    per_expert = rows // experts

    def run(task: tuple[int, int]) -> None:
        expert, start = task
        stop = min(start + ROWS_PER_TASK, (expert + 1) * per_expert)
        out[start:stop] = lib.quantize(w[start:stop], t, importance if experts == 1 else importance[expert])

    tasks = [(e, start) for e in range(experts) for start in range(e * per_expert, (e + 1) * per_expert, ROWS_PER_TASK)]
    list(pool.map(run, tasks))
    return out
