"""The SFMP block format: one family of ggml types, one table.

Every 32-weight sub-block carries its own precision ``bits`` in 2..8 and its own amplitude. A block
is a fixed-size container (ggml needs that) holding a fixed budget of code bits that its sub-blocks
share unevenly: the quantizer gives more bits to the sub-blocks whose error matters most.

Block layout (little-endian)::

    ggml_half d                  super-scale
    uint8     sb[n_sub]          per sub-block: (bits - 2) << 5 | m   (m: amplitude, 0..31)
    uint8     qs[4 * budget]     sub-block codes, back to back, 4 * bits bytes each

Sub-block j decodes to x = d * m * (2q + 1 - 2^bits) / 2^bits for its codes q in [0, 2^bits):
a mid-rise uniform grid whose amplitude d*m does not depend on ``bits``. Codes are nested: the top
k bits of a code are the code at precision k, so a lower-rate file follows from a higher-rate one by
truncating codes, without the original weights. Each code is stored as pieces, most significant
first: bits = 4*nibbles + 2*crumbs + planes with at most two nibbles, one crumb and one plane, so
every precision decodes with the same three SIMD-friendly unpackers:

- nibble (16 bytes): byte k holds weight k (low 4 bits) and weight k + 16 (high 4 bits);
- crumb  (8 bytes):  byte k holds weights k, k + 8, k + 16, k + 24 at bit offsets 0, 2, 4, 6;
- plane  (4 bytes):  bit i of the little-endian uint32 is weight i.

Two variants share that coding: ``_k`` with 256-weight blocks (8 sub-blocks, paired with Q8_K
activations: the fast path) and ``_s`` with 64-weight blocks (2 sub-blocks, paired with Q8_0),
for rows that are a multiple of 64 but not of 256. ``budget`` is the sum of the sub-blocks' bits;
a type's name gives the average code bits per weight (``sfmp45_k``: 4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

FORMAT_VERSION = 1
SUB_BLOCK = 32
MIN_BITS, MAX_BITS = 2, 8
AMPLITUDE_MAX = 31  # m is 5 bits
FIRST_TYPE_ID = 100  # far above upstream's GGML_TYPE_COUNT (43), so no future type collides
UPSTREAM_TYPE_COUNT = 43
HEADER_BYTES = 2  # the fp16 super-scale
# Average code bits of the family's rungs: 2.0, 2.5, ..., 8.0.
AVERAGE_BITS = tuple(Fraction(n, 2) for n in range(2 * MIN_BITS, 2 * MAX_BITS + 1))
GGUF_VERSION_KEY = "sfmp.format_version"


@dataclass(frozen=True)
class Variant:
    suffix: str
    block_size: int
    activation: str  # ggml vec_dot_type


VARIANT_K = Variant("k", 256, "Q8_K")
VARIANT_S = Variant("s", 64, "Q8_0")
VARIANTS = (VARIANT_K, VARIANT_S)


@dataclass(frozen=True)
class SfmpType:
    type_id: int
    variant: Variant
    average_bits: Fraction

    @property
    def name(self) -> str:
        return f"sfmp{int(self.average_bits * 10)}_{self.variant.suffix}"

    @property
    def n_sub(self) -> int:
        return self.variant.block_size // SUB_BLOCK

    @property
    def budget(self) -> int:
        """Sum of the sub-blocks' bits in one block."""
        return int(self.average_bits * self.n_sub)

    @property
    def block_size(self) -> int:
        return self.variant.block_size

    @property
    def sb_offset(self) -> int:
        return HEADER_BYTES

    @property
    def qs_offset(self) -> int:
        return HEADER_BYTES + self.n_sub

    @property
    def type_size(self) -> int:
        return self.qs_offset + 4 * self.budget

    @property
    def bpw(self) -> float:
        return self.type_size * 8 / self.block_size


def _family() -> tuple[SfmpType, ...]:
    types = []
    for variant in VARIANTS:
        for bits in AVERAGE_BITS:
            types.append(SfmpType(FIRST_TYPE_ID + len(types), variant, bits))
    return tuple(types)


SFMP_TYPES: tuple[SfmpType, ...] = _family()
TYPE_COUNT = FIRST_TYPE_ID + len(SFMP_TYPES)  # the patched GGML_TYPE_COUNT
VARIANT_STRIDE = len(AVERAGE_BITS)  # a _k type's _s twin has id + VARIANT_STRIDE
BY_NAME = {t.name: t for t in SFMP_TYPES}
BY_ID = {t.type_id: t for t in SFMP_TYPES}


def pieces(bits: int) -> tuple[int, ...]:
    """Widths of a code's stored pieces, most significant first (4: nibble, 2: crumb, 1: plane)."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"precision {bits} outside {MIN_BITS}..{MAX_BITS}")
    nibbles, rest = divmod(bits, 4)
    return (4,) * nibbles + (2,) * (rest // 2) + (1,) * (rest % 2)


def types_for_row(row_length: int) -> tuple[SfmpType, ...]:
    """The family members that can hold rows of this length (the 256-weight ones when possible)."""
    for variant in VARIANTS:
        if row_length % variant.block_size == 0:
            return tuple(t for t in SFMP_TYPES if t.variant == variant)
    return ()
