"""``--report DIR``: what the allocator decided, as a Markdown table and a layers x kinds heatmap."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.format import SfmpType

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


def markdown(rows: list[tuple[str, tuple[int, int], SfmpType]], title: str) -> str:
    lines = [f"# {title}", "", "| tensor | shape | type | bpw | upgraded sub-blocks |", "|---|---|---|---|---|"]
    for name, shape, t in rows:
        lines.append(f"| {name} | {shape[0]} x {shape[1]} | {t.name} | {t.bpw:.3f} | {t.upgrades / t.n_sub:.0%} |")
    return "\n".join(lines) + "\n"


def heatmap(rows: list[tuple[str, tuple[int, int], SfmpType]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {}
    for name, _, t in rows:
        m = _LAYER.match(name)
        if m:
            cells[(int(m.group(1)), m.group(2))] = t.bpw
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
    others = [f"{name}: {t.bpw:.2f}" for name, _, t in rows if not _LAYER.match(name)]
    ax.set_title(title + ("\n" + ", ".join(others) if others else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(folder: Path, rows: list[tuple[str, tuple[int, int], SfmpType]], title: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    table, png = folder / "allocation.md", folder / "allocation.png"
    write_text(table, markdown(rows, title))
    heatmap(rows, png, title)
    return [table, png]
