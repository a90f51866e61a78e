"""Quality at equal size: KL divergence to the F32 teacher, SFMP against llama.cpp's own types.

llama.cpp: Q2_K ... Q8_0 (its mixed presets, not --pure), each without and with the teacher's
imatrix; cached like the round-trip files. SFMP: the converter at eight sizes with each
sensitivity (weights, imatrix, fisher), each analysed once and written at every size, and the
uniform baselines: every tensor at the one rung nearest each size, quantized with the imatrix (the
baseline of the imatrix and Fisher files) and without (that of the weights-only files). Each SFMP
file is compared at its own size with the uniform files, and with llama.cpp's Pareto frontier over
its types with and without the imatrix, both interpolated (log KLD, linear in size): the KLD ratio
at equal size, and the size ratio at equal KLD. Every file is
scored by ``llama-perplexity --kl-divergence`` against the teacher's logits at -c 512 over 3,060
scored tokens of the evaluation text: mean KLD, PPL ratio and same-top-token share.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.bench import cached_file
from sfmp_gguf.bench.roundtrip import BenchError, _sha256, quantize_model
from sfmp_gguf.paths import cache_dir

STOCK = ("Q2_K", "IQ3_S", "Q3_K_M", "IQ4_XS", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
SFMP_BPW = (3.25, 4.25, 5.5, 6.5, 8.0)
SENSITIVITIES = ("weights", "imatrix", "fisher")
UNIFORM_TWINS = ()  # sensitivities also written on the uniform grid alone (the grid comparison of format 3)
# Every tensor the same rung: the baseline each sensitivity must beat, with the same information
# (no imatrix for weights-only).
UNIFORM = {"weights": "SFMP uniform, no imatrix", "imatrix": "SFMP uniform"}
WITH_IMATRIX = "imatrix"  # the baseline of any other sensitivity (Fisher)
STOCK_FAMILIES = ("llama.cpp", "llama.cpp + imatrix")  # llama.cpp's frontier is taken over both
# The channel-permutation ablation: each sensitivity with a salience is written with every set of kinds
# below; the converter's default at each size (permutation.default_kinds) is plain "SFMP imatrix", the
# others are families of their own ("SFMP imatrix (permutation: ffn)").
ABLATION = {"none": (), "ffn": ("ffn",), "ffn + heads": ("ffn", "heads"),
            "ffn + heads + residual": ("ffn", "heads", "residual")}
ABLATED = ("imatrix", "fisher")


def ablation_family(sensitivity: str, label: str) -> str:
    return f"SFMP {sensitivity} (permutation: {label})"


def is_ablation(family: str) -> bool:
    return "(permutation: " in family
CTX, CHUNKS = 512, 12  # 12 chunks score 12 * 255 = 3,060 tokens


@dataclass(frozen=True)
class Score:
    label: str
    family: str
    size: int  # bytes
    bpw: float  # whole file
    kld: float
    ppl_ratio: float
    top1: float  # share of tokens whose most likely token matches the teacher's


def _perplexity(model: Path, text: Path, extra: list[str], ctx: int, chunks: int, threads: int,
                env: dict[str, str] | None = None) -> str:
    from sfmp_gguf.llama.build import current_build

    cmd = [str(current_build().tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", str(ctx),
           "-b", str(max(ctx, 512)), "--chunks", str(chunks), "-t", str(threads), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"llama-perplexity {model.name} failed (exit {result.returncode}): {tail}")
    return result.stdout + result.stderr


def teacher_logits(model: Path, text: Path, ctx: int, chunks: int, threads: int) -> Path:
    """The teacher's logits over the evaluation chunks, saved once (llama-perplexity's base file)."""
    return cached_file("kld-base", f"{_sha256(model)} {_sha256(text)} {ctx} {chunks}", ".bin", lambda tmp: _perplexity(
        model, text, ["--kl-divergence-base", str(tmp)], ctx, chunks, threads))


def score(model: Path, base: Path, text: Path, label: str, family: str, n_weights: int,
          ctx: int, chunks: int, threads: int, env: dict[str, str] | None = None) -> Score:
    """KLD, PPL ratio and top-1 agreement of ``model`` against the teacher's logits, with ``env`` added to
    llama-perplexity's environment."""
    log = _perplexity(model, text, ["--kl-divergence-base", str(base), "--kl-divergence"], ctx, chunks, threads, env)

    def grab(pattern: str) -> float:
        m = re.search(pattern, log)
        if not m:
            raise BenchError(f"llama-perplexity {model.name}: no '{pattern}' in its output")
        return float(m.group(1))

    size = model.stat().st_size
    return Score(label, family, size, size * 8 / n_weights, grab(r"Mean\s+KLD:\s+([-\d.e]+)"),
                 grab(r"Mean\s+PPL\(Q\)/PPL\(base\)\s*:\s*([-\d.e]+)"), grab(r"Same top p:\s*([-\d.e]+)") / 100)


