"""Channel permutations (permutation.py): the rule, bijections, and exactness through llama.cpp.

A permuted F32 file must give the same logits as the unpermuted one through llama-perplexity
(KLD <= 1e-6, the same top token everywhere), for each kind on the demo teacher and for all kinds on
tiny random models of every architecture in ``permutation.EXACT``, dense and mixture-of-experts. The
test permutations come from a random salience, so every permuted axis really moves.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from sfmp_gguf import permutation
from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.format import SUB_BLOCK
from tests.convert_helpers import write_dense, write_float_copy, write_moe, write_permuted_copy
from tests.seeds import stable_seed

KLD_LIMIT = 1e-6


# ---- the rule ----------------------------------------------------------------------------------


def _is_bijection(index: np.ndarray) -> bool:
    return all(np.array_equal(np.sort(row), np.arange(index.shape[-1])) for row in index.reshape(-1, index.shape[-1]))


@pytest.mark.unit
@pytest.mark.parametrize("n, block", [(1024, 256), (576, 64), (256, 256), (128, 256), (96, 64), (50, 64)])
def test_dealt_is_a_bijection_and_gives_every_block_one_sub_block_of_each_tier(n, block):
    seed = stable_seed("dealt", n, block)
    salience = np.random.default_rng(seed).random(n)
    order = permutation.dealt(salience, block)
    assert _is_bijection(order), f"seed {seed}"
    rank = np.empty(n, dtype=int)
    rank[np.argsort(-salience, kind="stable")] = np.arange(n)
    tiers = rank[order]  # each new position's salience rank
    if n % block or n < block:
        assert np.array_equal(tiers, np.arange(n)), f"seed {seed}"  # under a block (or ragged): sorted only
        return
    sub_tiers = (tiers // SUB_BLOCK).reshape(n // block, block // SUB_BLOCK, SUB_BLOCK)
    assert (sub_tiers == sub_tiers[..., :1]).all(), f"seed {seed}"  # a sub-block holds one tier
    n_blocks = n // block
    for slot in range(block // SUB_BLOCK):  # slot k of every block holds the k-th band of tiers
        assert sorted(sub_tiers[:, slot, 0]) == list(range(slot * n_blocks, (slot + 1) * n_blocks)), f"seed {seed}"


def _llama_like(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, layers=2, experts=0):
    shapes = {"token_embd.weight": (1000, n_embd), "output_norm.weight": (n_embd,), "output.weight": (1000, n_embd)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (n_embd,), p + "ffn_norm.weight": (n_embd,),
                       p + "attn_q.weight": (n_head * head_dim, n_embd), p + "attn_k.weight": (n_head_kv * head_dim, n_embd),
                       p + "attn_v.weight": (n_head_kv * head_dim, n_embd),
                       p + "attn_output.weight": (n_embd, n_head * head_dim)})
        if experts:
            shapes.update({p + "ffn_gate_inp.weight": (experts, n_embd),
                           p + "ffn_gate_exps.weight": (experts, n_ff, n_embd),
                           p + "ffn_up_exps.weight": (experts, n_ff, n_embd),
                           p + "ffn_down_exps.weight": (experts, n_embd, n_ff)})
        else:
            shapes.update({p + "ffn_gate.weight": (n_ff, n_embd), p + "ffn_up.weight": (n_ff, n_embd),
                           p + "ffn_down.weight": (n_embd, n_ff)})
    metadata = {"llama.embedding_length": n_embd, "llama.attention.head_count": n_head,
                "llama.attention.head_count_kv": n_head_kv}
    return shapes, metadata


def _random_salience(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return lambda name: None if "norm" in name or "gate_inp" in name else rng.random(shapes[name][:-2] + shapes[name][-1:])


@pytest.mark.unit
@pytest.mark.parametrize("experts", [0, 4])
def test_plan_moves_matching_axes_together_and_undoes_exactly(experts):
    shapes, metadata = _llama_like(experts=experts)
    perm = permutation.plan("llama", metadata, shapes, _random_salience(shapes))
    assert perm.kinds == permutation.KINDS and not perm.skipped
    axes = perm.axes
    residual = axes["token_embd.weight"].cols
    for name, shape in shapes.items():
        a = axes[name]  # every tensor here has a residual axis or is a feed-forward or value tensor
        for index in (a.rows, a.cols):
            assert index is None or _is_bijection(index)
        if shape[-1] == 256 and "attn_output" not in name and "ffn_down" not in name:
            assert np.array_equal(a.cols, residual), name
    ffn = "ffn_down_exps" if experts else "ffn_down"
    for i in range(2):
        down = axes[f"blk.{i}.{ffn}.weight"]
        assert np.array_equal(down.rows, residual)
        for member in ("gate", "up"):
            assert np.array_equal(axes[f"blk.{i}.ffn_{member}{'_exps' if experts else ''}.weight"].rows, down.cols)
        v, out = axes[f"blk.{i}.attn_v.weight"].rows, axes[f"blk.{i}.attn_output.weight"].cols
        for head in range(4):  # a query head's value channels move as its KV head's (2 query heads each)
            kv = head // 2
            assert np.array_equal(out[head * 64:(head + 1) * 64] - head * 64, v[kv * 64:(kv + 1) * 64] - kv * 64)
        assert axes[f"blk.{i}.attn_q.weight"].rows is None and axes[f"blk.{i}.attn_k.weight"].rows is None
    rng = np.random.default_rng(3)
    undo = perm.inverse()
    for name, shape in shapes.items():
        x = rng.random(shape)
        moved = perm.apply(name, x)
        assert np.array_equal(undo.apply(name, moved), x)
        if len(shape) >= 2:  # per-column importance follows the columns
            assert np.allclose(perm.apply_columns(name, x.sum(axis=-2)), moved.sum(axis=-2))


@pytest.mark.unit
def test_an_unproven_architecture_or_an_unknown_tensor_skips_the_kind_with_the_reason():
    shapes, metadata = _llama_like()
    perm = permutation.plan("phi3", {k.replace("llama", "phi3"): v for k, v in metadata.items()}, shapes,
                            _random_salience(shapes))
    assert perm.kinds == () and not perm.axes
    assert set(perm.skipped) == set(permutation.KINDS) and "phi3" in perm.skipped["residual"]
    shapes["blk.0.attn_sub_norm.weight"] = (256,)
    perm = permutation.plan("llama", metadata, shapes, _random_salience(shapes))
    assert perm.kinds == ("ffn", "heads") and "blk.0.attn_sub_norm.weight" in perm.skipped["residual"]
    assert "token_embd.weight" not in perm.axes


# ---- exactness through llama.cpp -----------------------------------------------------------------


def _kld(build, model, base_logits, *extra) -> tuple[float, float]:
    """(mean KLD, same-top-token share) of ``model`` against the saved logits (or saves them)."""
    cmd = [str(build.tool("llama-perplexity")), "-m", str(model), "-f", str(austen_texts().eval_text), "-c", "128",
           "--chunks", "3", "-t", "2", "--kl-divergence-base", str(base_logits), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    if not extra:
        return 0.0, 1.0
    log = run.stdout + run.stderr
    return (float(re.search(r"Mean\s+KLD:\s+([-\d.e]+)", log).group(1)),
            float(re.search(r"Same top p:\s*([-\d.e]+)", log).group(1)) / 100)


def _assert_exact(build, f32, permuted, folder):
    base = folder / "base.bin"
    _kld(build, f32, base)
    kld, top = _kld(build, permuted, base, "--kl-divergence")
    assert abs(kld) <= KLD_LIMIT and top == 1.0, (kld, top)


def _assert_recorded_bijections(record):
    saved = np.load(record)
    names = [k for k in saved.files if not k.endswith("|inverse")]
    assert names
    for key in names:
        index, undo = saved[key], saved[key + "|inverse"]
        assert _is_bijection(index)
        assert np.array_equal(np.take_along_axis(index, undo, axis=-1),
                              np.broadcast_to(np.arange(index.shape[-1]), index.shape))


@pytest.fixture(scope="module")
def teacher_base(build, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher-perm")
    base = folder / "base.bin"
    _kld(build, teacher().gguf_path, base)
    return folder, base


@pytest.mark.integration
@pytest.mark.parametrize("kinds", ["ffn", "heads", "residual", "ffn,heads,residual"])
def test_each_kind_keeps_the_teachers_logits(build, teacher_base, kinds):
    folder, base = teacher_base
    out, record = folder / f"{kinds}.gguf", folder / f"{kinds}.npz"
    write_permuted_copy(teacher().gguf_path, out, kinds, seed=len(kinds), record=record)
    _assert_recorded_bijections(record)
    kld, top = _kld(build, out, base, "--kl-divergence")
    assert abs(kld) <= KLD_LIMIT and top == 1.0, (kld, top)
    out.unlink()


@pytest.mark.integration
@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3_moe", "mixtral"])
def test_all_kinds_keep_the_logits_of_every_proven_architecture(build, tmp_path, family):
    model = (write_moe if family in ("qwen3_moe", "mixtral") else write_dense)(tmp_path / "hf", family)
    f32, out, record = tmp_path / "f32.gguf", tmp_path / "permuted.gguf", tmp_path / "record.npz"
    write_float_copy(model, f32)
    write_permuted_copy(model, out, "ffn,heads,residual", seed=7, record=record)
    _assert_recorded_bijections(record)
    _assert_exact(build, f32, out, tmp_path)


# ---- the converter ------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_converter_permutes_by_default_from_7_bpw_and_says_so(build, tmp_path):
    from gguf import GGUFReader

    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from tests.convert_helpers import run_convert

    outputs = {}
    for kinds, bpw in (("default", 4.5), ("all", 4.5), ("none", 4.5), ("default", 7.5), ("ffn,heads", 7.5)):
        out = tmp_path / f"{kinds}-{bpw}.gguf"
        result = run_convert(teacher().gguf_path, "--imatrix", teacher_imatrix(), "--bpw", bpw, "-o", out,
                             *(["--permute", kinds] if kinds != "default" else []))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[kinds, bpw] = (out, result.stdout)
    assert "channels not permuted" in outputs["default", 4.5][1]
    assert "channels permuted: ffn, heads, residual" in outputs["all", 4.5][1]
    assert "channels permuted: ffn, heads," in outputs["default", 7.5][1]
    recorded = {key: GGUFReader(out).fields["sfmp.permuted"].contents() for key, (out, _) in outputs.items()}
    assert recorded == {("default", 4.5): "none", ("all", 4.5): "ffn,heads,residual", ("none", 4.5): "none",
                        ("default", 7.5): "ffn,heads", ("ffn,heads", 7.5): "ffn,heads"}
    files = {key: out.read_bytes() for key, (out, _) in outputs.items()}
    assert files["default", 4.5] == files["none", 4.5] and files["default", 7.5] == files["ffn,heads", 7.5]
    assert len(set(files.values())) == 3
    weights = run_convert(teacher().gguf_path, "--sensitivity", "weights", "--bpw", 4.5, "--permute", "ffn",
                          "-o", tmp_path / "w.gguf")
    assert weights.returncode == 0 and "the weights alone give no salience" in weights.stdout
    bad = run_convert(teacher().gguf_path, "--permute", "ffn,rows", "-o", tmp_path / "bad.gguf")
    assert bad.returncode == 2 and "unknown kind 'rows'" in bad.stderr
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.native
@pytest.mark.parametrize("importance", ["none", "column", "weight", "expert"])
def test_upgraded_shares_count_the_importance_on_the_sub_blocks_with_the_largest_gains(importance):
    from concurrent.futures import ThreadPoolExecutor

    from sfmp_gguf import analysis, native_analysis

    rng = np.random.default_rng(5)
    w = (rng.standard_t(4, size=(8, 512)) * 0.02).astype(np.float32)
    h = {"none": None, "column": rng.random(512), "weight": rng.random((8, 512)),
         "expert": rng.random((2, 512))}[importance]
    with ThreadPoolExecutor(2) as pool:
        shares = native_analysis.upgraded_shares(w, h, pool)
    per_weight = np.ones_like(w) if h is None else np.repeat(h, 4, axis=0) if importance == "expert" else \
        np.broadcast_to(h, w.shape)
    errors = analysis.sub_block_errors(w, per_weight).reshape(8, 2, 8, -1)  # rows, blocks, sub-blocks
    h_sub = per_weight.reshape(8, 2, 8, 32).sum(axis=-1)
    for k, t in enumerate(analysis.types_for_row(512)):
        expected = 0.0
        if t.upgrades:
            base = analysis.COLUMNS.index((t.grid, t.base_bits))
            gain = errors[..., base] - errors[..., analysis.COLUMNS.index((t.grid, t.base_bits + 1))]
            for row in range(8):
                for block in range(2):
                    top = sorted(range(8), key=lambda j: -gain[row, block, j])[:t.upgrades]
                    expected += h_sub[row, block, top].sum()
        assert shares[k] == pytest.approx(expected / h_sub.sum(), rel=1e-6), t.name  # importance in float32
