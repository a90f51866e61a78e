"""Activation blocks as ggml lays them out (Q8_K for the 256-weight types, Q8_0 for the 64-weight
ones), so tests can feed the C dot products real bytes."""

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


def dequantize(raw: np.ndarray, block_size: int) -> np.ndarray:
    """Float values of Q8_K (block_size 256) or Q8_0 (32) bytes, as the dot product sees them."""
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).view(Q8_K if block_size == 256 else Q8_0)
    return (blocks["qs"].astype(np.float64) * blocks["d"].astype(np.float64)[:, None]).reshape(-1)
