"""Benchmarks: results people compare, as Markdown tables and PNG plots under bench-results/."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from sfmp_gguf.paths import REPO_ROOT, cache_dir

DEFAULT_OUT = REPO_ROOT / "bench-results"
# The environment that gives the SFMP types with two-level activations 8-bit ones (sfmp-quants.h).
EIGHT_BIT_ACTIVATIONS = {"SFMP_ACTIVATIONS": "8bit"}


def add_output_args(parser: argparse.ArgumentParser, smoke_help: str) -> None:
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}; required with --smoke)")
    parser.add_argument("--threads", "-t", type=int, default=2)


def cpu_name() -> str:
    """The CPU model, for the machine line every result carries."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """Where results go; a smoke run must name its own folder so it never overwrites real results."""
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out (it must not overwrite the real results)")
    return args.out or DEFAULT_OUT


def cached_file(name: str, key: str, suffix: str, make: Callable[[Path], object]) -> Path:
    """``NAME-HASH.SUFFIX`` in the bench cache, HASH from ``key`` (everything that decides the
    file), made once by ``make(temporary path)`` and renamed into place when complete."""
    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"
    if not out.is_file():
        tmp = folder / f".{out.name}.tmp"
        make(tmp)
        tmp.replace(out)
    return out


def probe_main(argv: list[str] | None, doc: str, run: Callable[..., object], result: str) -> int:
    """The command line of a probe on the demo model (bench.gaps, bench.activations, ...): run it into the
    output folder, then print its Markdown ``result``."""
    from sfmp_gguf.bench.roundtrip import BenchError
    from sfmp_gguf.llama.rpc import RpcError

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_output_args(parser, "one size, a short evaluation (checks the pipeline, not the numbers)")
    args = parser.parse_args(argv)
    out = output_dir(parser, args)
    try:
        run(out, args.smoke, args.threads, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (BenchError, RpcError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print((out / result).read_text())
    return 0


def grouped_bars(ax, sizes: Sequence[str], series: dict[str, Sequence[float]]) -> None:
    """One group of bars per target size, one bar per series, labelled by bpw."""
    import numpy as np

    x = np.arange(len(sizes))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [f"{s} bpw" for s in sizes])
    ax.legend(fontsize=8)