def write_and_score(prepared, plan, out: Path, base: Path, text: Path, n_weights: int, ctx: int, chunks: int,
                    threads: int, label: str = "", family: str = "") -> Score:
    """Write ``prepared`` at ``plan`` to ``out`` and score it against the teacher's logits."""
    from sfmp_gguf import pipeline  # the caller has set up the pinned gguf-py

    pipeline.write(prepared, plan, out, threads)
    return score(out, base, text, label, family, n_weights, ctx, chunks, threads)


def stock_scores(teacher_gguf: Path, imatrix: Path, types: tuple[str, ...], base: Path, text: Path, n_weights: int,
                 ctx: int, chunks: int, threads: int, log=print) -> list[Score]:
    folder = cache_dir() / "bench"
    sha = _sha256(teacher_gguf)
    scores = []
    for with_imatrix in (False, True):
        family = STOCK_FAMILIES[with_imatrix]
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
    from sfmp_gguf import allocation, permutation, pipeline  # the caller has set up the pinned gguf-py
    from sfmp_gguf.format import GRID_UNIFORM, GRIDS

    scores, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-") as tmp:
        def scored(prepared: pipeline.Prepared, plan: allocation.Allocation, label: str, family: str) -> None:
            log(f"{family} {label} bpw")
            out = Path(tmp) / "sfmp.gguf"
            scores.append(write_and_score(prepared, plan, out, base, text, n_weights, ctx, chunks, threads,
                                          label, family))
            out.unlink()

        for sensitivity in sensitivities:
            log(f"SFMP {sensitivity}: analysis")
            kinds = list(ABLATION.values()) if sensitivity in ABLATED else [()]
            variants = dict(zip(kinds, pipeline.prepare_each(
                hf_dir, sensitivity, imatrix if sensitivity == "imatrix" else None,
                calib if sensitivity == "fisher" else None, threads, kinds)))
            prepared = variants[()]  # the baselines' quantizer weights do not depend on the order
            for bpw in sizes:
                default = variants.get(permutation.default_kinds(bpw), prepared)
                scored(default, pipeline.plan(default, bpw, GRIDS), f"{bpw:g}", f"SFMP {sensitivity}")
                if sensitivity in uniform_twins:
                    scored(default, pipeline.plan(default, bpw, (GRID_UNIFORM,)), f"{bpw:g}",
                           f"SFMP {sensitivity} uniform grid")
                for label, other in ABLATION.items():
                    if other in variants and variants[other] is not default:
                        scored(variants[other], pipeline.plan(variants[other], bpw, GRIDS), f"{bpw:g}",
                               ablation_family(sensitivity, label))
            if sensitivity in UNIFORM:  # the same quantizer weights as this sensitivity's files
                for bpw in sizes:
                    scored(prepared, allocation.uniform(prepared.profiles, bpw), f"{bpw:g}", UNIFORM[sensitivity])
            phases = dict(prepared.timer.phases)
            phases["allocation"] /= len(sizes) * (1 + (sensitivity in uniform_twins))
            phases["quantize+write"] /= len(sizes) * (1 + (sensitivity in uniform_twins))
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


SAME_SIZE = 1e-5  # relative: a type's files with and without the imatrix differ by a few hundred bytes of metadata


def frontier(points: list[Score]) -> list[Score]:
    """The Pareto frontier: by rising size, each file with a lower KLD than every smaller one. Files
    within SAME_SIZE of each other count as one size, so the better of a type's two files replaces
    the other rather than following it by a step of metadata."""
    kept: list[Score] = []
    for s in sorted(points, key=lambda s: (s.size, s.kld)):
        while kept and s.size - kept[-1].size <= SAME_SIZE * s.size and s.kld < kept[-1].kld:
            kept.pop()
        if not kept or s.kld < kept[-1].kld:
            kept.append(s)
    return kept


def interpolate(points: list[Score], size: int) -> float | None:
    """The frontier's KLD at ``size`` (log KLD linear in size); None outside its range."""
    edge = frontier(points)
    if not edge or not edge[0].size <= size <= edge[-1].size:
        return None
    for a, b in zip(edge, edge[1:]):
        if a.size <= size <= b.size:
            t = (size - a.size) / (b.size - a.size)
            return math.exp((1 - t) * math.log(a.kld) + t * math.log(b.kld))
    return edge[0].kld


