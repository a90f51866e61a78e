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
from pathlib import Path

from sfmp_gguf.errors import InputError
from sfmp_gguf.format import GRIDS

DEFAULT_BPW = 5.0
GRID_CHOICES = ("both", *GRIDS)
SENSITIVITIES = ("weights", "imatrix", "fisher")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sfmp_to_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="Hugging Face model folder, or an F32/F16/BF16 GGUF")
    parser.add_argument("-o", "--output", type=Path, help="output GGUF (default: <model>-sfmp.gguf)")
    parser.add_argument("--bpw", type=float, default=DEFAULT_BPW,
                        help=f"average bits per weight over the quantized tensors (default {DEFAULT_BPW})")
    parser.add_argument("--imatrix", type=Path, help="llama.cpp importance matrix (GGUF or legacy .dat)")
    parser.add_argument("--calib", type=Path, help="calibration text: compute an importance matrix from it")
    parser.add_argument("--sensitivity", choices=SENSITIVITIES,
                        help="weights: from the weights alone; imatrix: weighted by the input columns' mean x^2; "
                             "fisher: weighted by squared loss gradients on --calib text (SFMP's signal; "
                             "needs a Hugging Face folder). Default: imatrix when --imatrix or --calib is "
                             "given, else weights")
    parser.add_argument("--grid", choices=GRID_CHOICES, default="both",
                        help="which SFMP grids the allocator may use: both (default; it picks per tensor), "
                             "uniform, or nonlinear (up to 4-bit sub-blocks, so at most about 4.3 bpw)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, help="folder for a per-tensor table and a bpw heatmap")
    args = parser.parse_args(argv)
    if args.imatrix and args.calib:
        parser.error("--imatrix and --calib are alternatives")
    if args.sensitivity is None:
        args.sensitivity = "imatrix" if (args.imatrix or args.calib) else "weights"
    if args.sensitivity == "imatrix" and not (args.imatrix or args.calib):
        parser.error("--sensitivity imatrix needs --imatrix FILE or --calib TEXT")
    if args.sensitivity == "fisher" and not args.calib:
        parser.error("--sensitivity fisher needs --calib TEXT")
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
    from sfmp_gguf.gguf_io import check_output, remove_stale_partials

    check_output(args.output)
    remove_stale_partials(args.output)  # a killed run's leftover goes now, not only once writing starts
    prepared = pipeline.prepare(args.model, args.sensitivity, args.imatrix, args.calib, args.threads)
    plan = pipeline.plan(prepared, args.bpw, GRIDS if args.grid == "both" else (args.grid,))
    pipeline.write(prepared, plan, args.output, args.threads)
    notes = report.warnings(prepared.profiles, plan.types, prepared.fallbacks)
    if args.report:
        report.write_report(args.report, prepared.profiles, plan.types,
                            f"{args.model.name} at {plan.bpw:.3f} bpw ({args.sensitivity})", notes)
    n_all = sum(t.n_elements for t in prepared.source.tensors)
    size = args.output.stat().st_size
    return {"notes": notes, "size": size, "bpw": plan.bpw, "file_bpw": size * 8 / n_all, "n_quant": prepared.n_quantized,
            **{f"t_{k}": v for k, v in prepared.timer.phases.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        result = convert(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    phases = ", ".join(f"{k[2:]} {v:.1f} s" for k, v in result.items() if k.startswith("t_"))
    print(f"wrote {args.output}: {result['size'] / 2**20:.1f} MiB, {result['bpw']:.3f} bpw over the "
          f"{result['n_quant'] / 1e6:.1f}M quantized weights ({result['file_bpw']:.3f} bpw whole file), "
          f"{args.sensitivity} sensitivity, in {time.monotonic() - start:.1f} s ({phases})")
    for note in result["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    if args.report:
        print(f"report: {args.report / 'allocation.md'}, {args.report / 'allocation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
