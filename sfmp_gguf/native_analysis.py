"""The sensitivity analysis in C (native/sfmp-analysis.c) on a thread pool; ``analysis.py`` is its
specification and test oracle.

A tensor's rows go to the threads in fixed chunks (never across experts, whose importance rows
differ). Each chunk's sub-block errors stay in that thread's buffer, which the C code reduces to the
chunk's error at every candidate type, and the chunks' results are added in chunk order, so the
numbers do not depend on the thread count. cffi releases the GIL for each C call.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from sfmp_gguf import kernels
from sfmp_gguf.analysis import (COLUMNS, TensorProfile, WeightStats, importance_rows, sub_block_importance,
                                upgraded_importance)
from sfmp_gguf.format import SUB_BLOCK, SfmpType, types_for_row

CHUNK_WEIGHTS = 1 << 16  # weights per task: small enough to share a small tensor among threads


class NonFiniteWeights(ValueError):
    """A tensor holds NaN or Inf."""


def type_columns(candidates: tuple[SfmpType, ...]) -> np.ndarray:
    """(base column, next column, upgrades) of each type, for sfmp_analysis_type_errors."""
    return np.array([(COLUMNS.index((t.grid, t.base_bits)),
                      COLUMNS.index((t.grid, t.base_bits + 1)) if t.upgrades else 0, t.upgrades)
                     for t in candidates], dtype=np.int32)


def chunks(rows: int, n: int, experts: int) -> list[tuple[int, int]]:
    """Row ranges of at most CHUNK_WEIGHTS weights (at least one row), none across an expert."""
    step = max(1, CHUNK_WEIGHTS // n)
    per_expert = rows // experts
    return [(start, min(start + step, (e + 1) * per_expert))
            for e in range(experts) for start in range(e * per_expert, (e + 1) * per_expert, step)]


def profile_tensor(name: str, w: np.ndarray, importance: np.ndarray | None, pool: Executor) -> TensorProfile:
    """analysis.profile_tensor in C. ``importance``: None, per column (n,), per expert per column
    (experts, n) or per weight (rows, n). Raises NonFiniteWeights if ``w`` holds NaN or Inf."""
    lib = kernels.load()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, n = w.shape
    candidates = types_for_row(n)
    columns = type_columns(candidates)
    h = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    per_weight = h is not None and h.ndim == 2 and h.shape[0] == rows
    experts = h.shape[0] if h is not None and h.ndim == 2 and not per_weight else 1

    def run(chunk: tuple[int, int]) -> tuple[np.ndarray, dict[str, float]]:
        start, stop = chunk
        if h is None or h.ndim == 1:
            rows_h = h
        elif per_weight:
            rows_h = h[start:stop]
        else:
            rows_h = h[start // (rows // experts)]
        errors, moments = lib.sub_block_errors(w[start:stop], rows_h, per_row=per_weight)
        return lib.type_errors(errors, candidates[0].n_sub, columns), moments

    results = list(pool.map(run, chunks(rows, n, experts)))
    errors = np.sum([totals for totals, _ in results], axis=0)
    moments = {k: sum(m[k] for _, m in results) for k in results[0][1]}
    if not np.isfinite(moments["mean_square"]):  # a sum of w^2 is finite exactly when every w is
        raise NonFiniteWeights(name)
    n_sub_blocks = w.size // SUB_BLOCK
    sigma = float(np.sqrt(moments["mean_square"] / n_sub_blocks))
    beyond = sum(pool.map(lambda c: lib.count_beyond(w[c[0]:c[1]], 3 * sigma), chunks(rows, n, 1)))
    stats = WeightStats(moments["range_to_rms"] / n_sub_blocks, moments["variance"] / n_sub_blocks,
                        beyond / w.size if sigma > 0 else 0.0)
    return TensorProfile(name, (rows, n), candidates, errors, stats, moments["energy"])


def upgraded_shares(w: np.ndarray, importance: np.ndarray | None, pool: Executor) -> np.ndarray:
    """Per candidate type of ``w``'s rows, the share of its importance on the sub-blocks the analysis
    upgrades (``analysis.upgraded_importance``); importance as for profile_tensor."""
    lib = kernels.load()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, n = w.shape
    candidates = types_for_row(n)
    h = None if importance is None else np.asarray(importance, dtype=np.float32)
    per_weight = h is not None and h.ndim == 2 and h.shape[0] == rows
    experts = h.shape[0] if h is not None and h.ndim == 2 and not per_weight else 1

    def run(chunk: tuple[int, int]) -> tuple[np.ndarray, float]:
        start, stop = chunk
        rows_h = importance_rows(h, rows, start, stop)  # (n,), or one row per weight row
        errors, _ = lib.sub_block_errors(w[start:stop], rows_h, per_row=rows_h is not None and rows_h.ndim == 2)
        h_sub = sub_block_importance(rows_h, stop - start, n)
        return upgraded_importance(errors, h_sub, candidates), float(h_sub.sum())

    results = list(pool.map(run, chunks(rows, n, experts)))
    total = sum(t for _, t in results)
    upgraded = np.sum([u for u, _ in results], axis=0)
    return upgraded / total if total > 0 else np.zeros(len(candidates))
