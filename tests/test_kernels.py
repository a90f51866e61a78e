"""The C kernels against the numpy reference: identical bytes, dot products equal to the scalar
reference's (within a stated float32 bound for the AVX2 _s kernels), safe on bad blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sfmp_gguf import kernels
from sfmp_gguf.format import (BY_NAME, GRID_NONLINEAR, GRIDS, MAX_BITS, NL_LEVELS, NL_UNIT, SFMP_TYPES, UPGRADE_FLAG,
                              SfmpType, pieces)
from sfmp_gguf.llama.build import current_build
from sfmp_gguf.quant import activations
from sfmp_gguf.quant import elastic
from sfmp_gguf.quant.reference import decode_blocks, dequantize_blocks, quantize_blocks
from tests import host
from tests.levels import hi_only
from tests.seeds import stable_seed

ROW = 512  # two 256-blocks, eight 64-blocks
REPO = Path(__file__).resolve().parents[1]


def _weights(kind: str, rng: np.random.Generator, rows: int = 3) -> np.ndarray:
    shape = (rows, ROW)
    if kind == "gaussian":
        return rng.standard_normal(shape) * 0.02
    if kind == "heavy_tailed":
        return rng.standard_t(2.5, size=shape) * 0.01
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "constant":
        return np.full(shape, 0.0371)
    if kind == "outliers":
        x = rng.standard_normal(shape) * 0.01
        idx = rng.choice(x.size, size=x.size // 50, replace=False)
        x.flat[idx] = rng.choice([-1, 1], size=idx.size) * rng.uniform(0.5, 3.0, size=idx.size)
        return x
    if kind == "mixed_scales":  # sub-blocks whose ranges differ by orders of magnitude
        return rng.standard_normal(shape) * np.repeat(10.0 ** rng.uniform(-5, 0, size=(rows, ROW // 32)), 32, axis=1)
    raise ValueError(kind)


KINDS = ["gaussian", "heavy_tailed", "zeros", "constant", "outliers", "mixed_scales"]


@pytest.fixture(scope="module")
def lib() -> kernels.Kernels:
    return kernels.load()


@pytest.mark.native
@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_c_quantizer_matches_numpy_reference_bytes(lib, t: SfmpType, kind: str):
    seed = stable_seed("quantizer", t.name, kind)
    rng = np.random.default_rng(seed)
    x = _weights(kind, rng).astype(np.float32)
    importance = rng.gamma(0.7, size=ROW).astype(np.float32)
    for qw in (None, importance):
        expected = quantize_blocks(x, t, qw)
        got = lib.quantize(x, t, qw)
        assert np.array_equal(got, expected), f"seed {seed}, importance {qw is not None}"
    assert np.array_equal(lib.dequantize(got, t), dequantize_blocks(expected, t)), f"seed {seed}"
    assert lib.validate(got, t), f"seed {seed}"


def _upgraded(block: np.ndarray, t: SfmpType) -> np.ndarray:
    return (block[t.sc_offset:t.base_offset] & UPGRADE_FLAG) != 0


@pytest.mark.native
def test_upgrades_go_to_the_sub_blocks_where_error_is_larger(lib):
    t = BY_NAME["sfmp425_k"]
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1, 256)) * 0.01).astype(np.float32)
    x[0, 64:96] *= 40  # one loud sub-block
    up = _upgraded(lib.quantize(x, t)[0], t)
    assert up.sum() == t.upgrades and up[2]


@pytest.mark.native
def test_importance_moves_upgrades_to_important_columns(lib):
    t = BY_NAME["sfmp425_k"]
    x = (np.random.default_rng(3).standard_normal((1, 256)) * 0.02).astype(np.float32)
    qw = np.ones(256, dtype=np.float32)
    qw[160:192] = 1000.0
    plain, weighted = (_upgraded(lib.quantize(x, t, w)[0], t) for w in (None, qw))
    assert not plain[5] and weighted[5]


@pytest.mark.native
def test_error_falls_as_the_rate_rises(lib):
    x = (np.random.default_rng(5).standard_t(4, size=(4, ROW)) * 0.02).astype(np.float32)
    for variant in ("k", "s"):
        for grid in GRIDS:
            family = [t for t in SFMP_TYPES if t.variant.suffix == variant and t.grid == grid]
            errors = [float(np.mean((lib.dequantize(lib.quantize(x, t), t) - x) ** 2)) for t in family]
            assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.native
def test_nonlinear_grid_errs_less_than_uniform_on_heavy_tailed_weights(lib):
    x = (np.random.default_rng(6).standard_t(4, size=(8, ROW)) * 0.02).astype(np.float32)
    for t in SFMP_TYPES:
        twin = BY_NAME.get(t.name.replace("n_", "_"))
        if t.grid == GRID_NONLINEAR and twin is not None:
            nl, uni = (float(np.mean((lib.dequantize(lib.quantize(x, u), u) - x) ** 2)) for u in (t, twin))
            assert nl < 0.85 * uni, (t.name, nl, uni)


def _max_drift(fine: SfmpType, coarse: SfmpType) -> float:
    """How far, in units of its sub-block's amplitude, a nonlinear value can move when low bits of its
    code are dropped to go from ``fine`` to ``coarse``."""
    fine_bits = {fine.base_bits, fine.base_bits + (fine.upgrades > 0)}
    coarse_bits = {coarse.base_bits, coarse.base_bits + (coarse.upgrades > 0)}
    return max(abs(NL_LEVELS[f][q] - NL_LEVELS[c][q >> (f - c)]) / NL_UNIT
               for f in fine_bits for c in coarse_bits if c <= f for q in range(1 << f))


@pytest.mark.native
@pytest.mark.parametrize("src, dst", [("sfmp475_k", "sfmp425_k"), ("sfmp800_k", "sfmp375_k"),
                                      ("sfmp625_k", "sfmp225_k"), ("sfmp450_s", "sfmp400_s"),
                                      ("sfmp800_s", "sfmp250_s"), ("sfmp400n_k", "sfmp375n_k"),
                                      ("sfmp375n_k", "sfmp225n_k"), ("sfmp400n_s", "sfmp250n_s")])
def test_a_lower_rate_follows_from_a_higher_one_by_dropping_bits(lib, src, dst):
    """Nested codes: the derived tensor decodes inside the coarse cell around each fine value, and
    errs about as little as quantizing the original weights directly."""
    s, d = BY_NAME[src], BY_NAME[dst]
    x = (np.random.default_rng(11).standard_t(4, size=(8, ROW)) * 0.02).astype(np.float32)
    fine = lib.quantize(x, s)
    derived = elastic.derive_blocks(fine, s, d)
    assert lib.validate(derived, d)
    _, m, bits, _ = decode_blocks(derived.reshape(-1, d.type_size), d)
    d16 = derived.reshape(-1, d.type_size)[:, :2].copy().view(np.float16).astype(np.float32)
    if d.grid == GRID_NONLINEAR:  # nested levels: a parent is the mean of its two children
        cell = np.repeat((d16 * m * _max_drift(s, d)).reshape(derived.shape[0], -1), 32, axis=1)
    else:
        cell = np.repeat((d16 * m / 2.0 ** bits).reshape(derived.shape[0], -1), 32, axis=1)
    assert np.all(np.abs(lib.dequantize(fine, s) - lib.dequantize(derived, d)) <= cell * (1 + 1e-6))
    direct = np.mean((lib.dequantize(lib.quantize(x, d), d) - x) ** 2)
    assert np.mean((lib.dequantize(derived, d) - x) ** 2) <= 1.2 * direct
    with pytest.raises(ValueError, match="cannot be derived"):
        elastic.derive_blocks(derived, d, s)


@pytest.mark.unit
def test_no_derivation_crosses_grids():
    assert not elastic.can_derive(BY_NAME["sfmp475_k"], BY_NAME["sfmp375n_k"])
    assert not elastic.can_derive(BY_NAME["sfmp400n_k"], BY_NAME["sfmp375_k"])


@pytest.mark.unit
def test_pieces_cover_every_width():
    for bits in range(1, MAX_BITS + 1):
        assert sum(pieces(bits)) == bits
        assert list(pieces(bits)) == sorted(pieces(bits), reverse=True)


@pytest.mark.native
def test_fp16_conversion_rounds_like_numpy(lib):
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 5, 20000),
        np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e9, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001,
                  6.1e-5, 5.96e-8, np.inf, -np.inf]),
    ]).astype(np.float32)
    got = np.array([lib.lib.sfmp_fp32_to_fp16(float(v)) for v in values], dtype=np.uint16)
    with np.errstate(over="ignore"):
        assert np.array_equal(got, values.astype(np.float16).view(np.uint16))
    halves = np.arange(0, 2 ** 16, dtype=np.uint16)
    finite = ~np.isnan(halves.view(np.float16))
    back = np.array([lib.lib.sfmp_fp16_to_fp32(int(h)) for h in halves[finite]], dtype=np.float32)
    assert np.array_equal(back, halves[finite].view(np.float16).astype(np.float32))


def _activations(t: SfmpType, rng: np.random.Generator, n: int = ROW) -> np.ndarray:
    return activations.quantize_for(t, rng.standard_normal(n).astype(np.float32))


def _activation_values(y: np.ndarray, t: SfmpType) -> np.ndarray:
    """The activations' values as the dot product of type ``t`` sees them."""
    base = 256 if t.block_size == 256 else 32
    return activations.two_level_values(y, base) if t.fine_activations else activations.dequantize(y, base)


