"""Channel permutations folded into the weights: the model computes the same function, with its
salient channels placed where a type's upgrades fall.

A type raises exactly U of the sub-blocks of every block by one bit, and a sub-block is 32
consecutive weights of a row: 32 input channels of a matrix. Reordering the input channels of a
matrix changes which weights share a sub-block and a block. The matching reordering of whatever
produces those channels leaves the model's function unchanged, so nothing happens at run time.
Three kinds of channels can move:

- ``ffn``: the intermediate channels of each feed-forward block (per expert, and for a shared
  expert): the rows of ``ffn_gate`` and ``ffn_up`` (and their biases) and the columns of ``ffn_down``.
  The activation is elementwise, so order does not matter to it.
- ``heads``: the value channels inside each KV head: the rows of ``attn_v`` (and its bias) within each
  KV head, and the columns of ``attn_output`` for every query head that reads that KV head. Q and K
  stay: RoPE pairs their channels.
- ``residual``: one order of the residual stream for the whole model: the columns of every matrix
  that reads it, the rows of every matrix that writes it, the token embedding's columns and every
  norm gain and bias over it. RMSNorm and LayerNorm do not depend on channel order.

Only a row's sub-blocks matter to the quantizer, so a permutation counts through the columns it
moves; rows move only to keep the function.

The rule (closed form, no search): each channel's salience is its column's importance summed over
rows (for the residual stream, each reading matrix's column shares, summed). Channels sorted by
salience fill sub-blocks in order, so a sub-block holds channels of like salience (tiers); the tiers
are then dealt round-robin over the blocks, so each block holds one sub-block of every tier, and
its U upgrades find the model-wide salient sub-blocks wherever they are. Ties keep channel order.

An architecture is permuted only where the test suite proves the result exact through llama.cpp
(``EXACT``); any tensor the rules do not name on a permuted axis drops that kind, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from sfmp_gguf.format import SUB_BLOCK, types_for_row

KINDS = ("ffn", "heads", "residual")
# The converter's default, from the ablation on the demo model (README, "Channel permutation"): ffn +
# heads lowered KLD at 8 bpw with both sensitivities and raised it at 3.25 to 5.5 bpw; the residual
# stream's permutation raised it almost everywhere. So ffn + heads from PERMUTE_FROM_BPW up, none below.
PERMUTE_FROM_BPW = 7.0
HIGH_RATE_KINDS = ("ffn", "heads")


def default_kinds(bpw: float) -> tuple[str, ...]:
    """The kinds the converter applies at ``bpw`` when none are asked for."""
    return HIGH_RATE_KINDS if bpw >= PERMUTE_FROM_BPW else ()
# Architectures whose permuted F32 files test_permutation proves to give the same logits.
EXACT = {"llama": KINDS, "gemma3": KINDS, "qwen3moe": KINDS}
METADATA_KEY = "sfmp.permuted"

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")

# Residual-stream axes by tensor (the part after ``blk.N.``, or the whole name outside blocks).
_READS_RESIDUAL = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight",
                   "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_gate_inp.weight", "ffn_gate_shexp.weight",
                   "ffn_up_shexp.weight", "token_embd.weight", "output.weight")
_WRITES_RESIDUAL = ("attn_output.weight", "ffn_down.weight", "ffn_down_exps.weight", "ffn_down_shexp.weight")
_RESIDUAL_VECTORS = ("attn_norm.weight", "attn_norm.bias", "ffn_norm.weight", "ffn_norm.bias", "output_norm.weight",
                     "output_norm.bias", "post_attention_norm.weight", "post_ffw_norm.weight", "attn_output.bias",
                     "ffn_down.bias", "ffn_down_shexp.bias")
# Feed-forward sets: the tensors whose rows (up) or columns (down) are one block's intermediate channels.
_FFN_SETS = {"": ("ffn_gate", "ffn_up", "ffn_down"), "_exps": ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
             "_shexp": ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")}


@dataclass(frozen=True)
class Axes:
    """A tensor's new order, as old indices per new position: ``rows`` on its second-to-last axis,
    ``cols`` on its last (a vector's only axis); (experts, length) indices move each expert apart."""

    rows: np.ndarray | None = None
    cols: np.ndarray | None = None


@dataclass(frozen=True)
class Permutation:
    kinds: tuple[str, ...]  # the kinds applied, in KINDS order
    axes: dict[str, Axes]  # tensor name -> its permutation; absent: unchanged
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it was not applied

    def apply(self, name: str, values: np.ndarray) -> np.ndarray:
        """``values`` of tensor ``name`` (or anything shaped like it, such as per-weight importance)
        in the permuted order."""
        axes = self.axes.get(name)
        if axes is None:
            return values
        out = values
        if axes.rows is not None:
            out = _take(out, axes.rows, -2)
        if axes.cols is not None:
            out = _take(out, axes.cols, -1)
        return out

    def apply_columns(self, name: str, columns: np.ndarray) -> np.ndarray:
        """Per-column importance, (n,) or (experts, n), in the permuted column order."""
        axes = self.axes.get(name)
        return columns if axes is None or axes.cols is None else _take(columns, axes.cols, -1)

    def inverse(self) -> "Permutation":
        """The permutation that restores the original order."""
        undo = {name: Axes(None if a.rows is None else inverse(a.rows), None if a.cols is None else inverse(a.cols))
                for name, a in self.axes.items()}
        return Permutation(self.kinds, undo, self.skipped)

    def metadata(self) -> str:
        return ",".join(self.kinds) if self.kinds else "none"


NONE = Permutation((), {})


def _take(values: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    if index.ndim == 1:
        return np.take(values, index, axis=axis)
    shape = [1] * values.ndim
    shape[0] = index.shape[0]
    shape[axis] = index.shape[1]
    return np.take_along_axis(values, index.reshape(shape), axis=axis)


def inverse(index: np.ndarray) -> np.ndarray:
    """The index that undoes ``index`` (per expert for a 2-D one)."""
    out = np.empty_like(index)
    np.put_along_axis(out, index, np.broadcast_to(np.arange(index.shape[-1]), index.shape), axis=-1)
    return out


def dealt(salience: np.ndarray, block: int) -> np.ndarray:
    """Channel order (old index per new position) for one row length: channels by falling salience
    fill 32-wide sub-blocks, and those tiers are dealt round-robin over the blocks of ``block``
    channels. A length under one block is only sorted; one that is no multiple of 32 too."""
    n = salience.shape[-1]
    order = np.argsort(-salience, kind="stable")
    if n % SUB_BLOCK or n < block or n % block:
        return order
    tiers = order.reshape(-1, SUB_BLOCK)
    n_blocks, per_block = n // block, block // SUB_BLOCK
    rank = np.arange(len(tiers))
    placed = np.empty_like(tiers)
    placed[(rank % n_blocks) * per_block + rank // n_blocks] = tiers
    return placed.ravel()


def _dealt_rows(salience: np.ndarray, block: int) -> np.ndarray:
    """``dealt`` per row of a 2-D salience (one order per expert), or of a vector."""
    if salience.ndim == 1:
        return dealt(salience, block)
    return np.stack([dealt(s, block) for s in salience])


def block_of(n: int) -> int:
    """The block length the family uses for rows of length n (the sub-block where none fits)."""
    fits = types_for_row(n)
    return fits[0].block_size if fits else SUB_BLOCK


def _part(name: str) -> tuple[int | None, str]:
    m = _BLOCK.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def _int_field(metadata: Mapping[str, object], key: str) -> int | None:
    value = metadata.get(key)
    value = getattr(value, "value", value)
    return int(value) if isinstance(value, (int, np.integer)) else None


def plan(arch: str, metadata: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]],
         salience: Callable[[str], np.ndarray | None], kinds: tuple[str, ...] = KINDS) -> Permutation:
    """The permutation of a model: tensor shapes (every tensor, numpy order), GGUF metadata, and
    ``salience(name)``, the per-column salience of a quantized matrix ((n,), or (experts, n) for
    stacked experts; None for a tensor kept as a float). ``kinds`` are the ones asked for; those this architecture cannot prove exact,
    or whose tensors the rules do not cover, are skipped with the reason."""
    axes: dict[str, dict[str, np.ndarray]] = {}
    applied, skipped = [], {}
    allowed = EXACT.get(arch, ())
    for kind in KINDS:
        if kind not in kinds:
            continue
        if kind not in allowed:
            skipped[kind] = f"not proven exact for architecture {arch}"
            continue
        found = {"ffn": _ffn, "heads": _heads, "residual": _residual}[kind](arch, metadata, shapes, salience)
        if isinstance(found, str):
            skipped[kind] = found
            continue
        applied.append(kind)
        for name, moved in found.items():
            axes.setdefault(name, {}).update(moved)
    return Permutation(tuple(applied), {name: Axes(a.get("rows"), a.get("cols")) for name, a in axes.items()},
                       skipped)


def _ffn(arch, metadata, shapes, salience) -> dict[str, dict[str, np.ndarray]] | str:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, shape in shapes.items():
        layer, part = _part(name)
        for suffix, (gate, up, down) in _FFN_SETS.items():
            if part != f"{down}.weight":
                continue
            prefix = f"blk.{layer}."
            for member in (gate, up):
                if prefix + member + ".weight" not in shapes:
                    return f"{name} has no {member} beside it"
            s = salience(name)
            if s is None:
                continue  # kept as a float: no order helps it
            order = _dealt_rows(s, block_of(shape[-1]))
            out[name] = {"cols": order}
            for member in (gate, up):
                for tail in (".weight", ".bias"):
                    if prefix + member + tail in shapes:
                        out[prefix + member + tail] = {"rows" if tail == ".weight" else "cols": order}
    if not out:
        return "no feed-forward tensors"
    return out


def _heads(arch, metadata, shapes, salience) -> dict[str, dict[str, np.ndarray]] | str:
    n_head = _int_field(metadata, f"{arch}.attention.head_count")
    n_head_kv = _int_field(metadata, f"{arch}.attention.head_count_kv") or n_head
    if not n_head:
        return "no single head count in the metadata"
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, shape in shapes.items():
        layer, part = _part(name)
        if part != "attn_output.weight":
            continue
        v = f"blk.{layer}.attn_v.weight"
        if v not in shapes:
            return f"{name} has no attn_v beside it"
        head_dim = shapes[v][0] // n_head_kv
        if shapes[v][0] % n_head_kv or shape[-1] != n_head * head_dim or n_head % n_head_kv:
            return f"{name} and {v} do not split into {n_head} query and {n_head_kv} KV heads"
        s = salience(name)
        if s is None:
            continue
        per_query = np.asarray(s, dtype=np.float64).reshape(n_head, head_dim)
        per_query = per_query / np.maximum(per_query.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        per_kv = per_query.reshape(n_head_kv, n_head // n_head_kv, head_dim).sum(axis=1)
        block = min(block_of(shape[-1]), head_dim)
        within = np.stack([dealt(s, block) for s in per_kv])  # (n_head_kv, head_dim)
        rows_v = (within + head_dim * np.arange(n_head_kv)[:, None]).ravel()
        kv_of_query = np.arange(n_head) // (n_head // n_head_kv)
        out[name] = {"cols": (within[kv_of_query] + head_dim * np.arange(n_head)[:, None]).ravel()}
        out[v] = {"rows": rows_v}
        if f"blk.{layer}.attn_v.bias" in shapes:
            out[f"blk.{layer}.attn_v.bias"] = {"cols": rows_v}
    if not out:
        return "no attention output tensors"
    return out


def _residual(arch, metadata, shapes, salience) -> dict[str, dict[str, np.ndarray]] | str:
    n_embd = _int_field(metadata, f"{arch}.embedding_length")
    if not n_embd:
        return "no embedding length in the metadata"
    readers, writers, vectors = [], [], []
    for name, shape in shapes.items():
        part = _part(name)[1]
        if part in _READS_RESIDUAL and shape[-1] == n_embd:
            readers.append(name)
        elif part in _WRITES_RESIDUAL and len(shape) >= 2 and shape[-2] == n_embd:
            writers.append(name)
        elif part in _RESIDUAL_VECTORS and shape == (n_embd,):
            vectors.append(name)
        elif n_embd in shape:
            return f"{name} {shape} has a dimension of the residual stream's width that no rule covers"
    total = np.zeros(n_embd)
    for name in readers:
        s = salience(name)
        if s is None:
            continue
        s = np.asarray(s, dtype=np.float64).reshape(-1, n_embd).sum(axis=0)
        if s.sum() > 0:
            total += s / s.sum()
    order = dealt(total, block_of(n_embd))
    out = {name: {"cols": order} for name in readers + vectors}
    out.update({name: {"rows": order} for name in writers})
    return out
