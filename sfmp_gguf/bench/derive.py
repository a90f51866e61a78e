"""Derivation against direct conversion, on the demo model: time and KLD at equal size.

The teacher is converted once at SOURCE_BPW with the converter's default sensitivity; each smaller
size is then derived from that file (``sfmp_gguf.derive``, as ``convert/sfmp_derive.py`` runs it,
by each method) and converted directly from the model. A direct conversion's time is the whole command's work:
loading, importance and analysis (shared by the sizes here, so measured once and counted for
each) plus allocation and quantize+write at its size. Both files of a size are scored by
``llama-perplexity --kl-divergence`` against the teacher. Writes ``bench-results/derive.{md,json,png}``.

    python -m sfmp_gguf.bench.derive [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import cpu_name, grouped_bars, probe_main

SOURCE_BPW = 8.0
SIZES = (3.5, 4.5, 5.5)
METHODS = ("requantize", "cut")
KINDS = (*METHODS, "direct")


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()
    from gguf import GGUFReader

    from sfmp_gguf import derive, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import GRIDS
    from sfmp_gguf.permutation import default_kinds

    model, texts = teacher(), austen_texts()
    ctx, chunks = (128, 2) if smoke else (quality.CTX, quality.CHUNKS)
    sizes = (4.5,) if smoke else SIZES
    sensitivity = "weights" if smoke else None  # None: the converter's default
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, ctx, chunks, threads)
    seconds: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    scores: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-derive-") as tmp:
        folder = Path(tmp)
        log("analysis")
        start = time.monotonic()
        prepared = pipeline.prepare(model.hf_dir, sensitivity, None, None, threads,
                                    permute=default_kinds(min(sizes)))
        analysis_seconds = time.monotonic() - start
        source = folder / "source.gguf"
        pipeline.write(prepared, pipeline.plan(prepared, SOURCE_BPW, GRIDS), source, threads)
        for bpw in sizes:
            key = f"{bpw:g}"
            paths = {}
            for method in METHODS:
                log(f"{key} bpw: derived, {method}")
                paths[method] = folder / f"{method}-{key}.gguf"
                start = time.monotonic()
                derive.derive(derive.read_source(source), bpw, paths[method], method, threads)
                seconds[method][key] = time.monotonic() - start
            log(f"{key} bpw: direct")
            direct = folder / f"direct-{key}.gguf"
            start = time.monotonic()
            pipeline.write(prepared, pipeline.plan(prepared, bpw, GRIDS), direct, threads)
            seconds["direct"][key] = analysis_seconds + time.monotonic() - start
            paths["direct"] = direct
            for kind, path in paths.items():
                s = quality.score(path, base, texts.eval_text, key, kind, n_weights, ctx, chunks, threads)
                scores[kind][key] = {"kld": s.kld, "size": s.size, "bpw": s.bpw}
    setup = (f"Teacher SmolLM2-135M; source file {SOURCE_BPW:g} bpw, {prepared.sensitivity} sensitivity, the "
             f"converter's permutation default at the smallest size; direct conversion time includes its "
             f"{analysis_seconds:.0f} s of loading, importance and analysis; KLD by `llama-perplexity "
             f"--kl-divergence -c {ctx} --chunks {chunks}`; {date.today().isoformat()}, {cpu_name()}, "
             f"{threads} threads.")
    raw = {"setup": setup, "seconds": seconds, "scores": scores}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "derive.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> str:
    """derive.md and derive.png from derive.json; returns the table."""
    raw = json.loads((out_dir / "derive.json").read_text())
    seconds, scores = raw["seconds"], raw["scores"]
    sizes = list(seconds["direct"])
    table = ["| target bpw | method | size (MiB) | time (s) | direct's time / this | KLD | KLD / direct's |",
             "|---|---|---|---|---|---|---|"]
    for key in sizes:
        direct = scores["direct"][key]
        for kind in KINDS:
            own = scores[kind][key]
            table.append(f"| {key} | {kind} | {own['size'] / 2**20:.1f} | {seconds[kind][key]:.1f} | "
                         f"{seconds['direct'][key] / seconds[kind][key]:.1f}x | {own['kld']:.5f} | "
                         f"{own['kld'] / direct['kld']:.3f} |")
    text = "\n".join(table) + "\n"
    write_text(out_dir / "derive.md", "# Derivation against direct conversion\n\n" + raw["setup"] + "\n\n" + text +
               "\n![derived and direct](derive.png)\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    grouped_bars(left, sizes, {kind: [seconds[kind][k] for k in sizes] for kind in KINDS})
    left.set_yscale("log")
    left.set_ylabel("seconds")
    left.set_title("time to the file", fontsize=9)
    grouped_bars(right, sizes, {kind: [scores[kind][k]["kld"] for k in sizes] for kind in KINDS})
    right.set_yscale("log")
    right.set_ylabel("KLD to the F32 teacher")
    right.set_title("quality", fontsize=9)
    fig.suptitle("Derived from one file against converted from the model (demo model)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_dir / "derive.png")
    return text


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, run, "derive.md")


if __name__ == "__main__":
    sys.exit(main())
