"""SFMP_X8's kernel alone: microseconds per kernel call for every uniform ``_k`` rung.

One 512 x 1536 tensor of heavy-tailed weights, quantized to each type and interleaved, against 1 and
8 activation rows: generation and prompt processing. It stays in cache, so this measures the kernel's
arithmetic, without the memory traffic and the noise of a whole model run. Types with two-level
activations take them as the buffer does: in the wide form (``sfmp_x8_mul_mat_wide``), or, in a
library from before it, as two 8-bit columns per row, hi and lo. Each figure is the best of 5 batches
of 20 calls in each of 3 sweeps over the types, every library timed on a type before the next
(``measure``). The kernel libraries are this build's plain-AVX2, AVX512-VNNI and AVX-VNNI ones (each
VNNI one where the host runs it); ``--library NAME=PATH`` adds another, for example one built from an
older commit. Writes ``bench-results/x8_kernel.{md,png}``.

    python -m sfmp_gguf.bench.x8_kernel [--library NAME=PATH ...] [--smoke --out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from sfmp_gguf.bench import add_output_args, cpu_name, output_dir, speed
from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.format import SFMP_TYPES
from sfmp_gguf.quant import activations

ROWS, N = 512, 1536
COLUMNS = (1, 8)
BATCHES, CALLS, SWEEPS = 5, 20, 3
RUNGS = tuple(t for t in SFMP_TYPES if t.name in speed.RUNGS)


def default_libraries() -> dict[str, Path]:
    """This build's kernel libraries, named by their SFMP_X8 path. The build makes each VNNI one only
    where the host runs its code (CMakeLists.txt)."""
    from sfmp_gguf import kernels
    from sfmp_gguf.llama.build import current_build

    build = current_build()
    found = [path for path in (build.kernel_library, build.kernel_library_vnni, build.kernel_library_avx_vnni)
             if path.is_file()]
    return {kernels.load(path).x8_path: path for path in found}


class Case:
    """One type's interleaved tensor and prepared activations, for one kernel library: ``pairs`` are
    two-level rows, of which types with 8-bit activations take the hi level."""

    def __init__(self, lib, t, x: np.ndarray, pairs: np.ndarray):
        ffi, c = lib.ffi, lib.lib
        self.packed = lib.x8_pack(lib.quantize(x, t), t)
        levels = pairs.view(activations.Q8_K).reshape(len(pairs), -1, 2)
        wide = t.fine_activations and hasattr(c, "sfmp_x8_mul_mat_wide")
        if wide:
            rows = pairs
        elif t.fine_activations:  # a library without the wide form: hi and lo as two 8-bit columns
            rows = np.stack([levels[k, :, level] for k in range(len(pairs)) for level in (0, 1)]).view(np.uint8)
        else:
            rows = np.ascontiguousarray(levels[:, :, 0]).view(np.uint8)
        self.rows, self.prepared = lib.x8_prepare(rows, t, N, wide)
        self.out = np.zeros((len(self.rows), ROWS), np.float32)
        self.args = (ffi.new("void *[]", [lib._ptr(a, "void *") for a in self.rows]), ffi.new("sfmp_x8_act *[]", self.prepared),
                     ffi.new("float *[]", [lib._ptr(o, "float *") for o in self.out]))
        kernel = c.sfmp_x8_mul_mat_wide if wide else c.sfmp_x8_mul_mat
        per_row = 2 if t.fine_activations and not wide else 1
        self.call = lambda ncols: kernel(t.type_id, N, lib._ptr(self.packed, "void *"), 0, ROWS // 8, per_row * ncols, *self.args)

    def seconds(self, ncols: int) -> float:
        best = float("inf")
        for _ in range(BATCHES):
            start = time.perf_counter()
            for _ in range(CALLS):
                self.call(ncols)
            best = min(best, time.perf_counter() - start)
        return best / CALLS


def measure(libraries: dict[str, Path], types, sweeps: int = SWEEPS) -> dict[str, dict[str, dict[int, float]]]:
    """Microseconds per call, by library, type and activation rows: the best of ``sweeps`` sweeps,
    each timing every library on a type before the next type, so that a slow spell of the machine
    spreads over all of them."""
    from sfmp_gguf import kernels

    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, size=(ROWS, N)) * 0.02).astype(np.float32)
    libs = {name: kernels.load(path) for name, path in libraries.items()}
    fine = next(t for t in SFMP_TYPES if t.fine_activations and t.block_size == 256)
    first = next(iter(libs.values()))
    pairs = np.stack([first.two_level_activations(rng.standard_t(5, size=N).astype(np.float32), fine)
                      for _ in range(max(COLUMNS))])
    cases = {(name, t.name): Case(lib, t, x, pairs) for name, lib in libs.items() for t in types}
    times = {name: {t.name: {c: float("inf") for c in COLUMNS} for t in types} for name in libs}
    for _ in range(sweeps):
        for t in types:
            for name in libs:
                for ncols in COLUMNS:
                    times[name][t.name][ncols] = min(times[name][t.name][ncols], cases[(name, t.name)].seconds(ncols) * 1e6)
    return times


def markdown(times: dict[str, dict[str, dict[int, float]]], setup: str) -> str:
    names = list(times)
    head = "| type | " + " | ".join(f"{n}, {c} row{'s' * (c > 1)} (us)" for n in names for c in COLUMNS) + " |"
    lines = ["# SFMP_X8 kernel per call", "", setup, "", head, "|---" * (1 + len(names) * len(COLUMNS)) + "|"]
    for t in next(iter(times.values())):
        lines.append(f"| {t} | " + " | ".join(f"{times[n][t][c]:.1f}" for n in names for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n\n![per call](x8_kernel.png)\n"


def plot(times: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = COLUMNS
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4))
    types = list(next(iter(times.values())))
    width = 0.8 / len(times)
    for ax, ncols in zip(axes, shown):
        for k, (name, by_type) in enumerate(times.items()):
            ax.bar(np.arange(len(types)) + k * width, [by_type[t][ncols] for t in types], width, label=name)
        ax.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"microseconds per call, {ncols} activation rows")
        ax.set_title(f"SFMP_X8 kernel, {ROWS} x {N} weights in cache, {ncols} activation rows", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run(out_dir: Path, smoke: bool, extra: dict[str, Path] | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """Time every library on every rung (smoke: one library, two rungs) into ``out_dir``/x8_kernel.md."""
    libraries = {**default_libraries(), **(extra or {})}
    if smoke:
        libraries = dict(list(libraries.items())[:1])
    times = measure(libraries, RUNGS[3:5] if smoke else RUNGS)
    setup = (f"{ROWS} x {N} weights (Student-t, 3 degrees of freedom) per type, {', '.join(map(str, COLUMNS[:-1]))} and {COLUMNS[-1]} "
             f"activation rows (two-level from sfmp525_k up), best of {BATCHES} batches of {CALLS} calls in each of {SWEEPS} sweeps; "
             f"{date.today().isoformat()}, {cpu_name()}; libraries: "
             + ", ".join(f"{n} = `{p}`" for n, p in libraries.items()) + ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "x8_kernel.md", markdown(times, setup))
    plot(times, out_dir / "x8_kernel.png")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "two types, one library")
    parser.add_argument("--library", action="append", default=[], metavar="NAME=PATH",
                        help="another kernel library to time (repeatable)")
    args = parser.parse_args(argv)
    out = output_dir(parser, args)
    extra = {}
    for item in args.library:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"error: --library {item}: expected NAME=PATH of an existing library", file=sys.stderr)
            return 1
        extra[name] = Path(path)
    run(out, args.smoke, extra)
    print((out / "x8_kernel.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
