"""The conversion phases as functions: prepare (load, importance, analysis), allocate, write.

The command line runs them once; the benchmark analyses a model once per sensitivity and writes
it at many sizes. Importing it imports gguf (``gguf_package.select`` chooses the copy); a caller that
reads Hugging Face folders calls ``model_source.use_pinned_gguf_py()`` first.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from sfmp_gguf import allocation, analysis, derive, native_analysis, permutation, units
from sfmp_gguf.allocation import Allocation
from sfmp_gguf.errors import InputError
from sfmp_gguf.gguf_io import OutputTensor, write_gguf
from sfmp_gguf.imatrix_io import load_imatrix
from sfmp_gguf.importance import (BUILTIN_TEXT, SILENT_EXPERTS, column_importance, fill_silent_experts,
                                  imatrix_from_text, match_imatrix)
from sfmp_gguf.model_source import ModelSource, open_model
from sfmp_gguf.permutation import Permutation
from sfmp_gguf.quantize import quantize_tensor


def progress(desc: str, unit: str) -> Callable[[Iterable], Iterable]:
    """A tqdm bar on a terminal, nothing otherwise (errors stay one line in logs)."""
    return lambda items: tqdm(items, desc=desc, unit=unit, leave=False, disable=None)


def weight_progress(desc: str, tensors: Iterable) -> Callable[[Iterable], Iterable]:
    """A bar over ``tensors`` (anything with a ``shape``) that counts their weights, so it shows
    weights/s. It wraps an iterable of those tensors, or of pairs that start with them."""
    total = sum(int(np.prod(t.shape)) for t in tensors)

    def bar(items: Iterable) -> Iterable:
        with tqdm(total=total, desc=desc, unit="weight", unit_scale=True, leave=False, disable=None) as shown:
            for item in items:
                yield item
                shown.update(int(np.prod((item[0] if isinstance(item, tuple) else item).shape)))
    return bar


def prefetched(items: Iterable, load: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """(item, load(item)) in order, with the next item loading on a thread while the caller works on
    this one: reading overlaps computing, and at most two loaded items exist at once."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = deque(reader.submit(load, item) for item in items[:1])
        for i, item in enumerate(items):
            value = pending.popleft().result()
            if i + 1 < len(items):
                pending.append(reader.submit(load, items[i + 1]))
            yield item, value
            del value


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Timer:
    """Each phase's time, and the process's peak RSS when it ended."""

    phases: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, start: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - start
        self.peaks[phase] = peak_rss()


@dataclass
class Prepared:
    source: ModelSource
    shapes: dict[str, tuple[int, ...]]  # the tensors that get an SFMP type: matrices and stacked experts
    columns: dict[str, np.ndarray] | None  # per-column importance the quantizer takes ((experts, n) for experts)
    profiles: list[analysis.TensorProfile]  # errors in loss-like units (units.py)
    timer: Timer
    sensitivity: str = "weights"
    fallbacks: dict[str, str] = field(default_factory=dict)  # tensor -> why its signal was replaced
    why: str = ""  # how the sensitivity was chosen, for the summary line
    permutation: Permutation = permutation.NONE  # already applied to ``source``, ``columns`` and ``profiles``

    @property
    def n_quantized(self) -> int:
        return sum(p.n_weights for p in self.profiles)


def write_float(source: ModelSource, path: Path, half: bool = False) -> None:
    """The model as an F32 GGUF; with ``half``, its matrices in F16 (norms and other vectors stay
    F32, as llama.cpp's converter keeps them): half the disk, for llama-imatrix's temporary copy."""
    by_name = {t.name: t for t in source.tensors}
    outputs = [OutputTensor(t.name, t.shape, None, half and len(t.shape) >= 2) for t in source.tensors]
    write_gguf(path, source.arch, dict(source.metadata), outputs,
               lambda t: by_name[t.name].load().astype(t.float_dtype))


