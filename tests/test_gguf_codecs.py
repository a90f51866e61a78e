"""``import sfmp_gguf`` teaches gguf-py the SFMP codecs: a third-party reader dequantizes SFMP tensors
with ``gguf.quants.dequantize``, bit for bit as the C kernels do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.seeds import stable_seed

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.unit
@pytest.mark.parametrize("order", ["sfmp_gguf first", "gguf first"])
def test_import_sfmp_gguf_registers_the_codecs_in_either_order(order: str):
    imports = "import sfmp_gguf, gguf" if order == "sfmp_gguf first" else "import gguf, sfmp_gguf"
    out = _run(f"{imports}\nfrom sfmp_gguf.format import SFMP_TYPES\n"
               "print(all(gguf.GGMLQuantizationType(t.type_id) in gguf.quants._type_traits for t in SFMP_TYPES))")
    assert out == "True"


@pytest.mark.unit
def test_import_sfmp_gguf_alone_stays_light():
    out = _run("import sys, sfmp_gguf\nprint(sorted(m for m in ('numpy', 'gguf', 'sfmp_gguf.gguf_types') "
               "if m in sys.modules))")
    assert out == "[]"


def _sfmp_file(path: Path, quantize) -> Path:
    """One small tensor of every SFMP type, quantized by ``quantize(x, t)``, written by the converter's writer."""
    from sfmp_gguf.format import SFMP_TYPES
    from sfmp_gguf.gguf_io import OutputTensor, write_gguf

    rng = np.random.default_rng(7)
    data = {f"t{i}.{t.name}": quantize(rng.standard_normal((3, 2 * t.block_size)).astype(np.float32), t)
            for i, t in enumerate(SFMP_TYPES)}
    outputs = [OutputTensor(name, (3, 2 * t.block_size), t) for name, t in zip(data, SFMP_TYPES)]
    write_gguf(path, "llama", {}, outputs, lambda o: data[o.name])
    return path


@pytest.mark.unit
def test_gguf_quants_round_trip_through_the_numpy_reference(tmp_path):
    import gguf

    from sfmp_gguf.format import BY_NAME
    from sfmp_gguf.quant.reference import dequantize_blocks, quantize_blocks

    path = _sfmp_file(tmp_path / "all.gguf", quantize_blocks)
    tensors = gguf.GGUFReader(path).tensors
    assert len(tensors) == len(BY_NAME)
    for tensor in tensors:
        t = BY_NAME[tensor.name.split(".", 1)[1]]
        assert tensor.tensor_type == t.type_id
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert values.dtype == np.float32 and values.shape == (3, 2 * t.block_size)
        assert np.array_equal(values, dequantize_blocks(np.asarray(tensor.data), t))
        # quantize: what the converter would write without an importance matrix
        assert np.array_equal(gguf.quants.quantize(values, tensor.tensor_type), quantize_blocks(values, t))


@pytest.mark.native
def test_gguf_quants_dequantize_equals_the_c_kernels_exactly(tmp_path):
    import gguf

    from sfmp_gguf import kernels
    from sfmp_gguf.format import BY_NAME

    lib = kernels.load()
    path = _sfmp_file(tmp_path / "all.gguf", lib.quantize)
    tensors = gguf.GGUFReader(path).tensors
    assert len(tensors) == len(BY_NAME)
    for tensor in tensors:
        t = BY_NAME[tensor.name.split(".", 1)[1]]
        ours = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(ours, lib.dequantize(np.asarray(tensor.data), t)), t.name
        x = np.random.default_rng(stable_seed("codec", t.name)).standard_normal((2, t.block_size)).astype(np.float32)
        assert np.array_equal(gguf.quants.quantize(x, tensor.tensor_type), lib.quantize(x, t)), t.name
