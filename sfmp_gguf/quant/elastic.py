"""Elasticity: a lower-rate SFMP tensor derived from a higher-rate one, without the original weights.

Codes are nested (see sfmp_gguf.format), so dropping a code's low bits gives the code at the lower
precision on the same amplitude: the centre of the coarser cell that holds the finer value (uniform
grid), or the parent level, the mean of its children (nonlinear grid). Grids do not mix.
"""

from __future__ import annotations

import numpy as np

from sfmp_gguf.format import SfmpType
from sfmp_gguf.quant.reference import choose_upgrades, decode_blocks, encode_blocks


def can_derive(src: SfmpType, dst: SfmpType) -> bool:
    """Whether every sub-block of ``src`` holds at least the bits ``dst`` would give it."""
    if src.variant != dst.variant or src.grid != dst.grid:
        return False
    if dst.base_bits < src.base_bits:
        return True
    return dst.base_bits == src.base_bits and dst.upgrades <= src.upgrades


def derive_blocks(data: np.ndarray, src: SfmpType, dst: SfmpType) -> np.ndarray:
    """uint8 rows of ``src`` blocks -> rows of ``dst`` blocks by truncating codes.

    ``dst``'s upgrades go to the sub-blocks that hold the most bits now, then to the largest
    amplitudes (their rounding error is the largest), ties to the lower index.
    """
    if not can_derive(src, dst):
        raise ValueError(f"{dst.name} cannot be derived from {src.name}: it needs bits that {src.name} lacks")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    d16, m, bits, q = decode_blocks(data.reshape(-1, src.type_size), src)
    upgraded = choose_upgrades((bits * 256 + m).astype(np.float64), dst.upgrades)
    new_bits = dst.base_bits + upgraded.astype(np.int64)
    q = q >> (bits - new_bits)[..., None]
    return encode_blocks(d16, m, upgraded, q, dst).reshape(rows, -1)
