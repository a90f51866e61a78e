"""Activation blocks as ggml lays them out (Q8_K for the 256-weight types, Q8_0 for the 64-weight
ones), and their two-level pairs (format.ActivationType) for types with fine activations, so tests can
feed the C dot products real bytes. The two-level quantizer is the specification of the C one
(sfmp_quantize_row_Q8_*_x2): the same float32 operations, the same bytes."""

from __future__ import annotations

import numpy as np

Q8_K = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])


def _scaled(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = x.reshape(-1, group).astype(np.float32)
    amax = np.max(np.abs(blocks), axis=1)
    d = np.where(amax > 0, amax / 127.0, 0.0).astype(np.float32)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(blocks * inv[:, None]), -127, 127).astype(np.int8)
    return q, d


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    q, d = _scaled(np.asarray(x, dtype=np.float32), 256)
    out = np.zeros(len(d), dtype=Q8_K)
    out["d"], out["qs"] = d, q
    out["bsums"] = q.reshape(-1, 16, 16).astype(np.int32).sum(axis=2)
    return out.view(np.uint8)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    q, d = _scaled(np.asarray(x, dtype=np.float32), 32)
    out = np.zeros(len(d), dtype=Q8_0)
    out["d"], out["qs"] = d.astype(np.float16), q
    return out.view(np.uint8)


RESIDUAL_STEPS = 256  # a two-level activation's residual step is its value step / 256


def quantize_two_level(x: np.ndarray, block_size: int, residual: bool = True) -> np.ndarray:
    """Two-level activations for the weight type's block size (256: Q8_K pairs, 64: Q8_0 pairs): each
    block's values at scale d (hi), then the residual they leave in steps of d / 256 (lo), so a dot
    product is 256 * T(hi) + T(lo) at hi's scale over 256. lo's d field holds d / 256. Without
    ``residual`` (ggml under ``SFMP_ACTIVATIONS=8bit``) lo is all zeros: 8-bit activations."""
    dtype, group = (Q8_K, 256) if block_size == 256 else (Q8_0, 32)
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, group)
    d = (np.max(np.abs(blocks), axis=1) / np.float32(127.0)).astype(np.float32)
    scale = d if dtype is Q8_K else d.astype(np.float16).astype(np.float32)
    inv = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)[:, None]
    hi = np.clip(np.rint(blocks * inv), -127, 127).astype(np.float32)
    lo = np.clip(np.rint((blocks - scale[:, None] * hi) * (inv * np.float32(RESIDUAL_STEPS))), -127, 127) * residual
    out = np.zeros((len(blocks), 2), dtype=dtype)
    out["qs"][:, 0], out["qs"][:, 1] = hi, lo
    out["d"][:, 0], out["d"][:, 1] = scale, scale / np.float32(RESIDUAL_STEPS)
    if dtype is Q8_K:
        out["bsums"] = out["qs"].reshape(len(blocks), 2, 16, 16).astype(np.int32).sum(axis=3)
    return out.view(np.uint8).reshape(-1)


def two_level_values(raw: np.ndarray, block_size: int) -> np.ndarray:
    """What the dot product sees of two-level activation bytes: hi * d + lo * d / 256, d = hi's scale."""
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).view(Q8_K if block_size == 256 else Q8_0).reshape(-1, 2)
    d = blocks["d"][:, 0].astype(np.float64)[:, None]
    return ((blocks["qs"][:, 0] + blocks["qs"][:, 1] / RESIDUAL_STEPS) * d).reshape(-1)


def quantize_for(t, x: np.ndarray) -> np.ndarray:
    """The activation bytes SFMP type ``t``'s CPU dot product takes."""
    if t.fine_activations:
        return quantize_two_level(x, t.block_size)
    return quantize_q8_k(x) if t.block_size == 256 else quantize_q8_0(x)


def dequantize(raw: np.ndarray, block_size: int) -> np.ndarray:
    """Float values of Q8_K (block_size 256) or Q8_0 (32) bytes, as the dot product sees them."""
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).view(Q8_K if block_size == 256 else Q8_0)
    return (blocks["qs"].astype(np.float64) * blocks["d"].astype(np.float64)[:, None]).reshape(-1)
