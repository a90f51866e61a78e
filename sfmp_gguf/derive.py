"""A lower-rate SFMP file derived from a higher-rate one, without the source weights.

The converter records in each file what its allocation and quantizer used: per SFMP tensor, the
expected error of every type of its row length no larger than its own (``reachable``), in loss-like
units; the per-column importance
the quantizer weighted its choices with; and the sensitivity. ``derive`` runs the same global
allocation over those candidates at the new target, then makes each tensor's new type in one of
two ways:

- ``requantize`` (the default): the quantizer, with the recorded column importance, on the values
  the file decodes to, at any reachable type (either grid). From a high-rate file those values are
  the weights within its small error, so the result is close to converting from the model.
- ``cut``: the codes cut to the new precision (``quant.elastic.derive_blocks``), keeping each
  sub-block's amplitude, so only the types of the same grid with no more bits per sub-block
  (``quant.elastic.can_derive``). Faster and exactly nested, but the amplitudes were chosen for
  the higher precision.

Other tensors are copied byte for byte. The output records the profile again, cut to what its own
types can still reach, so it can be derived from in turn.

Metadata (``sfmp.profile.*``): ``sensitivity`` (string), ``tensors`` (names), ``counts`` (how
many errors each tensor has: one per reachable type, in ``types_for_row``'s order), ``errors`` (float32, the
tensors' lists one after another), ``column_counts`` (the length of each tensor's importance, 0 for
none; experts' rows one after another) and ``columns`` (float32, likewise; absent when no tensor has one).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from sfmp_gguf import allocation, kernels, units
from sfmp_gguf.analysis import TensorProfile, matrix_shape
from sfmp_gguf.errors import InputError
from sfmp_gguf.gguf_header import Header, read_header
from sfmp_gguf.format import BY_ID, FORMAT_VERSION, GGUF_VERSION_KEY, SfmpType, types_for_row
from sfmp_gguf.quant.elastic import can_derive, derive_blocks
from sfmp_gguf.quantize import quantize_tensor

KEY_SENSITIVITY = "sfmp.profile.sensitivity"
KEY_TENSORS = "sfmp.profile.tensors"
KEY_COUNTS = "sfmp.profile.counts"
KEY_ERRORS = "sfmp.profile.errors"
KEY_COLUMN_COUNTS = "sfmp.profile.column_counts"
KEY_COLUMNS = "sfmp.profile.columns"
PROFILE_KEYS = (KEY_SENSITIVITY, KEY_TENSORS, KEY_COUNTS, KEY_ERRORS, KEY_COLUMN_COUNTS)  # and KEY_COLUMNS if any
METHODS = ("requantize", "cut")
ROWS_PER_CHUNK = 1 << 14  # rows derived at a time: memory stays bounded by a chunk, not the tensor


def reachable(t: SfmpType, row_length: int) -> tuple[SfmpType, ...]:
    """The types a tensor of type ``t`` can be derived to by requantizing: those of its row length
    with no more bytes per block, in ``types_for_row``'s order (by rising rate)."""
    return tuple(c for c in types_for_row(row_length) if c.type_size <= t.type_size)


