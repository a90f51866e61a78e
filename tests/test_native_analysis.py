"""The C analysis (native/sfmp-analysis.c) against its specification, the numpy analysis: the same
sub-block errors bit for bit, the same per-type errors up to the order of a long sum, on every kind
of tensor, importance and row length, and the same result on any number of threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sfmp_gguf import analysis, kernels, native_analysis
from sfmp_gguf.format import SUB_BLOCK
from tests.seeds import stable_seed

KINDS = ("random", "heavy_tailed", "zeros", "constant", "outliers", "mixed_scales")
SUM_ORDER = 1e-12  # per-type totals add the same terms in another order


def _weights(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if kind == "random":
        w = rng.standard_normal(shape) * 0.02
    elif kind == "heavy_tailed":
        w = rng.standard_t(2.5, size=shape) * 0.01
    elif kind == "zeros":
        w = np.zeros(shape)
    elif kind == "constant":
        w = np.full(shape, -0.0371)
    elif kind == "outliers":
        w = rng.standard_normal(shape) * 0.01
        idx = rng.choice(w.size, size=w.size // 50, replace=False)
        w.flat[idx] = rng.choice([-1, 1], size=idx.size) * rng.uniform(0.5, 300.0, size=idx.size)
    else:  # sub-blocks whose ranges differ by orders of magnitude, down to float32 subnormals
        w = rng.standard_normal(shape) * np.repeat(10.0 ** rng.uniform(-40, 0, size=(shape[0], shape[1] // 32)), 32, 1)
    return w.astype(np.float32)


def _importance(mode: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray | None:
    rows, n = shape
    if mode == "none":
        return None
    if mode == "columns":
        h = rng.gamma(0.5, size=n)
        h[:: 7] = 0.0  # columns no token exercised
        return h.astype(np.float32)
    if mode == "experts":
        return rng.gamma(0.5, size=(4, n)).astype(np.float32)
    return (rng.gamma(0.3, size=shape) * 1e-6).astype(np.float32)  # per weight, Fisher-sized


@pytest.fixture(scope="module")
def lib() -> kernels.Kernels:
    return kernels.load()


@pytest.mark.native
@pytest.mark.parametrize("mode", ["none", "columns", "weights"])
@pytest.mark.parametrize("kind", KINDS)
def test_sub_block_errors_equal_the_numpy_analysis_bit_for_bit(lib, kind, mode):
    seed = stable_seed("sub-block errors", kind, mode)
    rng = np.random.default_rng(seed)
    shape = (24, 576)
    w, h = _weights(kind, rng, shape), _importance(mode, rng, shape)
    got, _ = lib.sub_block_errors(w, h, per_row=mode == "weights")
    expected = analysis.sub_block_errors(w, h)
    assert got.shape == expected.shape == (w.size // SUB_BLOCK, len(analysis.COLUMNS))
    assert np.array_equal(got, expected), f"seed {seed}"


@pytest.mark.native
@pytest.mark.parametrize("mode", ["none", "columns", "weights", "experts"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [256, 576])  # the _k family, and the _s family
def test_every_type_error_and_statistic_equals_the_numpy_analysis(kind, mode, n):
    seed = stable_seed("type errors", kind, mode, n)
    rng = np.random.default_rng(seed)
    shape = (64, n)
    w, h = _weights(kind, rng, shape), _importance(mode, rng, shape)
    expected = analysis.profile_tensor("t", w, h)
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = native_analysis.profile_tensor("t", w, h, pool)
    assert got.candidates == expected.candidates
    np.testing.assert_allclose(got.errors, expected.errors, rtol=SUM_ORDER, atol=0, err_msg=f"seed {seed}")
    np.testing.assert_allclose(got.energy, expected.energy, rtol=SUM_ORDER, atol=0, err_msg=f"seed {seed}")
    # the moments sum E[w^2] - mean^2 rather than numpy's two-pass variance: a report figure
    np.testing.assert_allclose([got.stats.range_to_rms, got.stats.variance],
                               [expected.stats.range_to_rms, expected.stats.variance], rtol=1e-6, atol=1e-30,
                               err_msg=f"seed {seed}")
    assert got.stats.outlier_share == expected.stats.outlier_share, f"seed {seed}"


@pytest.mark.native
def test_the_result_does_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(native_analysis, "CHUNK_WEIGHTS", 4096)  # many chunks, finished in any order
    rng = np.random.default_rng(3)
    w = _weights("heavy_tailed", rng, (512, 512))
    h = _importance("columns", rng, w.shape)
    profiles = []
    for threads in (1, 2, 5):
        with ThreadPoolExecutor(max_workers=threads) as pool:
            profiles.append(native_analysis.profile_tensor("t", w, h, pool))
    for p in profiles[1:]:
        assert np.array_equal(p.errors, profiles[0].errors) and p.energy == profiles[0].energy
        assert p.stats == profiles[0].stats


@pytest.mark.unit
def test_chunks_cover_every_row_once_and_never_straddle_an_expert(monkeypatch):
    monkeypatch.setattr(native_analysis, "CHUNK_WEIGHTS", 3 * 256)
    spans = native_analysis.chunks(rows=4 * 10, n=256, experts=4)
    assert [r for start, stop in spans for r in range(start, stop)] == list(range(40))
    assert all(start // 10 == (stop - 1) // 10 for start, stop in spans)


@pytest.mark.native
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_weight_that_is_not_finite_is_refused(bad):
    w = np.zeros((8, 256), dtype=np.float32)
    w[5, 17] = bad
    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(native_analysis.NonFiniteWeights):
        native_analysis.profile_tensor("t", w, None, pool)