def choose_sensitivity(source: ModelSource, sensitivity: str | None, imatrix: Path | None,
                       calib: Path | None) -> tuple[str, str]:
    """The sensitivity to use and why. With none asked for: Fisher where it can run, else an imatrix
    from the same text."""
    from sfmp_gguf import fisher

    text = f"on {calib.name}" if calib else "on the built-in text"
    if sensitivity == "fisher":
        reason = fisher.unavailable(source)
        if reason is not None:
            raise InputError(f"{source.path}: Fisher cannot run: {reason}; use --imatrix FILE")
        return "fisher", text
    if sensitivity is not None:
        return sensitivity, {"imatrix": f"from {imatrix.name}" if imatrix else text, "weights": "as asked"}[sensitivity]
    if imatrix is not None:
        return "imatrix", f"from {imatrix.name}"
    reason = fisher.unavailable(source)
    if reason is None:
        return "fisher", f"the default, {text}"
    return "imatrix", f"{text}, because {reason} for Fisher"


def prepare(model: Path, sensitivity: str | None, imatrix: Path | None, calib: Path | None, threads: int,
            scratch: Path | None = None, rate: tuple[float, tuple[str, ...]] | None = None,
            permute: tuple[str, ...] = (), shares: bool = False) -> Prepared:
    """Load, importance, channel permutation and analysis. ``sensitivity`` None picks the best that
    can run here; ``calib`` None means the built-in text; ``permute``: the permutation kinds to
    apply where they are exact. Temporary work goes in ``scratch`` (a new folder, or one in the
    system's temporary folder), removed before returning, on success or not. ``rate`` (bpw, grids),
    when given, is checked before the slow phases. ``shares``: the profiles carry the report's
    upgraded-importance shares (a second analysis pass)."""
    return prepare_each(model, sensitivity, imatrix, calib, threads, [permute], scratch, rate, shares)[0]


def prepare_each(model: Path, sensitivity: str | None, imatrix: Path | None, calib: Path | None, threads: int,
                 permutes: list[tuple[str, ...]], scratch: Path | None = None,
                 rate: tuple[float, tuple[str, ...]] | None = None, shares: bool = False) -> list[Prepared]:
    """``prepare`` once per permutation in ``permutes``, from one load and one importance."""
    timer = Timer()
    start = time.monotonic()
    source = open_model(model)
    shapes = {t.name: t.shape for t in source.tensors if analysis.quantizable(t.name, t.shape)}
    if rate is not None:
        allocation.check_rate(allocation.bare_profiles(shapes, rate[1]), rate[0])
    sensitivity, why = choose_sensitivity(source, sensitivity, imatrix, calib)
    text = calib or BUILTIN_TEXT
    timer.add("load", start)
    work = scratch or Path(tempfile.mkdtemp(prefix="sfmp-scratch-"))
    work.mkdir(exist_ok=True)
    try:
        return _prepare(source, shapes, sensitivity, why, imatrix, text, threads, work, timer, permutes, shares)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(source: ModelSource, shapes: dict[str, tuple[int, ...]], sensitivity: str, why: str,
             imatrix: Path | None, text: Path, threads: int, work: Path, timer: Timer,
             permutes: list[tuple[str, ...]], shares: bool) -> list[Prepared]:
    start = time.monotonic()
    columns = per_weight = None
    fallbacks: dict[str, str] = {}
    if sensitivity == "imatrix":
        if imatrix is not None:
            entries, origin = load_imatrix(imatrix), imatrix
        else:
            entries, origin = imatrix_from_text(source, text, threads, lambda p: write_float(source, p, half=True)), text
        columns = match_imatrix(origin, entries, shapes)
        fallbacks = {name: "no imatrix entry, so the median importance of the others stands in"
                     for name in shapes if name not in entries}
    elif sensitivity == "fisher":
        from sfmp_gguf import fisher

        view = source if source.hf_dir is not None else fisher.hf_view(source, work)
        per_weight = fisher.streamed_fisher(view, text, shapes, threads, scratch=work,
                                            progress=progress("fisher", "block"))
    timer.add("importance", start)
    out = []
    for permute in permutes:
        own = Timer(dict(timer.phases), dict(timer.peaks))
        start = time.monotonic()
        perm = channel_permutation(source, shapes, sensitivity, columns, per_weight, permute)
        moved_columns = None if columns is None else {name: perm.apply_columns(name, c) for name, c in columns.items()}
        moved_per_weight = None if per_weight is None else PermutedImportance(per_weight, perm)
        own.add("permutation", start)
        out.append(analysed(permuted(source, perm), shapes, sensitivity, moved_columns, moved_per_weight, own, threads,
                            fallbacks, why, perm, shares))
    return out


