"""The format table, its generated C view, and the gguf-py type registration."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter

from sfmp_gguf import gguf_types
from sfmp_gguf.format import (ACTIVATIONS, BY_NAME, FIRST_TYPE_ID, GRID_NONLINEAR, GRID_UNIFORM, LEGACY_TYPE_IDS, NL_LEVELS,
                              NL_MAX_BITS, NL_UNIT, SFMP_TYPES, TYPE_COUNT, VARIANT_S, code_offset, fallback, pieces,
                              type_for_file_id, types_for_row)
from sfmp_gguf.quant.reference import dequantize_blocks, quantize_blocks

pytestmark = pytest.mark.unit


# Type ids in use by public ggml forks (README, "Type ids"): the family must stay clear of all of them.
FORK_TYPE_IDS = {"ggml-org": range(0, 43), "ik_llama.cpp": (*range(97, 100), *range(133, 159), *range(202, 234),
                                                            *range(335, 354), *range(397, 400)),
                 "ROCmFPX": range(100, 111), "PrismML": range(142, 144)}


def test_type_ids_avoid_every_fork_and_map_older_files():
    ids = {t.type_id for t in SFMP_TYPES} | {a.type_id for a in ACTIVATIONS.values()}
    assert ids == set(range(FIRST_TYPE_ID, TYPE_COUNT))
    for fork, used in FORK_TYPE_IDS.items():
        assert not ids & set(used), fork
    for t in SFMP_TYPES:
        assert type_for_file_id(t.type_id, 4) is t
    # format 2 held the 26 uniform types at 100..125, format 3 appended the nonlinear ones up to 135
    assert [type_for_file_id(i, 2) for i in range(100, 126)] == [t for t in SFMP_TYPES if t.grid == GRID_UNIFORM]
    assert [type_for_file_id(i, 3) for i in range(100, 136)] == list(SFMP_TYPES)
    assert type_for_file_id(126, 2) is None and type_for_file_id(136, 3) is None
    assert type_for_file_id(100, 4) is None and type_for_file_id(FIRST_TYPE_ID, 3) is None
    assert set(LEGACY_TYPE_IDS) == {2, 3}


def test_pieces_tile_the_code_bytes():
    for t in SFMP_TYPES:
        widths = pieces(t.base_bits)
        assert sum(widths) == t.base_bits and t.piece_offsets[0] == t.base_offset == t.sc_offset + t.n_sub
        ends = [o + t.block_size * w // 8 for o, w in zip(t.piece_offsets, widths)]
        assert list(t.piece_offsets[1:]) + [t.extra_offset] == ends
        assert t.extra_offset == code_offset(t.block_size, t.n_sub, t.base_bits)


def test_family_covers_the_rate_ladder():
    for variant in ("k", "s"):
        rates = sorted(t.bpw for t in SFMP_TYPES if t.variant.suffix == variant)
        assert rates[0] <= 2.6 and rates[-1] >= 8.3  # "about 2.5 to 8.5 bpw"
        assert max(b - a for a, b in zip(rates, rates[1:])) <= 0.5


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
