"""Conversion cost at scale: time, peak memory and temporary disk of sfmp_to_gguf against
``llama-quantize --imatrix`` to Q4_K_M, from the demo teacher to a synthetic 1B Llama.

Per model, at the same thread count and with the same imatrix (llama-imatrix on the calibration
text): llama-quantize from the F32 GGUF; sfmp_to_gguf at 4.5 bpw from that F32 GGUF and from the
Hugging Face folder; and sfmp_to_gguf with ``--sensitivity imatrix`` on a short text, which writes the
temporary model copy llama-imatrix reads, for the temporary disk. The input is read once before each run, so
that runs compare computing, not the disk. Each run is its own process, so its peak RSS is its own;
temporary disk is polled every 50 ms (the run's TMPDIR and its scratch
folder next to the output). Time and memory are fitted against the models' weights and largest
tensor and extrapolated to Llama-3-8B.

    python -m sfmp_gguf.bench.conversion [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import add_output_args, cached_file, cpu_name, output_dir
from sfmp_gguf.paths import CONVERTER

GIB = 2**30
SYNTHETIC = ("0.25B", "0.25B-deep", "0.5B", "1B")
BPW = 4.5
IMATRIX_CHUNKS = 8
SHORT_TEXT_CHARS = 20_000  # about 5,000 tokens: enough chunks for llama-imatrix, quick on 1B
LLAMA3_8B_WEIGHTS = 8.03e9
LLAMA3_8B_LARGEST = 128256 * 4096 * 4  # the token embedding in float32

# Runs the command, passes its output through, then prints the child's own peak RSS: a child forked
# straight from this process would inherit our high-water mark.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL); "
            "print('@@', r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)")


@dataclass(frozen=True)
class Run:
    model: str
    tool: str  # "llama-quantize", "sfmp GGUF", "sfmp HF", "sfmp HF, imatrix from text"
    weights: int  # all of the model's weights
    largest: int  # its largest tensor in float32, bytes
    seconds: float
    peak_rss: int
    temp_bytes: int  # the most temporary disk in use at once
    phases: dict[str, float]  # the converter's own summary: phase -> seconds


def temporary_bytes(temp_dir: Path, out: Path) -> int:
    """Bytes under ``temp_dir`` and beside ``out``, except the output and its partial file."""
    from sfmp_gguf.gguf_io import PARTIAL_MARK

    output = re.compile(re.escape(out.name) + "|" + re.escape(f".{out.name}{PARTIAL_MARK}") + r"\d+")
    total = 0
    for root in (temp_dir, out.parent):
        for folder, _, files in os.walk(root):
            for name in files:
                if Path(folder) == out.parent and output.fullmatch(name):
                    continue
                try:
                    total += (Path(folder) / name).stat().st_size
                except FileNotFoundError:  # removed while we looked
                    pass
    return total


def measure(cmd: list[str], temp_dir: Path, out: Path) -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS, peak temporary disk (TMPDIR plus everything beside ``out`` but the
    output and its partial file) and stdout of one command."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp_dir)}
    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], temporary_bytes(temp_dir, out))

    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _MEASURE, *cmd], stdout=subprocess.PIPE, text=True, env=env)
    watcher = threading.Thread(target=poll)
    watcher.start()
    stdout, _ = proc.communicate()
    seconds = time.monotonic() - start
    done.set()
    watcher.join()
    marker = stdout.rstrip().splitlines()[-1].split()
    if marker[0] != "@@" or marker[1] != "0":
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed (exit {marker[1]})")
    return seconds, int(marker[2]) * 1024, peak[0], stdout


def warm(path: Path) -> None:
    """Read a file, or every file of a folder, so that runs compare computing, not this disk."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            with file.open("rb") as f:
                while f.read(1 << 24):
                    pass


def phases(stdout: str) -> dict[str, float]:
    """Phase seconds from the converter's summary line."""
    return {name: float(s) for name, s in re.findall(r"(load|importance|analysis|allocation|quantize\+write) "
                                                     r"([\d.]+) s", stdout)}


