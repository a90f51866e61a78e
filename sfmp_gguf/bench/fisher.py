"""Streamed Fisher against the whole-model Fisher: peak memory and time on synthetic Llama models
from 0.25B to 1B parameters, an extrapolation to Llama-3-8B, and on the demo teacher the per-weight
values and the KLD of the files they give at the quality bench's sizes.

Each Fisher run is its own process, so its peak RSS (getrusage) is that run's alone, with torch
loaded. The whole-model Fisher runs only where its measured ~17.6 bytes per parameter fit in 60% of
this machine's memory.

    python -m sfmp_gguf.bench.fisher [--samples 4] [--sizes 0.25B 0.25B-deep 0.5B 1B] [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.paths import REPO_ROOT

GIB = 2 ** 30
WHOLE_BYTES_PER_PARAM = 17.6  # measured on the 0.47B model before streaming (issue 14)
LOGIT_BUFFERS = 4  # per window: logits, their gradient, and the loss's log-softmax and its gradient


@dataclass(frozen=True)
class Run:
    size: str
    params: int
    block_bytes: int  # the largest decoder block's float32 weights
    mode: str  # streamed | whole
    seconds: float
    peak_rss: int


def child(mode: str, hf_dir: Path, samples: int, threads: int) -> dict:
    """One Fisher run in this process: its time and this process's peak RSS."""
    from sfmp_gguf import fisher
    from sfmp_gguf.importance import BUILTIN_TEXT

    windows = fisher.calibration_windows(hf_dir, BUILTIN_TEXT, samples, fisher.CTX)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-fisher-") as scratch:
        sums = (fisher.streamed_sums(hf_dir, windows, Path(scratch), threads) if mode == "streamed"
                else fisher.whole_model_sums(hf_dir, windows, threads))
        n = sum(int(values.numel()) for _, values in sums)
    return {"seconds": time.monotonic() - start, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "weights": n}


