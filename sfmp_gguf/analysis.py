"""Sensitivity analysis: per sub-block errors at every precision, turned into each tensor's error at every type.

For each 32-weight sub-block j and each precision b = 2..8, the analysis rounds the sub-block to the
b-bit mid-rise grid whose amplitude is its largest |w| (the range, where outliers show) and
measures E_j(b) = sum_i h_i (w_i - w^_i)^2, with h_i the importance of weight i. It does the same on
the nonlinear grid at b = 2..4, its outermost level on the largest |w|. That is the expected output
error of the sub-block at that precision, from the weights and the importance alone: no search, no
evaluation. Types of both grids compete in one candidate list, so the allocator picks a tensor's grid
by the same error-per-bit rule as its rate.

A type (B, U) gives every sub-block B bits and the U sub-blocks of each block with the largest
gain E_j(B) - E_j(B+1) one bit more; the quantizer ranks by that same gain. So a tensor's error at
each type of its family follows from these numbers, and the allocator needs nothing else.

Importance h: 1 (``weights``), the imatrix mean of x^2 of each input column (``imatrix``), or the
squared gradient of each weight (``fisher``).

A tensor of stacked experts (experts, rows, row length) is one matrix of all its experts' rows: ggml's
MUL_MAT_ID takes one type per tensor, so the allocator gives it one type, and the analysis and the
quantizer place that type's upgrades where each expert's own importance is (per-column importance
then has one row per expert).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sfmp_gguf.format import (GRID_NONLINEAR, GRID_UNIFORM, MAX_BITS, MIN_BITS, NL_LEVELS, SUB_BLOCK, SfmpType,
                               types_for_row)


@dataclass(frozen=True)
class WeightStats:
    """What the weights alone say about a tensor, from its sub-blocks."""

    range_to_rms: float  # mean over sub-blocks of max|w| / rms(w): how far the range overshoots the spread
    variance: float  # mean sub-block variance
    outlier_share: float  # share of weights beyond 3 sigma of the tensor


@dataclass(frozen=True)
class TensorProfile:
    name: str
    shape: tuple[int, int]  # (rows, row length)
    candidates: tuple[SfmpType, ...]  # the family members that fit its rows, by rising rate
    errors: np.ndarray  # expected importance-weighted squared error at each candidate
    stats: WeightStats | None = None
    energy: float = 0.0  # importance-weighted signal, sum h * w^2: the error's scale (see units.py)
    # For the report, per candidate: the share of importance on the sub-blocks the analysis upgrades,
    # without and with the channel permutation (permutation.py).
    upgraded_share: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_weights(self) -> int:
        return self.shape[0] * self.shape[1]

    def bits(self, t: SfmpType) -> float:
        return self.n_weights * t.bpw


def on_grids(profile: TensorProfile, grids: tuple[str, ...]) -> TensorProfile:
    """The profile with only the candidates on these grids."""
    keep = [k for k, t in enumerate(profile.candidates) if t.grid in grids]
    return replace(profile, candidates=tuple(profile.candidates[k] for k in keep), errors=profile.errors[keep])


# Matrices llama-quantize never quantizes (src/llama-quant.cpp): routers, tiny or positional tables.
KEPT_AT_F32 = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
               "per_layer_model_proj", "position_embd", "token_types", "ssm_conv1d", "shortconv.conv.weight",
               "indexer.k_proj.weight", "indexer.q_proj.weight", "attn_rel_b.weight")


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Matrices and stacked experts whose rows the family can hold; norms, biases, routers and the
    like stay F32."""
    return (name.endswith(".weight") and len(shape) in (2, 3) and bool(types_for_row(shape[-1]))
            and not any(part in name for part in KEPT_AT_F32))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a matrix, or of stacked experts taken as one matrix of all their rows."""
    return int(np.prod(shape[:-1])), int(shape[-1])


def importance_rows(importance: np.ndarray | None, rows: int, start: int, stop: int) -> np.ndarray | None:
    """Importance of rows [start, stop) of a (rows, n) matrix, from per-column (n,), per-expert
    per-column (experts, n) or per-weight (rows, n) importance (broadcastable against those rows)."""
    if importance is None or importance.ndim == 1:
        return importance
    if importance.shape[0] == rows:
        return importance[start:stop]
    per_expert = rows // importance.shape[0]
    return importance[np.arange(start, stop) // per_expert]


# The (grid, precision) columns of sub_block_errors.
COLUMNS = tuple((GRID_UNIFORM, b) for b in range(MIN_BITS, MAX_BITS + 1)) + \
    tuple((GRID_NONLINEAR, b) for b in sorted(NL_LEVELS))
CHUNK_SUB_BLOCKS = 1 << 16  # bounds the temporary arrays to a few tens of MB


def _rounded(x: np.ndarray, amax: np.ndarray, grid: str, bits: int) -> np.ndarray:
    """x on the grid's ``bits``-bit levels, scaled so that the range reaches amax."""
    if grid == GRID_NONLINEAR:
        levels = np.asarray(NL_LEVELS[bits], dtype=np.float32) / NL_LEVELS[bits][-1]
        return amax * levels[np.searchsorted((levels[1:] + levels[:-1]) / 2, x / amax)]
    half = float(1 << (bits - 1))
    step = amax / half
    q = np.clip(np.floor(x / step + half), 0.0, 2.0 * half - 1.0)
    return (q + 0.5 - half) * step


