"""Search-free allocation: one global rate-distortion threshold picks every tensor's type.

Each tensor's (bits, expected error) points over its candidate types are reduced to their lower
convex hull; a step up the hull buys ``efficiency`` = error saved per extra bit. Sorting all steps
of all tensors by efficiency and taking them while they fit is the Lagrangian solution: a single
multiplier (the efficiency of the last step taken) is the same threshold for every tensor, as in
SFMP. The same gain criterion already decides, inside each block, which sub-blocks the type's
upgrades go to (see analysis.py), so one trade-off drives both levels. No tensor is quantized and
nothing is evaluated to decide.

Steps are taken in one fixed order, and the prefix whose total is nearest the budget wins, so a
larger budget never lowers any tensor's bits and the result misses by at most half a step. Only
when one tensor holds more than about 8% of the weights (tiny models with large embeddings) can
half its 0.5-bpw step exceed the tolerance; then the budget is filled from below with later steps
that fit. That fill is the one place monotonicity can break, and it must: allocations that only
ever add steps move in whole steps, so no monotone scheme can land between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from sfmp_gguf.analysis import TensorProfile, matrix_shape
from sfmp_gguf.errors import InputError
from sfmp_gguf.format import SfmpType, types_for_row

TOLERANCE_BPW = 0.02


@dataclass(frozen=True)
class Allocation:
    types: dict[str, SfmpType]
    bpw: float  # over the quantized tensors
    threshold: float  # error saved per bit by the last step the global order took
    filled: bool  # whether the gap fill ran (see the module docstring)


def _hull(profile: TensorProfile) -> list[int]:
    """Indices of the candidates on the lower convex hull of (bits, error), cheapest first."""
    bits = [profile.bits(t) for t in profile.candidates]
    hull: list[int] = []
    # Equal sizes (the two grids at one rate): the lower error first, so the other is dropped below.
    for i in sorted(range(len(bits)), key=lambda i: (bits[i], profile.errors[i])):
        if hull and profile.errors[i] >= profile.errors[hull[-1]]:
            continue  # as many bits or more for no less error: never worth it
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            slope_ab = (profile.errors[a] - profile.errors[b]) / (bits[b] - bits[a])
            slope_bi = (profile.errors[b] - profile.errors[i]) / (bits[i] - bits[b])
            if slope_bi >= slope_ab:
                hull.pop()  # b buys less per bit than going straight to i
            else:
                break
        hull.append(i)
    return hull


def bpw_range(profiles: list[TensorProfile]) -> tuple[float, float]:
    n = sum(p.n_weights for p in profiles)
    low = sum(min(p.bits(t) for t in p.candidates) for p in profiles) / n
    high = sum(max(p.bits(t) for t in p.candidates) for p in profiles) / n
    return low, high


def check_rate(profiles: list[TensorProfile], target_bpw: float) -> None:
    """InputError unless the profiled tensors can average ``target_bpw``."""
    if not profiles:
        raise InputError("the model has no tensor an SFMP type can hold")
    low, high = bpw_range(profiles)
    if not low - 1e-9 <= target_bpw <= high + 1e-9:
        raise InputError(f"--bpw {target_bpw:g}: this model's tensors take {low:.2f} to {high:.2f} bpw")


def bare_profiles(shapes: dict[str, tuple[int, ...]], grids: tuple[str, ...]) -> list[TensorProfile]:
    """Profiles with their candidates and no errors: enough for check_rate before any analysis."""
    return [TensorProfile(name, matrix_shape(shape), tuple(t for t in types_for_row(shape[-1]) if t.grid in grids),
                          np.zeros(0)) for name, shape in shapes.items()]


def near_rate(profile: TensorProfile, target_bpw: float, spread: float) -> TensorProfile:
    """The profile with only the candidates within ``spread`` bpw of the target (or the nearest one)."""
    keep = [k for k, t in enumerate(profile.candidates) if abs(t.bpw - target_bpw) <= spread + 1e-9]
    if not keep:
        keep = [min(range(len(profile.candidates)), key=lambda k: abs(profile.candidates[k].bpw - target_bpw))]
    return replace(profile, candidates=tuple(profile.candidates[k] for k in keep), errors=profile.errors[keep])


def allocate(profiles: list[TensorProfile], target_bpw: float, tolerance: float = TOLERANCE_BPW,
             guard: float | None = None) -> Allocation:
    """The type of every profiled tensor for an average of ``target_bpw`` over them; with ``guard``, no
    tensor more than that many bpw from the target (units.py: for signals that are not loss-based)."""
    check_rate(profiles, target_bpw)
    if guard is not None:
        profiles = [near_rate(p, target_bpw, guard) for p in profiles]
        low, high = bpw_range(profiles)
        target_bpw = min(max(target_bpw, low), high)
    n_weights = sum(p.n_weights for p in profiles)
    budget = target_bpw * n_weights
    hulls = [_hull(p) for p in profiles]
    level = [0] * len(profiles)
    used = sum(p.bits(p.candidates[h[0]]) for p, h in zip(profiles, hulls))

    # (efficiency, tensor, step): the global order; ties go to the earlier tensor and step.
    steps = []
    for k, (p, h) in enumerate(zip(profiles, hulls)):
        for s in range(1, len(h)):
            a, b = p.candidates[h[s - 1]], p.candidates[h[s]]
            gain = (p.errors[h[s - 1]] - p.errors[h[s]]) / (p.bits(b) - p.bits(a))
            steps.append((-gain, k, s, p.bits(b) - p.bits(a)))
    steps.sort()

    # The prefix of the global order whose total is nearest the budget, over or under: a larger
    # budget never picks a shorter prefix, and the miss is at most half a step.
    totals = used + np.cumsum([0.0] + [cost for *_, cost in steps])
    taken = int(np.argmin(np.abs(totals - budget)))
    for _, k, s, _ in steps[:taken]:
        level[k] = s
    used = float(totals[taken])
    threshold = -steps[taken - 1][0] if taken else float("inf")

    filled = False
    if abs(used - budget) / n_weights > tolerance:
        filled = True  # a large tensor's step straddles the budget: fill from below instead
        taken = int(np.searchsorted(totals, budget + 1e-6, side="right")) - 1
        level = [0] * len(profiles)
        for _, k, s, _ in steps[:taken]:
            level[k] = s
        used = float(totals[taken])
        frozen = set()
        for neg_gain, k, s, cost in steps[taken:]:
            if k in frozen or s != level[k] + 1:
                frozen.add(k)
                continue
            if used + cost <= budget + 1e-6:
                used += cost
                level[k] = s
            else:
                frozen.add(k)
    types = {p.name: p.candidates[h[level[k]]] for k, (p, h) in enumerate(zip(profiles, hulls))}
    return Allocation(types, used / n_weights, threshold, filled)


def uniform(profiles: list[TensorProfile], target_bpw: float) -> Allocation:
    """The comparison point: every tensor at the one rung of its family nearest the target."""
    types = {p.name: min(p.candidates, key=lambda t: (abs(t.bpw - target_bpw), t.bpw)) for p in profiles}
    bits = sum(p.bits(types[p.name]) for p in profiles)
    return Allocation(types, bits / sum(p.n_weights for p in profiles), float("inf"), False)


def no_larger(plan_at: Callable[[float], Allocation], limit: float) -> Allocation:
    """The plan for ``limit`` bpw, its target lowered until it takes no more bits than that: the
    nearest prefix may overshoot by part of a step, and an equal-size comparison must not."""
    target = limit
    plan = plan_at(target)
    while plan.bpw > limit + 1e-9:
        target -= 0.002
        plan = plan_at(target)
    return plan


def total_error(profiles: list[TensorProfile], types: dict[str, SfmpType]) -> float:
    return float(sum(p.errors[p.candidates.index(types[p.name])] for p in profiles))
