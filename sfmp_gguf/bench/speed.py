"""Speed at equal size: llama-bench pp512 and tg128 of SFMP files against the stock type nearest in size.

Every file is the teacher quantized with ``llama-quantize --pure --imatrix`` (cached by the round-trip
benchmark), all measured in one llama-bench run. ``python -m sfmp_gguf.bench.speed [--smoke --out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sfmp_gguf.bench import add_output_args, cpu_name, output_dir  # noqa: E402
from sfmp_gguf.atomic import save_figure, write_text  # noqa: E402
from sfmp_gguf.bench.roundtrip import BenchError, quantize_model  # noqa: E402
from sfmp_gguf.llama.build import current_build  # noqa: E402
from sfmp_gguf.paths import cache_dir  # noqa: E402

STOCK = ("Q4_K", "IQ4_XS", "Q5_K", "Q6_K", "Q8_0")
# From sfmp625_k up the CPU kernels take two-level activations (format.FINE_ACTIVATION_MIN_BITS).
SFMP_CANDIDATES = ("sfmp275_k", "sfmp325_k", "sfmp375_k", "sfmp425_k", "sfmp475_k", "sfmp525_k", "sfmp575_k",
                   "sfmp625_k", "sfmp675_k", "sfmp725_k", "sfmp775_k", "sfmp800_k")
# The nonlinear grid (one table lookup more per code) against the stock types of its rates.
NL_STOCK = ("Q4_K", "IQ4_XS")
NL_CANDIDATES = ("sfmp325n_k", "sfmp375n_k", "sfmp400n_k")


@dataclass(frozen=True)
class Result:
    name: str
    size: int
    pp: float
    tg: float


def bench_files(models: dict[str, Path], prompt: int, gen: int, reps: int, threads: int,
                extra: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """(pp, tg) tokens per second of each model, from one llama-bench run with ``extra`` arguments."""
    cmd = [str(current_build().tool("llama-bench")), "-t", str(threads), "-p", str(prompt), "-n", str(gen),
           "-r", str(reps), "-o", "json", *extra]
    for path in models.values():
        cmd += ["-m", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"llama-bench failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    by_path = {str(p): name for name, p in models.items()}
    speeds: dict[str, dict[str, float]] = {name: {} for name in models}
    for row in json.loads(result.stdout):
        kind = "pp" if row["n_prompt"] > 0 else "tg"
        speeds[by_path[row["model_filename"]]][kind] = float(row["avg_ts"])
    return {name: (s["pp"], s["tg"]) for name, s in speeds.items()}


def pairs(sizes: dict[str, int], stock: tuple[str, ...], candidates: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each stock type with the SFMP file nearest to it in size."""
    return [(s, min(candidates, key=lambda c: abs(sizes[c] - sizes[s]))) for s in stock]


def markdown(results: dict[str, Result], matched: list[tuple[str, str]], title: str, setup: str) -> str:
    lines = [f"# {title}", "", setup, "",
             "| stock | size (MiB) | pp512 t/s | tg128 t/s | SFMP | size (MiB) | pp512 t/s | tg128 t/s "
             "| pp ratio | tg ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s, c in matched:
        a, b = results[s], results[c]
        lines.append(f"| {s} | {a.size / 2**20:.1f} | {a.pp:.1f} | {a.tg:.1f} | {c} | {b.size / 2**20:.1f} | "
                     f"{b.pp:.1f} | {b.tg:.1f} | {b.pp / a.pp:.2f} | {b.tg / a.tg:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Result], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "pp", "pp512 tokens/s"), (axes[1], "tg", "tg128 tokens/s")):
        for family, marker in (("stock", "o"), ("sfmp", "s")):
            chosen = [r for r in results.values() if r.name.startswith("sfmp") == (family == "sfmp")]
            ax.scatter([r.size / 2**20 for r in chosen], [getattr(r, key) for r in chosen], marker=marker,
                       label=family)
            for r in chosen:
                ax.annotate(r.name, (r.size / 2**20, getattr(r, key)), fontsize=7)
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def run(out_dir: Path, smoke: bool, threads: int) -> dict[str, Result]:
    from sfmp_gguf.assets.cache import artifact_files
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import ARTIFACT, GGUF_NAME, teacher

    model, model_sha, imatrix = teacher().gguf_path, artifact_files(ARTIFACT)[GGUF_NAME], teacher_imatrix()
    stock, candidates = (STOCK[:1], SFMP_CANDIDATES[3:4]) if smoke else (STOCK, SFMP_CANDIDATES)
    nl_stock, nl_candidates = (NL_STOCK[:1], NL_CANDIDATES[2:]) if smoke else (NL_STOCK, NL_CANDIDATES)
    prompt, gen, reps = (16, 4, 1) if smoke else (512, 128, 3)
    files = {name: quantize_model(model, model_sha, imatrix, name, cache_dir() / "bench", threads)
             for name in stock + candidates + nl_candidates}
    sizes = {name: path.stat().st_size for name, path in files.items()}
    matched = pairs(sizes, stock, candidates) + pairs(sizes, nl_stock, nl_candidates)
    measured = {name: files[name] for pair in matched for name in pair}
    speeds = bench_files(measured, prompt, gen, reps, threads)
    results = {name: Result(name, sizes[name], *speeds[name]) for name in measured}
    out_dir.mkdir(parents=True, exist_ok=True)
    title = "Speed at equal size" + (" (smoke)" if smoke else "")
    setup = (f"llama-bench -t {threads} -p {prompt} -n {gen} -r {reps}, one run, teacher SmolLM2-135M "
             f"quantized with `llama-quantize --pure --imatrix`; {date.today().isoformat()}, "
             f"{cpu_name()}, {threads} threads.")
    write_text(out_dir / "speed.md", markdown(results, matched, title, setup))
    plot(results, out_dir / "speed.png", title)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "one pair, tiny prompt and generation")
    args = parser.parse_args(argv)
    out_dir = output_dir(parser, args)
    try:
        run(out_dir, args.smoke, args.threads)
    except (BenchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir / 'speed.md'} and {out_dir / 'speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
