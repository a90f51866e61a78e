"""What the SFMP dot products cost on an ARM core, against llama.cpp's, by LLVM's llvm-mca.

Every kernel is built with the same cross compiler and flags (``aarch64-linux-gnu-gcc -O3
-march=armv8.2-a+dotprod``) into one static driver: llama.cpp's NEON ``ggml_vec_dot_{q4_0_q8_0,
q4_K_q8_K, iq4_xs_q8_K, q6_K_q8_K}`` (arch/arm/quants.c of the patched tree), the repacked GEMVs that
llama.cpp's CPU_REPACK buffer runs for Q4_0, Q4_K and Q6_K on a core with dotprod (``ggml_gemv_q4_0_4x4_q8_0``,
``ggml_gemv_q{4,6}_K_8x4_q8_K``, arch/arm/repack.cpp; REPACKED), our per-row
``sfmp_cpu_vec_dot_<type>`` (sfmp-cpu.c) and, for SFMP_X8, ``group_x8`` of sfmp-x8.c for one
activation column (matrix-vector; in the wide form for types with two-level activations, whose hi
and lo share the decode as two byte columns), 8 rows per call. The loop body is taken from an execution trace,
not from the assembly's layout: gcc places the upgraded paths out of line and keeps some sub-block
loops rolled, so a backward branch in the text does not delimit one block's work. The driver runs
under ``qemu-aarch64 -singlestep -d exec``, once per kernel, on ``4 * W`` weights (``W`` the weights
one iteration of the block loop handles, read off the C source: WEIGHTS). The block loop is a
backward jump taken once per iteration, 3 or 4 times (4 where gcc enters the loop in its middle),
the one with the longest iteration if several are; one iteration is the instructions executed
between its 1st and 2nd landing, with inner loops unrolled as run and the path
a block takes; calls (the per-row kernels' ``sfmp_fp16_to_fp32``) are traced too and counted as if
inlined, without the ``bl``/``ret``. Each weight byte has bit 7 set, so every SFMP sub-block a type may upgrade is
upgraded (U of 8, or U of 2): the slow path, at its real share. That straight-line block goes to
``llvm-mca -iterations=100``; Total Cycles / 100 is the iteration's steady-state throughput, scaled to
256 weights. LLVM 14 models Cortex-A76 (and X1, Neoverse-N1) with its Cortex-A57 scheduling model, so
the A76 column is that model; TSV110, an A76-class core with its own model, is a second opinion.
llvm-mca ignores branch prediction, caches and memory bandwidth: these are core-bound costs. Each SFMP
kernel is held against the llama.cpp kernel nearest in bpw of its kind (neighbours): per-row against
per-row, SFMP_X8 against what llama.cpp runs by default, the repacked GEMV where the type has one.
Writes ``bench-results/arm_cost.{md,json,png}``.

    python -m sfmp_gguf.bench.arm_cost [--out DIR] [--smoke]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import probe_main
from sfmp_gguf.bench.roundtrip import BenchError
from sfmp_gguf.format import SFMP_TYPES
from sfmp_gguf.paths import FILES_DIR, patched_tree

CC, CXX, QEMU, OBJDUMP, MCA = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64", "aarch64-linux-gnu-objdump",
                               "llvm-mca")
CFLAGS = ["-O3", "-march=armv8.2-a+dotprod", "-std=c11", "-D_GNU_SOURCE", "-DNDEBUG", "-w"]
CXXFLAGS = [*CFLAGS[:2], "-std=c++17", *CFLAGS[3:]]
CPUS = ("cortex-a76", "tsv110")
ITERATIONS = 4
# Stock kernels: (type, bpw, activation, weights per block-loop iteration). q4_0: `ib += 2` over
# 32-weight blocks; the K-quants: one 256-weight super-block per `i`, inner loops unrolled by hand.
STOCK = {"ggml_vec_dot_q4_0_q8_0": ("Q4_0", 4.5, "Q8_0", 64), "ggml_vec_dot_q4_K_q8_K": ("Q4_K", 4.5, "Q8_K", 256),
         "ggml_vec_dot_iq4_xs_q8_K": ("IQ4_XS", 4.25, "Q8_K", 256),
         "ggml_vec_dot_q6_K_q8_K": ("Q6_K", 6.5625, "Q8_K", 256)}
# llama.cpp's repacked GEMVs, which its CPU_REPACK buffer picks for these types on a core with dotprod
# (repack.cpp, ggml_repack_get_optimal_repack_type), driven through a vec_dot-shaped wrapper for `rows`
# interleaved rows: (type, bpw, activation, weights per block-loop iteration, rows, gemv).
REPACKED = {"repack_q4_0_4x4": ("Q4_0", 4.5, "Q8_0", 4 * 32, 4, "ggml_gemv_q4_0_4x4_q8_0"),
            "repack_q4_K_8x4": ("Q4_K", 4.5, "Q8_K", 8 * 256, 8, "ggml_gemv_q4_K_8x4_q8_K"),
            "repack_q6_K_8x4": ("Q6_K", 6.5625, "Q8_K", 8 * 256, 8, "ggml_gemv_q6_K_8x4_q8_K")}
# SFMP: row_k_neon / row_s_neon take one block (256 / 64) per `i`; group_k / group_s one x8 block:
# 8 rows of one block each, for one column.
WEIGHTS = {("row", 256): 256, ("row", 64): 64, ("x8", 256): 8 * 256, ("x8", 64): 8 * 64}

# A type with two-level activations takes them in their wide form, as the SFMP_X8 buffer calls it
# (on NEON: hi and lo as two byte columns sharing the decode).
X8_WRAPPER = r"""#include "sfmp-x8.c"
static sfmp_x8_act acts[4096];
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) \
void x8_##lname(int n, float *s, size_t bs_, const void *vx, size_t bx, const void *vy, size_t by, int nrc) { \
    columns_x8 cols = {{(const uint8_t *) vy}, {acts}, {s}}; \
    group_x8((bs), (budget) / (nsub), (budget) % (nsub), (grid) == SFMP_GRID_NONLINEAR, SFMP_FINE_ACTIVATIONS(nsub, budget), \
             n / (bs), (const uint8_t *) vx, &cols, 1, 0); }
