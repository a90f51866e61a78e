"""Speed at equal size: llama-bench prompt processing and generation of SFMP files against the stock type
nearest in size, on two models.

- The teacher (SmolLM2-135M), quantized with ``llama-quantize --pure --imatrix`` (cached by the
  round-trip benchmark). Its 576-long rows are not multiples of 256, so llama.cpp itself falls back
  from Q4_K/Q6_K to Q5_0/Q8_0 on some tensors.
- A synthetic 0.47B Llama (``assets.synthetic`` "0.5B": hidden 1536, FFN 4096, vocabulary 49152), where
  every row is a multiple of 256 and every stock type applies fully: every SFMP rung from 2.5 to 8.3
  bpw (the uniform ``_k`` types), each against the stock type nearest in size, ``--pure``, without an
  imatrix (it changes no speed).

Each table also sets every SFMP file against the stock files measured with it, interpolated
linearly at its size: the comparison at equal size where the nearest stock file is smaller or larger.

The pairs whose SFMP type takes two-level activations are measured again with
``SFMP_ACTIVATIONS=8bit`` (8-bit activations, as the stock types take), in a section of their own.

``--variant avx2`` runs the plain-AVX2 build (``python -m sfmp_gguf.llama.build --variant avx2``: no
AVX-512, no VNNI, as most laptops), writing ``speed-avx2.md``; the default is this machine's build.
Each model's files are measured in ``ROUNDS`` llama-bench runs, one after another, and each figure is the
median of its runs: the machine is shared, and a slow spell then hurts one run of every file rather
than all runs of a few.

    python -m sfmp_gguf.bench.speed [--variant cpu|avx2] [--smoke --out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sfmp_gguf.bench import EIGHT_BIT_ACTIVATIONS, add_output_args, cached_file, cpu_name, output_dir  # noqa: E402
from sfmp_gguf.atomic import save_figure, write_text  # noqa: E402
from sfmp_gguf.bench.roundtrip import BenchError, quantize_model  # noqa: E402
from sfmp_gguf.format import BY_NAME, SFMP_TYPES  # noqa: E402
from sfmp_gguf.llama.build import current_build  # noqa: E402
from sfmp_gguf.paths import cache_dir  # noqa: E402

ROUNDS = 3
STOCK = ("Q4_K", "IQ4_XS", "Q5_K", "Q6_K", "Q8_0")
# From sfmp525_k up the CPU kernels take two-level activations (format.FINE_ACTIVATION_MIN_BITS).
SFMP_CANDIDATES = ("sfmp275_k", "sfmp325_k", "sfmp375_k", "sfmp425_k", "sfmp475_k", "sfmp525_k", "sfmp575_k",
                   "sfmp625_k", "sfmp675_k", "sfmp725_k", "sfmp775_k", "sfmp800_k")
# The nonlinear grid (one table lookup more per code) against the stock types of its rates.
NL_STOCK = ("Q4_K", "IQ4_XS")
NL_CANDIDATES = ("sfmp325n_k", "sfmp375n_k", "sfmp400n_k")
SYNTHETIC_SIZE = "0.5B"
SYNTHETIC_STOCK = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
RUNGS = tuple(t.name for t in SFMP_TYPES if t.block_size == 256 and t.grid == "uniform")
VARIANT_PATHS = {"cpu": "this machine's build (-march=native: SFMP_X8 takes its AVX512-VNNI path here)",
                 "avx2": "the plain-AVX2 build (no AVX-512, no VNNI: SFMP_X8 takes its AVX2 path)",
                 "avx-vnni": "the AVX-VNNI build (AVX2 and AVX-VNNI, no AVX-512: SFMP_X8 takes its avx-vnni path)"}


@dataclass(frozen=True)
class Result:
    name: str
    size: int
    pp: float
    tg: float


def bench_files(models: dict[str, Path], prompt: int, gen: int, reps: int, threads: int,
                extra: tuple[str, ...] = (), variant: str = "cpu", rounds: int = 1,
                env: dict[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """(pp, tg) tokens per second of each model: the median over ``rounds`` llama-bench runs with
    ``extra`` arguments and ``env`` added to the environment."""
    cmd = [str(current_build(variant).tool("llama-bench")), "-t", str(threads), "-p", str(prompt), "-n", str(gen),
           "-r", str(reps), "-o", "json", *extra]
    for path in models.values():
        cmd += ["-m", str(path)]
    by_path = {str(p): name for name, p in models.items()}
    speeds: dict[str, dict[str, list[float]]] = {name: {"pp": [], "tg": []} for name in models}
    for _ in tqdm(range(rounds), desc="llama-bench runs", unit="run", disable=rounds == 1):
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise BenchError(f"llama-bench failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        for row in json.loads(result.stdout):
            kind = "pp" if row["n_prompt"] > 0 else "tg"
            speeds[by_path[row["model_filename"]]][kind].append(float(row["avg_ts"]))
    return {name: (statistics.median(s["pp"]), statistics.median(s["tg"])) for name, s in speeds.items()}


def pairs(sizes: dict[str, int], stock: tuple[str, ...], candidates: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each stock type with the SFMP file nearest to it in size."""
    return [(s, min(candidates, key=lambda c: abs(sizes[c] - sizes[s]))) for s in stock]


