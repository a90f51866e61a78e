"""Experiment: is a fixed non-linear codebook better than SFMP's uniform mid-rise grid at 2, 3 and 4 bits?

Model: one 32-weight sub-block, a single real amplitude A (no 5-bit m / fp16 d rounding, for both),
imatrix weighting w = qw * sqrt(sigma2 + x^2) with sigma2 = 2 * mean(x^2) over the block (256 weights
on 1536-long rows as sfmpNN_k, 64 on 576-long rows as sfmpNN_s), exactly as reference.py.

Amplitude search, both grids alike (reference.py's): candidates A0 * (1 - 0.05 k), k < 12, where A0
puts max|x| on the outermost level, each also refit by weighted least squares for the codes it chose
(with the codes re-rounded); keep the smallest weighted squared error. A second, dense search
(1% shrink steps down to 0.30, plus refits) checks that the conclusion is not an artefact of the search.

(a) uniform mid-rise: levels (2q + 1 - 2^b) / 2^b (the uniform case is checked against
    reference._search_amplitudes, which must give identical errors)
(b) fixed codebooks normalized to max |c| = 1:
    4 bits: IQ4_NL {-127, ..., 113} / 127 (asymmetric; amplitude > 0 only, as SFMP's m is unsigned;
            a signed variant, which would cost a bit or a halved m range, is reported too)
    3 bits: Lloyd-Max for a Gaussian (+-0.2451, 0.7560, 1.3440, 2.1520) / 2.1520
    2 bits: Lloyd-Max for a Gaussian (+-0.4528, 1.5104) / 1.5104
(c) an upper-bound-ish reference: a symmetric codebook trained (weighted Lloyd, alternating with
    the amplitude search) on the even layers' sub-blocks and evaluated on the odd layers'.
(d) a nested (tree-structured) codebook, the form SFMP's elastic bit planes would need: the trained
    4-bit codebook; 3 and 2 bits as the means of sibling levels (dropping the last bit of a code
    lands on its parent); 5 bits as each 4-bit level split in two inside its cell (what an upgrade
    from a 4-bit base would add). Against the uniform grid at 2 to 5 bits.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

import numpy as np
from gguf import GGUFReader

from sfmp_gguf.assets.imatrix import teacher_imatrix
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.bench import DEFAULT_OUT
from sfmp_gguf.atomic import write_text
from sfmp_gguf.imatrix_io import load_imatrix
from sfmp_gguf.quant import reference

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ROWS_PER_TENSOR = 48
CHUNK = 4096
BITS = (2, 3, 4)

IQ4_NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], float) / 127.0
LM3 = np.array([0.2451, 0.7560, 1.3440, 2.1520]) / 2.1520
LM2 = np.array([0.4528, 1.5104]) / 1.5104
CODEBOOKS = {
    2: np.concatenate([-LM2[::-1], LM2]),
    3: np.concatenate([-LM3[::-1], LM3]),
    4: IQ4_NL,
}


def uniform_levels(bits: int) -> np.ndarray:
    half = 2 ** (bits - 1)
    q = np.arange(2 ** bits)
    return (2 * q + 1 - 2 ** bits) / (2 * half)  # in units of the amplitude; max = 1 - 1/2^bits


def search(x: np.ndarray, w: np.ndarray, levels: np.ndarray, shrink: np.ndarray) -> np.ndarray:
    """Best weighted squared error per sub-block for codebook ``levels`` (amplitude A: x ~ A * level)."""
    levels = np.sort(levels)
    mids = (levels[1:] + levels[:-1]) / 2
    out = np.empty(len(x))
    for s in range(0, len(x), CHUNK):
        xs, ws = x[s:s + CHUNK], w[s:s + CHUNK]
        amax = np.max(np.abs(xs), axis=1)
        # A0 puts the largest |x| on the outermost level of its own sign (matters for IQ4_NL,
        # whose positive end is 113/127, not 1)
        peak = np.take_along_axis(xs, np.argmax(np.abs(xs), axis=1)[:, None], axis=1)[:, 0]
        a0 = np.where(peak >= 0, amax / levels[-1], amax / -levels[0])
        a = a0[:, None] * shrink[None, :]                              # (n, C)
        safe = np.where(a > 0, a, 1.0)
        xc, wc = xs[:, None, :], ws[:, None, :]

        def err_of(amp):
            lv = levels[np.searchsorted(mids, xc / amp[..., None])]
            d = xc - amp[..., None] * lv
            return np.sum(wc * d * d, axis=-1), lv

        e0, lv = err_of(safe)
        num = np.sum(wc * xc * lv, axis=-1)
        den = np.sum(wc * lv * lv, axis=-1)
        ok = (num > 0) & (den > 0)
        refit = np.where(ok, num / np.where(den > 0, den, 1.0), 1.0)
        e1, _ = err_of(refit)
        e1 = np.where(ok, e1, np.inf)
        best = np.minimum(e0.min(axis=1), e1.min(axis=1))
        out[s:s + CHUNK] = np.where(amax == 0, 0.0, best)
    return out


def search_signed(x, w, levels, shrink):
    return np.minimum(search(x, w, levels, shrink), search(x, w, -levels, shrink))


REF_SHRINK = 1.0 - reference.SHRINK_STEP * np.arange(reference.N_CANDIDATES)
DENSE_SHRINK = np.arange(1.0, 0.299, -0.01)


def sub_blocks(tensor: np.ndarray, qw: np.ndarray, rows: np.ndarray):
    """(x, w) of 32-weight sub-blocks of the chosen rows, weighted as reference.quantize_blocks."""
    n = tensor.shape[1]
    block = 256 if n % 256 == 0 else 64
    x = tensor[rows].astype(np.float64).reshape(-1, block)
    q = np.tile(qw.astype(np.float32).reshape(-1, block), (len(rows), 1)).astype(np.float64)
    sigma2 = 2.0 * np.sum(x * x, axis=1, keepdims=True) / block
    w = q * np.sqrt(sigma2 + x * x)
    return x.reshape(-1, 32), w.reshape(-1, 32)


def train_codebook(x, w, bits, iters=12):
    """Weighted Lloyd with amplitude search; symmetric (the codebook is mirrored), max |c| = 1."""
    levels = CODEBOOKS[bits] if bits < 4 else np.concatenate([-LM4[::-1], LM4])
    for _ in range(iters):
        levels = np.sort(levels)
        mids = (levels[1:] + levels[:-1]) / 2
        # per sub-block best amplitude (reference search), then weighted centroids of x / A
        amax = np.max(np.abs(x), axis=1)
        best_e = np.full(len(x), np.inf)
        best_a = np.ones(len(x))
        for sh in REF_SHRINK:
            a = np.where(amax > 0, amax * sh, 1.0)
            lv = levels[np.searchsorted(mids, x / a[:, None])]
            e = np.sum(w * (x - a[:, None] * lv) ** 2, axis=1)
            better = e < best_e
            best_e, best_a = np.where(better, e, best_e), np.where(better, a, best_a)
        y = x / best_a[:, None]
        ww = w * best_a[:, None] ** 2
        idx = np.searchsorted(mids, y)
        new = np.array([np.sum(ww[idx == k] * y[idx == k]) / max(np.sum(ww[idx == k]), 1e-300)
                        for k in range(len(levels))])
        new = (new - new[::-1]) / 2           # symmetrize
        levels = new / np.max(np.abs(new))
    return np.sort(levels)


def nested_codebooks(four_bit: np.ndarray) -> dict[int, np.ndarray]:
    """Tree-structured codebooks around a sorted 4-bit one: parents are the means of sibling pairs
    (codes 2q and 2q + 1); a 5-bit child sits at the middle of its half of the parent's cell."""
    books = {4: np.sort(four_bit)}
    for bits in (3, 2):
        child = books[bits + 1]
        books[bits] = (child[0::2] + child[1::2]) / 2
    levels = books[4]
    edges = np.concatenate([[levels[0] - (levels[1] - levels[0]) / 2], (levels[1:] + levels[:-1]) / 2,
                            [levels[-1] + (levels[-1] - levels[-2]) / 2]])
    books[5] = np.sort(np.concatenate([(edges[:-1] + levels) / 2, (levels + edges[1:]) / 2]))
    return books


