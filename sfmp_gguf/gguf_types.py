"""Teach the ``gguf`` package the SFMP types: their ids, sizes, and codecs.

gguf-py's ``GGMLQuantizationType`` is a closed IntEnum, ``GGML_QUANT_SIZES`` a plain dict, and
``gguf.quants`` keeps one codec class per type in ``_type_traits`` (each a subclass of its
``__Quant`` base, registered by ``__init_subclass__``), so there is no public API for a new type.
This module, and only this one, adds our members to all three on import, without editing the
installed package. GGUFWriter and GGUFReader then write and read SFMP tensors like any other
quantized type, and ``gguf.quants.dequantize`` / ``quantize`` run the numpy reference
(``quant/reference.py``: bit for bit what the C kernels compute, so no C library is needed; the
quantizer takes no importance matrix, for that use the converter). ``import sfmp_gguf`` imports
this module as soon as gguf is imported (``sfmp_gguf/__init__.py``).
"""

from __future__ import annotations

import types

import numpy as np

from sfmp_gguf import gguf_package
from sfmp_gguf.format import SFMP_TYPES, SfmpType
from sfmp_gguf.quant import reference

gguf_package.select()  # before this process first imports gguf

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants  # noqa: E402


def _add_member(t: SfmpType) -> GGMLQuantizationType:
    existing = GGMLQuantizationType._value2member_map_.get(t.type_id)
    if existing is not None:
        if existing.name != t.name.upper():
            raise RuntimeError(f"gguf package already uses type id {t.type_id} for {existing.name}")
        return existing
    member = int.__new__(GGMLQuantizationType, t.type_id)
    member._name_ = t.name.upper()
    member._value_ = t.type_id
    GGMLQuantizationType._member_map_[member._name_] = member
    GGMLQuantizationType._value2member_map_[t.type_id] = member
    GGMLQuantizationType._member_names_.append(member._name_)
    return member


def _add_codec(t: SfmpType, member: GGMLQuantizationType) -> None:
    """A ``gguf.quants`` codec class for ``t`` (its base class registers it), unless there is one."""
    base = getattr(quants, "__Quant", None)  # a module-level name, so not mangled
    if base is None or member in quants._type_traits:
        return

    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return reference.quantize_blocks(blocks, t).reshape(-1, t.type_size)

    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return reference.dequantize_blocks(blocks, t)

    body = {"__module__": __name__, "quantize_blocks": classmethod(quantize_blocks),
            "dequantize_blocks": classmethod(dequantize_blocks)}
    types.new_class(t.name.upper(), (base,), {"qtype": member}, lambda ns: ns.update(body))


def register() -> None:
    """Idempotent: make every SFMP type known to gguf-py's enum, size table and codecs."""
    for t in SFMP_TYPES:
        member = _add_member(t)
        GGML_QUANT_SIZES[member] = (t.block_size, t.type_size)
        _add_codec(t, member)


def gguf_type(t: SfmpType) -> GGMLQuantizationType:
    register()
    return GGMLQuantizationType(t.type_id)


register()
