"""The analysis and the search-free allocator: exact rates, monotone budgets, better than uniform."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sfmp_gguf import allocation, analysis
from sfmp_gguf.assets.imatrix import teacher_imatrix
from sfmp_gguf.imatrix_io import load_imatrix
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.bench.allocation import llama3_8b_shapes, synthetic_profiles
from sfmp_gguf.errors import InputError
from sfmp_gguf.format import GRID_NONLINEAR, GRID_UNIFORM, GRIDS
from sfmp_gguf.importance import match_imatrix
from sfmp_gguf.model_source import open_model
from sfmp_gguf.quant.reference import dequantize_blocks
from sfmp_gguf.quantize import quantize_tensor

BUDGETS = np.round(np.arange(2.8, 8.2, 0.1), 2)


@pytest.fixture(scope="module")
def inventory_8b():
    return synthetic_profiles(llama3_8b_shapes())


@pytest.mark.unit
def test_8b_inventory_hits_every_rate_and_raising_the_budget_never_lowers_a_tensor(inventory_8b):
    previous = None
    for bpw in BUDGETS:
        plan = allocation.allocate(inventory_8b, float(bpw))
        assert abs(plan.bpw - bpw) <= 0.02, (bpw, plan.bpw)
        assert not plan.filled  # one global order: every tensor's step is small next to the model
        bits = np.array([plan.types[p.name].bpw for p in inventory_8b])
        if previous is not None:
            assert np.all(bits >= previous), bpw
        previous = bits


@pytest.mark.unit
def test_allocation_only_uses_types_on_each_tensors_convex_hull(inventory_8b):
    p = inventory_8b[5]
    hull = allocation._hull(p)
    bits = [p.bits(p.candidates[i]) for i in hull]
    errors = [p.errors[i] for i in hull]
    assert bits == sorted(bits) and errors == sorted(errors, reverse=True)
    slopes = [(errors[i] - errors[i + 1]) / (bits[i + 1] - bits[i]) for i in range(len(hull) - 1)]
    assert all(a > b for a, b in zip(slopes, slopes[1:]))
    plan = allocation.allocate(inventory_8b, 4.5)
    assert all(p.candidates.index(plan.types[p.name]) in allocation._hull(p) for p in inventory_8b)


@pytest.mark.unit
def test_a_rate_outside_the_family_is_refused(inventory_8b):
    low, high = allocation.bpw_range(inventory_8b)
    with pytest.raises(InputError, match="--bpw 2"):
        allocation.allocate(inventory_8b, 2.0)
    with pytest.raises(InputError, match="--bpw 9"):
        allocation.allocate(inventory_8b, 9.0)
    assert 2.5 < low < 2.7 and 8.3 <= high <= 8.5


@pytest.mark.unit
def test_measured_errors_follow_the_precision():
    rng = np.random.default_rng(0)
    w = rng.standard_t(4, size=(8, 256)).astype(np.float32)
    err = analysis.sub_block_errors(w, None)
    assert err.shape == (8 * 256 // 32, len(analysis.COLUMNS))
    for grid in GRIDS:
        at = [k for k, (g, _) in enumerate(analysis.COLUMNS) if g == grid]
        assert np.all(np.diff(err[:, at], axis=1) < 0)  # every extra bit helps
    col = {c: k for k, c in enumerate(analysis.COLUMNS)}
    ratio = err[:, col[(GRID_UNIFORM, 5)]] / err[:, col[(GRID_UNIFORM, 6)]]  # about 4x
    assert 3.0 < np.median(ratio) < 5.0
    # heavy tails: the nonlinear levels fit better at 3 and 4 bits
    for b in (3, 4):
        assert np.sum(err[:, col[(GRID_NONLINEAR, b)]]) < np.sum(err[:, col[(GRID_UNIFORM, b)]])
    h = rng.gamma(0.5, size=256).astype(np.float32)
    weighted = analysis.sub_block_errors(w, h)
    assert not np.allclose(weighted, err)


@pytest.fixture(scope="module")
def teacher_case(build):
    source = open_model(teacher().gguf_path)
    by_name = {t.name: t for t in source.tensors}
    shapes = {name: t.shape for name, t in by_name.items() if analysis.quantizable(name, t.shape)}
    columns = match_imatrix(teacher_imatrix(), load_imatrix(teacher_imatrix()), shapes)
    weights = {name: by_name[name].load().reshape(shape) for name, shape in shapes.items()}
    profiles = [analysis.profile_tensor(name, weights[name], columns[name]) for name in shapes]
    return weights, columns, profiles


def _weighted_error(weights, columns, types) -> float:
    total = 0.0
    with ThreadPoolExecutor(2) as pool:
        for name, w in weights.items():
            packed = quantize_tensor(w, types[name], columns[name], pool)
            diff = dequantize_blocks(packed, types[name]).astype(np.float64) - w
            total += float(np.sum(columns[name] * diff * diff))
    return total


@pytest.mark.integration
def test_imatrix_allocation_errs_less_than_uniform_at_the_same_budget(teacher_case):
    weights, columns, profiles = teacher_case
    uniform_plan = allocation.uniform(profiles, 4.5)
    uniform, uniform_bpw = uniform_plan.types, uniform_plan.bpw
    plan = allocation.no_larger(lambda bpw: allocation.allocate(profiles, bpw), uniform_bpw)
    assert uniform_bpw - plan.bpw < 0.02
    predicted = allocation.total_error(profiles, plan.types), allocation.total_error(profiles, uniform)
    measured = _weighted_error(weights, columns, plan.types), _weighted_error(weights, columns, uniform)
    assert predicted[0] < predicted[1]
    assert measured[0] < 0.9 * measured[1], measured


@pytest.mark.integration
def test_teacher_rates_are_hit_even_with_its_large_embedding(teacher_case):
    _, _, profiles = teacher_case
    for bpw in BUDGETS[::4]:
        plan = allocation.allocate(profiles, float(bpw))
        assert abs(plan.bpw - bpw) <= 0.02, (bpw, plan.bpw, plan.filled)
