"""Mixture-of-experts models: stacked expert tensors get SFMP types, per-expert importance, and run.

The models are tiny random Qwen3-MoE and Mixtral checkpoints made with transformers (nothing
downloaded), stored one matrix per expert as published checkpoints are.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sfmp_gguf import analysis, importance
from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.imatrix_io import EXPERT_PRIOR_TOKENS, load_imatrix
from sfmp_gguf.errors import InputError
from sfmp_gguf.format import BY_ID, BY_NAME
from sfmp_gguf.quantize import quantize_tensor
from tests.convert_helpers import EXPERTS, SHAPES, assert_one_line_error, run_convert, write_float_copy, write_moe

def tensor_types(path):
    """name -> (type id, numpy shape, bytes) of every tensor, read with the installed gguf-py."""
    from gguf import GGUFReader

    from sfmp_gguf import gguf_types

    gguf_types.register()
    return {t.name: (int(t.tensor_type), tuple(int(n) for n in reversed(t.shape.tolist())), int(t.n_bytes))
            for t in GGUFReader(path).tensors}


def llama_bpw(types) -> float:
    """Bits per weight over every tensor, as llama.cpp counts a model's size (tensor data only)."""
    return 8 * sum(b for _, _, b in types.values()) / sum(int(np.prod(s)) for _, s, _ in types.values())