@pytest.mark.native
@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_dot_product_equals_float_dot_of_decoded_values(lib, t: SfmpType):
    """The scalar reference (sfmp_vec_dot_generic) against a float64 dot of the decoded weights and
    activations: equal to float32 rounding (relative 1e-5)."""
    seed = stable_seed("dot", t.name)
    rng = np.random.default_rng(seed)
    x = _weights("heavy_tailed", rng, rows=1).astype(np.float32)
    w = lib.quantize(x, t)
    y = _activations(t, rng)
    expected = float(np.dot(lib.dequantize(w, t)[0].astype(np.float64), _activation_values(y, t)))
    got = lib.vec_dot(w[0], y, t)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), f"seed {seed}"


def assert_simd_agrees(lib, w: np.ndarray, y: np.ndarray, t: SfmpType, seed: int | None = None) -> None:
    """The SIMD path (sfmp_cpu_vec_dot) returns exactly the scalar reference's result, except AVX2 on
    _s types, which sums the per-sub-block integers in float lanes as ggml's Q8_0 kernel does: there
    the difference may reach 64 * 2^-24 (about 4e-6) times the sum of |terms|."""
    simd, generic = lib.vec_dot(w, y, t, path="cpu"), lib.vec_dot(w, y, t)
    context = f"{t.name} on {lib.cpu_path}, seed {seed}: SIMD {simd!r}, generic {generic!r}"
    if t.block_size == 256 or lib.cpu_path != "avx2":
        assert simd == generic, context
        return
    terms = lib.dequantize(w[None], t)[0].astype(np.float64) * _activation_values(y, t)
    assert abs(simd - generic) <= 64 * 2.0 ** -24 * np.sum(np.abs(terms)) + 1e-30, context


