"""Importance-matrix files, as llama.cpp writes them, and llama-imatrix to make one.

``load_imatrix`` reads both formats llama.cpp writes (tools/imatrix, common/imatrix-loader.cpp) and
returns, per weight tensor, the mean of x^2 of each input column (the values llama-quantize passes to
the quantizers):

- GGUF (the default): tensors ``<name>.in_sum2`` (sums of x^2, ne0 per matrix) and ``<name>.counts``
  (one count per matrix). mean = in_sum2 / counts; a matrix that saw no tokens gets 1 everywhere,
  as llama-quantize does. Stacked experts have one count per expert, and routing leaves some with
  few tokens or none: expert e's mean is (sum_e + P m) / (count_e + P), with m the pooled mean of all
  the tensor's experts and P = EXPERT_PRIOR_TOKENS, so a well-sampled expert keeps its own mean, a
  rarely chosen one leans on the pool, and one that saw nothing takes the pool. A tensor none of
  whose experts saw a token gets 1 everywhere, like a matrix.
- Legacy ``.dat``: int32 n_entries, then per entry int32 name length, the name, int32 ncall,
  int32 nval, nval float32 holding (sum / count) * ncall; then optionally int32 chunk count,
  int32 dataset-name length and the name. mean = value / ncall (the raw value when ncall <= 0).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np

from sfmp_gguf import gguf_package, paths
from sfmp_gguf.errors import InputError

EXPERT_PRIOR_TOKENS = 32  # below this many tokens an expert's own column means are mostly noise

_GGUF_MAGIC = b"GGUF"
_SUM_SUFFIX, _COUNT_SUFFIX = ".in_sum2", ".counts"


class ImatrixError(InputError, ValueError):
    """A one-line problem computing or reading an importance matrix (names the file)."""


def run_imatrix(model: Path, text: Path, out: Path, ctx: int, chunks: int, threads: int,
                tool: Path | None = None) -> None:
    """llama-imatrix over ``text`` on the GGUF ``model``, writing a GGUF imatrix to ``out``. ``tool``:
    the llama-imatrix program (default: the one ``python -m sfmp_gguf.llama.build`` built)."""
    cmd = [str(tool or paths.built_tool("llama-imatrix")), "-m", str(model), "-f", str(text), "-o", str(out),
           "--output-format", "gguf", "-c", str(ctx), "-b", str(ctx), "--chunks", str(chunks),
           "-t", str(threads), "--no-ppl"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImatrixError(f"{out}: llama-imatrix failed (exit {result.returncode}): {tail}")


def _means(path: Path, name: str, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-column means of one GGUF entry: (ne0,) for a matrix, (n_mat, ne0) for stacked experts."""
    n_mat = counts.size
    if n_mat == 0 or sums.size == 0 or sums.size % n_mat:
        raise ImatrixError(f"{path}: {name} has {sums.size} sums for {n_mat} counts")
    sums = sums.reshape(n_mat, -1).astype(np.float64)
    counts = np.rint(counts.astype(np.float64))  # llama.cpp rounds the stored float counts
    if not np.isfinite(sums).all() or (counts < 0).any():
        raise ImatrixError(f"{path}: {name} holds negative counts or non-finite sums")
    if n_mat > 1 and counts.sum() > 0:
        pooled = sums.sum(axis=0) / counts.sum()
        return ((sums + EXPERT_PRIOR_TOKENS * pooled) / (counts[:, None] + EXPERT_PRIOR_TOKENS)).astype(np.float32)
    safe = np.where(counts > 0, counts, 1.0)[:, None]
    mean = np.where(counts[:, None] > 0, sums / safe, 1.0).astype(np.float32)
    return mean[0] if n_mat == 1 else mean


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    gguf_package.select()
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, struct/numpy errors, ... on a malformed file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImatrixError(f"{path}: not a readable GGUF imatrix: {detail}") from None
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix in (_SUM_SUFFIX, _COUNT_SUFFIX):
            if t.name.endswith(suffix):
                if t.tensor_type != GGMLQuantizationType.F32:
                    raise ImatrixError(f"{path}: {t.name} is {t.tensor_type.name}, expected F32")
                pairs.setdefault(t.name[:-len(suffix)], {})[suffix] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not pairs:
        raise ImatrixError(f"{path}: GGUF file holds no imatrix entries (*{_SUM_SUFFIX} / *{_COUNT_SUFFIX})")
    out: dict[str, np.ndarray] = {}
    for name, pair in sorted(pairs.items()):
        if len(pair) != 2:
            missing = _COUNT_SUFFIX if _SUM_SUFFIX in pair else _SUM_SUFFIX
            raise ImatrixError(f"{path}: {name} has no {name}{missing} tensor")
        out[name] = _means(path, name, pair[_SUM_SUFFIX], pair[_COUNT_SUFFIX])
    return out


def _load_legacy(path: Path, data: bytes) -> dict[str, np.ndarray]:
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ImatrixError(f"{path}: not an imatrix (truncated at offset {pos} reading {what})")
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def int32(what: str) -> int:
        value: int = struct.unpack("<i", take(4, what))[0]
        return value

    n_entries = int32("the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix (entry count {n_entries})")
    out: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        length = int32(f"entry {i + 1}'s name length")
        if not 0 < length <= 4096:
            raise ImatrixError(f"{path}: not an imatrix (entry {i + 1} has name length {length})")
        try:
            name = take(length, f"entry {i + 1}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixError(f"{path}: not an imatrix (entry {i + 1}'s name is not UTF-8)") from None
        ncall = int32(f"{name}'s call count")
        nval = int32(f"{name}'s value count")
        if nval < 1:
            raise ImatrixError(f"{path}: not an imatrix ({name} has {nval} values)")
        values = np.frombuffer(take(4 * nval, f"{name}'s values"), dtype="<f4").astype(np.float32)
        out[name] = values / np.float32(ncall) if ncall > 0 else values.copy()
    # The trailer (chunk count, dataset name) is optional, as in llama.cpp.
    return out


def load_imatrix(path: Path | str) -> dict[str, np.ndarray]:
    """Tensor name -> per-column mean of x^2 (float32), from a GGUF or legacy .dat imatrix file.

    A tensor of stacked experts gives an (n_expert, ne0) array, every other tensor a (ne0,) one.
    Raises ImatrixError, a one-line message naming the file, when it cannot be read or is malformed.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ImatrixError(f"{path}: cannot read imatrix: {e.strerror or e}") from None
    if head == _GGUF_MAGIC:
        return _load_gguf(path)
    return _load_legacy(path, path.read_bytes())
