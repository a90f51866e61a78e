"""The CUDA files the patch adds or changes compile with nvcc for sm_80 and sm_90 (no GPU needed)."""

from __future__ import annotations

import pytest

from sfmp_gguf.llama import cuda


@pytest.mark.unit
def test_changed_cuda_files_include_ours_and_the_hooks():
    files = cuda.changed_cuda_files()
    assert "ggml/src/ggml-cuda/sfmp-cuda.cu" in files
    assert {"ggml/src/ggml-cuda/convert.cu", "ggml/src/ggml-cuda/getrows.cu",
            "ggml/src/ggml-cuda/ggml-cuda.cu"} <= set(files)


@pytest.mark.gpu
def test_cuda_code_compiles_for_sm80_and_sm90(tmp_path):
    objects = cuda.compile_check((80, 90), out_dir=tmp_path)
    assert len(objects) == len(cuda.changed_cuda_files())
    for obj in objects:
        assert obj.stat().st_size > 0
        # Device code for both architectures is embedded in each object.
        data = obj.read_bytes()
        assert b"sm_80" in data and b"sm_90" in data