@pytest.mark.native
def test_the_library_takes_the_hosts_simd_path(lib):
    """Behaviour, not a skip: on x86 with AVX2 the library runs its AVX2 dot products and interleaved
    kernel, on aarch64 its NEON ones; elsewhere it falls back to the scalar code."""
    if host.AVX2:
        assert (lib.cpu_path, lib.x8_path) == ("avx2", "avx2")
    elif host.AARCH64:
        assert lib.cpu_path.startswith("neon") and lib.x8_path.startswith("neon")
    else:
        assert lib.cpu_path == "generic"


@pytest.mark.native
@pytest.mark.skipif(not (host.AVX2 or host.AARCH64), reason="no SIMD path on this CPU (neither AVX2 nor aarch64)")
@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_simd_path_agrees_with_generic(lib, t: SfmpType):
    seed = stable_seed("simd", t.name)
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        w = lib.quantize(_weights(kind, rng, rows=1).astype(np.float32), t)[0]
        assert_simd_agrees(lib, w, _activations(t, rng), t, seed)
    # Arbitrary activation bytes too: the full int8 range, -128 included.
    y = _activations(t, rng)
    y_blocks = y.view(activations.Q8_K if t.block_size == 256 else activations.Q8_0)
    y_blocks["qs"] = rng.integers(-128, 128, size=y_blocks["qs"].shape)
    if t.block_size == 256:
        y_blocks["bsums"] = y_blocks["qs"].reshape(-1, 16, 16).astype(np.int32).sum(axis=2)
    assert_simd_agrees(lib, w, y, t, seed)


