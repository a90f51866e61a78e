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
from sfmp_gguf.analysis import COLUMNS, TensorProfile, WeightStats, sub_block_importance, upgraded_importance
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


def _experts(h: np.ndarray | None, rows: int) -> int:
    """How many experts' rows of per-column importance ``h`` holds: 1 unless it is (experts, n)."""
    return h.shape[0] if h is not None and h.ndim == 2 and h.shape[0] != rows else 1


def _chunk_importance(h: np.ndarray | None, rows: int, experts: int, start: int, stop: int) -> np.ndarray | None:
    """The importance of rows [start, stop), which never straddle an expert: one row (n,) for all of
    them (per column, or the chunk's expert), or one per weight row."""
    if h is None or h.ndim == 1:
        return h
    if experts > 1:
        return h[start // (rows // experts)]
    return h[start:stop]


def profile_tensor(name: str, w: np.ndarray, importance: np.ndarray | None, pool: Executor) -> TensorProfile:
    """analysis.profile_tensor in C. ``importance``: None, per column (n,), per expert per column
    (experts, n) or per weight (rows, n). Raises NonFiniteWeights if ``w`` holds NaN or Inf."""
    lib = kernels.load()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, n = w.shape
    candidates = types_for_row(n)
    columns = type_columns(candidates)
    h = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    experts = _experts(h, rows)

    def run(chunk: tuple[int, int]) -> tuple[np.ndarray, dict[str, float]]:
        start, stop = chunk
        rows_h = _chunk_importance(h, rows, experts, start, stop)
        errors, moments = lib.sub_block_errors(w[start:stop], rows_h, per_row=rows_h is not None and rows_h.ndim == 2)
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
    h = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    experts = _experts(h, rows)

    def run(chunk: tuple[int, int]) -> tuple[np.ndarray, float]:
        start, stop = chunk
        rows_h = _chunk_importance(h, rows, experts, start, stop)
        errors, _ = lib.sub_block_errors(w[start:stop], rows_h, per_row=rows_h is not None and rows_h.ndim == 2)
        h_sub = sub_block_importance(rows_h, stop - start, n)
        return upgraded_importance(errors, h_sub, candidates), float(h_sub.sum())

    results = list(pool.map(run, chunks(rows, n, experts)))
    total = sum(t for _, t in results)
    upgraded = np.sum([u for u, _ in results], axis=0)
    return upgraded / total if total > 0 else np.zeros(len(candidates))