def models(smoke: bool) -> list[tuple[str, Path, Path]]:
    """(label, Hugging Face folder, F32 GGUF) of each model, made and cached on first use."""
    from sfmp_gguf import pipeline
    from sfmp_gguf.assets.synthetic import synthetic_model
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.model_source import open_model

    found = [("teacher 135M", teacher().hf_dir, teacher().gguf_path)]
    for size in () if smoke else SYNTHETIC:
        hf_dir = synthetic_model(size)
        f32 = cached_file(f"synthetic-{size}-f32", str(hf_dir) + (hf_dir / "config.json").read_text(), ".gguf",
                          lambda p, hf_dir=hf_dir: pipeline.write_float(open_model(hf_dir), p))
        found.append((f"synthetic {size}", hf_dir, f32))
    return found


def same_allocations(threads: int, rates: tuple[float, ...]) -> str:
    """Whether the C analysis gives the numpy analysis's allocation of the teacher (imatrix) at each
    rate: the same types mean the same file, since quantization depends only on them."""
    from unittest import mock

    from sfmp_gguf import analysis, native_analysis, pipeline
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.format import GRIDS

    def prepared():
        return pipeline.prepare(teacher().gguf_path, "imatrix", teacher_imatrix(), None, threads)

    native = prepared()
    with mock.patch.object(native_analysis, "profile_tensor", lambda name, w, h, pool: analysis.profile_tensor(name, w, h)):
        numpy_made = prepared()
    same = [pipeline.plan(native, bpw, GRIDS).types == pipeline.plan(numpy_made, bpw, GRIDS).types for bpw in rates]
    return (f"The C analysis against the numpy analysis (its specification) on the teacher with the imatrix: the "
            f"allocation is {'identical' if all(same) else 'DIFFERENT'} at {', '.join(f'{b:g}' for b in rates)} bpw "
            f"({sum(same)} of {len(rates)}), so the files are identical (quantization depends only on the types; the quantizer's "
            f"bytes equal the numpy reference's, test_kernels). Analysis time: C {native.timer.phases['analysis']:.1f} s "
            f"on {threads} threads, numpy {numpy_made.timer.phases['analysis']:.1f} s.")


