"""Speed through llama.cpp's RPC backend: an SFMP file and its stock neighbour, local and remote.

A ggml-rpc-server on 127.0.0.1 (the same machine: the figures show the backend's own cost, not a
network's) holds every layer (``-ngl 99``). The server allocates weights in the CPU backend's default
buffer, never in an extra buffer type, so neither llama.cpp's repacking (CPU_REPACK) nor SFMP_X8
runs there; the local runs are shown with and without them (``--repack 1/0``).

    python -m sfmp_gguf.bench.rpc [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import cpu_name, grouped_bars, probe_main
from sfmp_gguf.bench.roundtrip import quantize_model
from sfmp_gguf.bench.speed import bench_files
from sfmp_gguf.llama.build import current_build
from sfmp_gguf.llama.rpc import rpc_server
from sfmp_gguf.paths import cache_dir

PAIRS = (("Q4_K", "sfmp425_k"), ("Q6_K", "sfmp625_k"))
RUNS = {"local": ("--repack", "1"), "local, no repacking": ("--repack", "0")}


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    from sfmp_gguf.assets.cache import artifact_files
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import ARTIFACT, GGUF_NAME, teacher

    model, model_sha, imatrix = teacher().gguf_path, artifact_files(ARTIFACT)[GGUF_NAME], teacher_imatrix()
    pairs = PAIRS[:1] if smoke else PAIRS
    prompt, gen, reps = (16, 4, 1) if smoke else (512, 128, 3)
    files = {name: quantize_model(model, model_sha, imatrix, name, cache_dir() / "bench", threads)
             for pair in pairs for name in pair}
    log("local runs")
    speeds = {label: bench_files(files, prompt, gen, reps, threads, extra) for label, extra in RUNS.items()}
    log("through RPC")
    with rpc_server(current_build().tool("ggml-rpc-server"), threads) as address:
        speeds["through RPC"] = bench_files(files, prompt, gen, reps, threads, ("--rpc", address, "-ngl", "99"))
    setup = (f"llama-bench -t {threads} -p {prompt} -n {gen} -r {reps}; the server on the same machine with "
             f"{threads} threads; teacher SmolLM2-135M quantized with `llama-quantize --pure --imatrix`; "
             f"{date.today().isoformat()}, {cpu_name()}.")
    raw = {"setup": setup, "pairs": [list(p) for p in pairs],
           "sizes": {name: path.stat().st_size for name, path in files.items()},
           "speeds": {label: {name: list(v) for name, v in s.items()} for label, s in speeds.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "rpc.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> str:
    """rpc.md and rpc.png from rpc.json; returns the table."""
    raw = json.loads((out_dir / "rpc.json").read_text())
    speeds, sizes = raw["speeds"], raw["sizes"]
    labels = list(speeds)
    table = ["| file | size (MiB) | " + " | ".join(f"pp / tg, {label}" for label in labels) +
             " | RPC / local (pp, tg) |", "|---|---|" + "---|" * len(labels) + "---|"]
    names = [name for pair in raw["pairs"] for name in pair]
    for name in names:
        cells = [f"{speeds[label][name][0]:.1f} / {speeds[label][name][1]:.1f}" for label in labels]
        remote, local = speeds["through RPC"][name], speeds["local"][name]
        table.append(f"| {name} | {sizes[name] / 2**20:.1f} | " + " | ".join(cells) +
                     f" | {remote[0] / local[0]:.2f}, {remote[1] / local[1]:.2f} |")
    table += ["", "| SFMP / stock, both through RPC | pp | tg |", "|---|---|---|"]
    for stock, sfmp in raw["pairs"]:
        a, b = speeds["through RPC"][stock], speeds["through RPC"][sfmp]
        table.append(f"| {sfmp} / {stock} | {b[0] / a[0]:.2f} | {b[1] / a[1]:.2f} |")
    text = "\n".join(table) + "\n"
    write_text(out_dir / "rpc.md", "# Speed through llama.cpp's RPC backend\n\n" + raw["setup"] + "\n\n"
               "Tokens per second: pp512 / tg128.\n\n" + text + "\n![tokens per second](rpc.png)\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k, label in ((axes[0], 0, "pp tokens/s"), (axes[1], 1, "tg tokens/s")):
        grouped_bars(ax, names, {run: [speeds[run][n][k] for n in names] for run in labels})
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel(label)
    fig.suptitle("Local and through llama.cpp's RPC backend (demo model)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_dir / "rpc.png")
    return text


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, run, "rpc.md")


if __name__ == "__main__":
    sys.exit(main())