def neighbours(sizes: dict[str, int], stock: tuple[str, ...], rungs: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each SFMP rung with the stock file nearest to it in size."""
    return [(min(stock, key=lambda s: abs(sizes[s] - sizes[r])), r) for r in rungs]


def at_size(stock: list[Result], size: int) -> tuple[float, float] | None:
    """The stock (pp, tg) at ``size`` bytes: linear in size between the stock files on either side
    (as the quality benchmark's frontier is taken at a size); None outside their range."""
    below = [r for r in stock if r.size <= size]
    above = [r for r in stock if r.size >= size]
    if not below or not above:
        return None
    a, b = max(below, key=lambda r: r.size), min(above, key=lambda r: r.size)
    f = 0.0 if b.size == a.size else (size - a.size) / (b.size - a.size)
    return a.pp + f * (b.pp - a.pp), a.tg + f * (b.tg - a.tg)


def markdown(results: dict[str, Result], matched: list[tuple[str, str]], title: str, setup: str,
             heading: str = "#", prompt: int = 512, gen: int = 128) -> str:
    """The pairs' table. Its last two columns set each SFMP file against the stock files measured
    with it, interpolated at its size ('-' outside their range): the comparison at equal size where
    the nearest stock file is smaller or larger."""
    pp, tg = f"pp{prompt} t/s", f"tg{gen} t/s"
    stock = list({results[s] for s, _ in matched})
    lines = [f"{heading} {title}", "", setup, "",
             f"| stock | size (MiB) | {pp} | {tg} | SFMP | size (MiB) | {pp} | {tg} | pp ratio | tg ratio | "
             f"pp ratio, stock at this size | tg ratio, stock at this size |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, c in matched:
        a, b = results[s], results[c]
        there = at_size(stock, b.size)
        equal = f"{b.pp / there[0]:.2f} | {b.tg / there[1]:.2f}" if there else "- | -"
        lines.append(f"| {s} | {a.size / 2**20:.1f} | {a.pp:.1f} | {a.tg:.1f} | {c} | {b.size / 2**20:.1f} | "
                     f"{b.pp:.1f} | {b.tg:.1f} | {b.pp / a.pp:.2f} | {b.tg / a.tg:.2f} | {equal} |")
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


def synthetic_f32() -> Path:
    """The synthetic model as an F32 GGUF, made and cached on first use."""
    from sfmp_gguf import pipeline
    from sfmp_gguf.assets.synthetic import synthetic_model
    from sfmp_gguf.model_source import open_model

    hf_dir = synthetic_model(SYNTHETIC_SIZE)
    return cached_file(f"synthetic-{SYNTHETIC_SIZE}-f32", str(hf_dir) + (hf_dir / "config.json").read_text(), ".gguf",
                       lambda p: pipeline.write_float(open_model(hf_dir), p))


def measure(files: dict[str, Path], matched: list[tuple[str, str]], bench_args: tuple[int, int, int], threads: int,
            variant: str, rounds: int, env: dict[str, str] | None = None) -> dict[str, Result]:
    measured = {name: files[name] for pair in matched for name in pair}
    speeds = bench_files(measured, *bench_args, threads, variant=variant, rounds=rounds, env=env)
    return {name: Result(name, measured[name].stat().st_size, *speeds[name]) for name in measured}


def two_level_pairs(matched: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (stock, SFMP) pairs whose SFMP type takes two-level activations."""
    return [(stock, sfmp) for stock, sfmp in matched if BY_NAME[sfmp].fine_activations]


def eight_bit_section(files: dict[str, Path], matched: list[tuple[str, str]], bench_args: tuple[int, int, int],
                      threads: int, variant: str, rounds: int, model: str, machine: str,
                      out: Path) -> tuple[str, dict[str, Result]]:
    """The two-level pairs again under SFMP_ACTIVATIONS=8bit: a table (empty if none) and a plot."""
    fine = two_level_pairs(matched)
    if not fine:
        return "", {}
    results = measure(files, fine, bench_args, threads, variant, rounds, env=EIGHT_BIT_ACTIVATIONS)
    title = f"{model}: two-level rungs with SFMP_ACTIVATIONS=8bit"
    plot(results, out, title)
    return markdown(results, fine, title,
                    f"As above, with SFMP_ACTIVATIONS=8bit in the environment: the SFMP types of 5 base bits and up "
                    f"take 8-bit activations, as the stock types do; {machine}.", heading="##",
                    prompt=bench_args[0], gen=bench_args[1]), results


def run(out_dir: Path, smoke: bool, threads: int, variant: str = "cpu") -> dict[str, Result]:
    from sfmp_gguf.assets.cache import artifact_files
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import ARTIFACT, GGUF_NAME, teacher
    from sfmp_gguf.assets.cache import sha256_file

    model, model_sha, imatrix = teacher().gguf_path, artifact_files(ARTIFACT)[GGUF_NAME], teacher_imatrix()
    stock, candidates = (STOCK[:1] + STOCK[3:4], SFMP_CANDIDATES[3:4] + SFMP_CANDIDATES[7:8]) if smoke else (STOCK, SFMP_CANDIDATES)
    nl_stock, nl_candidates = (NL_STOCK[:1], NL_CANDIDATES[2:]) if smoke else (NL_STOCK, NL_CANDIDATES)
    teacher_args = (16, 4, 1) if smoke else (512, 128, 3)
    files = {name: quantize_model(model, model_sha, imatrix, name, cache_dir() / "bench", threads)
             for name in stock + candidates + nl_candidates}
    sizes = {name: path.stat().st_size for name, path in files.items()}
    matched = pairs(sizes, stock, candidates) + pairs(sizes, nl_stock, nl_candidates)
    rounds = 1 if smoke else ROUNDS
    results = measure(files, matched, teacher_args, threads, variant, rounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if variant == "cpu" else f"-{variant}"
    title = "Speed at equal size" + (f", {variant} build" if suffix else "") + (" (smoke)" if smoke else "")
    machine = f"{date.today().isoformat()}, {cpu_name()}, {threads} threads, {VARIANT_PATHS[variant]}"
    sections = [markdown(results, matched, title, f"llama-bench -t {threads} -p {teacher_args[0]} -n "
                         f"{teacher_args[1]} -r {teacher_args[2]}, the median of {rounds} runs, teacher SmolLM2-135M quantized with "
                         f"`llama-quantize --pure --imatrix`; {machine}.", prompt=teacher_args[0], gen=teacher_args[1])]
    plot(results, out_dir / f"speed{suffix}.png", title)
    section, eight_bit = eight_bit_section(files, matched, teacher_args, threads, variant, rounds, "Teacher", machine,
                                           out_dir / f"speed{suffix}-8bit.png")
    sections.append(section)
    results = {**results, **{f"8bit/{k}": v for k, v in eight_bit.items()}}

    if not smoke:
        f32 = synthetic_f32()
        sha = sha256_file(f32)
        folder = cache_dir() / "bench" / f"speed-{SYNTHETIC_SIZE}"
        files = {name: quantize_model(f32, sha, None, name, folder, threads) for name in SYNTHETIC_STOCK + RUNGS}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        matched = neighbours(sizes, SYNTHETIC_STOCK, RUNGS)
        synthetic_args = (256, 64, 2)
        synthetic = measure(files, matched, synthetic_args, threads, variant, rounds)
        sections.append(markdown(synthetic, matched, "Every rung on a model where stock types apply fully",
                                 f"llama-bench -t {threads} -p {synthetic_args[0]} -n {synthetic_args[1]} -r "
                                 f"{synthetic_args[2]}, the median of {rounds} runs, synthetic Llama 0.47B (every row a multiple of "
                                 f"256) quantized with `llama-quantize --pure`, no imatrix; {machine}. Sorted by "
                                 f"SFMP rung; each row's stock type is the one nearest in size.", heading="##",
                                 prompt=synthetic_args[0], gen=synthetic_args[1]))
        plot(synthetic, out_dir / f"speed{suffix}-synthetic.png", "Every rung, synthetic 0.47B Llama"
             + (f", {variant} build" if suffix else ""))
        section, eight_bit = eight_bit_section(files, matched, synthetic_args, threads, variant, rounds,
                                               "Synthetic 0.47B", machine, out_dir / f"speed{suffix}-synthetic-8bit.png")
        sections.append(section)
        results = {**results, **{f"synthetic/{k}": v for k, v in synthetic.items()},
                   **{f"synthetic-8bit/{k}": v for k, v in eight_bit.items()}}
    write_text(out_dir / f"speed{suffix}.md", "\n".join(section for section in sections if section))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "one pair on the teacher, tiny prompt and generation, no synthetic model")
    parser.add_argument("--variant", choices=tuple(VARIANT_PATHS), default="cpu",
                        help="the llama.cpp build to run (avx2: the plain-AVX2 build)")
    args = parser.parse_args(argv)
    out_dir = output_dir(parser, args)
    try:
        run(out_dir, args.smoke, args.threads, args.variant)
    except (BenchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    suffix = "" if args.variant == "cpu" else f"-{args.variant}"
    print(f"wrote {out_dir / f'speed{suffix}.md'} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