@pytest.mark.native
@pytest.mark.skipif(not host.AVX2, reason="2x2 tiles are the AVX2 kernels' (NEON registers one row per call)")
@pytest.mark.parametrize("t", [t for t in SFMP_TYPES if not t.fine_activations], ids=lambda t: t.name)
def test_two_by_two_tile_equals_four_single_dot_products(lib, t: SfmpType):
    """Prompt processing asks the AVX2 kernels for 2x2 tiles of the types with 8-bit activations;
    each entry must be exactly the single dot product."""
    assert lib.lib.sfmp_cpu_nrows(t.type_id) == 2
    seed = stable_seed("tile", t.name)
    rng = np.random.default_rng(seed)
    w = lib.quantize(_weights("heavy_tailed", rng, rows=2).astype(np.float32), t)
    y = np.stack([_activations(t, rng), _activations(t, rng)])
    single = np.array([[lib.vec_dot(w[r], y[c], t, path="cpu") for c in range(2)] for r in range(2)])
    assert np.array_equal(lib.vec_dot_tile(w, y, t), single), f"seed {seed}"


def _good_block(lib, t: SfmpType) -> np.ndarray:
    x = (np.random.default_rng(2).standard_normal((1, t.block_size)) * 0.02).astype(np.float32)
    return lib.quantize(x, t)[0].copy()


@pytest.mark.native
@pytest.mark.parametrize("t", [BY_NAME["sfmp425_k"], BY_NAME["sfmp450_s"], BY_NAME["sfmp800_k"]], ids=lambda t: t.name)
def test_validation_rejects_malformed_blocks_and_kernels_stay_safe(lib, t: SfmpType):
    good = _good_block(lib, t)
    assert lib.validate(good, t)
    sc = slice(t.sc_offset, t.base_offset)
    too_many, too_few = good.copy(), good.copy()
    too_many[sc] |= UPGRADE_FLAG  # more upgraded sub-blocks than the type's extra bits
    too_few[sc] &= 0x7F
    malformed = [too_many] + ([too_few] if t.upgrades else [])
    nan_scale, inf_scale = good.copy(), good.copy()
    nan_scale[:2] = np.frombuffer(np.float16(np.nan).tobytes(), dtype=np.uint8)
    inf_scale[:2] = np.frombuffer(np.float16(np.inf).tobytes(), dtype=np.uint8)
    y = _activations(t, np.random.default_rng(0), n=t.block_size)
    for block in malformed + [nan_scale, inf_scale]:
        assert not lib.validate(block, t)
        assert not lib.validate(np.concatenate([good, block]), t)
        assert lib.dequantize(block[None], t).shape == (1, t.block_size)
    for block in malformed:
        assert np.array_equal(lib.dequantize(block[None], t), dequantize_blocks(block[None], t))
        assert np.all(np.isfinite(lib.dequantize(block[None], t)))
        assert np.isfinite(lib.vec_dot(block, y, t))
        assert_simd_agrees(lib, block, y, t)
    assert not lib.validate(good[:-1], t)  # not a whole number of blocks


@pytest.fixture(scope="module", params=["avx2", "avx2-vnni", "avx-vnni"])
def x8_lib(request) -> kernels.Kernels:
    """The kernel library built for each x86 path of the interleaved kernel: plain AVX2, VNNI with
    AVX-512 (servers) and AVX-VNNI, its 256-bit VEX form (laptops). test_neon checks the NEON one
    under qemu."""
    if not host.AVX2:
        pytest.skip("this CPU cannot run AVX2 code")
    if request.param == "avx2":
        return kernels.load()
    if request.param == "avx2-vnni":
        if not host.AVX512_VNNI:
            pytest.skip("this CPU cannot run AVX512-VNNI code")
        return kernels.load(current_build().kernel_library_vnni)
    if not host.AVX_VNNI:
        pytest.skip("this CPU cannot run AVX-VNNI code")
    return kernels.load(current_build().kernel_library_avx_vnni)


