"""The demo teacher: llama.cpp's own converter reproduces it from hf/, and it is off the 4-bit grid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from sfmp_gguf.assets import teacher as teacher_mod
from sfmp_gguf.assets.cache import artifact_files
from sfmp_gguf.llama.source import llama_tree
from sfmp_gguf.assets.teacher import ARTIFACT, Teacher, block_steps, source_gguf, teacher

TOKENIZER_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.chat_template",
]


@pytest.fixture(scope="module")
def built() -> Teacher:
    return teacher()


@pytest.mark.integration
def test_layout(built: Teacher) -> None:
    assert built.gguf_path.is_file()
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json"]:
        assert (built.hf_dir / name).is_file(), name
    reader = GGUFReader(built.gguf_path)
    assert reader.fields["general.file_type"].contents() == 0
    assert all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)
    assert [t.name for t in reader.tensors] == [t.name for t in GGUFReader(source_gguf()).tensors]


@pytest.mark.integration
def test_convert_hf_to_gguf_round_trip(built: Teacher, tmp_path: Path) -> None:
    script = llama_tree() / "convert_hf_to_gguf.py"
    out = tmp_path / "converted.gguf"
    result = subprocess.run(
        [sys.executable, str(script), str(built.hf_dir), "--outtype", "f32", "--outfile", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ours, theirs = GGUFReader(built.gguf_path), GGUFReader(out)
    ours_t = {t.name: t for t in ours.tensors}
    theirs_t = {t.name: t for t in theirs.tensors}
    assert sorted(ours_t) == sorted(theirs_t)
    for name, t in ours_t.items():
        a, b = np.asarray(t.data), np.asarray(theirs_t[name].data)
        assert theirs_t[name].tensor_type == GGMLQuantizationType.F32, name
        assert a.shape == b.shape, name
        assert float(np.max(np.abs(a - b))) == 0.0, name

    # The tokenizer hash check must have recognised SmolLM's pre-tokenizer, not fallen back.
    for key in TOKENIZER_KEYS:
        assert theirs.fields[key].contents() == ours.fields[key].contents(), key
    assert theirs.fields["tokenizer.ggml.pre"].contents() == "smollm"
    out.unlink()  # 540 MB; pytest keeps old tmp dirs around


@pytest.mark.integration
def test_hf_folder_is_a_working_model(built: Teacher) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(built.hf_dir)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tok.decode(logits.argmax()) == " Paris"


@pytest.mark.integration
def test_within_half_step_and_off_grid(built: Teacher) -> None:
    source = GGUFReader(source_gguf())
    ours = {t.name: np.asarray(t.data) for t in GGUFReader(built.gguf_path).tensors}
    for t in source.tensors:
        x_t = ours[t.name]
        if t.tensor_type == GGMLQuantizationType.F32:
            assert np.array_equal(x_t, t.data), t.name
            continue
        x = dequantize(t.data, t.tensor_type)
        d = block_steps(t.data, t.tensor_type)
        assert np.all(np.abs(x_t - x) <= 0.5 * d + np.spacing(np.abs(x) + d)), t.name
        assert np.mean(x_t != x) > 0.99, t.name

    # Q4_1 re-quantization reproduces the source exactly, but not the teacher.
    t = next(t for t in source.tensors if t.name == "blk.0.attn_q.weight")
    x = dequantize(t.data, t.tensor_type)
    def roundtrip(w: np.ndarray) -> np.ndarray:
        return dequantize(quantize(w, GGMLQuantizationType.Q4_1), GGMLQuantizationType.Q4_1)

    assert np.array_equal(roundtrip(x), x)
    assert np.mean(roundtrip(ours[t.name]) != ours[t.name]) > 0.9


@pytest.mark.integration
def test_deterministic(built: Teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = artifact_files(ARTIFACT)
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    first = teacher()
    assert artifact_files(ARTIFACT) == expected
    shutil.rmtree(first.folder)
    second = teacher()
    assert artifact_files(ARTIFACT) == expected
    shutil.rmtree(second.folder)  # 1 GB; pytest keeps old tmp dirs around


@pytest.mark.unit
def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teacher_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="setup"):
        source_gguf()
