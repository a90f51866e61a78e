"""``--report DIR``: what the allocator decided, as a Markdown table and a layers x kinds heatmap."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sfmp_gguf.analysis import TensorProfile
from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.format import SfmpType
from sfmp_gguf.permutation import NONE, Permutation

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


LOW_KIND_SHARE = 0.5  # a kind below this share of the mean rate is worth a warning


def kind_of(name: str) -> str:
    m = _LAYER.match(name)
    return m.group(2) if m else name.removesuffix(".weight")


def warnings(profiles: list[TensorProfile], types: dict[str, SfmpType], fallbacks: dict[str, str]) -> list[str]:
    """What a user should know about an allocation: a whole tensor kind starved of bits, or tensors
    whose sensitivity signal was missing and replaced."""
    n = sum(p.n_weights for p in profiles)
    mean = sum(p.bits(types[p.name]) for p in profiles) / n
    bits: dict[str, float] = {}
    weights: dict[str, int] = {}
    for p in profiles:
        kind = kind_of(p.name)
        bits[kind] = bits.get(kind, 0.0) + p.bits(types[p.name])
        weights[kind] = weights.get(kind, 0) + p.n_weights
    out = [f"{kind} gets {bits[kind] / weights[kind]:.2f} bpw, less than {LOW_KIND_SHARE:.0%} of the mean "
           f"{mean:.2f} bpw" for kind in sorted(bits) if bits[kind] / weights[kind] < LOW_KIND_SHARE * mean]
    for reason in sorted(set(fallbacks.values())):
        names = sorted(name for name, r in fallbacks.items() if r == reason)
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        out.append(f"{names[0]}{more}: {reason}")
    return out


def permutation_line(perm: Permutation) -> str:
    """The permutation in a few words: what was applied, and why any kind asked for was not."""
    skipped = "; ".join(f"{kind} skipped: {why}" for kind, why in perm.skipped.items())
    applied = f"channels permuted: {', '.join(perm.kinds)}" if perm.kinds else "channels not permuted"
    return applied + (f" ({skipped})" if skipped else "")


def _share(p: TensorProfile, t: SfmpType) -> str:
    if p.upgraded_share is None or not t.upgrades:
        return "-"
    k = p.candidates.index(t)
    return f"{p.upgraded_share[0][k]:.1%} -> {p.upgraded_share[1][k]:.1%}"


def markdown(profiles: list[TensorProfile], types: dict[str, SfmpType], title: str,
             notes: list[str] = (), perm: Permutation = NONE) -> str:
    lines = [f"# {title}", "", permutation_line(perm) + ".", ""]
    if notes:
        lines += ["Warnings:", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["Importance on upgraded sub-blocks: the share of the tensor's importance on the sub-blocks its type "
              "upgrades (the analysis' choice), in the original channel order -> permuted.", "",
              "| tensor | rows x row length (experts stacked) | type | bpw | upgraded sub-blocks "
              "| importance on upgraded sub-blocks | range / rms | outliers > 3 sigma |",
              "|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        t = types[p.name]
        stats = f"{p.stats.range_to_rms:.2f} | {p.stats.outlier_share:.2%}" if p.stats else "- | -"
        lines.append(f"| {p.name} | {p.shape[0]} x {p.shape[1]} | {t.name} | {t.bpw:.3f} | "
                     f"{t.upgrades / t.n_sub:.0%} | {_share(p, t)} | {stats} |")
    return "\n".join(lines) + "\n"


def heatmap(profiles: list[TensorProfile], types: dict[str, SfmpType], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {}
    for p in profiles:
        m = _LAYER.match(p.name)
        if m:
            cells[(int(m.group(1)), m.group(2))] = types[p.name].bpw
    layers = sorted({layer for layer, _ in cells})
    kinds = sorted({kind for _, kind in cells})
    grid = np.full((max(len(layers), 1), max(len(kinds), 1)), np.nan)
    for (layer, kind), bpw in cells.items():
        grid[layers.index(layer), kinds.index(kind)] = bpw
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(kinds), 1.5 + 0.22 * len(layers)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="bits per weight")
    others = [f"{p.name}: {types[p.name].bpw:.2f}" for p in profiles if not _LAYER.match(p.name)]
    ax.set_title(title + ("\n" + ", ".join(others) if others else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(folder: Path, profiles: list[TensorProfile], types: dict[str, SfmpType], title: str,
                 notes: list[str] = (), perm: Permutation = NONE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    table, png = folder / "allocation.md", folder / "allocation.png"
    write_text(table, markdown(profiles, types, title, notes, perm))
    heatmap(profiles, types, png, title)
    return [table, png]