# Lloyd-Max Gaussian 4-bit positive half (for the trained codebook's start only)
LM4 = np.array([0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326]) / 2.7326


def main() -> int:
    """Run the experiment; its tables go to stdout and to bench-results/grid.md."""
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        experiment()
    DEFAULT_OUT.mkdir(parents=True, exist_ok=True)
    write_text(DEFAULT_OUT / "grid.md", "# Non-uniform vs uniform grid at 2, 3 and 4 bits\n\n```\n"
                + report.getvalue() + "```\n")
    print(report.getvalue())
    return 0


def experiment() -> None:
    t0 = time.time()
    imatrix = load_imatrix(teacher_imatrix())
    reader = GGUFReader(teacher().gguf_path)
    rng = np.random.default_rng(2025)
    data = {k: {"train": [], "test": []} for k in KINDS}
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in KINDS:
            continue
        arr = np.asarray(t.data, dtype=np.float32)
        rows = rng.choice(arr.shape[0], size=ROWS_PER_TENSOR, replace=False)
        split = "train" if int(parts[1]) % 2 == 0 else "test"
        data[parts[2]][split].append(sub_blocks(arr, imatrix[t.name], rows))
    for k in KINDS:
        for split in ("train", "test"):
            xs, ws = zip(*data[k][split])
            data[k][split] = (np.concatenate(xs), np.concatenate(ws))
    print(f"data: {time.time() - t0:.0f}s; sub-blocks per kind (test): "
          + ", ".join(f"{k}={len(data[k]['test'][0])}" for k in KINDS))

    # sanity: the uniform search here equals reference._search_amplitudes
    x, w = data["attn_q"]["test"]
    _, ref_err = reference._search_amplitudes(x[:512, None, :], w[:512, None, :],
                                              tuple(reference.GridLevels(False, b) for b in BITS))
    for b in BITS:
        mine = search(x[:512], w[:512], uniform_levels(b), REF_SHRINK)
        assert np.allclose(mine, ref_err[:, 0, b - 2], rtol=1e-9, atol=0), b
    print("uniform search matches reference._search_amplitudes")

    trained = {}
    for b in BITS:
        xs = np.concatenate([data[k]["train"][0] for k in KINDS])
        ws = np.concatenate([data[k]["train"][1] for k in KINDS])
        pick = rng.choice(len(xs), size=min(len(xs), 60000), replace=False)
        trained[b] = train_codebook(xs[pick], ws[pick], b)
        print(f"trained {b}-bit codebook (positive half): {np.round(trained[b][trained[b] > 0], 4).tolist()}")

    rows = []
    for k in KINDS:
        x, w = data[k]["test"]
        for b in BITS:
            for search_name, shrink in (("ref", REF_SHRINK), ("dense", DENSE_SHRINK)):
                eu = search(x, w, uniform_levels(b), shrink)
                en = search(x, w, CODEBOOKS[b], shrink)
                es = search_signed(x, w, CODEBOOKS[b], shrink) if b == 4 else en
                et = search(x, w, trained[b], shrink)
                valid = eu > 0
                r = en[valid] / eu[valid]
                rows.append(dict(kind=k, bits=b, search=search_name, n=int(valid.sum()),
                                 Eu=eu.sum(), En=en.sum(), Es=es.sum(), Et=et.sum(),
                                 sum_ratio=en.sum() / eu.sum(), mean_ratio=r.mean(),
                                 geo_ratio=np.exp(np.log(r).mean()), win=(r < 1).mean(),
                                 signed=es.sum() / eu.sum(), trained=et.sum() / eu.sum()))
        print(f"{k}: done ({time.time() - t0:.0f}s)", flush=True)

    classes = {"rows of 576 (attn_q/k/v/output, ffn_gate/up)": KINDS[:6], "rows of 1536 (ffn_down)": KINDS[6:]}
    nested = nested_codebooks(trained[4])
    print("\n## nested (tree-structured) codebook from the trained 4-bit one, amplitude search: ref")
    print("| class | bits | Σ E_nested / Σ E_uni |")
    print("|---|---|---|")
    for cname, kinds in classes.items():
        for b in (2, 3, 4, 5):
            en = eu = 0.0
            for k in kinds:
                x, w = data[k]["test"]
                eu += search(x, w, uniform_levels(b), REF_SHRINK).sum()
                en += search(x, w, nested[b], REF_SHRINK).sum()
            print(f"| {cname} | {b} | {en / eu:.3f} |")
    for search_name in ("ref", "dense"):
        print(f"\n## per class, amplitude search: {search_name}")
        print("| class | bits | mean(E_NL/E_uni) | geomean | Σ E_NL / Σ E_uni | NL wins | signed IQ4_NL | trained sym. |")
        print("|---|---|---|---|---|---|---|---|")
        for cname, kinds in classes.items():
            for b in BITS:
                sel = [r for r in rows if r["search"] == search_name and r["bits"] == b and r["kind"] in kinds]
                n = np.array([r["n"] for r in sel], float)
                avg = lambda key: float(np.sum(n * [r[key] for r in sel]) / n.sum())
                geo = float(np.exp(np.sum(n * np.log([r["geo_ratio"] for r in sel])) / n.sum()))
                tot = lambda key: float(np.sum([r[key] for r in sel]) / np.sum([r["Eu"] for r in sel]))
                print(f"| {cname} | {b} | {avg('mean_ratio'):.3f} | {geo:.3f} | {tot('En'):.3f} | "
                      f"{100 * avg('win'):.0f}% | {tot('Es'):.3f} | {tot('Et'):.3f} |")
    for search_name in ("ref", "dense"):
        print(f"\n## amplitude search: {search_name}")
        print("| kind | bits | Σ E_NL / Σ E_uni | mean(E_NL/E_uni) | geomean | NL wins | signed NL (4b) | trained sym. |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["search"] != search_name:
                continue
            print(f"| {r['kind']} | {r['bits']} | {r['sum_ratio']:.3f} | {r['mean_ratio']:.3f} | "
                  f"{r['geo_ratio']:.3f} | {100 * r['win']:.0f}% | "
                  f"{r['signed']:.3f} | {r['trained']:.3f} |")
        print("\nall kinds pooled (Σ over kinds of per-kind sums is not meaningful across kinds; mean of per-kind Σ-ratios):")
        for b in BITS:
            sel = [r for r in rows if r["search"] == search_name and r["bits"] == b]
            print(f"  {b} bits: Σ-ratio {np.mean([r['sum_ratio'] for r in sel]):.3f}, "
                  f"mean ratio {np.mean([r['mean_ratio'] for r in sel]):.3f}, "
                  f"signed {np.mean([r['signed'] for r in sel]):.3f}, trained {np.mean([r['trained'] for r in sel]):.3f}")


if __name__ == "__main__":
    sys.exit(main())
