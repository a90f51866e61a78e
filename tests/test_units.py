"""Loss-like units: the allocation must not depend on a rescaling the model undoes one layer later."""

from __future__ import annotations

import numpy as np
import pytest

from sfmp_gguf import allocation, analysis, report, units
from sfmp_gguf.format import BY_NAME

pytestmark = pytest.mark.unit

TARGETS = (3.0, 4.0, 4.5, 5.5, 6.5)


def _two_layer(scale: float, seed: int = 7) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """y = W2 (W1 x) with W1 -> scale * W1 and W2 -> W2 / scale: the same function for every scale.
    The tensors differ in their own scale and shape, and W1's inputs have uneven column energies."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(2048, 256)).astype(np.float32) * rng.uniform(0.2, 3.0, 256).astype(np.float32)
    w1 = (rng.standard_t(5, size=(512, 256)) * 0.05).astype(np.float32)
    w2 = (rng.standard_t(3, size=(256, 512)) * 0.02).astype(np.float32)
    hidden = x @ w1.T
    weights = {"blk.0.ffn_up.weight": w1 * np.float32(scale), "blk.0.ffn_down.weight": w2 / np.float32(scale)}
    imatrix = {"blk.0.ffn_up.weight": (x * x).mean(axis=0),
               "blk.0.ffn_down.weight": (hidden * hidden).mean(axis=0) * np.float32(scale * scale)}
    return weights, imatrix


def _plans(scale: float, sensitivity: str) -> list[dict[str, str]]:
    weights, imatrix = _two_layer(scale)
    raw = [analysis.profile_tensor(name, w, imatrix[name] if sensitivity == "imatrix" else None)
           for name, w in weights.items()]
    profiles = units.in_loss_units(raw, sensitivity)
    return [{name: t.name for name, t in allocation.allocate(profiles, bpw, guard=units.guard_bpw(sensitivity))
             .types.items()} for bpw in TARGETS]


@pytest.mark.parametrize("sensitivity", ["imatrix", "weights"])
def test_allocation_ignores_a_rescaling_undone_in_the_next_layer(sensitivity):
    reference = _plans(1.0, sensitivity)
    assert len({tuple(p.values()) for p in reference}) == len(TARGETS)  # the rate really moves
    for scale in (1 / 16, 8.0, 256.0):  # powers of two: the rescaled weights are exact in float32
        assert _plans(scale, sensitivity) == reference, scale


def test_raw_errors_would_follow_the_rescaling():
    """The test above has teeth: without the unit, a rescaling moves bits between the two tensors."""
    def raw_plans(scale: float) -> list[dict[str, str]]:
        weights, imatrix = _two_layer(scale)
        profiles = [analysis.profile_tensor(name, w, imatrix[name]) for name, w in weights.items()]
        return [{n: t.name for n, t in allocation.allocate(profiles, bpw).types.items()} for bpw in TARGETS]

    assert raw_plans(1 / 16) != raw_plans(256.0)


def test_the_unit_is_the_relative_error_per_weight_and_fisher_stays_as_it_is():
    weights, imatrix = _two_layer(1.0)
    name = "blk.0.ffn_up.weight"
    raw = analysis.profile_tensor(name, weights[name], imatrix[name])
    signal = float(np.sum(imatrix[name][None, :].astype(np.float64) * weights[name].astype(np.float64) ** 2))
    assert raw.energy == pytest.approx(signal, rel=1e-9)
    scaled = units.in_loss_units([raw], "imatrix")[0]
    np.testing.assert_allclose(scaled.errors, raw.errors * weights[name].size / signal)
    assert units.in_loss_units([raw], "fisher")[0] is raw
    assert units.guard_bpw("fisher") is None and units.guard_bpw("imatrix") == units.GUARD_BPW


def test_the_guard_keeps_every_tensor_near_the_target():
    from sfmp_gguf.bench.allocation import llama3_8b_shapes, synthetic_profiles

    profiles = synthetic_profiles(llama3_8b_shapes())  # sensitivities spread over two orders of magnitude
    for bpw in (3.5, 4.5, 6.0):
        free = allocation.allocate(profiles, bpw)
        guarded = allocation.allocate(profiles, bpw, guard=1.0)
        assert max(abs(t.bpw - bpw) for t in free.types.values()) > 1.0  # the guard has work to do
        assert max(abs(t.bpw - bpw) for t in guarded.types.values()) <= 1.0 + 1e-9
        assert abs(guarded.bpw - bpw) <= allocation.TOLERANCE_BPW


def test_warnings_name_a_starved_kind_and_each_fallback():
    from sfmp_gguf.analysis import TensorProfile

    def profile(name: str) -> TensorProfile:
        return TensorProfile(name, (256, 256), (BY_NAME["sfmp225_k"], BY_NAME["sfmp625_k"]), np.array([1.0, 0.0]))

    names = [f"blk.{i}.{kind}.weight" for i in range(2) for kind in ("ffn_down", "ffn_up", "attn_q")]
    profiles = [profile(n) for n in names]
    types = {n: BY_NAME["sfmp225_k" if "ffn_down" in n else "sfmp625_k"] for n in names}
    notes = report.warnings(profiles, types, {"blk.0.ffn_up.weight": "no imatrix entry",
                                              "blk.1.ffn_up.weight": "no imatrix entry"})
    assert len(notes) == 2
    assert notes[0].startswith("ffn_down gets 2.56 bpw, less than 50% of the mean")
    assert notes[1] == "blk.0.ffn_up.weight and 1 more: no imatrix entry"
    even = {n: BY_NAME["sfmp425_k"] for n in names}
    assert report.warnings(profiles, even, {}) == []