def measure(size: str, mode: str, samples: int, threads: int) -> Run:
    from sfmp_gguf.assets.synthetic import SIZES, synthetic_model

    hf_dir = synthetic_model(size)
    cmd = [sys.executable, "-m", "sfmp_gguf.bench.fisher", "--child", mode, str(hf_dir),
           "--samples", str(samples), "--threads", str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} Fisher on {size} failed: {result.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    shape = SIZES[size]
    return Run(size, shape.parameters(49152), shape.block_parameters() * 4, mode, figures["seconds"],
               figures["peak_rss"])


def fits_whole(params: int) -> bool:
    return params * WHOLE_BYTES_PER_PARAM <= 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def extrapolate(runs: list[Run], ctx: int) -> tuple[float, str]:
    """Peak RSS of the streamed Fisher on Llama-3-8B: a straight line through the measured peaks
    against the largest block's bytes, plus the per-window logit buffers of its larger vocabulary."""
    from sfmp_gguf.assets.synthetic import LLAMA3_8B, LLAMA3_VOCAB

    streamed = [r for r in runs if r.mode == "streamed" and not r.size.endswith("-deep")]
    x = np.array([r.block_bytes for r in streamed], dtype=float)
    y = np.array([r.peak_rss for r in streamed], dtype=float)
    slope, intercept = np.polyfit(x, y, 1) if len(streamed) > 1 else (3.0, y[0] - 3.0 * x[0])
    block = LLAMA3_8B.block_parameters() * 4
    vocab_extra = LOGIT_BUFFERS * ctx * (LLAMA3_VOCAB - 49152) * 4
    estimate = intercept + slope * block + vocab_extra
    how = (f"fit: peak = {intercept / GIB:.2f} GiB + {slope:.2f} x block; Llama-3-8B block {block / GIB:.2f} GiB, "
           f"plus {vocab_extra / GIB:.2f} GiB of logit buffers for its 128,256-token vocabulary")
    return estimate, how


def table(runs: list[Run]) -> str:
    lines = ["| model | parameters | largest block (f32) | Fisher | peak RSS | bound 3 x block + 1 GiB | time | "
             "time / whole-model |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    whole = {r.size: r for r in runs if r.mode == "whole"}
    for r in runs:
        bound = 3 * r.block_bytes + GIB
        ratio = f"{r.seconds / whole[r.size].seconds:.2f}" if r.mode == "streamed" and r.size in whole else ""
        lines.append(f"| {r.size} | {r.params / 1e9:.2f}B | {r.block_bytes / GIB:.2f} GiB | {r.mode} | "
                     f"{r.peak_rss / GIB:.2f} GiB | {bound / GIB:.2f} GiB | {r.seconds:.0f} s | {ratio} |")
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, marker in (("streamed", "o"), ("whole", "s")):
        pts = sorted((r.params / 1e9, r.peak_rss / GIB) for r in runs if r.mode == mode)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{mode} Fisher")
    pts = sorted((r.params / 1e9, (3 * r.block_bytes + GIB) / GIB) for r in runs if r.mode == "streamed")
    ax.plot(*zip(*pts), ls="--", color="grey", label="bound: 3 x block + 1 GiB")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title("Fisher's peak memory on synthetic Llama models")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def teacher_comparison(samples: int, threads: int, log) -> str:
    """Streamed against whole-model Fisher on the teacher: per-tensor agreement, and the KLD of the
    files each gives at the quality bench's sizes."""
    from scipy.stats import spearmanr

    from sfmp_gguf import fisher, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import GRIDS
    from sfmp_gguf.model_source import open_model

    hf_dir, text = teacher().hf_dir, austen_texts().calib_text
    source = open_model(hf_dir)
    shapes = {t.name: (t.shape[0], t.shape[1]) for t in source.tensors if len(t.shape) == 2}
    log("teacher: whole-model Fisher")
    whole = fisher.whole_model_fisher(source, text, shapes, threads, samples=samples)
    log("teacher: streamed Fisher")
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-fisher-") as scratch:
        store = fisher.streamed_fisher(source, text, shapes, threads, scratch=Path(scratch), samples=samples)
        worst_sum, worst_rank = 0.0, 1.0
        for name, b in whole.items():
            a = store[name]
            worst_sum = max(worst_sum, abs(float(a.sum()) - float(b.sum())) / float(b.sum()))
            pick = np.random.default_rng(0).choice(a.size, min(a.size, 200_000), replace=False)
            worst_rank = min(worst_rank, spearmanr(a.ravel()[pick], b.ravel()[pick]).statistic)
        preps = {mode: pipeline.analysed(source, shapes, "fisher", None, values, pipeline.Timer(), threads)
                 for mode, values in (("streamed", store), ("whole", whole))}
        store.close()
    eval_text = austen_texts().eval_text
    base = quality.teacher_logits(teacher().gguf_path, eval_text, quality.CTX, quality.CHUNKS, threads)
    n_weights = sum(t.n_elements for t in source.tensors)
    lines = [f"Per tensor, over {len(whole)} matrices ({samples} windows of {fisher.CTX} tokens of Emma): "
             f"largest relative difference of the sums {worst_sum:.1e}, smallest rank correlation {worst_rank:.6f}.",
             "", "| bpw | KLD whole-model | KLD streamed | streamed / whole |", "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-fisher-") as tmp:
        for bpw in quality.SFMP_BPW:
            kld = {}
            for mode, prepared in preps.items():
                log(f"teacher: {mode} at {bpw} bpw")
                kld[mode] = quality.write_and_score(prepared, pipeline.plan(prepared, bpw, GRIDS),
                                                    Path(tmp) / f"{mode}.gguf", base, eval_text, n_weights,
                                                    quality.CTX, quality.CHUNKS, threads).kld
            lines.append(f"| {bpw:g} | {kld['whole']:.5f} | {kld['streamed']:.5f} | "
                         f"{kld['streamed'] / kld['whole']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()  # before anything imports gguf: the teacher's converter classes need this copy
    from sfmp_gguf.assets.synthetic import SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("streamed", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("model", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=4, help="calibration windows of 512 tokens (default 4)")
    parser.add_argument("--teacher-samples", type=int, default=16)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-teacher", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.samples, args.threads)))
        return 0

    from tqdm import tqdm

    def log(message: str) -> None:
        tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)

    from sfmp_gguf.assets.synthetic import SIZES as shapes

    runs: list[Run] = []
    for size in tqdm(args.sizes, desc="models", unit="model", disable=None):
        for mode in ("streamed", "whole"):
            if mode == "whole" and not fits_whole(shapes[size].parameters(49152)):
                continue
            log(f"{size}: {mode} Fisher")
            runs.append(measure(size, mode, args.samples, args.threads))
            log(f"  {runs[-1].seconds:.0f} s, peak RSS {runs[-1].peak_rss / GIB:.2f} GiB")
    from sfmp_gguf.fisher import CTX

    estimate, how = extrapolate(runs, CTX)
    report = [
        "# Streamed Fisher: memory, time and agreement", "",
        f"`python -m sfmp_gguf.bench.fisher`, {args.threads} threads, {args.samples} calibration windows of "
        f"{CTX} tokens on synthetic Llama models (`sfmp_gguf/assets/synthetic.py`; the teacher's 49,152-token "
        f"vocabulary, untied head). Peak RSS is each run's own process, torch included.", "",
        table(runs), "",
        f"Extrapolated peak RSS of the streamed Fisher on Llama-3-8B: **{estimate / GIB:.1f} GiB** ({how}).",
    ]
    if not args.skip_teacher:
        report += ["", "## The demo teacher", "", teacher_comparison(args.teacher_samples, args.threads, log)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "fisher.md", "\n".join(report) + "\n")
    write_text(args.out / "fisher.json", json.dumps({"runs": [asdict(r) for r in runs], "llama3_8b_estimate": estimate},
                                                    indent=1) + "\n")
    plot(runs, args.out / "fisher.png")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