def _interleaved_case(lib, t: SfmpType, rng: np.random.Generator, columns: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """24 weight rows of every kind with malformed upgrade flags among them, and ``columns``
    activation rows twice: as quantized, and with their values drawn over the whole range each type
    can take (two-level quantizers clamp to +-127, which plain AVX2's 8-bit codes and the int16 form
    rely on: sfmp-x8.c)."""
    w = np.concatenate([lib.quantize(_weights(kind, rng, rows=4).astype(np.float32), t) for kind in KINDS])
    flags = w.reshape(len(w), -1, t.type_size)[:, :, t.sc_offset:t.base_offset]
    flags[0] |= UPGRADE_FLAG  # more flagged sub-blocks than upgrades: the first ones count
    flags[1] &= 0x7F  # none flagged
    flags[2, :, ::3] &= 0x7F  # fewer flagged than upgrades: the planes of the rest move up
    y_normal = np.stack([_activations(t, rng) for _ in range(columns)])
    y_full = y_normal.copy()
    y_blocks = y_full.view(activations.Q8_K if t.block_size == 256 else activations.Q8_0)
    y_blocks["qs"] = rng.integers(-127 if t.fine_activations else -128, 128, size=y_blocks["qs"].shape)
    return w, y_normal, y_full


@pytest.mark.native
@pytest.mark.parametrize("t", SFMP_TYPES, ids=lambda t: t.name)
def test_interleaved_kernel_equals_the_scalar_reference_row_by_row(x8_lib, request, t: SfmpType):
    """The SFMP_X8 buffer type's kernel (8 rows per SIMD pass, 1 to 4 columns per decode) returns
    exactly what sfmp_vec_dot_generic returns for each row and column, malformed blocks and
    full-range activations included (+-127 for two-level activations, as their quantizers clamp),
    on each x86 path (plain AVX2, AVX512-VNNI, AVX-VNNI). Here it takes 8-bit activations; types with
    two-level ones take their hi level, as the buffer runs them under SFMP_ACTIVATIONS=8bit, against
    the reference with lo = 0 (both levels: the test below)."""
    lib = x8_lib
    assert lib.x8_path == request.node.callspec.params["x8_lib"]
    seed = stable_seed("interleaved", t.name)
    w, y_normal, y_full = _interleaved_case(lib, t, np.random.default_rng(seed), 6)  # a call of 4, then 2
    for y in (y_normal, y_full, y_full[:1]):
        kernel_y, reference_y = hi_only(y, t) if t.fine_activations else (y, y)
        expected = np.array([[lib.vec_dot(row, column, t) for row in w] for column in reference_y], dtype=np.float32)
        assert np.array_equal(lib.interleaved_mat_mul(w, kernel_y, t), expected), f"seed {seed}"


@pytest.mark.native
@pytest.mark.parametrize("t", [t for t in SFMP_TYPES if t.fine_activations], ids=lambda t: t.name)
def test_interleaved_kernel_on_two_level_activations_equals_the_scalar_reference(x8_lib, request, t: SfmpType):
    """Both levels of two-level activations in one pass (sfmp_x8_mul_mat_wide, as the buffer runs
    them by default): exactly sfmp_vec_dot_generic's result on the pairs, for 1 column (hi and lo as
    two byte columns), 2 and 9 (the levels as int16 256 hi + lo on x86: calls of 8 or 4, then the
    rest), with malformed blocks and both levels over their whole range +-127, on each x86 path."""
    lib = x8_lib
    assert lib.x8_path == request.node.callspec.params["x8_lib"]
    seed = stable_seed("interleaved-wide", t.name)
    rng = np.random.default_rng(seed)
    w, y_normal, y_full = _interleaved_case(lib, t, rng, 9)
    y_extreme = y_normal.copy()  # every value at a corner of the range: the largest sums
    qs = y_extreme.view(activations.Q8_K if t.block_size == 256 else activations.Q8_0)["qs"]
    qs[:] = rng.choice(np.array([-127, 127], dtype=np.int8), size=qs.shape)
    for y in (y_normal, y_full, y_extreme, y_full[:1], y_normal[:2]):
        expected = np.array([[lib.vec_dot(row, column, t) for row in w] for column in y], dtype=np.float32)
        assert np.array_equal(lib.interleaved_mat_mul(w, y, t, wide=True), expected), f"seed {seed}, {len(y)} columns"


@pytest.mark.native
@pytest.mark.parametrize("path", ["generic", "cpu"])
@pytest.mark.parametrize("block_size", [256, 64])
def test_two_level_activations_match_their_numpy_specification(lib, block_size: int, path: str):
    """The C reference and the CPU backend's SIMD twin (its from_float) both make the numpy
    specification's bytes."""
    t = next(t for t in SFMP_TYPES if t.fine_activations and t.block_size == block_size)
    seed = stable_seed("two-level", block_size)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(ROW), rng.standard_t(2, size=ROW) * 30.0, np.zeros(ROW),
              rng.standard_normal(ROW) * np.repeat(10.0 ** rng.uniform(-6, 3, size=ROW // 32), 32)]
    for x in inputs:
        x = x.astype(np.float32)
        assert np.array_equal(lib.two_level_activations(x, t, path), activations.quantize_two_level(x, block_size)), \
            f"seed {seed}"


@pytest.mark.native
@pytest.mark.parametrize("block_size", [256, 64])
def test_cpu_two_level_activations_equal_the_reference_on_non_finite_and_huge_values(lib, block_size: int):
    """Where numpy has no answer to compare with (NaN, infinities, values past float16 and int8):
    the SIMD twin writes the C reference's bytes."""
    t = next(t for t in SFMP_TYPES if t.fine_activations and t.block_size == block_size)
    rng = np.random.default_rng(stable_seed("two-level-special", block_size))
    x = rng.standard_normal(ROW).astype(np.float32)
    x[rng.integers(0, ROW, 40)] = np.nan
    x[rng.integers(0, ROW, 20)] = np.inf
    x[rng.integers(0, ROW, 20)] = -np.inf
    x[rng.integers(0, ROW, 20)] = np.float32(3e38)
    x[:32] = np.nan  # a whole sub-block of NaN
    x[64:96] = -0.0
    assert np.array_equal(lib.two_level_activations(x, t, "cpu"), lib.two_level_activations(x, t))


@pytest.mark.native
def test_sfmp_activations_8bit_leaves_the_residual_level_zero(lib, tmp_path):  # lib: the library is built
    """SFMP_ACTIVATIONS=8bit, which the C library reads once per process (so in a child): the same hi
    level, lo all zeros, as the numpy specification without the residual; a bad value stops the
    child with a one-line message naming the variable."""
    x = (np.random.default_rng(11).standard_t(3, size=ROW) * 4.0).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    child = ("import sys, numpy as np\n"
             "from sfmp_gguf import kernels\n"
             "from sfmp_gguf.format import BY_NAME\n"
             "x = np.load(sys.argv[1])\n"
             "np.save(sys.argv[3], kernels.load().two_level_activations(x, BY_NAME[sys.argv[2]], sys.argv[4]))\n")
    types = [next(t for t in SFMP_TYPES if t.fine_activations and t.block_size == bs) for bs in (256, 64)]
    for t in types:
        for path in ("generic", "cpu"):
            out = tmp_path / f"{t.name}-{path}.npy"
            args = [sys.executable, "-c", child, str(tmp_path / "x.npy"), t.name, str(out), path]
            subprocess.run(args, check=True, cwd=REPO, env={**os.environ, "SFMP_ACTIVATIONS": "8bit"})
            assert np.array_equal(np.load(out), activations.quantize_two_level(x, t.block_size, residual=False))
            assert not np.array_equal(np.load(out), activations.quantize_two_level(x, t.block_size))
    bad = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env={**os.environ, "SFMP_ACTIVATIONS": "8-bit"})
    assert bad.returncode != 0
    assert "sfmp: SFMP_ACTIVATIONS=8-bit: expected 8bit or two-level" in bad.stderr


@pytest.mark.native
@pytest.mark.parametrize("block_size", [256, 64])
def test_two_level_activations_err_over_a_hundred_times_less_than_8_bit_ones(lib, block_size: int):
    fine = next(t for t in SFMP_TYPES if t.fine_activations and t.block_size == block_size)
    coarse = next(t for t in SFMP_TYPES if not t.fine_activations and t.block_size == block_size)
    x = (np.random.default_rng(5).standard_t(3, size=4 * ROW)).astype(np.float32)
    one = _activation_values(activations.quantize_for(coarse, x), coarse)
    two = _activation_values(lib.two_level_activations(x, fine), fine)
    assert np.sqrt(np.mean((two - x) ** 2)) * 100 < np.sqrt(np.mean((one - x) ** 2))


@pytest.mark.native
def test_types_from_the_fine_activation_rate_take_two_level_activations_one_row_per_call(lib):
    from sfmp_gguf.format import FINE_ACTIVATION_MIN_BITS

    for t in SFMP_TYPES:
        assert t.fine_activations == (t.base_bits >= FINE_ACTIVATION_MIN_BITS)
        assert bool(lib.lib.sfmp_fine_activations(t.type_id)) == t.fine_activations
        assert lib.lib.sfmp_cpu_nrows(t.type_id) == (1 if t.fine_activations else 2)
        assert t.activation == (f"sfmp_{t.variant.activation.lower()}_x2" if t.fine_activations else t.variant.activation)
