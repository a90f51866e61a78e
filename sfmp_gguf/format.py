"""The SFMP block format: one family of ggml types, one table.

SFMP's own scheme meets a fractional rate b with two precisions, floor(b) and floor(b) + 1. Here a
type fixes the *base* precision B of every 32-weight sub-block of a block and the number U of
sub-blocks that the quantizer upgrades to B + 1 bits: the ones whose error matters most. U is fixed
per type, so every block has the same size (ggml needs that) and the kernels run without
data-dependent branches; which sub-blocks are upgraded is recorded per block.

Block layout (little-endian)::

    ggml_half d                   super-scale
    uint8     sc[n_sub]           per sub-block: upgraded << 7 | m   (m: amplitude, 0..127)
    uint8     base[n * B / 8]     every sub-block's B-bit code, as pieces (below)
    uint8     extra[4 * U]        one more bit for each upgraded sub-block, in sub-block order

Sub-block j decodes to x = d * m * (2q + 1 - 2^b) / 2^b, b its precision, q in [0, 2^b): a mid-rise
uniform grid whose amplitude d*m does not depend on b. Codes are nested: an upgraded sub-block's code
is q = 2 * base + extra, so dropping the extra bit (or any low bits) gives the code at the lower
precision, and a lower-rate file follows from a higher-rate one without the original weights.

A B-bit code is stored as pieces, most significant first: B = 4*nibbles + 2*crumbs + planes with at
most two nibbles, one crumb and one plane. A piece of width w over a span of n weights takes
n*w/8 bytes; weight i sits in byte i % (n*w/8) at bit w * (i // (n*w/8)). Base pieces span the whole
block; an extra bit is a 1-bit piece spanning its sub-block. With that rule a 32-byte load of a
``_k`` block's nibble piece holds sub-blocks c and c + 4, of its crumb piece c, c + 2, c + 4, c + 6,
and of its plane all eight, so SIMD decoding is a shift and a mask.

Two grids map codes to values. ``uniform``: the mid-rise grid above, at every precision 2..8.
``nonlinear`` (types named ``sfmpNNNn_*``): a fixed codebook for sub-blocks of at most 4 bits, where a
uniform grid wastes levels on the tails (bench-results/grid.md): x = d * m * L_b[q] / 64 with the
integer levels ``NL_LEVELS[b]``. The 4-bit levels were trained on the demo model's weights
(``python -m sfmp_gguf.bench.grid``); the 3- and 2-bit levels are means of sibling pairs (codes 2q and
2q + 1), so the codes stay nested: dropping a code's last bit lands on its parent level. A
nonlinear type's sub-blocks never exceed 4 bits, so every table fits one 16-entry byte shuffle.

Two variants share that coding: ``_k`` with 256-weight blocks (8 sub-blocks, paired with Q8_K
activations: the fast path) and ``_s`` with 64-weight blocks (2 sub-blocks, paired with Q8_0), for
rows that are a multiple of 64 but not of 256. From ``FINE_ACTIVATION_MIN_BITS`` base bits up, the CPU
pairs a type with two-level activations instead (``ActivationType``: each 8-bit block plus its
residual at 1/256 of its step), which llama.cpp never writes to a file. A type's name gives its average code bits per weight
times 100 (``sfmp425_k``: B = 4 with two of eight sub-blocks at 5 bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

FORMAT_VERSION = 4  # 3: the nonlinear grid; 4: type ids from FIRST_TYPE_ID
SUB_BLOCK = 32
MIN_BITS, MAX_BITS = 2, 8
AMPLITUDE_MAX = 127  # m is 7 bits; the top bit of a scale byte flags an upgraded sub-block
UPGRADE_FLAG = 0x80
# No public ggml has a type at 400 or above: mainline ends at 42, ik_llama.cpp uses 97-99, 133-158,
# 202-233, 335-353 and 397-399, ROCmFPX 100-110, PrismML 142-143 (README, "Type ids"). Ids size
# ggml's two type-traits tables (a row per id), so the family stays near the free range's start.
FIRST_TYPE_ID = 1024
# Files of format versions 2 and 3 numbered the family from 100 in the same order (version 2 had the
# uniform types only): version -> (first id, types). Readers map them with type_for_file_id.
LEGACY_TYPE_IDS = {2: (100, 26), 3: (100, 36)}
HEADER_BYTES = 2  # the fp16 super-scale
GGUF_VERSION_KEY = "sfmp.format_version"
# From this base precision up a type pairs with two-level activations (ActivationType): llama.cpp's
# 8-bit activations would otherwise add more error than the weights' codes (bench-results/gaps.md).
FINE_ACTIVATION_MIN_BITS = 5


GRID_UNIFORM, GRID_NONLINEAR = "uniform", "nonlinear"
GRIDS = (GRID_UNIFORM, GRID_NONLINEAR)
NL_UNIT = 64  # nonlinear levels are in 1/64ths of the amplitude, |L| <= 63: L + 64 fits a signed byte
NL_MAX_BITS = 4
NL_LEVELS: dict[int, tuple[int, ...]] = {
    2: (-44, -11, 11, 44),
    3: (-55, -32, -17, -5, 5, 17, 32, 55),
    4: (-63, -48, -37, -28, -21, -14, -8, -2, 2, 8, 14, 21, 28, 37, 48, 63),
}


# The block layout. codegen renders these formulas as the C macros SFMP_*_OFFSET that every kernel
# uses, and asserts at compile time that they give this module's numbers for every type.
SCALE_OFFSET = 0  # ggml_half d
AMPLITUDE_OFFSET = SCALE_OFFSET + HEADER_BYTES  # uint8 sc[n_sub]
EXTRA_BYTES = SUB_BLOCK // 8  # one upgraded sub-block's extra bits


def code_offset(block_size: int, n_sub: int, bits_before: int) -> int:
    """Where the base-code piece starts that follows ``bits_before`` bits of more significant pieces
    (a piece of width w spans the block in block_size * w / 8 bytes)."""
    return AMPLITUDE_OFFSET + n_sub + block_size * bits_before // 8


def extra_offset(block_size: int, n_sub: int, base_bits: int, rank: int) -> int:
    """Where the extra bits of the ``rank``-th upgraded sub-block start (rank = upgrades: the block's end)."""
    return code_offset(block_size, n_sub, base_bits) + EXTRA_BYTES * rank


@dataclass(frozen=True)
class Variant:
    suffix: str
    block_size: int
    activation: str  # ggml vec_dot_type
    rungs: tuple[tuple[int, int], ...]  # (base bits, upgraded sub-blocks per block), rising rate
    nonlinear_rungs: tuple[tuple[int, int], ...]  # the rungs whose sub-blocks stay within NL_MAX_BITS


# 256-weight blocks: two and six of eight sub-blocks upgraded give 0.5-bit steps, each type with a choice.
_K_RUNGS = tuple((b, u) for b in range(MIN_BITS, MAX_BITS) for u in (2, 6)) + ((MAX_BITS, 0),)
# 64-weight blocks: one of two upgraded, or none.
_S_RUNGS = tuple((b, u) for b in range(MIN_BITS, MAX_BITS) for u in (0, 1)) + ((MAX_BITS, 0),)
# Nonlinear: the rungs up to 4-bit sub-blocks, plus a plain 4-bit one for 256-weight blocks.
_K_NL_RUNGS = tuple(r for r in _K_RUNGS if r[0] < NL_MAX_BITS) + ((NL_MAX_BITS, 0),)
_S_NL_RUNGS = tuple(r for r in _S_RUNGS if r[0] + (r[1] > 0) <= NL_MAX_BITS)
VARIANT_K = Variant("k", 256, "Q8_K", _K_RUNGS, _K_NL_RUNGS)
VARIANT_S = Variant("s", 64, "Q8_0", _S_RUNGS, _S_NL_RUNGS)
VARIANTS = (VARIANT_K, VARIANT_S)


@dataclass(frozen=True)
class ActivationType:
    """A ggml type that only carries activations on the CPU, never weights in a file: each block is a
    pair of 8-bit blocks of ggml's ``base`` type, the values at scale d and then the residual they
    leave in steps of d / 256, so a dot product costs two 8-bit ones and the activations err over 100
    times less in RMS (tests/test_kernels.py)."""

    type_id: int
    base: str  # "Q8_K" or "Q8_0"
    block_size: int
    base_type_size: int  # bytes of one ggml block of ``base``

    @property
    def name(self) -> str:
        return f"sfmp_{self.base.lower()}_x2"

    @property
    def type_size(self) -> int:
        return 2 * self.base_type_size


@dataclass(frozen=True)
class SfmpType:
    type_id: int
    variant: Variant
    base_bits: int
    upgrades: int
    grid: str = GRID_UNIFORM

    @property
    def n_sub(self) -> int:
        return self.variant.block_size // SUB_BLOCK

    @property
    def budget(self) -> int:
        """Code bits per 32 weights summed over the block: n_sub * B + U."""
        return self.n_sub * self.base_bits + self.upgrades

    @property
    def average_bits(self) -> Fraction:
        return Fraction(self.budget, self.n_sub)

    @property
    def name(self) -> str:
        tag = "n" if self.grid == GRID_NONLINEAR else ""
        return f"sfmp{int(self.average_bits * 100)}{tag}_{self.variant.suffix}"

    @property
    def block_size(self) -> int:
        return self.variant.block_size

    @property
    def sc_offset(self) -> int:
        return AMPLITUDE_OFFSET

    @property
    def base_offset(self) -> int:
        return code_offset(self.block_size, self.n_sub, 0)

    @property
    def piece_offsets(self) -> tuple[int, ...]:
        """Byte offset of each base-code piece (``pieces(base_bits)``), most significant first."""
        widths = pieces(self.base_bits)
        return tuple(code_offset(self.block_size, self.n_sub, sum(widths[:k])) for k in range(len(widths)))

    @property
    def extra_offset(self) -> int:
        return extra_offset(self.block_size, self.n_sub, self.base_bits, 0)

    @property
    def type_size(self) -> int:
        return extra_offset(self.block_size, self.n_sub, self.base_bits, self.upgrades)

    @property
    def bpw(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def fine_activations(self) -> bool:
        """True if the CPU kernels pair it with two-level activations (ACTIVATIONS), not 8-bit ones."""
        return self.base_bits >= FINE_ACTIVATION_MIN_BITS

    @property
    def activation(self) -> str:
        """The ggml type its CPU dot product takes."""
        return ACTIVATIONS[self.variant.activation].name if self.fine_activations else self.variant.activation


def _family() -> tuple[SfmpType, ...]:
    """Uniform types first, so that ids of format 2 keep their meaning; then the nonlinear ones."""
    types = []
    for grid in GRIDS:
        for variant in VARIANTS:
            for base_bits, upgrades in (variant.rungs if grid == GRID_UNIFORM else variant.nonlinear_rungs):
                types.append(SfmpType(FIRST_TYPE_ID + len(types), variant, base_bits, upgrades, grid))
    return tuple(types)


SFMP_TYPES: tuple[SfmpType, ...] = _family()
_ACTIVATIONS_FROM = FIRST_TYPE_ID + len(SFMP_TYPES)
ACTIVATIONS = {base: ActivationType(_ACTIVATIONS_FROM + i, base, block, size)
               for i, (base, block, size) in enumerate((("Q8_K", 256, 4 + 256 + 2 * 16), ("Q8_0", 32, 2 + 32)))}
TYPE_COUNT = _ACTIVATIONS_FROM + len(ACTIVATIONS)  # the patched GGML_TYPE_COUNT
BY_NAME = {t.name: t for t in SFMP_TYPES}
BY_ID = {t.type_id: t for t in SFMP_TYPES}


def type_for_file_id(file_id: int, format_version: int) -> SfmpType | None:
    """The SFMP type a tensor type id names in a file of ``format_version``; None if it names none."""
    first, count = LEGACY_TYPE_IDS.get(format_version, (FIRST_TYPE_ID, len(SFMP_TYPES)))
    return SFMP_TYPES[file_id - first] if first <= file_id < first + count else None


def pieces(bits: int) -> tuple[int, ...]:
    """Widths of a code's stored pieces, most significant first (4: nibble, 2: crumb, 1: plane)."""
    if not 1 <= bits <= MAX_BITS:  # 1: an upgrade's extra bit
        raise ValueError(f"code width {bits} outside 1..{MAX_BITS}")
    nibbles, rest = divmod(bits, 4)
    return (4,) * nibbles + (2,) * (rest // 2) + (1,) * (rest % 2)


def types_for_row(row_length: int) -> tuple[SfmpType, ...]:
    """The family members that can hold rows of this length (the 256-weight ones when possible), by
    rising rate."""
    for variant in VARIANTS:
        if row_length % variant.block_size == 0:
            return tuple(sorted((t for t in SFMP_TYPES if t.variant == variant), key=lambda t: t.type_size))
    return ()


def fallback(t: SfmpType) -> SfmpType | None:
    """The 64-weight type that stands in for a 256-weight one on rows it cannot hold: the cheapest
    one of its grid at least as precise."""
    if t.variant is VARIANT_S:
        return None
    return min((s for s in SFMP_TYPES
                if s.variant is VARIANT_S and s.grid == t.grid and s.average_bits >= t.average_bits),
               key=lambda s: s.average_bits)
