"""Streamed Fisher (one decoder block in memory at a time) against the whole-model Fisher, its
specification: on tiny random models of every architecture family it promises, and on the teacher."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sfmp_gguf import fisher
from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.teacher import teacher

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
# Each family with what sets it apart switched on: sliding windows shorter than a window, softcaps,
# q/k norms, biases, fused projections, tied and untied heads.
FAMILIES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(sliding_window=24)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", dict(sliding_window=24, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    "gemma3": ("Gemma3TextConfig", dict(sliding_window=24, layer_types=["sliding_attention", "full_attention",
                                                                       "sliding_attention"])),
    "phi3": ("Phi3Config", dict(tie_word_embeddings=False, pad_token_id=0)),
    # mixtures of experts: one matrix per expert in the checkpoint, fused into one parameter in the model
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
}
CTX, SAMPLES = 64, 3


def tiny_model(folder, family: str, seed: int):
    config_class, extra = FAMILIES[family]
    tokenizer_dir = teacher().hf_dir
    config = getattr(transformers, config_class)(vocab_size=49152, **TINY, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # weights far from their init, so that the gradients are not all alike
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def assert_same_fisher(streamed: dict, whole: dict) -> None:
    from scipy.stats import spearmanr

    assert set(streamed) == set(whole)
    for name, b in whole.items():
        a = streamed[name]
        assert a.shape == b.shape, name
        assert abs(a.sum() - b.sum()) <= 1e-3 * b.sum(), name
        rho = spearmanr(a.ravel()[:200_000], b.ravel()[:200_000]).statistic
        assert rho >= 0.999, (name, rho)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_streamed_fisher_equals_whole_model_fisher(family, tmp_path):
    hf_dir = tiny_model(tmp_path / family, family, seed=sorted(FAMILIES).index(family))
    windows = fisher.calibration_windows(hf_dir, austen_texts().calib_text, SAMPLES, CTX)
    whole = {name: t.numpy() for name, t in fisher.whole_model_sums(hf_dir, windows, 2)}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    streamed = {name: t.numpy().copy() for name, t in fisher.streamed_sums(hf_dir, windows, scratch, 2)}
    assert_same_fisher(streamed, whole)
    assert list(scratch.iterdir()) == []  # every scratch file is removed once read


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # an untied and a tied head
def test_the_head_and_the_embedding_read_in_many_row_chunks_give_the_same_fisher(family, tmp_path, monkeypatch):
    monkeypatch.setattr(fisher, "CHUNK_BYTES", 1 << 20)  # 49152 rows of 64 floats: 12 chunks
    hf_dir = tiny_model(tmp_path / family, family, seed=1)
    windows = fisher.calibration_windows(hf_dir, austen_texts().calib_text, SAMPLES, CTX)
    whole = {name: t.numpy() for name, t in fisher.whole_model_sums(hf_dir, windows, 2)}
    streamed = {name: t.numpy().copy() for name, t in fisher.streamed_sums(hf_dir, windows, tmp_path, 2)}
    assert_same_fisher(streamed, whole)


def test_streamed_fisher_equals_whole_model_fisher_on_the_teacher(tmp_path):
    hf_dir = teacher().hf_dir
    windows = fisher.calibration_windows(hf_dir, austen_texts().calib_text, 2, fisher.CTX)
    whole = {name: t.numpy() for name, t in fisher.whole_model_sums(hf_dir, windows, 2)}
    streamed = {name: t.numpy().copy() for name, t in fisher.streamed_sums(hf_dir, windows, tmp_path, 2)}
    assert_same_fisher(streamed, whole)


def test_a_gguf_input_gets_the_same_fisher_as_its_hugging_face_folder(tmp_path):
    from sfmp_gguf.model_source import open_model

    gguf_source = open_model(teacher().gguf_path)
    view = fisher.hf_view(gguf_source, tmp_path)
    # the view maps each tensor back onto the GGUF's exactly (names, and llama's q/k row order)
    from safetensors import safe_open

    by_name = {t.name: t for t in gguf_source.tensors}
    for file in sorted(view.hf_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as part:
            for key in part.keys():
                [(gguf_name, values)] = view.to_gguf(key, part.get_tensor(key))
                assert np.array_equal(values, by_name[gguf_name].load()), key
    text = austen_texts().calib_text
    windows = fisher.calibration_windows(teacher().hf_dir, text, 2, fisher.CTX)
    assert all(bool((a == b).all()) for a, b in
               zip(windows, fisher.calibration_windows(view.hf_dir, text, 2, fisher.CTX)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    from_gguf = {n: t.numpy().copy() for n, t in fisher.streamed_sums(view.hf_dir, windows, scratch, 2)}
    from_hf = {n: t.numpy().copy() for n, t in fisher.streamed_sums(teacher().hf_dir, windows, scratch, 2)}
    assert_same_fisher(from_gguf, from_hf)


def test_the_view_of_an_f16_gguf_keeps_its_matrices_in_f16(tmp_path):
    """Temporary disk for Fisher on a GGUF input: the view holds each tensor in the GGUF's own type."""
    from safetensors import safe_open

    from sfmp_gguf.model_source import open_model
    from tests.convert_helpers import write_float_copy

    half = tmp_path / "teacher-f16.gguf"
    write_float_copy(teacher().gguf_path, half, half=True)
    source = open_model(half)
    view = fisher.hf_view(source, tmp_path)
    by_name = {t.name: t for t in source.tensors}
    stored = {}
    for file in sorted(view.hf_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as part:
            for key in part.keys():
                tensor = part.get_tensor(key)
                [(gguf_name, values)] = view.to_gguf(key, tensor.float())
                assert np.array_equal(values, by_name[gguf_name].load()), key
                stored[by_name[gguf_name].stored] = stored.get(by_name[gguf_name].stored, set()) | {tensor.dtype}
    assert stored == {"F16": {torch.float16}, "F32": {torch.float32}}


def test_a_synthetic_model_has_the_size_it_promises_and_loads_in_transformers(tmp_path):
    from sfmp_gguf.assets.synthetic import Shape, write_model

    shape = Shape(hidden=64, ffn=256, layers=2, heads=4, kv_heads=2)
    write_model(shape, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert sum(p.numel() for p in model.parameters()) == shape.parameters(model.config.vocab_size)
    weights = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    kurtosis = ((weights - weights.mean()) ** 4).mean() / weights.var() ** 2
    assert kurtosis > 4  # heavy tails (a Gaussian has 3)
