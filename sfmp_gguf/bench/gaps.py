"""What two known quality gaps are worth: KLD on the demo model with Fisher, at three sizes.

- **Pricing.** The analysis prices a sub-block at its range amplitude; the quantizer searches the
  amplitude (and refits it) with its own weighting. This probe quantizes every tensor at every
  candidate type, measures the Fisher-weighted error the quantizer really leaves, and allocates on
  those prices instead: the allocation the analysis would give if it priced exactly.
- **Quantizer importance.** The converter gives the quantizer each column's mean Fisher. This probe
  gives it each row's own Fisher (one row at a time).

Both are compared with the converter's own path on the same Fisher, without channel permutation, so
that only the probed part differs. Writes ``bench-results/gaps.{md,json,png}``.

    python -m sfmp_gguf.bench.gaps [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import cpu_name, grouped_bars, probe_main

SIZES = (4.25, 6.5, 8.0)
PATHS = ("converter", "exact pricing", "per-row Fisher in the quantizer")


class RowImportance:
    """Per-weight Fisher as the quantizer's importance: quantize.quantize_tensor takes an importance
    with one row per weight row as one group per row, so each row gets its own."""

    def __init__(self, store, shapes: dict[str, tuple[int, ...]]):
        self.store, self.shapes = store, shapes

    def __getitem__(self, name: str) -> np.ndarray:
        from sfmp_gguf.analysis import matrix_shape

        return self.store[name].reshape(matrix_shape(self.shapes[name]))


def exact_prices(prepared, store, threads: int):
    """The profiles with each candidate's error as the quantizer leaves it (Fisher-weighted)."""
    from sfmp_gguf import kernels
    from sfmp_gguf.analysis import matrix_shape
    from sfmp_gguf.quantize import quantize_tensor

    lib = kernels.load()
    by_name = {t.name: t for t in prepared.source.tensors}
    out = []
    with ThreadPoolExecutor(threads) as pool:
        for p in prepared.profiles:
            shape = matrix_shape(prepared.shapes[p.name])
            w = by_name[p.name].load().reshape(shape).astype(np.float32)
            h = store[p.name].reshape(shape)
            errors = [float((h * (w - lib.dequantize(quantize_tensor(w, t, prepared.columns[p.name], pool), t)
                                  .reshape(shape)) ** 2).sum(dtype=np.float64)) for t in p.candidates]
            out.append(replace(p, errors=np.array(errors)))
    return out


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()
    from gguf import GGUFReader

    from sfmp_gguf import analysis, fisher, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import GRIDS
    from sfmp_gguf.model_source import open_model

    model, texts = teacher(), austen_texts()
    ctx, chunks = (128, 2) if smoke else (quality.CTX, quality.CHUNKS)
    sizes = (4.5,) if smoke else SIZES
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, ctx, chunks, threads)
    source = open_model(model.hf_dir)
    shapes = {t.name: t.shape for t in source.tensors if analysis.quantizable(t.name, t.shape)}
    results: dict[str, dict[str, float]] = {path: {} for path in PATHS}
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-gaps-") as tmp:
        log("Fisher")
        store = fisher.streamed_fisher(source, texts.calib_text, shapes, threads, scratch=Path(tmp))
        try:
            log("analysis")
            prepared = pipeline.analysed(source, shapes, "fisher", None, store, pipeline.Timer(), threads)
            log("exact prices")
            start = time.monotonic()
            exact = replace(prepared, profiles=exact_prices(prepared, store, threads))
            pricing_seconds = time.monotonic() - start
            ratios = np.concatenate([p.errors[q.errors > 0] / q.errors[q.errors > 0]
                                     for p, q in zip(prepared.profiles, exact.profiles)])
            per_row = replace(prepared, columns=RowImportance(store, shapes))
            out = Path(tmp) / "sfmp.gguf"
            for bpw in sizes:
                for path, which in zip(PATHS, (prepared, exact, per_row)):
                    log(f"{path} {bpw:g} bpw")
                    plan = pipeline.plan(which, bpw, GRIDS)
                    score = quality.write_and_score(which, plan, out, base, texts.eval_text, n_weights, ctx, chunks,
                                                    threads)
                    results[path][f"{bpw:g}"] = score.kld
                    out.unlink()
        finally:
            store.close()
    stamp = f"{date.today().isoformat()}, {cpu_name()}, {threads} threads"
    setup = (f"Teacher SmolLM2-135M, Fisher on the Austen calibration text, no channel permutation; KLD by "
             f"`llama-perplexity --kl-divergence -c {ctx} --chunks {chunks}` on the evaluation text; exact prices took "
             f"{pricing_seconds:.0f} s (the analysis: {prepared.timer.phases['analysis']:.0f} s); {stamp}.")
    raw = {"setup": setup, "kld": results,
           "price_ratio": {k: float(f(ratios)) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "gaps.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> str:
    """gaps.md and gaps.png from gaps.json; returns the table."""
    raw = json.loads((out_dir / "gaps.json").read_text())
    kld = raw["kld"]
    sizes = list(kld[PATHS[0]])
    table = ["| target bpw | " + " | ".join(f"KLD, {p}" for p in PATHS) + " | " +
             " | ".join(f"{p} / converter" for p in PATHS[1:]) + " |", "|---|" + "---|" * (2 * len(PATHS) - 1)]
    for size in sizes:
        table.append(f"| {size} | " + " | ".join(f"{kld[p][size]:.5f}" for p in PATHS) + " | " +
                     " | ".join(f"{kld[p][size] / kld[PATHS[0]][size]:.2f}" for p in PATHS[1:]) + " |")
    price = raw["price_ratio"]
    text = "\n".join(table) + "\n" + (
        f"\nThe analysis' price over the quantizer's real error, over every tensor and candidate type: median "
        f"{price['median']:.2f}, from {price['min']:.2f} to {price['max']:.2f}.\n")
    write_text(out_dir / "gaps.md", "# Known quality gaps: what closing them is worth\n\n" + raw["setup"] + "\n\n" +
               text + "\n![KLD by path](gaps.png)\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    grouped_bars(ax, sizes, {path: [kld[path][s] / kld[PATHS[0]][s] for s in sizes] for path in PATHS})
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylabel("KLD / KLD of the converter's path")
    ax.set_title("Known quality gaps on the demo model (Fisher)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_dir / "gaps.png")
    return text


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, run, "gaps.md")


if __name__ == "__main__":
    sys.exit(main())