def profile_metadata(profiles: Iterable[TensorProfile], types: dict[str, SfmpType], sensitivity: str,
                     columns: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The ``sfmp.profile.*`` entries (gguf.GGUFValue) for tensors quantized to ``types`` with the
    quantizer importance ``columns`` (None or a missing tensor: none)."""
    import gguf

    names, counts, errors, column_counts, column_values = [], [], [], [], []
    for p in profiles:
        keep = [p.candidates.index(c) for c in reachable(types[p.name], p.shape[1])]
        names.append(p.name)
        counts.append(len(keep))
        errors.append(np.asarray(p.errors, dtype=np.float32)[keep])
        own = None if columns is None else columns.get(p.name)
        column_counts.append(0 if own is None else own.size)
        if own is not None:
            column_values.append(np.asarray(own, dtype=np.float32).ravel())

    def floats(parts: list[np.ndarray]) -> Any:
        return gguf.GGUFValue(np.concatenate(parts).tolist(), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)

    array = gguf.GGUFValueType.ARRAY
    entries = {KEY_SENSITIVITY: gguf.GGUFValue(sensitivity, gguf.GGUFValueType.STRING),
               KEY_TENSORS: gguf.GGUFValue(names, array, gguf.GGUFValueType.STRING),
               KEY_COUNTS: gguf.GGUFValue(counts, array, gguf.GGUFValueType.UINT16),
               KEY_ERRORS: floats(errors),
               KEY_COLUMN_COUNTS: gguf.GGUFValue(column_counts, array, gguf.GGUFValueType.UINT32)}
    if column_values:  # GGUF has no empty arrays: no importance at all, no entry
        entries[KEY_COLUMNS] = floats(column_values)
    return entries


@dataclass(frozen=True)
class SourceFile:
    """What derivation needs of an SFMP file."""

    header: Header
    sensitivity: str
    profiles: list[TensorProfile]  # candidates: the types reachable from each tensor's own
    types: dict[str, SfmpType]  # each SFMP tensor's type now
    columns: dict[str, np.ndarray]  # the quantizer importance of the tensors that had one

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def bpw(self) -> float:
        return sum(p.bits(self.types[p.name]) for p in self.profiles) / sum(p.n_weights for p in self.profiles)


def read_source(path: Path) -> SourceFile:
    """The file's SFMP tensors and recorded profile; InputError (one line) when it has none to use."""
    header = read_header(path)
    path = header.path
    version = header.get(GGUF_VERSION_KEY)
    if version is None:
        raise InputError(f"{path}: not an SFMP file (no {GGUF_VERSION_KEY}); derive from a file sfmp_to_gguf made")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: SFMP format version {version}; this tool derives from version {FORMAT_VERSION} "
                         f"files only (convert the model again)")
    if not any(t.type_id in BY_ID for t in header.tensors):
        raise InputError(f"{path}: not an SFMP file (no tensor has an SFMP type)")
    missing = [k for k in PROFILE_KEYS if k not in header.metadata]
    if missing:
        raise InputError(f"{path}: records no allocation profile ({missing[0]}); convert the model again with this "
                         f"version of sfmp_to_gguf")
    tensors = {t.name: t for t in header.tensors}
    names, counts = header.get(KEY_TENSORS), header.get(KEY_COUNTS)
    errors = np.asarray(header.get(KEY_ERRORS), dtype=np.float64)
    column_counts = header.get(KEY_COLUMN_COUNTS)
    column_values = np.asarray(header.get(KEY_COLUMNS, np.zeros(0)), dtype=np.float32)
    if len(counts) != len(names) or sum(counts) != len(errors) or len(column_counts) != len(names) or \
            sum(column_counts) != len(column_values):
        raise InputError(f"{path}: its allocation profile is inconsistent ({len(names)} tensors, {len(counts)} counts, "
                         f"{len(errors)} errors, {len(column_values)} importance values)")
    profiles, types, columns, start, column_start = [], {}, {}, 0, 0
    for name, count, column_count in zip(names, counts.tolist(), column_counts.tolist()):
        tensor = tensors.get(name)
        t = BY_ID.get(tensor.type_id) if tensor is not None else None
        if t is None:
            raise InputError(f"{path}: the profile names {name}, which is not an SFMP tensor of the file")
        shape = tensor.shape[::-1]  # numpy order
        candidates = reachable(t, shape[-1])
        if len(candidates) != count:
            raise InputError(f"{path}: the profile of {name} has {count} errors for {len(candidates)} types")
        profiles.append(TensorProfile(name, matrix_shape(shape), candidates, errors[start:start + count]))
        types[name] = t
        start += count
        if column_count:
            experts = shape[0] if len(shape) == 3 else 1
            if column_count != experts * shape[-1]:
                raise InputError(f"{path}: the profile gives {name} {column_count} importance values for "
                                 f"{experts} x {shape[-1]} columns")
            own = column_values[column_start:column_start + column_count]
            columns[name] = own.reshape(experts, shape[-1]) if experts > 1 else own
            column_start += column_count
    return SourceFile(header, str(header.get(KEY_SENSITIVITY)), profiles, types, columns)