def channel_permutation(source: ModelSource, shapes: dict[str, tuple[int, ...]], sensitivity: str,
                        columns: dict[str, np.ndarray] | None, per_weight, kinds: tuple[str, ...]) -> Permutation:
    """The permutation of ``kinds`` that the sensitivity's salience sets (permutation.py): imatrix
    columns as they are, Fisher summed over each column's rows. The weights alone give none."""
    if sensitivity == "imatrix":
        def salience(name: str) -> np.ndarray | None:
            return columns.get(name)
    elif sensitivity == "fisher":
        def salience(name: str) -> np.ndarray | None:
            return per_weight[name].sum(axis=-2, dtype=np.float64) if name in shapes else None
    else:
        return replace(permutation.NONE, skipped=dict.fromkeys(kinds, "the weights alone give no salience"))
    all_shapes = {t.name: t.shape for t in source.tensors}
    return permutation.plan(source.arch, source.metadata, all_shapes, salience, kinds)


def permuted(source: ModelSource, perm: Permutation) -> ModelSource:
    """``source`` with every tensor read in the permuted order."""
    if not perm.axes:
        return source
    return replace(source, tensors=tuple(
        replace(t, read=lambda t=t: perm.apply(t.name, t.read().reshape(t.shape))) for t in source.tensors))


class PermutedImportance:
    """Per-weight importance (read one tensor at a time, like a FisherStore) in the permuted order."""

    def __init__(self, store, perm: Permutation):
        self.store, self.perm = store, perm

    def __getitem__(self, name: str) -> np.ndarray:
        return self.perm.apply(name, self.store[name])


def analysed(source: ModelSource, shapes: dict[str, tuple[int, ...]], sensitivity: str,
             columns: dict[str, np.ndarray] | None, per_weight, timer: Timer, threads: int,
             fallbacks: dict[str, str] | None = None, why: str = "", perm: Permutation = permutation.NONE,
             shares: bool = False) -> Prepared:
    """The analysis phase: each tensor read once and profiled, on ``threads`` threads, with its
    per-weight importance (a mapping read one tensor at a time, such as a FisherStore; its column means
    become ``columns``), else its per-column importance, else none. ``perm`` has been applied to all
    of them; with ``shares``, each profile also gets the report's upgraded shares with and without it."""
    start = time.monotonic()
    columns = {} if per_weight is not None else columns
    fallbacks = dict(fallbacks or {})
    profiles = []
    undo = perm.inverse() if shares else None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for t, w in weight_progress("analysis", source.tensors)(prefetched(source.tensors, lambda t: t.load())):
            profile = _analyse(source, t, w, shapes, columns, per_weight, fallbacks, pool, undo)
            if profile is not None:
                profiles.append(profile)
    timer.add("analysis", start)
    return Prepared(source, shapes, columns, units.in_loss_units(profiles, sensitivity), timer, sensitivity,
                    fallbacks, why, perm)


