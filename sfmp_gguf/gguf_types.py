"""Teach the installed ``gguf`` package the SFMP type ids.

gguf-py's ``GGMLQuantizationType`` is a closed IntEnum and ``GGML_QUANT_SIZES`` a plain dict, so
there is no public API for a new type. This module, and only this one, adds our members to both at
import time of the caller, without editing the installed package. GGUFWriter and GGUFReader then
write and read SFMP tensors like any other quantized type.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from sfmp_gguf.format import SFMP_TYPES, SfmpType


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


def register() -> None:
    """Idempotent: make every SFMP type known to gguf-py's enum and size table."""
    for t in SFMP_TYPES:
        GGML_QUANT_SIZES[_add_member(t)] = (t.block_size, t.type_size)


def gguf_type(t: SfmpType) -> GGMLQuantizationType:
    register()
    return GGMLQuantizationType(t.type_id)


register()
