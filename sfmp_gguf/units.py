"""One loss-like unit for every sensitivity, so that one threshold can weigh any tensor against any other.

The allocator compares error saved per bit across tensors, which only means something when every
tensor's error is in the same unit.

- **Fisher** errors, sum F (w - w^)^2 with F the squared loss gradient, estimate the loss increase
  itself. They are loss units already and are used as they are.
- An **imatrix** error, sum_j E[x_j^2] (w - w^)^2, is the tensor's own output error energy, in the
  units of its own output; a **weights-only** error is in the units of its weights. Both change
  with an arbitrary rescaling that the model undoes one layer later (W1 -> a W1, W2 -> W2 / a, or a
  norm's gain folded into the next matrix), which leaves the loss unchanged. On a model whose
  residual stream is scaled up (Gemma's embedding scaling) the raw imatrix error starves
  ``ffn_down`` and feeds ``attn_q/k/v``.

The unit here is the **relative error per weight**, E n / S: the error over the mean signal energy
per weight, with S = sum h w^2 the same importance's signal energy (for an imatrix, the tensor's
mean output energy E||W x||^2 under its diagonal approximation) and n the tensor's weight count.
It is dimensionless and invariant to any rescaling of a tensor's input or output, so it compares
across tensors of any architecture. At high rate a tensor's relative error is k 2^(-2b), with k set
by the shape of its weights and importance alone (tails, outliers, uneven columns), so in this
unit the allocation moves bits only towards tensors whose *shape* makes them harder to quantize,
never by their scale; with equal shapes it is the uniform allocation. Inside a tensor, the
importance still decides which sub-blocks get the upgrades. ``python -m sfmp_gguf.bench.units``
compares it with the other candidates (raw, relative per tensor, per output row, and output
gradients from torch) by KLD at equal size, on the demo model and on a Gemma-family variant
(README, "Allocation in loss units").

A signal that is not loss-based also gets a **guard**: no tensor sits more than ``GUARD_BPW`` from
the target rate, so a wrong unit can cost only a bounded amount. Fisher is not guarded.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sfmp_gguf.analysis import TensorProfile

LOSS_BASED = ("fisher",)
GUARD_BPW = 1.0


def in_loss_units(profiles: list[TensorProfile], sensitivity: str) -> list[TensorProfile]:
    """The profiles with errors in loss-like units (unchanged for a loss-based sensitivity)."""
    if sensitivity in LOSS_BASED:
        return profiles
    return [replace(p, errors=p.errors * p.n_weights / p.energy if p.energy > 0 else np.zeros_like(p.errors))
            for p in profiles]


def guard_bpw(sensitivity: str) -> float | None:
    """How far from the target rate any tensor may sit, or None where the signal is loss-based."""
    return None if sensitivity in LOSS_BASED else GUARD_BPW