def size_at(points: list[Score], kld: float) -> float | None:
    """The frontier's size at ``kld``, the inverse of interpolate (log KLD linear in size); None
    outside its KLD range."""
    edge = frontier(points)
    if not edge or not edge[-1].kld <= kld <= edge[0].kld:
        return None
    for a, b in zip(edge, edge[1:]):
        if b.kld <= kld <= a.kld:
            t = (math.log(kld) - math.log(a.kld)) / (math.log(b.kld) - math.log(a.kld))
            return a.size + t * (b.size - a.size)
    return float(edge[0].size)


def answers_to(family: str) -> str:
    """The sensitivity whose baselines an SFMP family is held to."""
    sensitivity = family.removeprefix("SFMP ").split(" ")[0].rstrip(",")
    return sensitivity if sensitivity in UNIFORM else WITH_IMATRIX


@dataclass(frozen=True)
class Versus:
    sfmp: Score
    uniform: float | None  # the uniform SFMP files' KLD at this size (the same quantizer weights)
    frontier: float | None  # llama.cpp's frontier KLD at this size
    frontier_size: float | None  # the size at which llama.cpp's frontier reaches this KLD
    nearest: Score | None  # the smallest stock file at least this size (a reference, not the target)

    def ratio(self, other: float | None) -> float | None:
        return None if other is None else self.sfmp.kld / other

    @property
    def size_ratio(self) -> float | None:
        return None if self.frontier_size is None else self.sfmp.size / self.frontier_size


def versus(scores: list[Score]) -> list[Versus]:
    """Each SFMP file against the uniform SFMP files at its size, and against llama.cpp's Pareto
    frontier over its types with and without the imatrix: at equal size and at equal KLD."""
    stock = [r for r in scores if r.family in STOCK_FAMILIES]
    rows = []
    for s in sorted((s for s in scores if s.family.startswith("SFMP") and s.family not in UNIFORM.values()
                     and not is_ablation(s.family)),
                    key=lambda s: (s.family, s.size)):
        sensitivity = answers_to(s.family)
        larger = [r for r in stock if r.size >= s.size]
        nearest = frontier(larger)[0] if larger else None  # the best of the smallest size
        rows.append(Versus(s, interpolate([r for r in scores if r.family == UNIFORM[sensitivity]], s.size),
                           interpolate(stock, s.size), size_at(stock, s.kld), nearest))
    return rows


