"""numpy reference of SFMP quantization and dequantization.

It is the executable specification of ``ggml_patch/files/ggml/src/sfmp/sfmp-quants.c``: the same
float64 operations in the same order (sums run left to right, never pairwise), so both produce
identical bytes. Keep the two in step.

Quantizing a block of a type with base precision B and U upgrades:
1. Weight each element by ``qw * sqrt(sigma2 + x^2)`` (llama.cpp's imatrix weighting; qw = 1 without
   an importance matrix), sigma2 = 2 * mean(x^2) over the block.
2. For every sub-block, at B and at B + 1 bits, search the amplitude: candidates that map the
   largest |x| to the top level, shrunk by 5% steps, each also refined by weighted least squares.
   Keep the one with the smallest weighted squared error E_j(bits).
3. Upgrade the U sub-blocks whose error drops most from B to B + 1 bits (ties to the lower index).
4. Store amplitudes as d * m with one fp16 d and 7-bit m, then re-round the codes on that grid.

A nonlinear type (``format.NL_LEVELS``) runs the same search on its levels L[q] in place of the
mid-rise grid (``GridLevels``): a weight takes the nearest level, t = x / (A / 64) against the
midpoints of neighbouring levels, ties upwards as the uniform grid's floor(x / step + half) does.

Decoding a malformed block stays defined: only the first U flagged sub-blocks count as upgraded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfmp_gguf.format import (AMPLITUDE_MAX, GRID_NONLINEAR, NL_LEVELS, NL_MAX_BITS, NL_UNIT, SUB_BLOCK, UPGRADE_FLAG, SfmpType,
                               pieces)

N_CANDIDATES = 12
SHRINK_STEP = 0.05
FP16_MAX = 65504.0


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis (numpy's own sum is pairwise, so it rounds differently)."""
    return np.cumsum(a, axis=-1)[..., -1]