def run(out_dir: Path, smoke: bool, threads: int, log=print, timings: dict[str, dict[str, float]] | None = None) -> list[Run]:
    from gguf import GGUFReader

    from sfmp_gguf.allocation import allocate
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.bench.allocation import llama3_8b_shapes, synthetic_profiles
    from sfmp_gguf.bench.roundtrip import _sha256
    from sfmp_gguf.imatrix_io import run_imatrix
    from sfmp_gguf.llama.build import current_build

    calib = austen_texts().calib_text
    quantize = str(current_build().tool("llama-quantize"))
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-conversion-") as tmp_dir:
        tmp = Path(tmp_dir)
        short = tmp / "short.txt"
        short.write_text(calib.read_text(encoding="utf-8")[:SHORT_TEXT_CHARS], encoding="utf-8")
        for label, hf_dir, f32 in models(smoke):
            tensors = GGUFReader(f32).tensors
            weights = sum(int(t.n_elements) for t in tensors)
            largest = 4 * max(int(t.n_elements) for t in tensors)
            log(f"{label}: imatrix")
            imatrix = cached_file(f"conversion-imatrix-{label.split()[-1]}", _sha256(f32) + _sha256(calib), ".gguf",
                                  lambda p, f32=f32: run_imatrix(f32, calib, p, 512, IMATRIX_CHUNKS, threads))
            out = tmp / "out" / "model.gguf"
            out.parent.mkdir(exist_ok=True)
            convert = [sys.executable, str(CONVERTER), "-o", str(out), "--bpw", str(BPW), "--threads", str(threads)]
            cases = {
                "llama-quantize": [quantize, "--imatrix", str(imatrix), str(f32), str(out), "Q4_K_M", str(threads)],
                "sfmp GGUF": convert + [str(f32), "--imatrix", str(imatrix)],
                "sfmp HF": convert + [str(hf_dir), "--imatrix", str(imatrix)],
                "sfmp HF, imatrix from text": convert + [str(hf_dir), "--sensitivity", "imatrix", "--calib", str(short)],
            }
            for tool, cmd in cases.items():
                log(f"{label}: {tool}")
                warm(hf_dir if "HF" in tool else f32)
                seconds, rss, temp, stdout = measure(cmd, tmp / "tmpdir", out)
                runs.append(Run(label, tool, weights, largest, seconds, rss, temp, phases(stdout)))
                out.unlink(missing_ok=True)
                left = list(out.parent.iterdir()) + list((tmp / "tmpdir").iterdir())
                if left:
                    raise RuntimeError(f"{tool} left {left[0]} behind")

    log("the C analysis against the numpy analysis")
    agreement = same_allocations(threads, (4.5,) if smoke else (2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.5, 8.0))
    profiles = synthetic_profiles(llama3_8b_shapes())
    start = time.perf_counter()
    allocate(profiles, BPW)
    allocation = (f"Allocation on a synthetic Llama-3-8B inventory ({len(profiles)} tensors, "
                  f"{sum(p.n_weights for p in profiles) / 1e9:.2f}B weights): {1000 * (time.perf_counter() - start):.1f} ms.")
    machine = f"{date.today().isoformat()}, {cpu_name()}, {threads} threads"
    raw = {"machine": machine, "bpw": BPW, "runs": [asdict(r) for r in runs], "timings": timings or {},
           "allocation": allocation, "agreement": agreement}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "conversion.json", json.dumps(raw, indent=1))
    render(out_dir)
    return runs


def fit(xs: list[float], ys: list[float], at: float) -> float:
    """The least-squares line through (xs, ys), read at ``at``; a single point scales through zero."""
    if len(set(xs)) < 2:
        return ys[0] * at / xs[0]
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope * at + intercept)