def _cell(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def target_table(scores: list[Score]) -> str:
    """Each SFMP file against uniform SFMP and against llama.cpp's frontier (its types with and
    without the imatrix, log KLD interpolated between neighbours by size): the KLD ratio at equal size
    and the size ratio at equal KLD, "-" outside the frontier's range."""
    lines = ["| SFMP file | size (MiB) | KLD | uniform SFMP at this size | ratio (target <= 1) | "
             "llama.cpp frontier KLD at this size | KLD ratio (target <= 0.5) | llama.cpp frontier size at this "
             "KLD (MiB) | size ratio | nearest stock file at >= size (reference) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in versus(scores):
        s, near = v.sfmp, v.nearest
        reference = "-" if near is None else f"{near.label} ({near.family}): {near.kld:.5f} at {near.size / 2**20:.1f} MiB"
        size = None if v.frontier_size is None else v.frontier_size / 2**20
        lines.append(f"| {s.family} {s.label} | {s.size / 2**20:.1f} | {s.kld:.5f} | {_cell(v.uniform, '.5f')} | "
                     f"{_cell(v.ratio(v.uniform), '.2f')} | {_cell(v.frontier, '.5f')} | "
                     f"{_cell(v.ratio(v.frontier), '.2f')} | {_cell(size, '.1f')} | {_cell(v.size_ratio, '.2f')} | "
                     f"{reference} |")
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


def default_label(target: str) -> str:
    """The ABLATION label of the kinds the converter applies by default at a target bpw."""
    from sfmp_gguf.permutation import default_kinds

    return next(label for label, kinds in ABLATION.items() if kinds == default_kinds(float(target)))


def ablation_scores(scores: list[Score], sensitivity: str) -> dict[str, dict[str, Score]]:
    """ABLATION label -> target -> score for one sensitivity; the plain family stands for the
    default kinds at its target."""
    by_label: dict[str, dict[str, Score]] = {label: {} for label in ABLATION}
    for s in scores:
        if s.family == f"SFMP {sensitivity}":
            by_label[default_label(s.label)][s.label] = s
        for label in ABLATION:
            if s.family == ablation_family(sensitivity, label):
                by_label[label][s.label] = s
    return by_label


def permutation_table(scores: list[Score]) -> str:
    """Each ablated sensitivity at each target: KLD with each set of permutation kinds (the converter's
    default at that size is its plain family), the default over none, and both against llama.cpp's
    frontier at their size."""
    stock = [r for r in scores if r.family in STOCK_FAMILIES]
    lines = ["| sensitivity | target bpw | " + " | ".join(f"KLD, {label}" for label in ABLATION) +
             " | default | default / none | vs llama.cpp frontier at its size: none, default |",
             "|---|---|" + "---|" * (len(ABLATION) + 3)]

    def versus_frontier(s: Score) -> str:
        front = interpolate(stock, s.size)
        return _cell(None if front is None else s.kld / front, ".2f")

    for sensitivity in ABLATED:
        by_label = ablation_scores(scores, sensitivity)
        product = {s.label: s for s in scores if s.family == f"SFMP {sensitivity}"}
        for target, best in sorted(product.items(), key=lambda item: item[1].size):
            default = default_label(target)
            found = {label: by_label[label].get(target) for label in ABLATION}
            if not all(found.values()):
                continue
            lines.append(f"| {sensitivity} | {target} | " + " | ".join(f"{found[label].kld:.5f}" for label in ABLATION) +
                         f" | {default} | {best.kld / found['none'].kld:.2f} | {versus_frontier(found['none'])}, "
                         f"{versus_frontier(best)} |")
    return "\n".join(lines) + "\n"


def permutation_plot(scores: list[Score], path: Path, title: str) -> None:
    """KLD of each set of permutation kinds over KLD without permutation, by target rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sensitivity in ABLATED:
        by_label = ablation_scores(scores, sensitivity)
        for label in list(ABLATION)[1:]:
            points = sorted((float(t), s.kld / by_label["none"][t].kld) for t, s in by_label[label].items()
                            if t in by_label["none"])
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if sensitivity == "fisher" else "--",
                        label=f"{sensitivity}: {label}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("target bpw")
    ax.set_ylabel("KLD / KLD without permutation")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot(scores: list[Score], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for family in sorted({s.family for s in scores if not is_ablation(s.family)}):
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
               "\n## Each SFMP file against the uniform SFMP files and llama.cpp's frontier at its size\n\n"
               "Both interpolated (log KLD linear in size) between the files on either side; '-' outside their "
               "range. Weights-only answers to the uniform files and llama.cpp without an imatrix, the others to "
               "both with it.\n\n" +
               target_table(scores) +
               ("\n## The nonlinear grid: both grids against the uniform grid alone, at equal size\n\n" +
                grid_table(scores) if any(s.family.endswith(" uniform grid") for s in scores) else "") +
               ("\n## Channel permutation: KLD by the kinds applied\n\n" + permutation_table(scores) +
                "\n![KLD by permutation kinds](quality-permutation.png)\n" if any(is_ablation(s.family) for s in scores)
                else ""))
    plot(scores, out_dir / "quality.png", raw["title"])
    if any(is_ablation(s.family) for s in scores):
        permutation_plot(scores, out_dir / "quality-permutation.png", raw["title"] + ": channel permutation")
    return scores


def main(argv: list[str] | None = None) -> int:
    """Score GGUF files of the demo teacher as this benchmark scores its own:
    ``python -m sfmp_gguf.bench.quality FILE [FILE ...]`` prints the table."""
    import argparse
    import os
    import sys

    from sfmp_gguf import gguf_package
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.teacher import teacher

    parser = argparse.ArgumentParser(prog="python -m sfmp_gguf.bench.quality",
                                     description="KLD, PPL ratio and same-top-token share of GGUF files of the demo "
                                                 "teacher against its F32 logits")
    parser.add_argument("files", nargs="+", type=Path, help="GGUF files made from the demo teacher")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    gguf_package.select()
    from gguf import GGUFReader

    model, texts = teacher(), austen_texts()
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    try:
        base = teacher_logits(model.gguf_path, texts.eval_text, CTX, CHUNKS, args.threads)
        scores = [score(f, base, texts.eval_text, str(f), "file", n_weights, CTX, CHUNKS, args.threads)
                  for f in args.files]
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown(scores, "KLD to the F32 teacher",
                   f"`llama-perplexity --kl-divergence -c {CTX} --chunks {CHUNKS}` on the Austen evaluation text"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
