"""The format table, its generated C view, and the gguf-py type registration."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter

from sfmp_gguf import codegen, gguf_types
from sfmp_gguf.format import BY_NAME, SFMP_TYPES, TYPE_COUNT, UPSTREAM_TYPE_COUNT, types_for_row
from sfmp_gguf.quant.reference import dequantize_blocks, quantize_blocks


def test_generated_c_table_is_current():
    assert codegen.TYPES_INC.read_text() == codegen.render_types_inc()


def test_family_covers_the_rate_ladder():
    for variant in ("k", "s"):
        rates = sorted(t.bpw for t in SFMP_TYPES if t.variant.suffix == variant)
        assert rates[0] <= 2.5 and rates[-1] >= 8.3
        assert max(b - a for a, b in zip(rates, rates[1:])) <= 0.5
    ids = [t.type_id for t in SFMP_TYPES]
    assert min(ids) >= 100 > UPSTREAM_TYPE_COUNT and TYPE_COUNT == max(ids) + 1


def test_every_row_length_multiple_of_64_gets_a_type():
    for n in (576, 640, 896, 960, 1536, 4096, 64):
        family = types_for_row(n)
        assert family and all(n % t.block_size == 0 for t in family)
    assert types_for_row(4096)[0].block_size == 256
    assert types_for_row(100) == ()


def test_gguf_package_writes_and_reads_sfmp_tensors(tmp_path):
    gguf_types.register()
    t = BY_NAME["sfmp35_s"]
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
