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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sfmp_gguf.errors import InputError

DEFAULT_BPW = 5.0
SENSITIVITIES = ("weights", "imatrix", "fisher")


@dataclass
class Timer:
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, start: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - start


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

    import numpy as np
    from tqdm import tqdm

    from sfmp_gguf import allocation, analysis, importance, report
    from sfmp_gguf.assets.imatrix import load_imatrix
    from sfmp_gguf.gguf_io import OutputTensor, check_output, write_gguf
    from sfmp_gguf.model_source import open_model
    from sfmp_gguf.quantize import quantize_tensor

    timer = Timer()
    check_output(args.output)
    start = time.monotonic()
    source = open_model(args.model)
    shapes = {t.name: (t.shape[0], t.shape[1]) for t in source.tensors if analysis.quantizable(t.name, t.shape)}
    timer.add("load", start)

    def write_f32(path: Path) -> None:
        write_gguf(path, source.arch, dict(source.metadata),
                   [OutputTensor(t.name, t.shape, None) for t in source.tensors],
                   lambda t: by_name[t.name].load())

    by_name = {t.name: t for t in source.tensors}
    columns = None
    if args.sensitivity == "imatrix":
        start = time.monotonic()
        if args.imatrix:
            entries, origin = load_imatrix(args.imatrix), args.imatrix
        else:
            entries, origin = importance.imatrix_from_text(source, args.calib, args.threads, write_f32), args.calib
        columns = importance.match_imatrix(origin, entries, shapes)
        timer.add("importance", start)
    per_weight = None
    if args.sensitivity == "fisher":
        from sfmp_gguf.fisher import fisher_importance

        start = time.monotonic()
        per_weight = fisher_importance(source, args.calib, shapes, args.threads,
                                       progress=lambda xs: tqdm(xs, desc="fisher", unit="window", leave=False, disable=None))
        # the quantizer takes one importance per column: the Fisher column means
        columns = {name: f.mean(axis=0) for name, f in per_weight.items()}
        timer.add("importance", start)

    start = time.monotonic()
    profiles = []
    for t in tqdm(source.tensors, desc="analysis", unit="tensor", leave=False, disable=None):
        w = t.load()
        if not np.isfinite(w).all():
            raise InputError(f"{args.model}: tensor {t.name} holds NaN or Inf values")
        if t.name in shapes:
            h = per_weight[t.name] if per_weight is not None else (None if columns is None else columns[t.name])
            profiles.append(analysis.profile_tensor(t.name, w.reshape(shapes[t.name]), h))
        del w
    timer.add("analysis", start)

    start = time.monotonic()
    plan = allocation.allocate(profiles, args.bpw)
    timer.add("allocation", start)

    outputs = [OutputTensor(t.name, t.shape, plan.types.get(t.name)) for t in source.tensors]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        def produce(out: OutputTensor) -> np.ndarray:
            w = by_name[out.name].load()
            if out.sfmp_type is None:
                return np.ascontiguousarray(w, dtype=np.float32)
            qw = None if columns is None else columns[out.name]
            return quantize_tensor(w.reshape(shapes[out.name]), out.sfmp_type, qw, pool)

        import gguf

        metadata = dict(source.metadata)
        dominant = max(set(plan.types.values()), key=lambda t: sum(p.n_weights for p in profiles if plan.types[p.name] == t))
        metadata["general.file_type"] = gguf.GGUFValue(dominant.type_id, gguf.GGUFValueType.UINT32)
        write_gguf(args.output, source.arch, metadata, outputs, produce,
                   progress=lambda items: tqdm(items, desc="quantize+write", unit="tensor", leave=False, disable=None))
    timer.add("quantize+write", start)

    if args.report:
        report.write_report(args.report, profiles, plan.types,
                            f"{args.model.name} at {plan.bpw:.3f} bpw ({args.sensitivity})")

    n_quant = sum(p.n_weights for p in profiles)
    n_all = sum(t.n_elements for t in source.tensors)
    size = args.output.stat().st_size
    return {"size": size, "bpw": plan.bpw, "file_bpw": size * 8 / n_all, "n_quant": n_quant, "n_all": n_all,
            **{f"t_{k}": v for k, v in timer.phases.items()}, "filled": float(plan.filled)}


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
    if args.report:
        print(f"report: {args.report / 'allocation.md'}, {args.report / 'allocation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
