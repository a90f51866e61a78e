"""Round-trip error per type on the teacher's real weights, weighted by its importance matrix.

For every type, ``llama-quantize --pure --imatrix`` turns the F32 teacher into one file of that type
(cached under ``<cache>/bench``). Each block weight tensor is then dequantized (gguf-py for stock
types, a vectorized copy of ``sfmp_gguf.quant.reference.dequantize_blocks`` for SFMP types) and
compared with the teacher:

    error(class) = sum over the class's tensors of sum_ij h_j (w_ij - w^_ij)^2  /  sum_ij h_j w_ij^2

with h_j the imatrix's mean x^2 of input column j. Tensors are grouped by row length, since that
decides which type a tensor really gets: rows of 256k keep a K-quant, rows of 576 fall back to a
32-weight type (Q4_K -> Q5_0, ...; an ``sfmpNN_k`` to its ``sfmpNN_s`` twin). The type each
tensor actually got is read back from the quantized file.

    python -m sfmp_gguf.bench.roundtrip            # all types, writes bench-results/roundtrip.{md,png}
    python -m sfmp_gguf.bench.roundtrip --smoke --out DIR   # 2 types, 2 tensors, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from sfmp_gguf import gguf_types
from sfmp_gguf.atomic import save_figure, write_text
from sfmp_gguf.format import BY_ID, BY_NAME, GRID_NONLINEAR, GRID_UNIFORM
from sfmp_gguf.bench import add_output_args, output_dir
from sfmp_gguf.paths import cache_dir
from sfmp_gguf.quant.reference import dequantize_blocks

STOCK_TYPES = ("Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q5_0")
SFMP_TYPES = ("sfmp275_k", "sfmp325_k", "sfmp375_k", "sfmp425_k", "sfmp475_k", "sfmp525_k", "sfmp575_k",
              "sfmp625_k", "sfmp275n_k", "sfmp325n_k", "sfmp375n_k", "sfmp400n_k")
SMOKE_TYPES = ("Q4_K", "sfmp425_k")
SMOKE_TENSORS = ("blk.0.attn_v.weight", "blk.0.ffn_down.weight")
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
RECIPE_VERSION = "roundtrip-v2"  # bump when the quantize command changes
_BLOCK_WEIGHT = re.compile(r"^blk\.\d+\.([a-z_]+)\.weight$")


class BenchError(RuntimeError):
    """A one-line problem running the benchmark."""


def dequantize_tensor(data: np.ndarray, type_id: int) -> np.ndarray:
    """Rows of any stock or SFMP type as float32 (rows, n)."""
    if type_id in BY_ID:
        return dequantize_blocks(data, BY_ID[type_id])
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(type_id)
    if qtype == GGMLQuantizationType.F32:
        return np.asarray(data, dtype=np.float32)
    return dequantize(np.asarray(data), qtype).astype(np.float32)


def type_name(type_id: int) -> str:
    from gguf import GGMLQuantizationType

    gguf_types.register()
    return BY_ID[type_id].name if type_id in BY_ID else GGMLQuantizationType(type_id).name


# ---------------------------------------------------------------------------------------------
# Quantizing (cached)


# The quantizers live in libggml-base; libggml-cpu holds the compute kernels, which quantizing does not
# run, so a kernel change keeps the cached files.
_QUANTIZE_LIBRARIES = ("libllama-quantize-impl.so", "libllama-common.so", "libllama.so", "libggml.so",
                       "libggml-base.so")


@lru_cache(maxsize=None)
def _tool_fingerprint(quantize: Path) -> str:
    """sha256 over llama-quantize and the libraries it loads (they hold the quantizers)."""
    digest = hashlib.sha256()
    for path in [quantize, *(quantize.parent / name for name in _QUANTIZE_LIBRARIES)]:
        if not path.exists():
            continue
        digest.update(path.name.encode())
        digest.update(path.resolve().read_bytes())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    from sfmp_gguf.assets.cache import sha256_file

    return sha256_file(path)


def quantized_path(model_sha: str, imatrix: Path | None, qtype: str, folder: Path, pure: bool = True) -> Path:
    """Where quantize_model keeps ``qtype`` of the model: named by a hash of everything that decides
    its bytes."""
    from sfmp_gguf.llama.build import current_build

    recipe = {"model": model_sha, "imatrix": _sha256(imatrix) if imatrix else None,
              "tools": _tool_fingerprint(current_build().tool("llama-quantize")), "type": qtype, "version": RECIPE_VERSION}
    if not pure:
        recipe["pure"] = False  # absent for --pure, so the files cached before this option keep their names
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    stem = qtype.lower() + ("" if pure else "-mix") + ("" if imatrix else "-noimat")
    return folder / f"{stem}-{key}.gguf"


def quantize_model(model: Path, model_sha: str, imatrix: Path | None, qtype: str, folder: Path,
                   threads: int = 2, pure: bool = True) -> Path:
    """``llama-quantize [--pure] [--imatrix]`` of ``model`` to ``qtype``, reused when already in ``folder``.

    The file is named by a hash of everything that decides its bytes (input, imatrix, the binaries of
    llama-quantize and its libraries, type), written under a temporary name and renamed once
    complete; the tool's log lies beside it. Files of the same type under another hash are removed.
    """
    from sfmp_gguf.llama.build import current_build

    quantize = current_build().tool("llama-quantize")
    out = quantized_path(model_sha, imatrix, qtype, folder, pure)
    stem = out.stem.rsplit("-", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        return out
    tmp = folder / f".{out.name}.{os.getpid()}.tmp"
    cmd = [str(quantize), *(["--pure"] if pure else []), *(["--imatrix", str(imatrix)] if imatrix else []),
           str(model), str(tmp), qtype.upper(), str(threads)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        log = result.stdout + result.stderr
        if result.returncode != 0 or not tmp.is_file():
            last = [ln for ln in log.strip().splitlines() if ln.strip()] or ["no output"]
            raise BenchError(f"llama-quantize {model.name} -> {qtype} failed (exit {result.returncode}): {last[-1]}")
        (folder / f"{out.stem}.log").write_text(log)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    # Keep one file per type: older ones were made from other inputs or another build.
    for stale in folder.glob(f"{stem}-*"):
        if stale.stem != out.stem and re.fullmatch(rf"{re.escape(stem)}-[0-9a-f]{{16}}", stale.stem):
            stale.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class ClassStats:
    """Sums over one tensor class of one quantized file."""

    types: Counter = field(default_factory=Counter)  # actual tensor type -> number of tensors
    n_bytes: int = 0
    n_weights: int = 0
    err: float = 0.0
    ref: float = 0.0
    kind_err: dict = field(default_factory=dict)   # kind -> [err, ref]

    @property
    def bpw(self) -> float:
        return 8.0 * self.n_bytes / self.n_weights

    @property
    def rel_error(self) -> float:
        return self.err / self.ref

    def kind_rel_error(self, kind: str) -> float:
        e, r = self.kind_err[kind]
        return e / r

    @property
    def actual(self) -> str:
        return "+".join(name for name, _ in sorted(self.types.items(), key=lambda kv: -kv[1]))


def class_of(row_length: int) -> str:
    return f"rows of {row_length}"


def measure(teacher_weights: dict[str, np.ndarray], quantized: Path,
            imatrix: dict[str, np.ndarray]) -> dict[str, ClassStats]:
    """Per class (row length): actual types, bpw and imatrix-weighted relative error."""
    from gguf import GGUFReader

    gguf_types.register()
    reader = GGUFReader(quantized)
    found = {t.name: t for t in reader.tensors}
    stats: dict[str, ClassStats] = {}
    for name, w in teacher_weights.items():
        t = found.get(name)
        if t is None:
            raise BenchError(f"{quantized}: tensor {name} missing")
        w_hat = dequantize_tensor(t.data, int(t.tensor_type))
        if w_hat.shape != w.shape:
            raise BenchError(f"{quantized}: {name} decodes to {w_hat.shape}, expected {w.shape}")
        h = imatrix[name].astype(np.float64)
        diff = (w.astype(np.float64) - w_hat.astype(np.float64))
        err = float(np.sum((diff * diff) @ h))
        ref = float(np.sum((w.astype(np.float64) ** 2) @ h))
        s = stats.setdefault(class_of(w.shape[1]), ClassStats())
        s.types[type_name(int(t.tensor_type))] += 1
        s.n_bytes += int(t.n_bytes)
        s.n_weights += int(t.n_elements)
        s.err += err
        s.ref += ref
        kind = _BLOCK_WEIGHT.match(name).group(1)
        acc = s.kind_err.setdefault(kind, [0.0, 0.0])
        acc[0] += err
        acc[1] += ref
    return stats


def block_weights(model: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The 2D block weight tensors (``blk.N.<kind>.weight``) of an F32 GGUF, as (rows, n) arrays."""
    from gguf import GGMLQuantizationType, GGUFReader

    out = {}
    for t in GGUFReader(model).tensors:
        match = _BLOCK_WEIGHT.match(t.name)
        if not match or match.group(1) not in KINDS or (names is not None and t.name not in names):
            continue
        if t.tensor_type != GGMLQuantizationType.F32:
            raise BenchError(f"{model}: {t.name} is {t.tensor_type.name}, expected F32")
        out[t.name] = np.asarray(t.data, dtype=np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Reporting


def _classes(results: dict[str, dict[str, ClassStats]]) -> list[str]:
    return sorted({c for r in results.values() for c in r}, key=lambda c: int(c.split()[-1]))


def _class_kinds(results: dict[str, dict[str, ClassStats]], cls: str) -> list[str]:
    found = {k for r in results.values() if cls in r for k in r[cls].kind_err}
    return [k for k in KINDS if k in found]


def _fmt_err(x: float) -> str:
    return f"{x:.3e}"


def markdown(results: dict[str, dict[str, ClassStats]], title: str, notes: list[str]) -> str:
    classes = _classes(results)
    kinds = [k for k in KINDS if any(k in s.kind_err for r in results.values() for s in r.values())]
    lines = [f"# {title}", ""] + [f"- {n}" for n in notes]
    lines += [f"- Class *{c}*: {', '.join(_class_kinds(results, c))}." for c in classes] + [""]
    header = ["type"] + [f"actual ({c})" for c in classes] + [f"bpw ({c})" for c in classes] \
        + [f"weighted error ({c})" for c in classes]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for qtype, stats in results.items():
        row = [qtype] + [stats[c].actual for c in classes] + [f"{stats[c].bpw:.3f}" for c in classes] \
            + [_fmt_err(stats[c].rel_error) for c in classes]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Weighted error per tensor kind:", ""]
    header = ["type"] + kinds
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for qtype, stats in results.items():
        by_kind = {k: s.kind_rel_error(k) for s in stats.values() for k in s.kind_err}
        lines.append("| " + " | ".join([qtype] + [_fmt_err(by_kind[k]) for k in kinds]) + " |")
    return "\n".join(lines) + "\n"


def _grid(type_name: str) -> str | None:
    """An SFMP type's grid; None for a stock type."""
    t = BY_NAME.get(type_name.lower())
    return t.grid if t else None


def plot(results: dict[str, dict[str, ClassStats]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = _classes(results)
    fig, axes = plt.subplots(1, len(classes), figsize=(6 * len(classes), 4.5), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        # stock types are separate designs (markers only); each SFMP grid's rungs form one curve
        for label, grid, style, offset, ha in (("stock", None, "o", (5, -10), "left"),
                                               ("SFMP uniform", GRID_UNIFORM, "s-", (-5, 5), "right"),
                                               ("SFMP nonlinear", GRID_NONLINEAR, "^-", (-5, -12), "right")):
            pts = sorted((s[cls].bpw, s[cls].rel_error, q) for q, s in results.items()
                         if _grid(q) == grid and cls in s)
            if not pts:
                continue
            xs, ys, names = zip(*pts)
            line, = ax.plot(xs, ys, style, label=label)
            for x, y, n in pts:
                actual = results[n][cls].actual
                ax.annotate(n if actual.lower() == n.lower() else f"{n} ({actual})", (x, y), ha=ha,
                            textcoords="offset points", xytext=offset, fontsize=7, color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("imatrix-weighted relative error")
        ax.set_title(f"{cls}: {', '.join(_class_kinds(results, cls))}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Driver


def run(out_dir: Path, smoke: bool = False, threads: int = 2) -> dict[str, dict[str, ClassStats]]:
    from gguf import GGUFReader

    from sfmp_gguf.assets.cache import artifact_files
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import ARTIFACT, GGUF_NAME, _write_gguf, teacher
    from sfmp_gguf.imatrix_io import load_imatrix

    model = teacher().gguf_path
    model_sha = artifact_files(ARTIFACT)[GGUF_NAME]
    imatrix_path = teacher_imatrix()
    imatrix = load_imatrix(imatrix_path)
    types = SMOKE_TYPES if smoke else STOCK_TYPES + SFMP_TYPES
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sfmp-roundtrip-") as tmp:
        if smoke:  # a two-tensor model: llama-quantize takes a fraction of a second on it
            weights = block_weights(model, SMOKE_TENSORS)
            mini = Path(tmp) / "mini.gguf"
            _write_gguf(GGUFReader(model), weights, mini)
            model, model_sha, folder = mini, _sha256(mini), Path(tmp) / "quantized"
        else:
            weights = block_weights(model)
            folder = cache_dir() / "bench"
        missing = sorted(set(weights) - set(imatrix))
        if missing:
            raise BenchError(f"{imatrix_path}: no imatrix entry for {missing[0]} ({len(missing)} missing)")
        results: dict[str, dict[str, ClassStats]] = {}
        for qtype in types:
            print(f"{qtype}: quantizing", file=sys.stderr, flush=True)
            quantized = quantize_model(model, model_sha, imatrix_path, qtype, folder, threads)
            print(f"{qtype}: measuring {quantized.name}", file=sys.stderr, flush=True)
            results[qtype] = measure(weights, quantized, imatrix)
    title = "Round-trip error per type" + (" (smoke)" if smoke else "")
    notes = [
        f"Teacher: SmolLM2-135M F32 (`{GGUF_NAME}`), {len(weights)} block weight tensors; "
        f"imatrix: llama-imatrix on the calibration text ({imatrix_path.name}).",
        "Each type: `llama-quantize --pure --imatrix`. *actual*: the type the tensors really got "
        "(rows that are not a multiple of 256 fall back). bpw from the tensors' byte sizes.",
        "Weighted error: sum h_j (w - w^)^2 / sum h_j w^2 over the class, h = imatrix mean x^2.",
    ]
    for qtype, stats in results.items():
        for cls, s in stats.items():
            if not (math.isfinite(s.rel_error) and math.isfinite(s.bpw)):
                raise BenchError(f"{qtype} {cls}: non-finite result")
    write_text(out_dir / "roundtrip.md", markdown(results, title, notes))
    plot(results, out_dir / "roundtrip.png", title)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Imatrix-weighted round-trip error per quant type on the teacher")
    add_output_args(parser, f"only {', '.join(SMOKE_TYPES)} on two tensors")
    args = parser.parse_args(argv)
    out_dir = output_dir(parser, args)
    from sfmp_gguf.imatrix_io import ImatrixError

    try:
        run(out_dir, smoke=args.smoke, threads=args.threads)
    except (BenchError, ImatrixError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir / 'roundtrip.md'} and {out_dir / 'roundtrip.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