def sub_block_errors(w: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """(n_sub_blocks, len(COLUMNS)) importance-weighted squared rounding error of each sub-block."""
    rows, n = w.shape
    per_row = n // SUB_BLOCK
    h_all = None if importance is None else np.asarray(importance, dtype=np.float32)
    out = np.empty((rows * per_row, len(COLUMNS)))
    step = max(1, CHUNK_SUB_BLOCKS // per_row)
    for first in range(0, rows, step):
        last = min(rows, first + step)
        x = np.asarray(w[first:last], dtype=np.float32).reshape(-1, SUB_BLOCK)
        h = importance_rows(h_all, rows, first, last)
        h = None if h is None else np.broadcast_to(h, (last - first, n)).reshape(-1, SUB_BLOCK)
        amax = np.abs(x).max(axis=1, keepdims=True)
        safe = np.where(amax > 0, amax, 1.0)
        for k, (grid, b) in enumerate(COLUMNS):
            diff = x - _rounded(x, safe, grid, b)
            sq = diff * diff if h is None else h * diff * diff
            out[first * per_row:last * per_row, k] = sq.sum(axis=1, dtype=np.float64)
    return out


def weighted_energy(w: np.ndarray, importance: np.ndarray | None) -> float:
    """sum h * w^2: for an imatrix, the tensor's mean output energy (its error's scale)."""
    sq = np.square(w, dtype=np.float64)
    if importance is None:
        return float(sq.sum())
    h = np.asarray(importance, dtype=np.float64)
    if h.ndim == 1:
        return float(sq.sum(axis=0) @ h)
    if h.shape[0] != w.shape[0]:  # per expert: each expert's column sums against its own importance
        return float(np.einsum("ij,ij->", sq.reshape(h.shape[0], -1, w.shape[1]).sum(axis=1), h))
    return float(np.einsum("ij,ij->", sq, h))


def weight_stats(w: np.ndarray) -> WeightStats:
    x = np.asarray(w, dtype=np.float32).reshape(-1, SUB_BLOCK)
    rms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64) / SUB_BLOCK)
    amax = np.abs(x).max(axis=1)
    ratio = np.divide(amax, rms, out=np.zeros_like(rms), where=rms > 0)
    sigma = float(np.sqrt(np.mean(rms * rms)))
    outliers = float(np.count_nonzero(np.abs(x) > 3 * sigma)) / x.size if sigma > 0 else 0.0
    return WeightStats(float(ratio.mean()), float(x.var(axis=1, dtype=np.float64).mean()), outliers)


def profile_tensor(name: str, w: np.ndarray, importance: np.ndarray | None = None) -> TensorProfile:
    """The expected error of ``w`` (rows, row length) at each candidate type."""
    rows, n = w.shape
    candidates = types_for_row(n)
    n_sub = candidates[0].n_sub
    err = sub_block_errors(w, importance).reshape(-1, n_sub, len(COLUMNS))
    errors = []
    for t in candidates:
        at_base = err[:, :, COLUMNS.index((t.grid, t.base_bits))]
        total = at_base.sum()
        if t.upgrades:
            gain = at_base - err[:, :, COLUMNS.index((t.grid, t.base_bits + 1))]
            total -= np.sort(gain, axis=1)[:, -t.upgrades:].sum()
        errors.append(total)
    return TensorProfile(name, (rows, n), candidates, np.array(errors), weight_stats(w), weighted_energy(w, importance))


def upgraded_importance(errors: np.ndarray, importance: np.ndarray, candidates: tuple[SfmpType, ...]) -> np.ndarray:
    """Per candidate, the importance summed over the sub-blocks it upgrades (the U of each block with
    the largest gain, as ``profile_tensor`` counts them; ties to the earlier sub-block). ``errors``:
    sub_block_errors of whole blocks; ``importance``: each sub-block's summed importance."""
    n_sub = candidates[0].n_sub
    h = importance.reshape(-1, n_sub)
    out = np.zeros(len(candidates))
    for k, t in enumerate(candidates):
        if t.upgrades:
            at_base = errors[:, COLUMNS.index((t.grid, t.base_bits))]
            gain = (at_base - errors[:, COLUMNS.index((t.grid, t.base_bits + 1))]).reshape(-1, n_sub)
            top = np.argsort(-gain, axis=1, kind="stable")[:, :t.upgrades]
            out[k] = np.take_along_axis(h, top, axis=1).sum()
    return out


def sub_block_importance(importance: np.ndarray | None, rows: int, n: int) -> np.ndarray:
    """Each sub-block's summed importance, (rows * n / 32,), from None (all ones), per-column
    (n,) or per-weight (rows, n) importance."""
    if importance is None:
        return np.full(rows * n // SUB_BLOCK, float(SUB_BLOCK))
    h = np.broadcast_to(np.asarray(importance, dtype=np.float64), (rows, n))
    return h.reshape(-1, SUB_BLOCK).sum(axis=1)