def plan(source: SourceFile, bpw: float, method: str = METHODS[0]) -> allocation.Allocation:
    """The allocation at ``bpw`` over the types each tensor can be derived to by ``method``."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: not one of {', '.join(METHODS)}")
    if bpw > source.bpw + allocation.TOLERANCE_BPW:
        raise InputError(f"{source.path}: --bpw {bpw:g} is above the file's own {source.bpw:.3f} bpw; derivation "
                         f"only removes bits")
    profiles = source.profiles
    if method == "cut":
        profiles = [replace(p, candidates=tuple(p.candidates[k] for k in keep), errors=p.errors[keep])
                    for p in profiles
                    for keep in [[k for k, c in enumerate(p.candidates) if can_derive(source.types[p.name], c)]]]
    return allocation.allocate(profiles, bpw, guard=units.guard_bpw(source.sensitivity))


def _metadata(header: Header) -> dict[str, Any]:
    """The file's metadata as gguf.GGUFValue, less the architecture (GGUFWriter writes it)."""
    import gguf

    def plain(value: Any) -> Any:
        return value.tolist() if isinstance(value, np.ndarray) else value

    return {key: gguf.GGUFValue(plain(v.value), gguf.GGUFValueType(v.type),
                                None if v.sub_type is None else gguf.GGUFValueType(v.sub_type))
            for key, v in header.metadata.items() if key != "general.architecture"}


def derive(source: SourceFile, bpw: float, out: Path, method: str = METHODS[0], threads: int = 1,
           progress: Callable[[list], Callable[[Iterable], Iterator]] | None = None) -> allocation.Allocation:
    """Write ``source`` derived to ``bpw`` by ``method`` (METHODS) to ``out`` (atomically); returns the
    allocation. ``progress`` makes a progress bar for the output tensors (``pipeline.weight_progress``)."""
    import gguf

    from sfmp_gguf.gguf_io import OutputTensor, write_gguf

    result = plan(source, bpw, method)
    header = source.header
    metadata = _metadata(header)
    by_name = {p.name: p for p in source.profiles}
    metadata.update(profile_metadata(source.profiles, result.types, source.sensitivity, source.columns))
    weights_of: dict[SfmpType, int] = {}
    for p in source.profiles:
        weights_of[result.types[p.name]] = weights_of.get(result.types[p.name], 0) + p.n_weights
    dominant = max(weights_of, key=lambda t: (weights_of[t], -t.type_id))
    metadata["general.file_type"] = gguf.GGUFValue(dominant.type_id, gguf.GGUFValueType.UINT32)
    outputs, stored = [], {}
    for tensor in header.tensors:
        shape = tensor.shape[::-1]
        if tensor.name in by_name:
            outputs.append(OutputTensor(tensor.name, shape, result.types[tensor.name]))
            stored[tensor.name] = OutputTensor(tensor.name, shape, source.types[tensor.name])
        elif tensor.type_id in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            outputs.append(OutputTensor(tensor.name, shape, None, tensor.type_id == gguf.GGMLQuantizationType.F16))
            stored[tensor.name] = outputs[-1]
        else:
            raise InputError(f"{source.path}: tensor {tensor.name} has type id {tensor.type_id}, which is neither "
                             f"SFMP nor a float")
    offsets = {t.name: header.data_start + t.offset for t in header.tensors}

    def produce(o: OutputTensor) -> np.ndarray:
        s = stored[o.name]
        data = np.memmap(source.path, dtype=np.uint8, mode="r", offset=offsets[o.name], shape=(s.nbytes,))
        if o.sfmp_type is None:
            return data.view(o.float_dtype)
        if o.sfmp_type is source.types[o.name]:
            return data
        src = source.types[o.name]
        rows = data.reshape(by_name[o.name].shape[0], -1)
        if method == "cut":
            return np.concatenate([derive_blocks(rows[i:i + ROWS_PER_CHUNK], src, o.sfmp_type)
                                   for i in range(0, rows.shape[0], ROWS_PER_CHUNK)])
        values = kernels.load().dequantize(rows.reshape(1, -1), src).reshape(by_name[o.name].shape)
        return quantize_tensor(values, o.sfmp_type, source.columns.get(o.name), pool)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        write_gguf(out, header.get("general.architecture"), metadata, outputs, produce,
                   progress=progress(outputs) if progress else iter)
    return result
