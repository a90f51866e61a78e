"""Quality at equal size: KL divergence to the F32 teacher, SFMP against llama.cpp's own types.

llama.cpp: Q2_K ... Q8_0 (its mixed presets, not --pure), each without and with the teacher's
imatrix; cached like the round-trip files. SFMP: the converter at eight sizes with each
sensitivity (weights, imatrix, fisher), each analysed once and written at every size. Every file is
scored by ``llama-perplexity --kl-divergence`` against the teacher's logits at -c 512 over at least
10k scored tokens of the evaluation text: mean KLD, PPL ratio and same-top-token share.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench.roundtrip import BenchError, _sha256, quantize_model
from sfmp_gguf.paths import cache_dir

STOCK = ("Q2_K", "IQ3_S", "Q3_K_M", "IQ4_XS", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
SFMP_BPW = (2.75, 3.25, 3.75, 4.25, 4.75, 5.5, 6.5, 8.0)
SENSITIVITIES = ("weights", "imatrix", "fisher")
UNIFORM_TWINS = ("fisher",)  # also written on the uniform grid alone: the grid comparison
CTX, CHUNKS = 512, 40  # 40 chunks score 40 * 255 = 10,200 tokens


@dataclass(frozen=True)
class Score:
    label: str
    family: str
    size: int  # bytes
    bpw: float  # whole file
    kld: float
    ppl_ratio: float
    top1: float  # share of tokens whose most likely token matches the teacher's


def _perplexity(model: Path, text: Path, extra: list[str], ctx: int, chunks: int, threads: int) -> str:
    from sfmp_gguf.llama.build import current_build

    cmd = [str(current_build().tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", str(ctx),
           "-b", str(max(ctx, 512)), "--chunks", str(chunks), "-t", str(threads), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"llama-perplexity {model.name} failed (exit {result.returncode}): {tail}")
    return result.stdout + result.stderr


def teacher_logits(model: Path, text: Path, ctx: int, chunks: int, threads: int) -> Path:
    """The teacher's logits over the evaluation chunks, saved once (llama-perplexity's base file)."""
    key = hashlib.sha256(f"{_sha256(model)} {_sha256(text)} {ctx} {chunks}".encode()).hexdigest()[:16]
    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"kld-base-{key}.bin"
    if not out.is_file():
        tmp = folder / f".{out.name}.tmp"
        _perplexity(model, text, ["--kl-divergence-base", str(tmp)], ctx, chunks, threads)
        tmp.replace(out)
    return out


def score(model: Path, base: Path, text: Path, label: str, family: str, n_weights: int,
          ctx: int, chunks: int, threads: int) -> Score:
    log = _perplexity(model, text, ["--kl-divergence-base", str(base), "--kl-divergence"], ctx, chunks, threads)

    def grab(pattern: str) -> float:
        m = re.search(pattern, log)
        if not m:
            raise BenchError(f"llama-perplexity {model.name}: no '{pattern}' in its output")
        return float(m.group(1))

    size = model.stat().st_size
    return Score(label, family, size, size * 8 / n_weights, grab(r"Mean\s+KLD:\s+([-\d.e]+)"),
                 grab(r"Mean\s+PPL\(Q\)/PPL\(base\)\s*:\s*([-\d.e]+)"), grab(r"Same top p:\s*([-\d.e]+)") / 100)


def stock_scores(teacher_gguf: Path, imatrix: Path, types: tuple[str, ...], base: Path, text: Path, n_weights: int,
                 ctx: int, chunks: int, threads: int, log=print) -> list[Score]:
    folder = cache_dir() / "bench"
    sha = _sha256(teacher_gguf)
    scores = []
    for with_imatrix in (False, True):
        family = "llama.cpp + imatrix" if with_imatrix else "llama.cpp"
        for qtype in types:
            log(f"{family} {qtype}")
            path = quantize_model(teacher_gguf, sha, imatrix if with_imatrix else None, qtype, folder,
                                  threads, pure=False)
            scores.append(score(path, base, text, qtype, family, n_weights, ctx, chunks, threads))
    return scores


def sfmp_scores(hf_dir: Path, imatrix: Path, calib: Path, sizes: tuple[float, ...], sensitivities: tuple[str, ...],
                base: Path, text: Path, n_weights: int, ctx: int, chunks: int, threads: int,
                uniform_twins: tuple[str, ...] = (), log=print) -> tuple[list[Score], dict[str, dict[str, float]]]:
    """Scores, and the converter's phase times per sensitivity (allocation: the mean per size). The
    sensitivities in ``uniform_twins`` are also written with the uniform grid only: the grid comparison
    at equal size."""
    from sfmp_gguf import allocation, analysis, pipeline  # the caller has set up the pinned gguf-py
    from sfmp_gguf.format import GRID_UNIFORM, GRIDS

    scores, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-") as tmp:
        for sensitivity in sensitivities:
            log(f"SFMP {sensitivity}: analysis")
            prepared = pipeline.prepare(hf_dir, sensitivity, imatrix if sensitivity == "imatrix" else None,
                                        calib if sensitivity == "fisher" else None, threads)
            families = [(f"SFMP {sensitivity}", GRIDS)]
            if sensitivity in uniform_twins:
                families.append((f"SFMP {sensitivity} uniform grid", (GRID_UNIFORM,)))
            for bpw in sizes:
                for family, grids in families:
                    log(f"{family} {bpw} bpw")
                    out = Path(tmp) / f"sfmp-{sensitivity}-{len(grids)}-{bpw}.gguf"
                    start = time.monotonic()
                    plan = allocation.allocate([analysis.on_grids(p, grids) for p in prepared.profiles], bpw)
                    prepared.timer.add("allocation", start)
                    pipeline.write(prepared, plan, out, threads)
                    scores.append(score(out, base, text, f"{bpw:g}", family, n_weights, ctx, chunks, threads))
                    out.unlink()
            phases = dict(prepared.timer.phases)
            phases["allocation"] /= len(sizes) * len(families)
            phases["quantize+write"] /= len(sizes) * len(families)
            timings[sensitivity] = phases
    return scores, timings


def markdown(scores: list[Score], title: str, setup: str) -> str:
    lines = [f"# {title}", "", setup, "",
             "| family | type / target | size (MiB) | bpw (file) | mean KLD | PPL ratio | same top token |",
             "|---|---|---|---|---|---|---|"]
    for s in sorted(scores, key=lambda s: (s.family, s.size)):
        lines.append(f"| {s.family} | {s.label} | {s.size / 2**20:.1f} | {s.bpw:.3f} | {s.kld:.5f} | "
                     f"{s.ppl_ratio:.4f} | {s.top1:.2%} |")
    return "\n".join(lines) + "\n"


def versus_stock(scores: list[Score]) -> list[tuple[Score, Score | None, float | None]]:
    """Each SFMP file against llama.cpp's nearest file at the same or larger size: the smallest such
    file, and of the types at that size (with or without imatrix) the one with the lowest KLD."""
    stock = [s for s in scores if s.family.startswith("llama.cpp")]
    rows = []
    for s in sorted((s for s in scores if s.family.startswith("SFMP")), key=lambda s: (s.family, s.size)):
        larger = [r for r in stock if r.size >= s.size]
        if not larger:
            rows.append((s, None, None))
            continue
        nearest = min(r.size for r in larger)
        best = min((r for r in larger if r.size <= nearest * 1.01), key=lambda r: r.kld)
        rows.append((s, best, s.kld / best.kld))
    return rows


def target_table(scores: list[Score]) -> str:
    lines = ["| SFMP file | size (MiB) | KLD | nearest llama.cpp at >= size (best of its size) | its KLD | "
             "KLD ratio (target <= 0.5) |", "|---|---|---|---|---|---|"]
    for s, best, ratio in versus_stock(scores):
        rival = f"{best.label} ({best.family}, {best.size / 2**20:.1f} MiB) | {best.kld:.5f}" if best else "none | -"
        lines.append(f"| {s.family} {s.label} | {s.size / 2**20:.1f} | {s.kld:.5f} | {rival} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def grid_table(scores: list[Score]) -> str:
    """Both grids (the allocator's pick per tensor) against the uniform grid alone, at each target."""
    lines = ["| sensitivity | target bpw | size both / uniform (MiB) | KLD both grids | KLD uniform grid | ratio |",
             "|---|---|---|---|---|---|"]
    for twin in sorted({s.family for s in scores if s.family.endswith(" uniform grid")}):
        family = twin.removesuffix(" uniform grid")
        uniform = {s.label: s for s in scores if s.family == twin}
        for s in sorted((s for s in scores if s.family == family and s.label in uniform), key=lambda s: s.size):
            u = uniform[s.label]
            lines.append(f"| {family.removeprefix('SFMP ')} | {s.label} | {s.size / 2**20:.1f} / {u.size / 2**20:.1f} | "
                         f"{s.kld:.5f} | {u.kld:.5f} | {s.kld / u.kld:.2f} |")
    return "\n".join(lines) + "\n"


def plot(scores: list[Score], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for family in sorted({s.family for s in scores}):
        points = sorted((s for s in scores if s.family == family), key=lambda s: s.size)
        style = "--" if family.startswith("llama.cpp") else "-"
        ax.plot([s.size / 2**20 for s in points], [max(s.kld, 1e-6) for s in points], style, marker="o", label=family)
        if family.startswith("llama.cpp"):
            for s in points:
                ax.annotate(s.label, (s.size / 2**20, max(s.kld, 1e-6)), fontsize=6, alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence to F32 (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_results(scores: list[Score], out_dir: Path, title: str, setup: str) -> None:
    """quality.json (the raw scores), quality.md and quality.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "quality.json", json.dumps({"title": title, "setup": setup,
                                                     "scores": [asdict(s) for s in scores]}, indent=1))
    render(out_dir)


def render(out_dir: Path) -> list[Score]:
    """quality.md and quality.png from quality.json."""
    raw = json.loads((out_dir / "quality.json").read_text())
    scores = [Score(**s) for s in raw["scores"]]
    write_text(out_dir / "quality.md", markdown(scores, raw["title"], raw["setup"]) +
               "\n## SFMP against llama.cpp's nearest file at the same or larger size\n\n" + target_table(scores) +
               "\n## The nonlinear grid: both grids against the uniform grid alone, at equal size\n\n" +
               grid_table(scores))
    plot(scores, out_dir / "quality.png", raw["title"])
    return scores
