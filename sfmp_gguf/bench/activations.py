"""What llama.cpp's activation rounding adds to an SFMP file's error, on the demo model.

llama.cpp multiplies quantized weights with activations it rounds first: to 8 bits for the types
below ``format.FINE_ACTIVATION_MIN_BITS``, to two levels (about 15 bits) from there. Each file here
is the converter's (imatrix, no permutation) at one size, scored as llama.cpp runs it, then with
``SFMP_ACTIVATIONS=8bit`` (8-bit activations for every type, as llama.cpp's own types take them);
then the same weights, dequantized into an F32 GGUF, whose matmuls take the activations unrounded.
The difference between the first and the last is the activations' share of the KLD. Writes
``bench-results/activations.{md,json,png}``.

    python -m sfmp_gguf.bench.activations [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import EIGHT_BIT_ACTIVATIONS, cpu_name, grouped_bars, probe_main

SIZES = (4.25, 5.5, 6.5, 8.0)
PATHS = ("as llama.cpp runs it", "with SFMP_ACTIVATIONS=8bit", "same weights, F32 matmuls")


def dequantized(prepared, plan, pool):
    """``prepared``'s source with every SFMP tensor of ``plan`` replaced by its quantized values."""
    from sfmp_gguf import kernels
    from sfmp_gguf.analysis import matrix_shape
    from sfmp_gguf.quantize import quantize_tensor

    lib = kernels.load()

    def read(t):
        w = t.read().reshape(t.shape).astype(np.float32)
        if t.name not in plan.types:
            return w
        kind = plan.types[t.name]
        matrix = w.reshape(matrix_shape(prepared.shapes[t.name]))
        return lib.dequantize(quantize_tensor(matrix, kind, prepared.columns[t.name], pool), kind).reshape(t.shape)

    return replace(prepared.source, tensors=tuple(replace(t, read=lambda t=t: read(t)) for t in prepared.source.tensors))


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()
    from gguf import GGUFReader

    from sfmp_gguf import pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import FINE_ACTIVATION_MIN_BITS, GRIDS

    model, texts = teacher(), austen_texts()
    ctx, chunks = (128, 2) if smoke else (quality.CTX, quality.CHUNKS)
    sizes = (8.0,) if smoke else SIZES
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, ctx, chunks, threads)
    log("analysis")
    prepared = pipeline.prepare(model.hf_dir, "imatrix", teacher_imatrix(), None, threads)
    results: dict[str, dict[str, float]] = {path: {} for path in PATHS}
    fine_share: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-activations-") as tmp, ThreadPoolExecutor(threads) as pool:
        out = Path(tmp) / "model.gguf"
        for bpw in sizes:
            plan = pipeline.plan(prepared, bpw, GRIDS)
            key = f"{bpw:g}"
            fine_share[key] = sum(p.n_weights for p in prepared.profiles if plan.types[p.name].fine_activations) / \
                prepared.n_quantized
            log(f"{bpw:g} bpw")
            results[PATHS[0]][key] = quality.write_and_score(prepared, plan, out, base, texts.eval_text, n_weights,
                                                             ctx, chunks, threads).kld
            results[PATHS[1]][key] = quality.score(out, base, texts.eval_text, "", "", n_weights, ctx, chunks,
                                                   threads, env=EIGHT_BIT_ACTIVATIONS).kld
            pipeline.write_float(dequantized(prepared, plan, pool), out)
            results[PATHS[2]][key] = quality.score(out, base, texts.eval_text, "", "", n_weights, ctx, chunks,
                                                   threads).kld
    setup = (f"Teacher SmolLM2-135M, imatrix, no channel permutation; two-level activations from base precision "
             f"{FINE_ACTIVATION_MIN_BITS}; KLD by `llama-perplexity --kl-divergence -c {ctx} --chunks {chunks}` on "
             f"the evaluation text; {date.today().isoformat()}, {cpu_name()}, {threads} threads.")
    raw = {"setup": setup, "kld": results, "fine_share": fine_share}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "activations.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> str:
    """activations.md and activations.png from activations.json; returns the table."""
    raw = json.loads((out_dir / "activations.json").read_text())
    kld, share = raw["kld"], raw["fine_share"]
    sizes = list(kld[PATHS[0]])
    table = ["| target bpw | weights with two-level activations | KLD, " + " | KLD, ".join(PATHS) +
             " | activations' share of the KLD |", "|---|---|---|---|---|---|"]
    for size in sizes:
        real, eight_bit, exact = (kld[path][size] for path in PATHS)
        table.append(f"| {size} | {share[size]:.0%} | {real:.5f} | {eight_bit:.5f} | {exact:.5f} | "
                     f"{max(real - exact, 0.0) / real:.0%} |")
    text = "\n".join(table) + "\n"
    write_text(out_dir / "activations.md", "# What the activations' rounding adds\n\n" + raw["setup"] + "\n\n" + text +
               "\n![KLD by path](activations.png)\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    grouped_bars(ax, sizes, {path: [kld[path][s] for s in sizes] for path in PATHS})
    ax.set_yscale("log")
    ax.set_ylabel("KLD to the F32 teacher")
    ax.set_title("SFMP files through llama.cpp and with F32 matmuls (demo model, imatrix)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_dir / "activations.png")
    return text


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, run, "activations.md")


if __name__ == "__main__":
    sys.exit(main())
