"""The format table, its generated C view, and the gguf-py type registration."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter

from sfmp_gguf import codegen, gguf_types
from sfmp_gguf.format import (ACTIVATIONS, BY_NAME, GRID_NONLINEAR, GRID_UNIFORM, NL_LEVELS, NL_MAX_BITS, NL_UNIT, SFMP_TYPES, TYPE_COUNT,
                              UPSTREAM_TYPE_COUNT, VARIANT_S, fallback, types_for_row)
from sfmp_gguf.quant.reference import dequantize_blocks, quantize_blocks


def test_generated_c_table_is_current():
    assert codegen.TYPES_INC.read_text() == codegen.render_types_inc()


def test_family_covers_the_rate_ladder():
    for variant in ("k", "s"):
        rates = sorted(t.bpw for t in SFMP_TYPES if t.variant.suffix == variant)
        assert rates[0] <= 2.6 and rates[-1] >= 8.3  # "about 2.5 to 8.5 bpw"
        assert max(b - a for a, b in zip(rates, rates[1:])) <= 0.5
    ids = [t.type_id for t in SFMP_TYPES]
    assert min(ids) >= 100 > UPSTREAM_TYPE_COUNT and TYPE_COUNT == max(ids) + 1 + len(ACTIVATIONS)


def test_every_type_mixes_two_precisions_and_names_its_rate():
    for t in SFMP_TYPES:
        assert t.budget == t.n_sub * t.base_bits + t.upgrades and t.upgrades < t.n_sub
        assert t.type_size == t.extra_offset + 4 * t.upgrades
        tag = "n" if t.grid == GRID_NONLINEAR else ""
        assert t.name == f"sfmp{round(100 * (t.base_bits + t.upgrades / t.n_sub))}{tag}_{t.variant.suffix}"
    # every uniform 256-weight rung below 8 bits lets the quantizer choose which sub-blocks get the extra bit
    assert all(t.upgrades for t in SFMP_TYPES if t.block_size == 256 and t.base_bits < 8 and t.grid == GRID_UNIFORM)


def test_nonlinear_types_stay_within_their_tables():
    nonlinear = [t for t in SFMP_TYPES if t.grid == GRID_NONLINEAR]
    assert {t.variant.suffix for t in nonlinear} == {"k", "s"}
    for t in nonlinear:
        assert t.base_bits + (t.upgrades > 0) <= NL_MAX_BITS
        uniform_twin = BY_NAME.get(t.name.replace("n_", "_"))
        assert uniform_twin is None or uniform_twin.type_size == t.type_size  # same bytes, other grid
    for b, levels in NL_LEVELS.items():
        assert len(levels) == 1 << b and list(levels) == sorted(set(levels))
        assert all(-NL_UNIT < v < NL_UNIT for v in levels)  # biased by NL_UNIT they fit a signed byte
        if b > min(NL_LEVELS):  # nested: a parent is the mean of its two children, to rounding
            parents = (np.array(levels[0::2]) + np.array(levels[1::2])) / 2
            assert np.all(np.abs(parents - np.array(NL_LEVELS[b - 1])) <= 0.5)
    assert {t.base_bits for t in SFMP_TYPES} | {t.base_bits + 1 for t in SFMP_TYPES if t.upgrades} >= {2, 3, 4, 6, 8}


def test_each_256_weight_type_falls_back_to_a_64_weight_type_at_least_as_precise():
    for t in SFMP_TYPES:
        stand_in = fallback(t)
        if t.block_size == 64:
            assert stand_in is None
        else:
            assert stand_in.variant is VARIANT_S and t.average_bits <= stand_in.average_bits <= t.average_bits + 0.5
            assert stand_in.grid == t.grid


def test_every_row_length_multiple_of_64_gets_a_type():
    for n in (576, 640, 896, 960, 1536, 4096, 64):
        family = types_for_row(n)
        assert family and all(n % t.block_size == 0 for t in family)
    assert types_for_row(4096)[0].block_size == 256
    assert types_for_row(100) == ()


def test_gguf_package_writes_and_reads_sfmp_tensors(tmp_path):
    gguf_types.register()
    t = BY_NAME["sfmp350_s"]
    x = (np.random.default_rng(0).standard_normal((4, 576)) * 0.02).astype(np.float32)
    packed = quantize_blocks(x, t)
    path = tmp_path / "one.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("w", packed, raw_shape=packed.shape, raw_dtype=gguf_types.gguf_type(t))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = GGUFReader(path).tensors[0]
    assert int(tensor.tensor_type) == t.type_id
    assert list(tensor.shape) == [576, 4]
    assert GGML_QUANT_SIZES[GGMLQuantizationType(t.type_id)] == (64, t.type_size)
    assert np.array_equal(dequantize_blocks(np.asarray(tensor.data), t), dequantize_blocks(packed, t))
