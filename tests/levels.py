"""The levels of two-level activations, for kernels that take one 8-bit level per column."""

from __future__ import annotations

import numpy as np

from sfmp_gguf.format import SfmpType
from sfmp_gguf.quant import activations


def hi_only(y: np.ndarray, t: SfmpType) -> tuple[np.ndarray, np.ndarray]:
    """For a type with two-level activations: the hi level's 8-bit rows (what the interleaved kernel
    takes per level) and the two-level rows with lo zeroed, whose generic dot product must equal the
    kernel's on hi exactly (scaling the integer by 256 and the unit by 1/256 is exact)."""
    dtype = activations.Q8_K if t.block_size == 256 else activations.Q8_0
    pairs = np.ascontiguousarray(y).view(dtype).reshape(len(y), -1, 2).copy()
    pairs["qs"][:, :, 1] = 0
    if dtype is activations.Q8_K:
        pairs["bsums"][:, :, 1] = 0
    hi = np.ascontiguousarray(pairs[:, :, 0]).view(np.uint8).reshape(len(y), -1)
    return hi, pairs.view(np.uint8).reshape(len(y), -1)