@dataclass(frozen=True)
class GridLevels:
    """One precision of one grid as the quantizer sees it: x ~ values(q) * step, step = amplitude / div.
    Uniform: values q + 1/2 - 2^(b-1) over div = 2^(b-1); nonlinear: L[q] over div = 64."""

    nonlinear: bool
    bits: int

    @property
    def half(self) -> float:
        return 2.0 ** (self.bits - 1)

    @property
    def div(self) -> float:
        return float(NL_UNIT) if self.nonlinear else self.half

    @property
    def _table(self) -> np.ndarray:
        return np.asarray(NL_LEVELS[self.bits], dtype=np.float64)

    def codes(self, x: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Nearest level: floor(x / step + half), clamped; nonlinear: t = x / step against the midpoints
        of neighbouring levels (exact halves), ties upwards as floor does. ``step`` broadcasts."""
        if self.nonlinear:
            table = self._table
            return np.sum((x / step)[..., None] >= (table[:-1] + table[1:]) / 2.0, axis=-1)
        return np.clip(np.floor(x / step + self.half), 0.0, 2.0 * self.half - 1.0).astype(np.int64)

    def values(self, q: np.ndarray) -> np.ndarray:
        return self._table[q] if self.nonlinear else q + 0.5 - self.half


def _error(x: np.ndarray, w: np.ndarray, value: np.ndarray, step: np.ndarray) -> np.ndarray:
    diff = x - value * step
    return _seqsum(w * (diff * diff))


def _search_amplitudes(x: np.ndarray, w: np.ndarray, levels: tuple[GridLevels, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Best amplitude and its error per (block, sub-block, precision); x, w: (nb, n_sub, 32) float64."""
    amax = np.max(np.abs(x), axis=-1)[..., None]                      # (nb, n_sub, 1)
    xs, ws = x[:, :, None, :], w[:, :, None, :]
    shrink = 1.0 - SHRINK_STEP * np.arange(N_CANDIDATES, dtype=np.float64)
    amps, errs = [], []
    for g in levels:
        a0 = amax / (g.values(np.int64((1 << g.bits) - 1)) / g.div)   # the largest |x| on the top level
        amplitudes = a0 * shrink                                      # (nb, n_sub, C)
        step = (np.where(amplitudes > 0, amplitudes, 1.0) / g.div)[..., None]
        u = g.values(g.codes(xs, step))
        err = _error(xs, ws, u, step)
        # Weighted least-squares refit of the step for the codes each candidate chose.
        num = _seqsum((ws * xs) * u)
        den = _seqsum((ws * u) * u)
        refit_ok = (den > 0) & (num > 0)
        refit = np.where(refit_ok, num / np.where(den > 0, den, 1.0), 1.0) * g.div
        rstep = (refit / g.div)[..., None]
        rerr = np.where(refit_ok, _error(xs, ws, g.values(g.codes(xs, rstep)), rstep), np.inf)
        # Candidate order: A_0, refit(A_0), A_1, refit(A_1), ...; the first minimum wins.
        all_amp = np.stack([amplitudes, refit], axis=-1).reshape(*amplitudes.shape[:-1], -1)
        all_err = np.stack([err, rerr], axis=-1).reshape(*err.shape[:-1], -1)
        best = np.argmin(all_err, axis=-1)
        amps.append(np.take_along_axis(all_amp, best[..., None], axis=-1)[..., 0])
        errs.append(np.take_along_axis(all_err, best[..., None], axis=-1)[..., 0])
    zero = amax == 0
    return np.where(zero, 0.0, np.stack(amps, axis=-1)), np.where(zero, 0.0, np.stack(errs, axis=-1))


def _final(x: np.ndarray, w: np.ndarray, amp: np.ndarray, bits: np.ndarray, nonlinear: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Codes and weighted error of each sub-block at its stored amplitude and precision (zero
    amplitude decodes to zeros)."""
    q = np.zeros(x.shape, dtype=np.int64)
    err = np.zeros(amp.shape)
    for b in np.unique(bits):
        g = GridLevels(nonlinear, int(b))
        at = bits == b
        step = (np.where(amp > 0, amp, 1.0) / g.div)[..., None]
        q_b = g.codes(x, step)
        q = np.where(at[..., None], q_b, q)
        err = np.where(at, _error(x, w, g.values(q_b), step), err)
    zero = amp <= 0
    q = np.where(zero[..., None], (1 << (bits - 1))[..., None], q)
    return q, np.where(zero, _seqsum(w * (x * x)), err)


def choose_upgrades(gain: np.ndarray, upgrades: int) -> np.ndarray:
    """Boolean (nb, n_sub): the ``upgrades`` sub-blocks of each block with the largest gain, ties to
    the lower index."""
    order = np.argsort(-gain, axis=-1, kind="stable")[:, :upgrades]
    chosen = np.zeros(gain.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=-1)
    return chosen


def _fp16(values: np.ndarray) -> np.ndarray:
    return np.minimum(values.astype(np.float32), np.float32(FP16_MAX)).astype(np.float16)


def pack_pieces(codes: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) codes of ``bits`` bits -> (..., n * bits / 8) bytes, pieces spanning the last axis."""
    n = codes.shape[-1]
    out, shift = [], bits
    for width in pieces(bits):
        shift -= width
        v = (codes >> shift) & ((1 << width) - 1)
        span = n * width // 8
        v = v.reshape(*codes.shape[:-1], 8 // width, span) << (width * np.arange(8 // width))[:, None]
        out.append(np.bitwise_or.reduce(v, axis=-2))
    return np.concatenate(out, axis=-1).astype(np.uint8)


def unpack_pieces(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_pieces: (..., n * bits / 8) bytes -> (..., n) int64 codes."""
    data = data.astype(np.int64)
    q = np.zeros((*data.shape[:-1], n), dtype=np.int64)
    pos = 0
    for width in pieces(bits):
        span = n * width // 8
        b = data[..., pos:pos + span]
        v = (b[..., None, :] >> (width * np.arange(8 // width))[:, None]) & ((1 << width) - 1)
        q = (q << width) | v.reshape(*b.shape[:-1], n)
        pos += span
    return q


def upgraded_sub_blocks(sc: np.ndarray, upgrades: int) -> tuple[np.ndarray, np.ndarray]:
    """From scale bytes (nb, n_sub): which sub-blocks decode as upgraded (only the first ``upgrades``
    flagged ones do) and each one's rank among them, its slot in the extra bits."""
    flagged = (sc & UPGRADE_FLAG) != 0
    rank = np.cumsum(flagged, axis=-1) - flagged
    return flagged & (rank < upgrades), rank


def quantize_blocks(x: np.ndarray, t: SfmpType, qw: np.ndarray | None = None) -> np.ndarray:
    """Quantize rows of float32 weights; x: (rows, n), qw: (n,) importance or None -> uint8 rows."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    if n % t.block_size:
        raise ValueError(f"row length {n} is not a multiple of {t.name}'s block size {t.block_size}")
    nb = rows * (n // t.block_size)
    xb = x.reshape(nb, t.block_size).astype(np.float64)
    if qw is None:
        qwb = np.ones_like(xb)
    else:
        qwb = np.tile(np.asarray(qw, dtype=np.float32).reshape(-1, t.block_size), (rows, 1)).astype(np.float64)
    sigma2 = 2.0 * _seqsum(xb * xb)[:, None] / t.block_size
    w = qwb * np.sqrt(sigma2 + xb * xb)
    xs, ws = xb.reshape(nb, t.n_sub, SUB_BLOCK), w.reshape(nb, t.n_sub, SUB_BLOCK)
    B = t.base_bits
    nonlinear = t.grid == GRID_NONLINEAR
    if t.upgrades:
        amps, errors = _search_amplitudes(xs, ws, (GridLevels(nonlinear, B), GridLevels(nonlinear, B + 1)))
        upgraded = choose_upgrades(errors[..., 0] - errors[..., 1], t.upgrades)
        chosen = np.where(upgraded, amps[..., 1], amps[..., 0])
    else:
        amps, _ = _search_amplitudes(xs, ws, (GridLevels(nonlinear, B),))
        upgraded = np.zeros((nb, t.n_sub), dtype=bool)
        chosen = amps[..., 0]
    bits = B + upgraded.astype(np.int64)

    d16 = _fp16(np.max(chosen, axis=-1) / AMPLITUDE_MAX)
    d = d16.astype(np.float64)[:, None]
    # m rounds down or up, whichever errs less: rounding to nearest could clip the largest weights,
    # which costs more than the quantization noise itself at high precision.
    floor_m = np.floor(np.divide(chosen, d, out=np.zeros_like(chosen), where=d > 0))
    best_m, best_err = None, None
    for m in (np.clip(floor_m, 0, AMPLITUDE_MAX), np.clip(floor_m + 1.0, 0, AMPLITUDE_MAX)):
        m = np.where(d > 0, m, 0.0)
        _, err = _final(xs, ws, d * m, bits, nonlinear)
        if best_m is None:
            best_m, best_err = m, err
        else:
            better = err < best_err
            best_m, best_err = np.where(better, m, best_m), np.where(better, err, best_err)
    m = best_m.astype(np.int64)
    q, _ = _final(xs, ws, d * m, bits, nonlinear)

    return encode_blocks(d16, m, upgraded, q, t).reshape(rows, -1)


def encode_blocks(d16: np.ndarray, m: np.ndarray, upgraded: np.ndarray, q: np.ndarray, t: SfmpType) -> np.ndarray:
    """Pack blocks: fp16 scales (nb,), amplitudes and upgrade flags (nb, n_sub), codes (nb, n_sub, 32)
    at each sub-block's precision -> (nb, type_size) bytes."""
    nb = d16.shape[0]
    up = upgraded[..., None]
    out = np.zeros((nb, t.type_size), dtype=np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, t.sc_offset:t.base_offset] = (upgraded * UPGRADE_FLAG | m).astype(np.uint8)
    out[:, t.base_offset:t.extra_offset] = pack_pieces(np.where(up, q >> 1, q).reshape(nb, -1), t.base_bits)
    if t.upgrades:
        extra = (q & 1)[upgraded].reshape(nb, t.upgrades, SUB_BLOCK)  # row-major: sub-block order
        out[:, t.extra_offset:] = pack_pieces(extra, 1).reshape(nb, -1)
    return out


def decode_blocks(blocks: np.ndarray, t: SfmpType) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(nb, type_size) bytes -> fp16 d (nb,), m (nb, n_sub), bits (nb, n_sub), codes (nb, n_sub, 32)."""
    nb = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16)[:, 0]
    sc = blocks[:, t.sc_offset:t.base_offset].astype(np.int64)
    upgraded, rank = upgraded_sub_blocks(sc, t.upgrades)
    q = unpack_pieces(blocks[:, t.base_offset:t.extra_offset], t.base_bits, t.block_size)
    q = q.reshape(nb, t.n_sub, SUB_BLOCK)
    if t.upgrades:
        extra = unpack_pieces(blocks[:, t.extra_offset:].reshape(nb, t.upgrades, 4), 1, SUB_BLOCK)
        e = np.take_along_axis(extra, np.minimum(rank, t.upgrades - 1)[..., None], axis=1)
        q = np.where(upgraded[..., None], 2 * q + e, q)
    return d, sc & AMPLITUDE_MAX, t.base_bits + upgraded.astype(np.int64), q


def levels(q: np.ndarray, bits: np.ndarray, t: SfmpType) -> tuple[np.ndarray, np.ndarray]:
    """Integer levels of codes (nb, n_sub, 32) at precisions (nb, n_sub), and each sub-block's unit
    exponent: a weight decodes to d * m * level / 2^unit."""
    if t.grid == GRID_NONLINEAR:
        table = np.zeros((NL_MAX_BITS + 1, 1 << NL_MAX_BITS), dtype=np.int64)
        for b, lv in NL_LEVELS.items():
            table[b, :len(lv)] = lv
        return table[bits[..., None], q], np.full(bits.shape, NL_UNIT.bit_length() - 1)
    return 2 * q + 1 - (1 << bits)[..., None], bits


def dequantize_blocks(data: np.ndarray, t: SfmpType) -> np.ndarray:
    """uint8 rows of SFMP blocks -> float32 rows."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    d, m, bits, q = decode_blocks(data.reshape(-1, t.type_size), t)
    level, unit = levels(q, bits, t)
    scale = (d.astype(np.float32)[:, None] * m.astype(np.float32)) / (2.0 ** unit).astype(np.float32)
    out = scale[..., None] * level.astype(np.float32)
    return out.astype(np.float32).reshape(rows, -1)