#include "ggml-sfmp-types.inc"
"""
REPACK_WRAPPER = r"""#include <stddef.h>
#define G(wrapper, gemv, rows) \
void gemv(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc); \
void wrapper(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) { \
    gemv(n, s, rows, vx, vy, 1, rows); }
"""
DRIVER = r"""#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef void (*fn_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
#define K(f) void f(int, float *, size_t, const void *, size_t, const void *, size_t, int);
STOCK_DECLS
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) K(sfmp_cpu_vec_dot_##lname) K(x8_##lname)
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
static const struct { const char * name; fn_t f; } T[] = {
STOCK_ENTRIES
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) \
    {"sfmp_cpu_vec_dot_" #lname, sfmp_cpu_vec_dot_##lname}, {"x8_" #lname, x8_##lname},
#include "ggml-sfmp-types.inc"
};
static uint8_t X[1 << 16] __attribute__((aligned(64))), Y[1 << 16] __attribute__((aligned(64)));
int main(int argc, char ** argv) {
    uint32_t r = 1;
    for (int i = 0; i < (1 << 16); ++i) {  /* bit 7 set: every SFMP upgrade flag raised */
        r = r * 1664525u + 1013904223u;
        X[i] = (uint8_t) (r >> 24 | 0x80);
        Y[i] = (uint8_t) (r >> 16);
    }
    float s[8];
    for (size_t k = 0; k < sizeof(T) / sizeof(T[0]); ++k) {
        if (argc == 3 && !strcmp(argv[1], T[k].name)) {
            T[k].f(atoi(argv[2]), s, 0, X, 0, Y, 0, 1);
            return 0;
        }
    }
    return 1;
}
"""


def sh(cmd: list, **kw) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if done.returncode:
        raise BenchError(f"{Path(str(cmd[0])).name} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout


def build(tmp: Path, log) -> Path:
    """The static aarch64 driver with every kernel."""
    tree = patched_tree() / "ggml"
    if not (tree / "src/ggml-cpu/arch/arm/quants.c").is_file():
        raise BenchError(f"no patched llama.cpp tree at {tree.parent} (build llama.cpp first)")
    ours = [f"-I{FILES_DIR / d}" for d in ("ggml/include", "ggml/src/sfmp", "ggml/src/ggml-cpu/sfmp")]
    stock = [f"-I{tree / d}" for d in ("include", "src", "src/ggml-cpu")]
    (tmp / "x8wrap.c").write_text(X8_WRAPPER)
    (tmp / "repackwrap.c").write_text(REPACK_WRAPPER + "".join(f"G({w}, {r[5]}, {r[4]})\n" for w, r in REPACKED.items()))
    (tmp / "driver.c").write_text(DRIVER.replace("STOCK_DECLS", "".join(f"K({f})\n" for f in (*STOCK, *REPACKED))).replace(
        "STOCK_ENTRIES", "".join(f'    {{"{f}", {f}}},\n' for f in (*STOCK, *REPACKED))))
    sources = [(tree / "src/ggml-cpu/arch/arm/quants.c", stock), (tree / "src/ggml-cpu/arch/arm/repack.cpp", stock),
               (FILES_DIR / "ggml/src/sfmp/sfmp-quants.c", ours), (FILES_DIR / "ggml/src/ggml-cpu/sfmp/sfmp-cpu.c", ours),
               (tmp / "x8wrap.c", ours), (tmp / "repackwrap.c", ours), (tmp / "driver.c", ours)]
    objects = []
    for src, inc in sources:  # one compiler at a time
        log(f"compile {src.name}")
        objects.append(tmp / (src.stem + ".o"))
        compiler = [CXX, *CXXFLAGS] if src.suffix == ".cpp" else [CC, *CFLAGS]
        sh([*compiler, *inc, "-c", src, "-o", objects[-1]])
    sh([CXX, "-static", *objects, "-o", tmp / "driver", "-lm", "-Wl,--unresolved-symbols=ignore-all"])
    return tmp / "driver"


def disassembly(binary: Path, start: int, end: int) -> tuple[dict[int, str], set[str]]:
    """Address -> instruction text, as llvm-mca reads it (branch targets become `.`), and the callees."""
    out, callees = {}, set()
    for line in sh([OBJDUMP, "-d", "--no-show-raw-insn", f"--start-address={start:#x}", f"--stop-address={end:#x}",
                    binary]).splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\t(\S+)\s*(.*)$", line)
        if m:
            ops = re.sub(r"\s*(//.*|<[^>]*>)", "", m.group(3)).strip()
            if "<" in m.group(3).split("//")[0]:  # a pc-relative target, shown as address <symbol>
                ops = re.sub(r"(^|,\s*)[0-9a-f]+$", r"\1.", ops)
            out[int(m.group(1), 16)] = f"{m.group(2)} {ops}".strip()
            if m.group(2) in ("bl", "b") and "+" not in m.group(3):  # a call, or a tail call
                callees.add(re.search(r"<([^>+]+)", m.group(3)).group(1))
    return out, callees


def one_iteration(binary: Path, name: str, symbols: dict, n: int, tmp: Path, traced: str | None = None
                  ) -> tuple[list[str], str]:
    """The instructions one block-loop iteration executes on rows of ``n`` weights when the driver runs
    ``name``, and where that loop is: in ``name`` itself, or in the function ``traced`` it calls."""
    traced = traced or name
    part, callees = disassembly(binary, symbols[traced][0], sum(symbols[traced]))
    if len(part) == 1 and callees:  # folded by gcc into an identical kernel: `b other`
        body, loop = one_iteration(binary, callees.pop(), symbols, n, tmp)
        return body, f"{name} = {loop}"
    start, size = symbols[traced]
    text, todo, ranges = {}, [traced], []
    while todo:  # the kernel and what it calls (sfmp_fp16_to_fp32, ...), traced as if inlined
        f = todo.pop()
        ranges.append(symbols[f])
        part, callees = disassembly(binary, symbols[f][0], sum(symbols[f]))
        text.update(part)
        todo += [c for c in callees if c in symbols and symbols[c] not in ranges and c not in todo]
    logfile = tmp / "trace.log"
    sh([QEMU, "-singlestep", "-d", "exec,nochain", "-dfilter", ",".join(f"{a:#x}+{b:#x}" for a, b in ranges),
        "-D", logfile, binary, name, n])
    pcs = [int(m.group(1), 16) for m in re.finditer(r"Trace .*?\[[0-9a-f]+/([0-9a-f]+)/", logfile.read_text())]
    jumps: dict[tuple[int, int], list[int]] = {}
    for i in range(1, len(pcs)):
        if start <= pcs[i] <= pcs[i - 1] < start + size:
            jumps.setdefault((pcs[i - 1], pcs[i]), []).append(i)
    # Once per iteration: k - 1 times, or k where the loop is entered in its middle.
    loops = [(src, dst) for (src, dst), at in jumps.items() if len(at) in (ITERATIONS - 1, ITERATIONS)]
    if not loops:
        raise BenchError(f"{name}: no backward jump taken {ITERATIONS - 1} or {ITERATIONS} times on rows of {n} weights")
    src, dst = max(loops, key=lambda e: (jumps[e][1] - jumps[e][0], e[0] - e[1]))  # the longest iteration
    at = jumps[(src, dst)]
    body = [text[pc] for pc in pcs[at[0]:at[1]] if text[pc].split()[0] not in ("bl", "blr", "ret")]
    return body, f"{traced}+{dst - start:#x}..+{src - start:#x}"


def mca(body: list[str], cpu: str, tmp: Path) -> float:
    """Cycles per iteration of ``body`` in llvm-mca's steady state."""
    (tmp / "loop.s").write_text("\n".join(body) + "\n")
    out = sh([MCA, "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", "-mattr=+dotprod,+fullfp16", "-iterations=100",
              tmp / "loop.s"])
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / 100


def kernels(smoke: bool) -> list[dict]:
    rows = [dict(kernel=f, type=t, bpw=b, activation=a, weights=w, rows=1, family="stock") for f, (t, b, a, w) in STOCK.items()]
    rows += [dict(kernel=f, type=t, bpw=b, activation=a, weights=w, rows=r, family="repack", traced=gemv)
             for f, (t, b, a, w, r, gemv) in REPACKED.items()]
    types = [t for t in SFMP_TYPES if t.name in ("sfmp400_s", "sfmp425_k")] if smoke else SFMP_TYPES
    for family, prefix in (("row", "sfmp_cpu_vec_dot_"), ("x8", "x8_")):
        rows += [dict(kernel=prefix + t.name, type=t.name, bpw=t.bpw, activation=t.variant.activation,
                      weights=WEIGHTS[(family, t.block_size)], rows=8 if family == "x8" else 1, family=family)
                 for t in types]
    return rows


def neighbours(rows: list[dict], family: str) -> list[dict]:
    """The llama.cpp kernels an SFMP kernel of ``family`` is held against: per row, llama.cpp's per-row
    kernels; interleaved (x8), what llama.cpp runs by default: its repacked GEMV where the type has one."""
    repacked = {r["type"] for r in rows if r["family"] == "repack"}
    if family == "x8":
        return [r for r in rows if r["family"] == "repack" or (r["family"] == "stock" and r["type"] not in repacked)]
    return [r for r in rows if r["family"] == "stock"]


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    missing = [tool for tool in (CC, CXX, QEMU, OBJDUMP, MCA) if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"needs {', '.join(missing)} on PATH (apt: gcc-aarch64-linux-gnu qemu-user llvm)")
    rows = kernels(smoke)
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-arm-") as name:
        tmp = Path(name)
        binary = build(tmp, log)
        symbols = {}
        for line in sh(["aarch64-linux-gnu-nm", "-S", binary]).splitlines():
            parts = line.split()
            if len(parts) == 4:
                symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        for row in rows:
            n = ITERATIONS * row["weights"] // row["rows"]  # n is one row's length
            body, row["loop"] = one_iteration(binary, row["kernel"], symbols, n, tmp, row.get("traced"))
            row["instructions"] = len(body)
            row["cycles_256"] = {cpu: mca(body, cpu, tmp) * 256 / row["weights"] for cpu in CPUS}
            log(f"{row['kernel']}: {row['loop']}, {len(body)} instructions, "
                f"{row['cycles_256'][CPUS[0]]:.1f} cycles / 256 weights")
    candidates = {family: neighbours(rows, family) for family in {r["family"] for r in rows}}
    for row in rows:  # nearest stock bpw; ties go to the same activation type
        near = min(candidates[row["family"]],
                   key=lambda s: (abs(s["bpw"] - row["bpw"]), s["activation"] != row["activation"]))
        row["neighbour"] = near["type"] + (" repacked" if near["family"] == "repack" else "")
        row["ratio"] = {cpu: row["cycles_256"][cpu] / near["cycles_256"][cpu] for cpu in CPUS}
    compiler = sh([CC, "--version"]).splitlines()[0]
    setup = (f"{compiler}, `{' '.join(CFLAGS[:2])}`; llvm-mca {' / '.join(CPUS)} (LLVM 14: Cortex-A76 uses its "
             f"Cortex-A57 model); one block-loop iteration from a qemu trace, every SFMP upgrade taken; "
             f"matrix-vector (1 column); {date.today().isoformat()}.")
    raw = {"setup": setup, "kernels": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "arm_cost.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> str:
    """arm_cost.md and arm_cost.png from arm_cost.json; returns the table."""
    raw = json.loads((out_dir / "arm_cost.json").read_text())
    rows = raw["kernels"]
    table = ["| kernel | type | bpw | loop instructions | weights per iteration | cycles / 256 weights, A76 (A57 model) "
             "| cycles / 256 weights, TSV110 | stock neighbour | ratio, A76 | ratio, TSV110 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cycles_256"]
        vs = " | | " if r["family"] in ("stock", "repack") else \
            f"{r['neighbour']} | {r['ratio'][CPUS[0]]:.2f}x | {r['ratio'][CPUS[1]]:.2f}x"
        table.append(f"| {r['kernel']} | {r['type']} | {r['bpw']:.4g} | {r['instructions']} | {r['weights']} | "
                     f"{c[CPUS[0]]:.1f} | {c[CPUS[1]]:.1f} | {vs} |")
    loops = "\n".join(f"- `{r['kernel']}`: `{r['loop']}`" for r in rows)
    text = "\n".join(table) + "\n"
    write_text(out_dir / "arm_cost.md", "# SFMP and llama.cpp dot products on ARM, by llvm-mca\n\n" + raw["setup"] +
               "\n\n" + text + "\n![cycles per 256 weights](arm_cost.png)\n\nBlock loops (first..last address of "
               "the traced loop):\n\n" + loops + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"row": ("o", "SFMP per row"), "x8": ("s", "SFMP_X8 (8 rows, 1 column)"), "stock": ("*", "llama.cpp per row"),
              "repack": ("P", "llama.cpp repacked")}
    for family, (marker, label) in styles.items():
        sel = [r for r in rows if r["family"] == family]
        ax.scatter([r["bpw"] for r in sel], [r["cycles_256"][CPUS[0]] for r in sel], marker=marker, label=label,
                   s=90 if family in ("stock", "repack") else 25)
        if family in ("stock", "repack"):
            for r in sel:
                ax.annotate(r["type"], (r["bpw"], r["cycles_256"][CPUS[0]]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("cycles per 256 weights (llvm-mca)")
    ax.set_title("Dot-product cost on Cortex-A76 (LLVM 14's A57 model), matrix-vector", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_dir / "arm_cost.png")
    return text


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, run, "arm_cost.md")


if __name__ == "__main__":
    sys.exit(main())