@pytest.fixture(scope="module", params=sorted(EXPERTS))
def converted(request, tmp_path_factory):
    """(family, model folder, its F32 GGUF, the default conversion at 4.5 bpw)."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    model = write_moe(folder / "hf", family)
    f32 = folder / "f32.gguf"
    write_float_copy(model, f32)
    out = folder / "sfmp.gguf"
    result = run_convert(model, "--bpw", "4.5", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return family, model, f32, out, result


@pytest.mark.integration
def test_every_expert_tensor_gets_an_sfmp_type_and_the_file_lands_near_the_target(converted):
    family, _, _, out, result = converted
    assert "fisher sensitivity" in result.stdout
    types = tensor_types(out)
    experts = {name: v for name, v in types.items() if "_exps." in name}
    assert len(experts) == 3 * SHAPES["num_hidden_layers"]
    for name, (type_id, shape, _) in experts.items():
        assert type_id in BY_ID, name
        assert shape[0] == EXPERTS[family], name
    routers = [v[0] for name, v in types.items() if "ffn_gate_inp" in name]
    assert routers and set(routers) == {0}  # F32, as llama-quantize keeps them
    assert abs(llama_bpw(types) - 4.5) <= 0.3, llama_bpw(types)


@pytest.mark.integration
def test_llama_cli_generates_and_kld_is_no_worse_than_q4_k_m_of_the_same_size(build, converted):
    family, model, f32, _, _ = converted
    folder = f32.parent
    result = subprocess.run([str(build.tool("llama-cli")), "-m", str(f32.parent / "sfmp.gguf"), "-p", "Once upon",
                             "-n", "8", "--single-turn", "--temp", "0", "-t", "2", "-lv", "4"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"SFMP_X8 model buffer size = +[1-9]", result.stdout + result.stderr)

    q4 = folder / "q4_k_m.gguf"
    subprocess.run([str(build.tool("llama-quantize")), str(f32), str(q4), "Q4_K_M", "2"], check=True,
                   capture_output=True)
    stock = tensor_types(q4)
    quantized = [name for name in stock if analysis.quantizable(name, stock[name][1])]
    target = 8 * sum(stock[n][2] for n in quantized) / sum(int(np.prod(stock[n][1])) for n in quantized)
    same_size = folder / "sfmp-as-q4_k_m.gguf"
    converted = run_convert(model, "--bpw", f"{target:.3f}", "-o", same_size)
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert same_size.stat().st_size <= q4.stat().st_size * 1.005

    text, base = austen_texts().eval_text, folder / "base.bin"

    def kld(path, *extra) -> float:
        cmd = [str(build.tool("llama-perplexity")), "-m", str(path), "-f", str(text), "-c", "256", "--chunks", "6",
               "-t", "2", "--kl-divergence-base", str(base), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        found = re.search(r"Mean\s+KLD:\s+([-\d.e]+)", run.stdout + run.stderr)
        return float(found.group(1)) if found else float("nan")

    kld(f32)
    ours, theirs = kld(same_size, "--kl-divergence"), kld(q4, "--kl-divergence")
    assert np.isfinite(ours) and ours <= theirs, (family, ours, theirs)


def _imatrix_file(path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """An imatrix GGUF as llama-imatrix writes it: <name>.in_sum2 and <name>.counts per entry."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "imatrix")
    for name, (sums, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.unit
def test_an_imatrix_missing_some_experts_gives_the_pooled_fallback(tmp_path):
    n, experts = 64, 4
    rng = np.random.default_rng(0)
    per_token = rng.uniform(0.5, 2.0, (experts, n))
    counts = np.array([1000, 0, 3, 0])
    sums = per_token * counts[:, None]
    _imatrix_file(tmp_path / "imatrix.gguf", {"blk.0.ffn_up_exps.weight": (sums.ravel(), counts),
                                              "blk.0.ffn_down_exps.weight": (sums.ravel(), np.zeros(experts))})
    means = load_imatrix(tmp_path / "imatrix.gguf")
    up = means["blk.0.ffn_up_exps.weight"]
    pooled = sums.sum(axis=0) / counts.sum()
    assert up.shape == (experts, n) and np.isfinite(up).all()
    np.testing.assert_allclose(up[1], pooled, rtol=1e-5)  # no tokens: the pooled mean
    np.testing.assert_allclose(up[3], pooled, rtol=1e-5)
    weight = 1000 / (1000 + EXPERT_PRIOR_TOKENS)  # many tokens: mostly its own
    np.testing.assert_allclose(up[0], weight * per_token[0] + (1 - weight) * pooled, rtol=1e-5)
    assert np.abs(up[2] - pooled).max() < np.abs(per_token[2] - pooled).max()  # few tokens: pulled to the pool
    np.testing.assert_array_equal(means["blk.0.ffn_down_exps.weight"], 1.0)  # none at all: as llama-quantize


@pytest.mark.integration
def test_the_converter_takes_an_imatrix_with_silent_experts_and_rejects_a_misfit_one(tmp_path):
    model = write_moe(tmp_path / "hf", "qwen3_moe")
    experts, hidden, ffn = EXPERTS["qwen3_moe"], SHAPES["hidden_size"], 256
    counts = np.array([50, 0, 0, 7, 0, 0, 0, 120])
    entries = {}
    for i in range(SHAPES["num_hidden_layers"]):
        for name, n in (("ffn_gate_exps", hidden), ("ffn_up_exps", hidden), ("ffn_down_exps", ffn)):
            entries[f"blk.{i}.{name}.weight"] = (np.ones((experts, n)).ravel() * counts.repeat(n), counts)
    _imatrix_file(tmp_path / "imatrix.gguf", entries)
    out = tmp_path / "out.gguf"
    result = run_convert(model, "--bpw", "4.5", "--imatrix", tmp_path / "imatrix.gguf", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(t in BY_ID for name, (t, _, _) in tensor_types(out).items() if "_exps." in name)

    wrong = {"blk.0.ffn_up_exps.weight": (np.ones(3 * hidden), np.ones(3))}  # 3 experts, not 8
    _imatrix_file(tmp_path / "wrong.gguf", wrong)
    result = run_convert(model, "--bpw", "4.5", "--imatrix", tmp_path / "wrong.gguf", "-o", tmp_path / "w.gguf")
    assert_one_line_error(result, "wrong.gguf", "blk.0.ffn_up_exps.weight")


# ---- the pure parts ---------------------------------------------------------------------------------

@pytest.mark.unit
def test_stacked_experts_are_quantizable_and_routers_stay_f32():
    assert analysis.quantizable("blk.0.ffn_up_exps.weight", (8, 512, 256))
    assert analysis.matrix_shape((8, 512, 256)) == (4096, 256)
    assert not analysis.quantizable("blk.0.ffn_gate_inp.weight", (8, 256))
    assert analysis.quantizable("blk.0.ffn_up_shexp.weight", (512, 256))  # a shared expert is a matrix


@pytest.mark.native
def test_per_expert_importance_weighs_each_experts_rows_with_its_own_columns():
    rng = np.random.default_rng(1)
    experts, rows, n = 4, 16, 256
    w = rng.standard_t(4, (experts * rows, n)).astype(np.float32)
    h = rng.uniform(0.1, 3.0, (experts, n)).astype(np.float32)
    per_weight = np.repeat(h, rows, axis=0)
    np.testing.assert_allclose(analysis.sub_block_errors(w, h), analysis.sub_block_errors(w, per_weight), rtol=1e-6)
    assert analysis.weighted_energy(w, h) == pytest.approx(analysis.weighted_energy(w, per_weight), rel=1e-9)

    t = BY_NAME["sfmp425_k"]
    with ThreadPoolExecutor(2) as pool:
        stacked = quantize_tensor(w, t, h, pool)
        one_by_one = [quantize_tensor(w[e * rows:(e + 1) * rows], t, h[e], pool) for e in range(experts)]
    np.testing.assert_array_equal(stacked, np.concatenate(one_by_one))


@pytest.mark.unit
def test_silent_experts_take_the_column_mean_of_the_others_under_fisher():
    rng = np.random.default_rng(2)
    h = rng.uniform(0, 1, (4, 8, 32)).astype(np.float32)
    h[[1, 3]] = 0
    filled, silent = importance.fill_silent_experts(h)
    assert silent == 2
    np.testing.assert_allclose(filled[1], np.broadcast_to(h[[0, 2]].mean(axis=(0, 1)), (8, 32)), rtol=1e-6)
    np.testing.assert_array_equal(filled[0], h[0])
    assert importance.column_importance(filled).shape == (4, 32)
    assert importance.fill_silent_experts(np.zeros((4, 8, 32)))[1] == 0  # nothing to borrow from: left alone


@pytest.mark.unit
def test_match_imatrix_takes_per_expert_and_flat_legacy_entries_and_names_a_misfit():
    shapes = {"blk.0.ffn_up_exps.weight": (4, 64, 32), "blk.0.attn_q.weight": (32, 32)}
    per_expert = np.arange(4 * 32, dtype=np.float32).reshape(4, 32) + 1
    matched = importance.match_imatrix("m.dat", {"blk.0.ffn_up_exps.weight": per_expert.ravel()}, shapes)
    np.testing.assert_array_equal(matched["blk.0.ffn_up_exps.weight"], per_expert)
    assert matched["blk.0.attn_q.weight"].shape == (32,)
    with pytest.raises(InputError, match="blk.0.ffn_up_exps.weight.*4 x 32"):
        importance.match_imatrix("m.dat", {"blk.0.ffn_up_exps.weight": np.ones(3 * 32)}, shapes)
