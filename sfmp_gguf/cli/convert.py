"""sfmp_to_gguf: a Hugging Face model folder (or F32/F16/BF16 GGUF) to one SFMP GGUF at a target bpw.

Phases: analysis (per sub-block statistics -> each tensor's error at every SFMP type), allocation
(one global threshold, no search), quantization (the C kernels, threads over rows) and writing
(streamed tensor by tensor through the gguf package, to a temporary file renamed at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from sfmp_gguf.errors import InputError
from sfmp_gguf.format import GRIDS

DEFAULT_BPW = 5.0
GRID_CHOICES = ("both", *GRIDS)
SENSITIVITIES = ("weights", "imatrix", "fisher")


def permute_kinds(value: str) -> tuple[str, ...]:
    """--permute's value: all, none, or a comma list of kinds."""
    from sfmp_gguf.permutation import KINDS

    if value == "all":
        return KINDS
    if value == "none":
        return ()
    kinds = tuple(k.strip() for k in value.split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind {unknown[0]!r} (all, none, or a comma list of "
                                         f"{', '.join(KINDS)})")
    return tuple(k for k in KINDS if k in kinds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sfmp_to_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="Hugging Face model folder, or an F32/F16/BF16 GGUF")
    parser.add_argument("-o", "--output", type=Path, help="output GGUF (default: <model>-sfmp.gguf)")
    parser.add_argument("--bpw", type=float, default=DEFAULT_BPW,
                        help=f"average bits per weight over the quantized tensors (default {DEFAULT_BPW})")
    parser.add_argument("--imatrix", type=Path, help="llama.cpp importance matrix (GGUF or legacy .dat)")
    parser.add_argument("--calib", type=Path,
                        help="calibration text (UTF-8) for Fisher or an imatrix (default: a built-in public-domain "
                             "text, sfmp_gguf/data/calibration.txt)")
    parser.add_argument("--sensitivity", choices=SENSITIVITIES,
                        help="fisher: squared loss gradients on the calibration text, one decoder block in memory "
                             "at a time (SFMP's signal; needs torch, and a Hugging Face folder or a GGUF that "
                             "transformers loads); imatrix: the input columns' mean x^2, from --imatrix or from "
                             "llama-imatrix on the text; weights: the weights alone. Default: imatrix when "
                             "--imatrix is given, else fisher where it can run, else imatrix from the text")
    parser.add_argument("--grid", choices=GRID_CHOICES, default="both",
                        help="which SFMP grids the allocator may use: both (default; it picks per tensor), "
                             "uniform, or nonlinear (up to 4-bit sub-blocks, so at most about 4.3 bpw)")
    parser.add_argument("--permute", type=permute_kinds, metavar="KINDS",
                        help="channel permutations folded into the weights so that salient channels sit where the "
                             "upgrades fall (same function, no run-time cost): a comma list of ffn, heads, residual, "
                             "all, or none; applied where the architecture is proven exact. Default: ffn,heads from "
                             "7 bpw, none below (where they lowered KLD on the demo model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, help="folder for a per-tensor table and a bpw heatmap")
    args = parser.parse_args(argv)
    if args.imatrix and args.calib:
        parser.error("--imatrix and --calib are alternatives")
    if args.imatrix and args.sensitivity in ("fisher", "weights"):
        parser.error(f"--imatrix and --sensitivity {args.sensitivity} are alternatives")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.output is None:
        args.output = args.model.with_name(args.model.name.removesuffix(".gguf") + "-sfmp.gguf")
    return args


def convert(args: argparse.Namespace) -> dict[str, float]:
    """Run every phase; returns the summary figures."""
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()  # before anything imports gguf: the converter classes need this copy

    from sfmp_gguf import pipeline, report
    from sfmp_gguf.gguf_io import check_output, remove_stale_partials, scratch_path

    check_output(args.output)
    remove_stale_partials(args.output)  # a killed run's leftover goes now, not only once writing starts
    grids = GRIDS if args.grid == "both" else (args.grid,)
    from sfmp_gguf.permutation import default_kinds

    kinds = default_kinds(args.bpw) if args.permute is None else args.permute
    prepared = pipeline.prepare(args.model, args.sensitivity, args.imatrix, args.calib, args.threads,
                                scratch=scratch_path(args.output), rate=(args.bpw, grids), permute=kinds,
                                shares=args.report is not None)
    plan = pipeline.plan(prepared, args.bpw, grids)
    pipeline.write(prepared, plan, args.output, args.threads)
    notes = report.warnings(prepared.profiles, plan.types, prepared.fallbacks)
    if args.report:
        report.write_report(args.report, prepared.profiles, plan.types,
                            f"{args.model.name} at {plan.bpw:.3f} bpw ({prepared.sensitivity})", notes,
                            prepared.permutation)
    n_all = sum(t.n_elements for t in prepared.source.tensors)
    size = args.output.stat().st_size
    return {"notes": notes, "sensitivity": f"{prepared.sensitivity} sensitivity ({prepared.why})",
            "permuted": report.permutation_line(prepared.permutation), "peak": pipeline.peak_rss(),
            "size": size, "bpw": plan.bpw, "file_bpw": size * 8 / n_all, "n_quant": prepared.n_quantized,
            **{f"t_{k}": v for k, v in prepared.timer.phases.items()},
            **{f"p_{k}": v for k, v in prepared.timer.peaks.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # transformers' notices about checkpoints and deprecations would break the one-line errors
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.simplefilter("ignore", FutureWarning)
    start = time.monotonic()
    try:
        result = convert(args)
    except (InputError, FileNotFoundError) as err:  # FileNotFoundError: e.g. llama-imatrix not built
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    phases = ", ".join(f"{k[2:]} {v:.1f} s ({result['p_' + k[2:]] / 2**30:.2f} GiB)"
                       for k, v in result.items() if k.startswith("t_"))
    print(f"wrote {args.output}: {result['size'] / 2**20:.1f} MiB, {result['bpw']:.3f} bpw over the "
          f"{result['n_quant'] / 1e6:.1f}M quantized weights ({result['file_bpw']:.3f} bpw whole file), "
          f"{result['sensitivity']}, {result['permuted']}, in {time.monotonic() - start:.1f} s (phase, and the peak RSS at its end: {phases}), "
          f"peak RSS {result['peak'] / 2**30:.2f} GiB")
    for note in result["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    if args.report:
        print(f"report: {args.report / 'allocation.md'}, {args.report / 'allocation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
