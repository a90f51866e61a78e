"""Which unit makes imatrix and weights-only errors comparable across tensors: the measurement behind units.py.

``python -m sfmp_gguf.bench.units`` writes ``bench-results/units.md``. Each candidate unit is
allocated at the size of the uniform allocation (every tensor at the rung nearest the target, so
both files have the same size) and scored with ``llama-perplexity --kl-divergence`` against the F32
model, on two models: the demo teacher, and its Gemma-family variant (``assets/gemma_variant.py``),
which no unit was chosen on. Candidate units of a tensor's error E, with S = sum h w^2 the same
importance's signal energy and n its weight count:

- ``raw``: E, as the imatrix and weights-only paths used before;
- ``relative``: E / S, every tensor's relative output error alike;
- ``relative x rows``: E rows / S, every output channel's relative error alike;
- ``relative x weights``: E n / S, every weight's relative error alike (the one units.py uses);
- ``gradients``: the imatrix times E[delta_i^2], each output row's mean squared loss gradient from
  one backward pass in torch (the factored Fisher), a loss unit measured rather than assumed.

Each with or without the guard (no tensor more than ``units.GUARD_BPW`` from the target).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sfmp_gguf.bench import add_output_args, cpu_name, output_dir
from sfmp_gguf.allocation import no_larger
from sfmp_gguf.model_source import use_pinned_gguf_py

UNITS = {
    "raw": lambda p: 1.0,
    "relative": lambda p: 1.0 / p.energy,
    "relative x rows": lambda p: p.shape[0] / p.energy,
    "relative x weights": lambda p: p.n_weights / p.energy,
}
CHOSEN = "relative x weights"
# (signal, unit, guarded) per model; the variant checks the choice against the old default only.
DEMO_RUNS = (("imatrix", "raw", False), ("imatrix", "relative", False), ("imatrix", "relative x rows", False),
             ("imatrix", CHOSEN, False), ("imatrix", CHOSEN, True), ("weights", "raw", False),
             ("weights", CHOSEN, False), ("weights", CHOSEN, True), ("gradients", "raw", False))
VARIANT_RUNS = (("imatrix", "raw", False), ("imatrix", CHOSEN, True), ("weights", "raw", False),
                ("weights", CHOSEN, True))
DEMO_SIZES = (4.25,)  # the chosen unit at every bench size: bench.quality
VARIANT_SIZES = (4.25,)
CTX, CHUNKS = 512, 12
IMATRIX_CHUNKS = 32


@dataclass(frozen=True)
class Row:
    model: str
    target: float
    signal: str
    unit: str
    guard: float | None
    bpw: float
    kld: float
    uniform_kld: float  # the uniform file quantized with the same importance


def measure(name: str, hf_dir: Path, f32: Path, imatrix: Path, runs, sizes, chunks: int, threads: int,
            calib: Path | None, log=print, done=lambda row: None) -> list[Row]:
    """The rows of one model; ``done`` gets each row as soon as it is measured."""
    from gguf import GGUFReader

    from sfmp_gguf import allocation, pipeline, units
    from sfmp_gguf.bench import quality

    eval_text = _eval_text()
    n_weights = sum(t.n_elements for t in GGUFReader(f32).tensors)
    base = quality.teacher_logits(f32, eval_text, CTX, chunks, threads)
    prepared = {s: pipeline.prepare(hf_dir, s, imatrix if s == "imatrix" else None, None, threads)
                for s in ("imatrix", "weights")}
    # the product's unit undone: each candidate applies its own
    raw = {s: [replace(p, errors=p.errors * p.energy / p.n_weights) for p in prep.profiles]
           for s, prep in prepared.items()}
    if any(signal == "gradients" for signal, _, _ in runs):
        from sfmp_gguf import analysis
        from sfmp_gguf.fisher import output_gradient_energy

        log(f"{name}: output gradients (torch)")
        prep = prepared["imatrix"]
        delta = output_gradient_energy(prep.source, calib, prep.shapes, threads)
        by_name = {t.name: t for t in prep.source.tensors}
        raw["gradients"] = [analysis.profile_tensor(p.name, by_name[p.name].load().reshape(p.shape),
                                                    np.outer(delta[p.name], prep.columns[p.name]).astype(np.float32))
                            for p in raw["imatrix"]]
        prepared["gradients"] = prep  # the same quantizer weights
    rows = []
    with tempfile.TemporaryDirectory(prefix="sfmp-units-") as tmp:
        out = Path(tmp) / "sfmp.gguf"

        def kld(prep: pipeline.Prepared, plan: allocation.Allocation) -> float:
            return quality.write_and_score(prep, plan, out, base, eval_text, n_weights, CTX, chunks, threads).kld

        for bpw in sizes:
            uniform = allocation.uniform(raw["imatrix"], bpw)
            uniform_kld = {s: kld(prepared[s], uniform) for s in ("imatrix", "weights")}
            log(f"{name} {bpw}: uniform {uniform.bpw:.3f} bpw, KLD {uniform_kld}")
            for signal, unit, guarded in runs:
                scaled = [replace(p, errors=p.errors * UNITS[unit](p)) for p in raw[signal]]
                guard = units.GUARD_BPW if guarded else None
                plan = no_larger(lambda bpw: allocation.allocate(scaled, bpw, guard=guard), uniform.bpw)
                same = "weights" if signal == "weights" else "imatrix"
                row = Row(name, bpw, signal, unit, guard, plan.bpw, kld(prepared[signal], plan), uniform_kld[same])
                log(f"{name} {bpw} {signal} {unit} guard {guard}: {row.bpw:.3f} bpw, KLD {row.kld:.5f}, "
                    f"{row.kld / row.uniform_kld:.2f}x uniform")
                rows.append(row)
                done(row)
    return rows


def against_uniform(sizes: tuple[float, ...], sensitivities: tuple[str, ...], chunks: int,
                    threads: int) -> dict[str, dict[str, tuple[float, float]]]:
    """sensitivity -> target -> (the product's KLD, the uniform file's KLD with the same quantizer
    weights), on the demo teacher, each file no larger than the uniform one."""
    from gguf import GGUFReader

    from sfmp_gguf import allocation, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import GRIDS

    model, texts = teacher(), austen_texts()
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, CTX, chunks, threads)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    uniform_kld: dict[tuple[bool, float], float] = {}
    with tempfile.TemporaryDirectory(prefix="sfmp-units-") as tmp:
        out = Path(tmp) / "sfmp.gguf"

        def kld(prepared: pipeline.Prepared, plan: allocation.Allocation) -> float:
            return quality.write_and_score(prepared, plan, out, base, texts.eval_text, n_weights, CTX, chunks,
                                           threads).kld

        for sensitivity in sensitivities:
            prepared = pipeline.prepare(model.hf_dir, sensitivity,
                                        teacher_imatrix() if sensitivity == "imatrix" else None,
                                        texts.calib_text if sensitivity == "fisher" else None, threads)
            results[sensitivity] = {}
            for bpw in sizes:
                uniform = allocation.uniform(prepared.profiles, bpw)
                key = (prepared.columns is None, bpw)
                if key not in uniform_kld:
                    uniform_kld[key] = kld(prepared, uniform)
                plan = no_larger(lambda bpw: pipeline.plan(prepared, bpw, GRIDS), uniform.bpw)
                results[sensitivity][f"{bpw:g}"] = (kld(prepared, plan), uniform_kld[key])
    return results


def _eval_text() -> Path:
    from sfmp_gguf.assets.austen import austen_texts

    return austen_texts().eval_text


def header(chunks: int, threads: int) -> str:
    return (f"# Allocation units for the imatrix and weights-only signals\n\n`python -m sfmp_gguf.bench.units`, "
            f"{cpu_name()}, {threads} threads. KLD: `llama-perplexity --kl-divergence -c {CTX} --chunks {chunks}` "
            "on the Austen evaluation text against each model's own F32 logits; imatrix from *Emma* "
            f"(the variant's: {IMATRIX_CHUNKS} chunks of {CTX}). Each file has at most the uniform file's size "
            "(bpw column). 'over uniform' < 1 is better than every tensor at one rung.\n\n")


def table(rows: list[Row]) -> str:
    lines = ["| model | target | signal | unit | guard (bpw) | bpw | KLD | uniform KLD (same quantizer) | "
             "over uniform |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.target:g} | {r.signal} | {r.unit} | {'-' if r.guard is None else f'{r.guard:g}'} "
                     f"| {r.bpw:.3f} | {r.kld:.5f} | {r.uniform_kld:.5f} | {r.kld / r.uniform_kld:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "the demo model only, one size, two runs, two chunks; needs --out")
    parser.add_argument("--against-uniform", type=float, nargs="+", metavar="BPW",
                        help="only print, as JSON, each sensitivity's KLD and the uniform file's at these sizes")
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    args = parser.parse_args(argv)
    use_pinned_gguf_py()
    if args.against_uniform:
        print(json.dumps(against_uniform(tuple(args.against_uniform), ("weights", "imatrix", "fisher"),
                                         args.chunks, args.threads)))
        return 0
    out_dir = output_dir(parser, args)
    from sfmp_gguf import pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.gemma_variant import gemma_variant
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.atomic import write_text
    from sfmp_gguf.imatrix_io import run_imatrix
    from sfmp_gguf.model_source import open_model

    def log(message: str) -> None:
        print(message, flush=True)

    model, texts = teacher(), austen_texts()
    sizes, chunks = ((4.5,), 2) if args.smoke else (DEMO_SIZES, args.chunks)
    demo_runs = (("imatrix", "raw", False), ("imatrix", CHOSEN, True)) if args.smoke else DEMO_RUNS
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    def save(row: Row) -> None:  # after every file, so an interrupted run keeps what it measured
        rows.append(row)
        write_text(out_dir / "units.md", header(chunks, args.threads) + table(rows))

    measure("demo teacher", model.hf_dir, model.gguf_path, teacher_imatrix(), demo_runs, sizes, chunks,
            args.threads, texts.calib_text, log, save)
    if not args.smoke:
        with tempfile.TemporaryDirectory(prefix="sfmp-variant-") as tmp:
            variant = gemma_variant().hf_dir
            f32, imatrix = Path(tmp) / "variant-f32.gguf", Path(tmp) / "imatrix.gguf"
            pipeline.write_float(open_model(variant), f32)
            log("Gemma variant: llama-imatrix")
            run_imatrix(f32, texts.calib_text, imatrix, CTX, IMATRIX_CHUNKS, args.threads)
            measure("Gemma variant", variant, f32, imatrix, VARIANT_RUNS, VARIANT_SIZES, chunks, args.threads,
                    None, log, save)
    log(f"wrote {out_dir / 'units.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