def _analyse(source: ModelSource, t, w: np.ndarray, shapes: dict[str, tuple[int, ...]],
             columns: dict[str, np.ndarray] | None, per_weight, fallbacks: dict[str, str],
             pool: ThreadPoolExecutor, undo: Permutation | None) -> analysis.TensorProfile | None:
    """The profile of tensor ``t`` with values ``w`` (None for a tensor kept as a float); records its
    quantizer importance in ``columns`` when it comes from per-weight values. With ``undo`` (the
    inverse of the permutation applied), the profile has the upgraded shares after and before it."""
    if t.name not in shapes:
        if not np.isfinite(w).all():
            raise InputError(f"{source.path}: tensor {t.name} holds NaN or Inf values")
        return None
    matrix = analysis.matrix_shape(shapes[t.name])
    if per_weight is not None:
        h_tensor, silent = fill_silent_experts(per_weight[t.name])
        if silent:
            fallbacks[t.name] = SILENT_EXPERTS
        columns[t.name] = column_importance(h_tensor)  # the quantizer's per-column weights
        h = h_tensor.reshape(matrix)
    else:
        h = None if columns is None else columns[t.name]
    try:
        profile = native_analysis.profile_tensor(t.name, w.reshape(matrix), h, pool)
    except native_analysis.NonFiniteWeights:
        raise InputError(f"{source.path}: tensor {t.name} holds NaN or Inf values") from None
    if undo is None:
        return profile
    if per_weight is not None:
        h_before = undo.apply(t.name, h_tensor).reshape(matrix)
    else:
        h_before = None if h is None else undo.apply_columns(t.name, h)
    before = native_analysis.upgraded_shares(undo.apply(t.name, w).reshape(matrix), h_before, pool)
    after = native_analysis.upgraded_shares(w.reshape(matrix), h, pool)
    return replace(profile, upgraded_share=(before, after))


def plan(prepared: Prepared, bpw: float, grids: tuple[str, ...]) -> Allocation:
    """The allocation at ``bpw`` over the types of ``grids``, guarded where the signal is not loss-based."""
    start = time.monotonic()
    result = allocation.allocate([analysis.on_grids(p, grids) for p in prepared.profiles], bpw,
                                 guard=units.guard_bpw(prepared.sensitivity))
    prepared.timer.add("allocation", start)
    return result


def write(prepared: Prepared, plan: Allocation, out: Path, threads: int) -> None:
    import gguf

    source, shapes, columns = prepared.source, prepared.shapes, prepared.columns
    by_name = {t.name: t for t in source.tensors}
    start = time.monotonic()
    metadata = dict(source.metadata)
    weights_of = {}
    for p in prepared.profiles:
        weights_of[plan.types[p.name]] = weights_of.get(plan.types[p.name], 0) + p.n_weights
    dominant = max(weights_of, key=lambda t: (weights_of[t], -t.type_id))
    metadata["general.file_type"] = gguf.GGUFValue(dominant.type_id, gguf.GGUFValueType.UINT32)
    metadata[permutation.METADATA_KEY] = gguf.GGUFValue(prepared.permutation.metadata(), gguf.GGUFValueType.STRING)
    metadata.update(derive.profile_metadata(prepared.profiles, plan.types, prepared.sensitivity, columns))
    outputs = [OutputTensor(t.name, t.shape, plan.types.get(t.name)) for t in source.tensors]
    loaded = prefetched(outputs, lambda o: by_name[o.name].load())
    with ThreadPoolExecutor(max_workers=threads) as pool, closing(loaded):
        def produce(o: OutputTensor) -> np.ndarray:
            t, w = next(loaded)  # write_gguf asks for the tensors in this order
            assert t is o
            if o.sfmp_type is None:
                return np.ascontiguousarray(w, dtype=np.float32)
            return quantize_tensor(w.reshape(analysis.matrix_shape(shapes[o.name])), o.sfmp_type,
                                   None if columns is None else columns[o.name], pool)

        write_gguf(out, source.arch, metadata, outputs, produce, progress=weight_progress("quantize+write", outputs))
    prepared.timer.add("quantize+write", start)
