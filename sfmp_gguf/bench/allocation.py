"""Allocation time on a synthetic Llama-3-8B inventory: its 226 matrices' shapes, with per-tensor
error curves drawn to look like real ones (error falling about 4x per bit, sensitivities spread
over two orders of magnitude, a little curvature). ``python -m sfmp_gguf.bench.allocation``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sfmp_gguf.analysis import TensorProfile
from sfmp_gguf.format import types_for_row

LLAMA3_8B = {"hidden": 4096, "ffn": 14336, "kv": 1024, "vocab": 128256, "layers": 32}


def llama3_8b_shapes() -> dict[str, tuple[int, int]]:
    h, f, kv = LLAMA3_8B["hidden"], LLAMA3_8B["ffn"], LLAMA3_8B["kv"]
    shapes = {"token_embd.weight": (LLAMA3_8B["vocab"], h), "output.weight": (LLAMA3_8B["vocab"], h)}
    for i in range(LLAMA3_8B["layers"]):
        shapes.update({f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (kv, h),
                       f"blk.{i}.attn_v.weight": (kv, h), f"blk.{i}.attn_output.weight": (h, h),
                       f"blk.{i}.ffn_gate.weight": (f, h), f"blk.{i}.ffn_up.weight": (f, h),
                       f"blk.{i}.ffn_down.weight": (h, f)})
    return shapes


def synthetic_profiles(shapes: dict[str, tuple[int, int]], seed: int = 0) -> list[TensorProfile]:
    rng = np.random.default_rng(seed)
    profiles = []
    for name, (rows, n) in shapes.items():
        candidates = types_for_row(n)
        sensitivity = rows * n * 10.0 ** rng.uniform(-1, 1)
        bits = np.array([float(t.average_bits) for t in candidates])
        errors = sensitivity * 4.0 ** -bits * (1 + 0.05 * rng.standard_normal(bits.size) + 0.02 * (bits - 5) ** 2)
        profiles.append(TensorProfile(name, (rows, n), candidates, np.maximum.accumulate(errors[::-1])[::-1]))
    return profiles


def main() -> int:
    from sfmp_gguf.allocation import allocate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpw", type=float, nargs="+", default=[3.0, 4.0, 4.5, 5.0, 6.0])
    args = parser.parse_args()
    profiles = synthetic_profiles(llama3_8b_shapes())
    n = sum(p.n_weights for p in profiles)
    print(f"synthetic Llama-3-8B inventory: {len(profiles)} tensors, {n / 1e9:.2f}B weights")
    for bpw in args.bpw:
        start = time.perf_counter()
        plan = allocate(profiles, bpw)
        print(f"  --bpw {bpw}: {plan.bpw:.4f} bpw in {1000 * (time.perf_counter() - start):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
