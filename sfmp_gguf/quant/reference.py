"""numpy reference of SFMP quantization and dequantization.

It is the executable specification of ``ggml_patch/files/ggml/src/sfmp/sfmp-quants.c``: the same
float64 operations in the same order (sums run left to right, never pairwise), so both produce
identical bytes. Keep the two in step.

Quantizing a block:
1. Weight each element by ``qw * sqrt(sigma2 + x^2)`` (llama.cpp's imatrix weighting; qw = 1 without
   an importance matrix), sigma2 = 2 * mean(x^2) over the block.
2. For every sub-block and every precision 2..8, search the amplitude: candidates that map the
   largest |x| to the top level, shrunk by 5% steps, each also refined by weighted least squares.
   Keep the one with the smallest weighted squared error E_j(bits).
3. Share the block's bit budget: start every sub-block at 2 bits and hand out one bit at a time to
   the sub-block whose error drops most (ties to the lowest index).
4. Store amplitudes as d * m with one fp16 d and 5-bit m, then re-round the codes on that grid.
"""

from __future__ import annotations

import numpy as np

from sfmp_gguf.format import (AMPLITUDE_MAX, MAX_BITS, MIN_BITS, SUB_BLOCK, SfmpType, pieces)

N_CANDIDATES = 12
SHRINK_STEP = 0.05
FP16_MAX = 65504.0
_PRECISIONS = np.arange(MIN_BITS, MAX_BITS + 1)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis (numpy's own sum is pairwise, so it rounds differently)."""
    return np.cumsum(a, axis=-1)[..., -1]


def _codes(x: np.ndarray, step: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Nearest mid-rise level; ``step`` > 0 broadcasts against ``x``."""
    q = np.floor(x / step + half)
    return np.clip(q, 0.0, 2.0 * half - 1.0)


def _error(x: np.ndarray, w: np.ndarray, q: np.ndarray, step: np.ndarray, half: np.ndarray) -> np.ndarray:
    diff = x - (q + 0.5 - half) * step
    return _seqsum(w * (diff * diff))


def _search_amplitudes(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best amplitude and its error per (block, sub-block, precision); x, w: (nb, n_sub, 32) float64."""
    half = (2.0 ** (_PRECISIONS - 1))[None, None, :, None]           # (1, 1, P, 1)
    amax = np.max(np.abs(x), axis=-1)[..., None, None]                # (nb, n_sub, 1, 1)
    a0 = amax / (1.0 - 0.5 / half)                                    # (nb, n_sub, P, 1)
    shrink = 1.0 - SHRINK_STEP * np.arange(N_CANDIDATES, dtype=np.float64)
    amplitudes = a0 * shrink                                          # (nb, n_sub, P, C)
    xs, ws = x[:, :, None, None, :], w[:, :, None, None, :]
    h = half[..., None]                                               # (1, 1, P, 1, 1)
    safe = np.where(amplitudes > 0, amplitudes, 1.0)
    step = (safe / half)[..., None]
    q = _codes(xs, step, h)
    err = _error(xs, ws, q, step, h)
    # Weighted least-squares refit of the step for the codes each candidate chose.
    u = q + 0.5 - h
    num = _seqsum((ws * xs) * u)
    den = _seqsum((ws * u) * u)
    refit_ok = (den > 0) & (num > 0)
    refit = np.where(refit_ok, num / np.where(den > 0, den, 1.0), 1.0) * half
    rstep = (refit / half)[..., None]
    rq = _codes(xs, rstep, h)
    rerr = np.where(refit_ok, _error(xs, ws, rq, rstep, h), np.inf)
    # Candidate order: A_0, refit(A_0), A_1, refit(A_1), ...; the first minimum wins.
    all_amp = np.stack([amplitudes, refit], axis=-1).reshape(*amplitudes.shape[:-1], -1)
    all_err = np.stack([err, rerr], axis=-1).reshape(*err.shape[:-1], -1)
    best = np.argmin(all_err, axis=-1)
    amp = np.take_along_axis(all_amp, best[..., None], axis=-1)[..., 0]
    error = np.take_along_axis(all_err, best[..., None], axis=-1)[..., 0]
    zero = amax[..., 0] == 0
    return np.where(zero, 0.0, amp), np.where(zero, 0.0, error)


def _final_error(x: np.ndarray, w: np.ndarray, amp: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Weighted error of each sub-block at its stored amplitude (zero amplitude decodes to zeros)."""
    step = (np.where(amp > 0, amp, 1.0) / half)[..., None]
    h = half[..., None]
    err = _error(x, w, _codes(x, step, h), step, h)
    return np.where(amp > 0, err, _seqsum(w * (x * x)))


def allocate_bits(errors: np.ndarray, budget: int) -> np.ndarray:
    """Greedy bit sharing within each block; errors: (nb, n_sub, P) for precisions 2..8."""
    nb, n_sub, _ = errors.shape
    bits = np.full((nb, n_sub), MIN_BITS, dtype=np.int64)
    rows = np.arange(nb)
    for _ in range(budget - MIN_BITS * n_sub):
        level = bits - MIN_BITS
        now = np.take_along_axis(errors, level[..., None], axis=-1)[..., 0]
        nxt = np.take_along_axis(errors, np.minimum(level + 1, MAX_BITS - MIN_BITS)[..., None], axis=-1)[..., 0]
        gain = np.where(bits < MAX_BITS, now - nxt, -np.inf)
        pick = np.argmax(gain, axis=-1)  # the first maximum: the lowest sub-block index
        bits[rows, pick] += 1
    return bits


def _fp16(values: np.ndarray) -> np.ndarray:
    return np.minimum(values.astype(np.float32), np.float32(FP16_MAX)).astype(np.float16)


def _pack_codes(q: np.ndarray, bits: int) -> bytes:
    """One sub-block's 32 codes as pieces, most significant first."""
    out = bytearray()
    shift = bits
    for width in pieces(bits):
        shift -= width
        v = (q >> shift) & ((1 << width) - 1)
        if width == 4:
            out += (v[:16] | (v[16:] << 4)).astype(np.uint8).tobytes()
        elif width == 2:
            out += (v[0:8] | (v[8:16] << 2) | (v[16:24] << 4) | (v[24:32] << 6)).astype(np.uint8).tobytes()
        else:
            out += int(np.sum(v.astype(np.uint64) << np.arange(32, dtype=np.uint64))).to_bytes(4, "little")
    return bytes(out)


def _unpack_codes(payload: np.ndarray, bits: int) -> np.ndarray:
    q = np.zeros(SUB_BLOCK, dtype=np.int64)
    pos = 0
    for width in pieces(bits):
        if width == 4:
            b = payload[pos:pos + 16].astype(np.int64)
            v = np.concatenate([b & 15, b >> 4])
        elif width == 2:
            b = payload[pos:pos + 8].astype(np.int64)
            v = np.concatenate([(b >> s) & 3 for s in (0, 2, 4, 6)])
        else:
            word = int.from_bytes(payload[pos:pos + 4].tobytes(), "little")
            v = (word >> np.arange(32)) & 1
        q = (q << width) | v
        pos += 4 * width
    return q


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
    xs = xb.reshape(nb, t.n_sub, SUB_BLOCK)
    amps, errors = _search_amplitudes(xs, w.reshape(nb, t.n_sub, SUB_BLOCK))
    bits = allocate_bits(errors, t.budget)
    chosen = np.take_along_axis(amps, (bits - MIN_BITS)[..., None], axis=-1)[..., 0]

    d16 = _fp16(np.max(chosen, axis=-1) / AMPLITUDE_MAX)
    d = d16.astype(np.float64)[:, None]
    half = 2.0 ** (bits - 1)
    ws = w.reshape(nb, t.n_sub, SUB_BLOCK)
    # m rounds down or up, whichever errs less: rounding to nearest could clip the largest weights,
    # which costs more than the quantization noise itself at high precision.
    floor_m = np.floor(np.divide(chosen, d, out=np.zeros_like(chosen), where=d > 0))
    best_m, best_err = None, None
    for m in (np.clip(floor_m, 0, AMPLITUDE_MAX), np.clip(floor_m + 1.0, 0, AMPLITUDE_MAX)):
        m = np.where(d > 0, m, 0.0)
        err = _final_error(xs, ws, d * m, half)
        if best_m is None:
            best_m, best_err = m, err
        else:
            better = err < best_err
            best_m, best_err = np.where(better, m, best_m), np.where(better, err, best_err)
    m = best_m.astype(np.int64)
    amp = d * m
    step = np.where(amp > 0, amp, 1.0) / half
    q = _codes(xs, step[..., None], half[..., None]).astype(np.int64)
    q = np.where((amp > 0)[..., None], q, (half.astype(np.int64))[..., None])

    out = np.zeros((nb, t.type_size), dtype=np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, t.sb_offset:t.qs_offset] = ((bits - MIN_BITS) << 5 | m).astype(np.uint8)
    for i in range(nb):
        payload = b"".join(_pack_codes(q[i, j], int(bits[i, j])) for j in range(t.n_sub))
        out[i, t.qs_offset:t.qs_offset + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return out.reshape(rows, -1)


def dequantize_blocks(data: np.ndarray, t: SfmpType) -> np.ndarray:
    """uint8 rows of SFMP blocks -> float32 rows. Malformed sub-blocks decode as zeros."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    blocks = data.reshape(-1, t.type_size)
    out = np.zeros((blocks.shape[0], t.n_sub, SUB_BLOCK), dtype=np.float32)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
    payload_end = 4 * t.budget
    for i, block in enumerate(blocks):
        pos = 0
        for j in range(t.n_sub):
            sb = int(block[t.sb_offset + j])
            bits, m = (sb >> 5) + MIN_BITS, sb & AMPLITUDE_MAX
            if bits > MAX_BITS or pos + 4 * bits > payload_end:
                break
            q = _unpack_codes(block[t.qs_offset + pos:], bits)
            scale = np.float32(d[i] * np.float32(m)) / np.float32(1 << bits)
            out[i, j] = scale * (2 * q + 1 - (1 << bits)).astype(np.float32)
            pos += 4 * bits
    return out.reshape(rows, -1)
