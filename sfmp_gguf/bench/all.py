"""Every benchmark in one run: quality (KLD), speed, kernel throughput and conversion cost.

``python -m sfmp_gguf.bench.all`` writes ``bench-results/{quality,speed,kernels,conversion}.md``
with their plots, and rewrites the generated block of README.md between its ``bench:begin`` and
``bench:end`` markers (only when writing to the default folder). ``--smoke --out DIR`` runs every part on
tiny settings and leaves README.md alone; ``--render --out DIR`` redraws another run's results.
Stock quantizations are cached (``~/.cache/sfmp-gguf/bench``); on the 2-core machine the full run
takes about an hour.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from sfmp_gguf.bench import DEFAULT_OUT, add_output_args, cpu_name, output_dir
from sfmp_gguf.model_source import use_pinned_gguf_py
from sfmp_gguf.paths import CONVERTER, REPO_ROOT

README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
KERNEL_SHAPE = "m=4096,n=1,k=14336"


# Run through a small wrapper: a child forked straight from this (large) process would report our
# own resident set as its peak, since the high-water mark survives fork.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True).stdout
    code, rss_kib = map(int, out.split())
    if code != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {code})")
    return time.monotonic() - start, rss_kib * 1024


def kernel_table(types: list[str]) -> str:
    from sfmp_gguf.llama.build import current_build

    pattern = "|".join(types)
    cmd = [str(current_build().tool("test-backend-ops")), "perf", "-o", "MUL_MAT", "-b", "CPU",
           "-p", f"type_a=({pattern}),type_b=f32,{KERNEL_SHAPE}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rows = re.findall(r"MUL_MAT\(type_a=(\w+),.*?([\d.]+) us/run.*?([\d.]+) GFLOPS", out)
    if not rows:
        raise RuntimeError("test-backend-ops printed no MUL_MAT timings")
    lines = [f"`test-backend-ops perf -o MUL_MAT -b CPU`, {KERNEL_SHAPE} (a token-generation mat-vec; "
             "the CPU backend's default thread count)", "",
             "| type | us/run | GFLOPS |", "|---|---|---|"]
    for name, us, gflops in sorted(rows, key=lambda r: float(r[1])):
        lines.append(f"| {name} | {float(us):.0f} | {float(gflops):.1f} |")
    return "\n".join(lines) + "\n"


def conversion_table(hf_dir: Path, f32: Path, imatrix: Path, threads: int, timings: dict[str, dict[str, float]]) -> str:
    from sfmp_gguf.bench.allocation import llama3_8b_shapes, synthetic_profiles
    from sfmp_gguf.allocation import allocate
    from sfmp_gguf.llama.build import current_build

    lines = ["| run | wall (s) | peak RSS (MiB) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="sfmp-cost-") as tmp:
        convert = [sys.executable, str(CONVERTER)]
        runs = {
            "sfmp_to_gguf, HF folder, --imatrix, 4.5 bpw": convert + [str(hf_dir), "-o", f"{tmp}/a.gguf", "--bpw", "4.5",
                                                                      "--imatrix", str(imatrix), "--threads", str(threads)],
            "sfmp_to_gguf, F32 GGUF, --imatrix, 4.5 bpw": convert + [str(f32), "-o", f"{tmp}/b.gguf", "--bpw", "4.5",
                                                                     "--imatrix", str(imatrix), "--threads", str(threads)],
            "llama-quantize --imatrix Q4_K_M, F32 GGUF": [str(current_build().tool("llama-quantize")), "--imatrix",
                                                          str(imatrix), str(f32), f"{tmp}/c.gguf", "Q4_K_M", str(threads)],
        }
        for label, cmd in runs.items():
            wall, rss = run_measured(cmd)
            lines.append(f"| {label} | {wall:.1f} | {rss / 2**20:.0f} |")
    lines += ["", "Converter phases on the teacher HF folder, per sensitivity (seconds; allocation and "
              "quantize+write per output size):", "", "| sensitivity | " + " | ".join(next(iter(timings.values()))) + " |",
              "|---|" + "---|" * len(next(iter(timings.values())))]
    for sensitivity, phases in timings.items():
        lines.append(f"| {sensitivity} | " + " | ".join(f"{v:.2f}" for v in phases.values()) + " |")
    profiles = synthetic_profiles(llama3_8b_shapes())
    start = time.perf_counter()
    allocate(profiles, 4.5)
    lines += ["", f"Allocation on a synthetic Llama-3-8B inventory ({len(profiles)} tensors, "
              f"{sum(p.n_weights for p in profiles) / 1e9:.2f}B weights): {1000 * (time.perf_counter() - start):.1f} ms."]
    return "\n".join(lines) + "\n"


def readme_block(scores: list, out_dir: Path) -> str:
    from sfmp_gguf.bench import quality

    run = json.loads((out_dir / "run.json").read_text())
    tables = ", ".join(f"`bench-results/{name}`" for name in ("quality.md", "speed.md", "kernels.md", "conversion.md")
                       if (out_dir / name).is_file())
    return (f"Generated by `{run.get('command', 'python -m sfmp_gguf.bench.all')}` on {run['stamp']} in "
            f"{run['minutes']:.0f} minutes. Full tables: {tables}.\n\n"
            "![KLD against size](bench-results/quality.png)\n\n" + quality.target_table(scores) +
            ("\nThe nonlinear grid at equal size (the allocator picks a grid per tensor; the ratio is KLD with both "
             "grids over KLD with the uniform grid alone):\n\n" + quality.grid_table(scores)
             if any(s.family.endswith(" uniform grid") for s in scores) else "") + "\n")


def update_readme(block: str) -> None:
    from sfmp_gguf.atomic import write_text

    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{README}: no {BEGIN} ... {END} block to update")
    head, rest = text.split(BEGIN, 1)
    write_text(README, head + BEGIN + "\n" + block + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "tiny settings, seconds to minutes; needs --out")
    parser.add_argument("--render", action="store_true",
                        help="only redraw the tables, plot and README block from the stored results")
    parser.add_argument("--quality-only", action="store_true",
                        help="only the quality part (KLD); the speed, kernel and conversion tables stay as they are")
    args = parser.parse_args(argv)
    out_dir = output_dir(parser, args)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_pinned_gguf_py()
    if args.render:
        from sfmp_gguf.bench import quality

        scores = quality.render(out_dir)
        if out_dir == DEFAULT_OUT:
            update_readme(readme_block(scores, out_dir))
        return 0

    from gguf import GGUFReader

    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.atomic import write_text
    from sfmp_gguf.bench import moe, quality, speed
    from sfmp_gguf.format import SFMP_TYPES

    start = time.monotonic()
    model, texts, imatrix = teacher(), austen_texts(), teacher_imatrix()
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    ctx, chunks = (128, 2) if args.smoke else (quality.CTX, quality.CHUNKS)
    stock = ("Q4_K_M",) if args.smoke else quality.STOCK
    sizes = (4.5,) if args.smoke else quality.SFMP_BPW
    sensitivities = ("weights",) if args.smoke else quality.SENSITIVITIES
    stamp = f"{date.today().isoformat()}, {cpu_name()}, {args.threads} threads"

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {message}", flush=True)

    log("teacher logits")
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, ctx, chunks, args.threads)
    scores = quality.stock_scores(model.gguf_path, imatrix, stock, base, texts.eval_text, n_weights, ctx, chunks,
                                  args.threads, log)
    sfmp, timings = quality.sfmp_scores(model.hf_dir, imatrix, texts.calib_text, sizes, sensitivities, base,
                                        texts.eval_text, n_weights, ctx, chunks, args.threads,
                                        sensitivities if args.smoke else quality.UNIFORM_TWINS, log)
    scores += sfmp
    title = "KL divergence to the F32 teacher at equal size" + (" (smoke)" if args.smoke else "")
    setup = (f"Teacher SmolLM2-135M (F32), `llama-perplexity --kl-divergence -c {ctx} --chunks {chunks}` on the "
             f"Austen evaluation text ({chunks * (ctx // 2 - 1)} scored tokens); imatrix and Fisher from *Emma*; {stamp}.")
    quality.write_results(scores, out_dir, title, setup)

    if not args.quality_only:
        log("speed (llama-bench)")
        speed.run(out_dir, args.smoke, args.threads)
        log("kernels (test-backend-ops)")
        kernel_types = ["q4_K", "iq4_xs", "q6_K"] + [t.name for t in SFMP_TYPES][: 1 if args.smoke else None]
        write_text(out_dir / "kernels.md", f"# CPU dot-product throughput\n\n{stamp}\n\n" + kernel_table(kernel_types))
        log("mixture of experts")
        moe.run(out_dir, args.smoke, args.threads, log)
        log("conversion cost")
        cost = conversion_table(model.hf_dir, model.gguf_path, imatrix, args.threads, timings)
        write_text(out_dir / "conversion.md", f"# Conversion cost\n\n{stamp}\n\n" + cost)

    command = "python -m sfmp_gguf.bench.all" + (" --quality-only" if args.quality_only else "")
    write_text(out_dir / "run.json", json.dumps({"stamp": stamp, "minutes": (time.monotonic() - start) / 60,
                                                 "command": command}))
    if out_dir == DEFAULT_OUT:
        update_readme(readme_block(scores, out_dir))
    log(f"done: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
