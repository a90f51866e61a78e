"""Benchmarks: results people compare, as Markdown tables and PNG plots under bench-results/."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfmp_gguf.paths import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "bench-results"


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