def render(out_dir: Path) -> None:
    """conversion.md and conversion.png from conversion.json."""
    raw = json.loads((out_dir / "conversion.json").read_text())
    runs = [Run(**r) for r in raw["runs"]]
    by = {(r.model, r.tool): r for r in runs}
    labels = list(dict.fromkeys(r.model for r in runs))
    lines = [f"# Conversion cost\n\n{raw['machine']}. sfmp_to_gguf at {raw['bpw']} bpw against `llama-quantize "
             f"--imatrix` to Q4_K_M, the same imatrix (llama-imatrix, {IMATRIX_CHUNKS} chunks of 512 tokens of the "
             "calibration text), the input in the page cache. Throughput is weights per second over the whole run, "
             "start-up included; the "
             "ratio is against llama-quantize's. Peak RSS is each run's own process. Temporary disk is the most "
             "in use at once during a run with `--sensitivity imatrix` (the model copy llama-imatrix reads).\n",
             "| model | weights | largest tensor (f32) | llama-quantize | sfmp, F32 GGUF | ratio | sfmp, HF folder | "
             "ratio | peak RSS: llama-quantize / sfmp GGUF / sfmp HF | bound 3 x largest + 1 GiB | temporary disk |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for label in labels:
        q, g, h, t = (by[(label, tool)] for tool in ("llama-quantize", "sfmp GGUF", "sfmp HF", "sfmp HF, imatrix from text"))
        rate = lambda r: r.weights / r.seconds  # noqa: E731
        lines.append(
            f"| {label} | {q.weights / 1e9:.3f}B | {q.largest / GIB:.2f} GiB | {q.seconds:.1f} s | {g.seconds:.1f} s | "
            f"{rate(g) / rate(q):.2f} | {h.seconds:.1f} s | {rate(h) / rate(q):.2f} | {q.peak_rss / GIB:.2f} / "
            f"{g.peak_rss / GIB:.2f} / {h.peak_rss / GIB:.2f} GiB | {(3 * q.largest + GIB) / GIB:.2f} GiB | "
            f"{t.temp_bytes / t.weights:.2f} B/weight |")
    names = ("load", "importance", "analysis", "allocation", "quantize+write")
    lines += ["", "Converter phases (seconds) from its summary line:", "",
              "| model | run | " + " | ".join(names) + " | wall |", "|---|---|" + "---:|" * (len(names) + 1)]
    for r in runs:
        if r.phases:
            lines.append(f"| {r.model} | {r.tool} | " + " | ".join(f"{r.phases.get(n, 0.0):.1f}" for n in names) +
                         f" | {r.seconds:.1f} |")
    if len(labels) > 1:
        lines += ["", extrapolation(runs)]
    lines += ["", raw["agreement"], "", raw["allocation"]]
    if raw["timings"]:
        first = next(iter(raw["timings"].values()))
        lines += ["", "Converter phases on the teacher HF folder in the quality benchmark, per sensitivity (seconds; "
                  "allocation and quantize+write per output size):", "",
                  "| sensitivity | " + " | ".join(first) + " |", "|---|" + "---|" * len(first)]
        for sensitivity, times in raw["timings"].items():
            lines.append(f"| {sensitivity} | " + " | ".join(f"{v:.2f}" for v in times.values()) + " |")
    write_text(out_dir / "conversion.md", "\n".join(lines) + "\n")
    plot(runs, out_dir / "conversion.png")


def extrapolation(runs: list[Run]) -> str:
    """Time against weights and peak RSS against the largest tensor, fitted over the dense models
    (the deep twin shares its tensors with the 0.25B) and read at Llama-3-8B."""
    fitted = [r for r in runs if "deep" not in r.model]
    rows = []
    for tool in ("llama-quantize", "sfmp GGUF", "sfmp HF"):
        mine = [r for r in fitted if r.tool == tool]
        seconds = fit([r.weights for r in mine], [r.seconds for r in mine], LLAMA3_8B_WEIGHTS)
        rss = fit([r.largest for r in mine], [r.peak_rss for r in mine], LLAMA3_8B_LARGEST)
        rows.append(f"| {tool} | {seconds / 60:.1f} min | {rss / GIB:.2f} GiB |")
    return ("Extrapolated to Llama-3-8B (8.03B weights, a 2.0 GiB float32 token embedding; a straight line "
            "through the measured models: time against weights, peak RSS against the largest tensor):\n\n"
            "| tool | time | peak RSS |\n|---|---:|---:|\n" + "\n".join(rows) +
            f"\n\nThe bound for that model, 3 x largest tensor + 1 GiB: {(3 * LLAMA3_8B_LARGEST + GIB) / GIB:.2f} GiB.")


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for tool, marker in (("llama-quantize", "s"), ("sfmp GGUF", "o"), ("sfmp HF", "^")):
        mine = sorted((r for r in runs if r.tool == tool), key=lambda r: r.weights)
        left.plot([r.weights / 1e9 for r in mine], [r.weights / r.seconds / 1e6 for r in mine], marker=marker, label=tool)
        right.plot([r.weights / 1e9 for r in mine], [r.peak_rss / GIB for r in mine], marker=marker, label=tool)
    mine = sorted((r for r in runs if r.tool == "llama-quantize"), key=lambda r: r.weights)
    right.plot([r.weights / 1e9 for r in mine], [(3 * r.largest + GIB) / GIB for r in mine], ls="--", color="grey",
               label="bound: 3 x largest tensor + 1 GiB")
    left.set_ylabel("throughput (M weights/s)")
    right.set_ylabel("peak RSS (GiB)")
    for ax in (left, right):
        ax.set_xlabel("weights (billions)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Conversion cost against llama-quantize --imatrix Q4_K_M")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "the teacher alone (checks the pipeline, not the numbers)")
    args = parser.parse_args(argv)
    use_pinned_gguf_py()
    run(output_dir(parser, args), args.smoke, args.threads, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
