// sfmp-gguf: SFMP mixed-precision block types for ggml.
// These files are compiled into ggml (through ggml_patch/register.patch) and, unchanged, into the
// standalone libsfmp_kernels used by the tests. The format is specified in sfmp_gguf/format.py and
// sfmp_gguf/quant/reference.py; quantization here must produce the reference's bytes exactly.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ggml-sfmp-types.inc"

#ifdef __cplusplus
extern "C" {
#endif

#define SFMP_NL_BIAS SFMP_NL_UNIT  // nonlinear level + bias lies in 1..127: a byte maddubs cannot saturate

// Geometry of one family member (see sfmp_gguf/format.py). budget = n_sub * base_bits + upgrades.
typedef struct {
    int32_t block_size;    // weights per block: 256 (_k) or 64 (_s)
    int32_t n_sub;         // 32-weight sub-blocks per block
    int32_t base_bits;     // B: every sub-block's precision
    int32_t upgrades;      // U: sub-blocks per block at B + 1 bits
    int32_t type_size;     // bytes per block
    int32_t grid;          // SFMP_GRID_UNIFORM or SFMP_GRID_NONLINEAR
    int32_t unit_shift;    // a block's integer dot product is in units of d_w * d_y / 2^unit_shift
    int32_t fine;          // 1: the CPU pairs it with two-level activations (sfmp_block_q8_*_x2)
} sfmp_layout;

#define SFMP_FINE_ACTIVATIONS(nsub, budget) ((budget) / (nsub) >= SFMP_FINE_ACTIVATION_MIN_BITS)
#define SFMP_RESIDUAL_STEPS 256  // a two-level activation's residual step: its value step / 256

#define SFMP_LAYOUT(bs, nsub, budget, tsize, grid)                                                      \
    {(bs), (nsub), (budget) / (nsub), (budget) % (nsub), (tsize), (grid),                            \
     (grid) == SFMP_GRID_NONLINEAR ? 6 : (budget) / (nsub) + 1, SFMP_FINE_ACTIVATIONS(nsub, budget)}

// Nonlinear levels by precision (2..4), in 1/64ths of the amplitude; biased and spread as the
// SFMP_NL_BIASED_* and SFMP_NL_SPREAD_* lists in ggml-sfmp-types.inc.
extern const int8_t sfmp_nl_levels[SFMP_NL_MAX_BITS + 1][16];
extern const uint8_t sfmp_nl_biased[SFMP_NL_MAX_BITS + 1][16];
extern const uint8_t sfmp_nl_spread[SFMP_NL_MAX_BITS][16];

// Activation blocks the dot products pair with; mirrors of ggml's block_q8_K and block_q8_0.
typedef struct {
    float   d;
    int8_t  qs[256];
    int16_t bsums[16];
} sfmp_block_q8_K;

typedef struct {
    uint16_t d;  // fp16
    int8_t   qs[32];
} sfmp_block_q8_0;

// Two-level activations (SFMP_ACTIVATION in ggml-sfmp-types.inc): the values as an 8-bit block (hi,
// scale d), then the residual they leave in steps of d / 256 (lo), so hi + lo / 256 carries about
// 15 bits per value at hi's scale: a dot product takes the exact integer 256 * T(hi) + T(lo) once.
// lo.d holds d / 256 for readers; the kernels use hi.d.
typedef struct {
    sfmp_block_q8_K hi, lo;
} sfmp_block_q8_K_x2;

typedef struct {
    sfmp_block_q8_0 hi, lo;
} sfmp_block_q8_0_x2;

#ifdef __cplusplus
#define SFMP_STATIC_ASSERT static_assert
#else
#define SFMP_STATIC_ASSERT _Static_assert
#endif
SFMP_STATIC_ASSERT(sizeof(sfmp_block_q8_K) == 292 && sizeof(sfmp_block_q8_0) == 34, "ggml's Q8_K and Q8_0 blocks");
#define SFMP_ACTIVATION(id, lname, uname, base, bs, tsize)                                              \
    SFMP_STATIC_ASSERT(((bs) == 256 ? sizeof(sfmp_block_q8_K_x2) : sizeof(sfmp_block_q8_0_x2)) == (tsize), \
                       "activation block size differs from format.py");
#include "ggml-sfmp-types.inc"
#undef SFMP_ACTIVATION

// The layout macros give format.py's offsets for every piece and type size.
#define SFMP_PIECE(uname, bs, nsub, bits_before, offset)                                                 \
    SFMP_STATIC_ASSERT(SFMP_CODE_OFFSET(bs, nsub, bits_before) == (offset), "SFMP_CODE_OFFSET differs from format.py");
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                          \
    SFMP_STATIC_ASSERT(SFMP_EXTRA_OFFSET(bs, nsub, (budget) / (nsub), (budget) % (nsub)) == (tsize),         \
                       "SFMP_EXTRA_OFFSET differs from format.py");
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
#undef SFMP_PIECE

static inline int sfmp_popcount(uint32_t v) {
    int n = 0;
    for (; v; v &= v - 1) {
        ++n;
    }
    return n;
}

// Bit j set: sub-block j decodes as upgraded. Only the first `upgrades` flagged sub-blocks count,
// so a malformed block still decodes inside its own bytes.
static inline uint32_t sfmp_upgrade_mask(const sfmp_layout * L, const uint8_t * block) {
    uint32_t mask = 0;
    int left = L->upgrades;
    for (int j = 0; j < L->n_sub && left > 0; ++j) {
        if (block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_UPGRADE_FLAG) {
            mask |= 1u << j;
            --left;
        }
    }
    return mask;
}

// A code of `bits` bits is stored as pieces, most significant first: bits / 4 nibbles, then a crumb
// (2 bits) and a plane (1 bit) as needed. How many pieces of width w (4, 2 or 1) it has:
static inline int sfmp_piece_count(int bits, int w) {
    return w == 4 ? bits / 4 : (w == 2 ? (bits % 4) / 2 : bits % 2);
}

// The signed integer level of a `bits`-bit code: the odd code 2q + 1 - 2^bits in units of 2^-bits of
// the amplitude (uniform grid) or L[q] in units of 1/64 (nonlinear grid).
static inline int sfmp_level(const sfmp_layout * L, int bits, int q) {
    return L->grid == SFMP_GRID_NONLINEAR ? sfmp_nl_levels[bits][q] : 2 * q + 1 - (1 << bits);
}

int32_t sfmp_format_version(void);
// fp16 conversions, round to nearest even; ours so that both builds round identically.
uint16_t sfmp_fp32_to_fp16(float f);
float sfmp_fp16_to_fp32(uint16_t h);

// The block's fp16 super-scale, read byte-wise (blocks are only 2-byte aligned).
static inline uint16_t sfmp_block_d_bits(const uint8_t * block) {
    return (uint16_t) (block[SFMP_SCALE_OFFSET] | (block[SFMP_SCALE_OFFSET + 1] << 8));
}

static inline float sfmp_block_d(const uint8_t * block) {
    return sfmp_fp16_to_fp32(sfmp_block_d_bits(block));
}

bool sfmp_is_type(int type);
// The ggml type a tensor's type id names in a file of SFMP format `format_version` (0: no SFMP key):
// older versions numbered the family from another id (SFMP_LEGACY_IDS); other ids pass through.
int sfmp_type_from_file(int file_type, int64_t format_version);
const sfmp_layout * sfmp_get_layout(int type);  // NULL if not an SFMP type

// Whole rows: nrows x n_per_row floats, n_per_row a multiple of the block size. quant_weights is
// an optional importance per column (llama.cpp's imatrix), shared by all rows. Returns bytes written.
size_t sfmp_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * quant_weights);
void sfmp_dequantize_row(int type, const void * src, float * dst, int64_t k);
// True if every block is well formed: finite d, exactly `upgrades` sub-blocks flagged.
bool sfmp_validate_row(int type, const void * data, size_t nbytes);
// The activation blocks a type's dot product takes: Q8_K (_k types) or Q8_0 (_s types), or their
// two-level pairs for types with fine activations.
bool sfmp_fine_activations(int type);
size_t sfmp_activation_block_size(int type);  // bytes of one 8-bit activation block (one level)
// False where the environment sets SFMP_ACTIVATIONS=8bit: the types with fine activations then take
// 8-bit ones, as llama.cpp's types do (the two-level quantizers leave lo all zeros, and SFMP_X8 skips
// it): faster prompt processing, at the rounding error of 8-bit activations. Unset, empty or
// "two-level": true. Any other value stops the process with a one-line message. Read once.
bool sfmp_two_level_activations(void);
// Quantize n floats to a two-level activation row (n a multiple of the base block).
void sfmp_quantize_row_Q8_K_x2(const float * x, void * y, int64_t n);
void sfmp_quantize_row_Q8_0_x2(const float * x, void * y, int64_t n);
// Dot product of n weights against the type's activations.
void sfmp_vec_dot_generic(int type, int n, float * s, const void * vx, const void * vy);

// Per-type entry points with ggml's function-pointer signatures.
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                          \
    void sfmp_quantize_row_##lname##_ref(const float * x, void * y, int64_t k);                      \
    void sfmp_dequantize_row_##lname(const void * x, float * y, int64_t k);                          \
    size_t sfmp_quantize_##lname(const float * src, void * dst, int64_t nrows, int64_t n_per_row,    \
                                 const float * quant_weights);                                       \
    void sfmp_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,              \
                              const void * vy, size_t by, int nrc);
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

#ifdef __cplusplus
}
#endif
