// SFMP weights with 8 rows interleaved: the repack and the AVX2 mat-mul (layout in sfmp-x8.h).
//
// Per sub-block and row the kernel computes the scalar reference's exact integer
//   a = m * (K1 * sum(c y) + (K0 + [U > 0 and not upgraded]) * sum(y))
// (c the W-bit code; U = 0: K1 = 4, K0 = 2 (1 - 2^B); U > 0: K1 = 2, K0 = 1 - 2^(B+1)). On the
// nonlinear grid c is the code's biased level L + 64, looked up per row from the B-bit table (spread,
// for a plain sub-block's widened code) or the (B + 1)-bit one, and a = m * (sum(c y) - 64 sum(y)). Then the
// reference's float operations in the reference's order, one row per lane. The reference's
// (d_w * d_y) * (a * 2^-(B+1)) is computed as (d_w * (d_y * 2^-(B+1))) * a: scaling by a power of two
// is exact, so both round alike (unless a product falls below float's normal range). The results
// are equal.
#include "sfmp-x8.h"

#include "../../sfmp/sfmp-quants.h"

#include <string.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define SFMP_X8_AVX2 1
// VNNI's dpbusd multiplies and adds into 32 bits in one instruction, with no 16-bit saturation.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SFMP_X8_VNNI 1
#define SFMP_X8_PATH "avx2-vnni"
#elif defined(__AVXVNNI__)
#define SFMP_X8_VNNI 1
#define SFMP_X8_PATH "avx-vnni"
#else
#define SFMP_X8_PATH "avx2"
#endif
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define SFMP_X8_NEON 1
#if defined(__ARM_FEATURE_DOTPROD)
#define SFMP_X8_PATH "neon-dotprod"
#else
#define SFMP_X8_PATH "neon"
#endif
#else
#define SFMP_X8_PATH "none"
#endif
#if defined(SFMP_X8_AVX2) || defined(SFMP_X8_NEON)
#define SFMP_X8_SIMD 1
#endif

#if defined(_MSC_VER)
#define SFMP_X8_INLINE static __forceinline
#define SFMP_X8_UNROLL
#else
#define SFMP_X8_INLINE static inline __attribute__((always_inline))
// Shift counts and piece offsets must become constants: unroll the loops over pieces and groups.
#define SFMP_X8_UNROLL _Pragma("GCC unroll 8")
#endif

// Code width the kernels compute with: an upgraded sub-block's B + 1 bits, a plain one's B bits
// shifted up by one, so that every sub-block of the type has the same width.
SFMP_X8_INLINE int code_width(int B, int U) {
    return B + (U > 0);
}

// What code_dot takes from each W-bit code before multiplying, for ncols columns: 128 where plain AVX2
// takes 8-bit codes as signed bytes (code_dot), else 0.
SFMP_X8_INLINE int code_bias(int W, int ncols) {
#if defined(SFMP_X8_AVX2) && !defined(SFMP_X8_VNNI)
    return W == 8 && ncols > 1 ? 128 : 0;
#else
    (void) W;
    (void) ncols;
    return 0;
#endif
}

// Whether two-level activations go to the kernel as int16 (x86 from two columns, and plain AVX2 for
// 8-bit codes), else as their two 8-bit levels (any_code_dot). The faster of the two in
// bench.x8_kernel: one level-pair column per decode is cheaper as two byte dot products.
SFMP_X8_INLINE int wide_as_int16(int W, int ncols) {
#if defined(SFMP_X8_VNNI)
    (void) W;
    return ncols > 1;
#elif defined(SFMP_X8_AVX2)
    return W == 8 || ncols > 1;
#else
    (void) W;
    (void) ncols;
    return 0;
#endif
}

// Where B + 1 = 4 an x8 block stores every code widened to B + 1 bits (a plain one shifted up by a 0
// bit): one nibble to decode, where B bits and an extra plane take three pieces, and at 3 to 4 bits
// the kernel is bound more by decoding than by memory. Without VNNI it is bound by arithmetic at
// higher rates too (plain AVX2: bench.speed, bench.x8_kernel; NEON: bench.arm_cost), so there
// B + 1 = 6 and 8 widen as well: 4 + 2 bits in place of 4 + 1 and a plane, 4 + 4 in place of
// 4 + 2 + 1 and a plane (B + 1 = 7 would still take three pieces). Those tensors grow by (8 - U) / 8
// bits per weight. AVX-VNNI (4 columns a decode) keeps VNNI's layout: widened there, its calls ran
// faster in cache (bench.x8_kernel) but whole-model generation slower (llama-bench, avx-vnni build).
SFMP_X8_INLINE int widened(int B, int U) {
#if defined(SFMP_X8_VNNI)
    return U > 0 && B + 1 == 4;
#else
    return U > 0 && (B + 1 == 4 || B + 1 == 6 || B + 1 == 8);
#endif
}

// Bits stored per weight of a sub-block's codes.
SFMP_X8_INLINE int stored_width(int B, int U) {
    return widened(B, U) ? B + 1 : B;
}

// Extra-bit planes stored per block.
SFMP_X8_INLINE int stored_planes(int B, int U) {
    return widened(B, U) ? 0 : U;
}

// Every other x8 block stores every code at B bits and each row's U extra-bit planes apart, as a file
// block does, so a tensor keeps its size. Sub-block j of a row takes the plane at plane_index: its
// rank among the row's upgraded sub-blocks where U <= 2, else j minus the row's plain sub-blocks before
// j, at most n_sub - U = 2 (asserted below for every type). Both are the file's rank in a well-formed
// block; each leaves a kernel at most three planes to choose from per row, where a rank would take a
// gather.
SFMP_X8_INLINE int plane_index(int n_sub, int U, int j, int upgraded_before) {
    if (U <= 2) {
        return upgraded_before;
    }
    const int plain_before = j - upgraded_before;
    return j - (plain_before < n_sub - U ? plain_before : n_sub - U);
}

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) \
    SFMP_STATIC_ASSERT((budget) % (nsub) <= 2 || (nsub) - (budget) % (nsub) == 2, #lname ": plane_index takes U <= 2 or two plain sub-blocks");
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

// Where an x8 block's parts start (sfmp-x8.h): 8 fp16 scales, then sub-block j's 8 amplitudes, then
// the extra planes of index u for the 8 rows, then sub-block j's codes. The planes come before the
// codes because the kernel reads them first: a block is read front to back, as prefetchers expect.
SFMP_X8_INLINE size_t amplitudes_at(int j) {
    return (size_t) (2 * SFMP_X8_ROWS + SFMP_X8_ROWS * j);
}

SFMP_X8_INLINE size_t extras_at(int n_sub, int u) {
    return amplitudes_at(n_sub) + (size_t) (32 * u);
}

SFMP_X8_INLINE size_t codes_at(int n_sub, int B, int U, int j) {
    return extras_at(n_sub, stored_planes(B, U)) + (size_t) (32 * stored_width(B, U) * j);
}

SFMP_X8_INLINE size_t block_size_x8(int n_sub, int B, int U) {
    return codes_at(n_sub, B, U, n_sub);
}

bool sfmp_x8_supported(int type) {
#if defined(SFMP_X8_SIMD)
    return sfmp_is_type(type);
#else
    (void) type;
    return false;
#endif
}

const char * sfmp_x8_path(void) {
    return SFMP_X8_PATH;
}

size_t sfmp_x8_group_size(int type, int64_t n_per_row) {
    const sfmp_layout * L = sfmp_get_layout(type);
    if (!L) {
        return 0;
    }
    return (size_t) (n_per_row / L->block_size) * block_size_x8(L->n_sub, L->base_bits, L->upgrades);
}

// The low w bits of each of 8 bytes.
SFMP_X8_INLINE uint64_t byte_mask(int w) {
    return 0x0101010101010101ull * (uint64_t) ((1u << w) - 1);
}

SFMP_X8_INLINE uint64_t load64(const uint8_t * p) {
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

// Sub-block j's codes at the stored width, one byte per weight, weight 8c + b in byte b of word c
// (little-endian). Eight weights of a piece always share one byte shift, so each word is one load,
// shift and mask; bytes never carry into each other because every code fits a byte.
static void code_words(const sfmp_layout * L, const uint8_t * block, uint32_t upgraded, int j, uint64_t code[4]) {
    const uint8_t * piece = block + SFMP_CODE_OFFSET(L->block_size, L->n_sub, 0);
    memset(code, 0, 4 * sizeof(uint64_t));
    for (int w = 4; w >= 1; w /= 2) {
        const int span = L->block_size * w / 8;  // weight i of a piece: byte i % span, bit w * (i / span)
        for (int p = 0; p < sfmp_piece_count(L->base_bits, w); ++p, piece += span) {
            for (int c = 0; c < 4; ++c) {
                const int i = SFMP_SUB_BLOCK * j + 8 * c;
                code[c] = (code[c] << w) | ((load64(piece + i % span) >> (w * (i / span))) & byte_mask(w));
            }
        }
    }
    if (widened(L->base_bits, L->upgrades)) {  // weight i's extra bit: byte i % 4, bit i / 4; plain sub-blocks get a 0 bit
        uint32_t e = 0;
        if (upgraded >> j & 1) {
            const int rank = sfmp_popcount(upgraded & ((1u << j) - 1));
            memcpy(&e, block + SFMP_EXTRA_OFFSET(L->block_size, L->n_sub, L->base_bits, rank), sizeof(e));
        }
        for (int c = 0; c < 4; ++c) {
            const uint64_t lo = (e >> (2 * c)) & 0x01010101u, hi = (e >> (2 * c + 1)) & 0x01010101u;
            code[c] = (code[c] << 1) | lo | hi << 32;
        }
    }
}

void sfmp_x8_repack_group(int type, const void * src, size_t row_stride, void * dst, int64_t n_per_row) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const int B = L->base_bits, U = L->upgrades, W = stored_width(B, U);
    const size_t bsz = block_size_x8(L->n_sub, B, U);
    const int64_t nb = n_per_row / L->block_size;
    memset(dst, 0, (size_t) nb * bsz);
    for (int64_t i = 0; i < nb; ++i) {
        uint8_t * out = (uint8_t *) dst + i * bsz;
        for (int r = 0; r < SFMP_X8_ROWS; ++r) {
            const uint8_t * block = (const uint8_t *) src + r * row_stride + i * L->type_size;
            const uint32_t upgraded = sfmp_upgrade_mask(L, block);
            memcpy(out + 2 * r, block + SFMP_SCALE_OFFSET, 2);
            int rank = 0;
            for (int j = 0; j < L->n_sub; ++j) {
                if ((upgraded >> j & 1) && stored_planes(B, U)) {  // a file's extra piece: weight i at byte i % 4, bit i / 4, as an x8 plane
                    memcpy(out + extras_at(L->n_sub, plane_index(L->n_sub, U, j, rank)) + 4 * r,
                           block + SFMP_EXTRA_OFFSET(L->block_size, L->n_sub, B, rank), 4);
                    ++rank;
                }
                out[amplitudes_at(j) + r] =
                    (uint8_t) ((block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX) | ((upgraded >> j & 1) ? SFMP_UPGRADE_FLAG : 0));
                uint64_t code[4];
                code_words(L, block, upgraded, j, code);
                uint8_t * piece = out + codes_at(L->n_sub, B, U, j);
                int shift = W;
                for (int w = 4; w >= 1; w /= 2) {
                    for (int p = 0; p < sfmp_piece_count(W, w); ++p, piece += 32 * w) {
                        shift -= w;
                        for (int g = 0; g < 8; ++g) {  // group g: weights 4g..4g+3, in load g / (8/w) at bit w * (g % (8/w))
                            const uint32_t bits = (uint32_t) ((code[g / 2] >> (shift + 32 * (g % 2))) & byte_mask(w));
                            uint8_t * at = piece + 32 * (g / (8 / w)) + 4 * r;
                            uint32_t word;
                            memcpy(&word, at, sizeof(word));
                            word |= bits << (w * (g % (8 / w)));
                            memcpy(at, &word, sizeof(word));
                        }
                    }
                }
            }
        }
    }
}

// Sub-block s's terms from its 32 values' sum (each level's, with two levels) and their scale d.
static sfmp_x8_act activation_terms(const sfmp_layout * L, int32_t sum, int32_t lo_sum, float d, float unit) {
    const int B = L->base_bits;
    const int32_t k0 = L->grid == SFMP_GRID_NONLINEAR ? -SFMP_NL_BIAS : L->upgrades ? 1 - (2 << B) : 2 * (1 - (1 << B));
    const sfmp_x8_act act = {k0 * sum, sum, d * unit, k0 * lo_sum, lo_sum};  // unit is a power of two: (d_w * scale) * a rounds as (d_w * d) * (a * unit)
    return act;
}

// Sub-block s of an activation row: its hi values and scale, and with two levels its lo values.
static const int8_t * sub_block_levels(const sfmp_layout * L, const void * vy, int64_t s, int two_level, const int8_t ** lo,
                                       float * d) {
    if (L->block_size == 256) {
        const sfmp_block_q8_K * y = two_level ? &((const sfmp_block_q8_K_x2 *) vy)[s / 8].hi : (const sfmp_block_q8_K *) vy + s / 8;
        *lo = two_level ? ((const sfmp_block_q8_K_x2 *) vy)[s / 8].lo.qs + SFMP_SUB_BLOCK * (s % 8) : NULL;
        *d = y->d;
        return y->qs + SFMP_SUB_BLOCK * (s % 8);
    }
    const sfmp_block_q8_0 * y = two_level ? &((const sfmp_block_q8_0_x2 *) vy)[s].hi : (const sfmp_block_q8_0 *) vy + s;
    *lo = two_level ? ((const sfmp_block_q8_0_x2 *) vy)[s].lo.qs : NULL;
    *d = sfmp_fp16_to_fp32(y->d);
    return y->qs;
}

void sfmp_x8_prepare_activations(int type, const void * vy, int64_t n, sfmp_x8_act * acts) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const float unit = 1.0f / (float) (1 << L->unit_shift);
    for (int64_t s = 0; s < n / SFMP_SUB_BLOCK; ++s) {
        const int8_t * lo;
        float d;
        const int8_t * q = sub_block_levels(L, vy, s, 0, &lo, &d);
        int32_t sum = 0;
        for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
            sum += q[t];
        }
        acts[s] = activation_terms(L, sum, 0, d, unit);
    }
}

// The wide form of 32 two-level values (sfmp-x8.h): hi's bytes, lo's, then 256 hi + lo as int16.
void sfmp_x8_prepare_wide(int type, const void * vy, int64_t n, void * wide, sfmp_x8_act * acts) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const float unit = 1.0f / (float) (1 << L->unit_shift) / (float) SFMP_RESIDUAL_STEPS;
    for (int64_t s = 0; s < n / SFMP_SUB_BLOCK; ++s) {
        const int8_t * lo;
        float d;
        const int8_t * hi = sub_block_levels(L, vy, s, 1, &lo, &d);
        uint8_t * out = (uint8_t *) wide + SFMP_X8_WIDE_BYTES * s;
        memcpy(out, hi, SFMP_SUB_BLOCK);
        memcpy(out + SFMP_SUB_BLOCK, lo, SFMP_SUB_BLOCK);
        int32_t hi_sum = 0, lo_sum = 0;
        for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
            const int16_t v = (int16_t) (SFMP_RESIDUAL_STEPS * hi[t] + lo[t]);
            memcpy(out + SFMP_X8_WIDE_VALUES_AT + sizeof(v) * t, &v, sizeof(v));
            hi_sum += hi[t];
            lo_sum += lo[t];
        }
        acts[s] = activation_terms(L, hi_sum, lo_sum, d, unit);
    }
}

#if defined(SFMP_X8_SIMD)

// Columns one kernel call serves: the weights are decoded once for all of them. AVX-512's 32 vector
// registers hold 8 columns' sums without spilling; AVX2's 16 hold 4.
#if defined(__AVX512VL__)
#define SFMP_X8_MAX_COLUMNS 8
#else
#define SFMP_X8_MAX_COLUMNS 4
#endif
// Two-level activation rows per call: NEON takes each as two 8-bit columns (any_code_dot), so half.
#if defined(SFMP_X8_AVX2)
#define SFMP_X8_WIDE_COLUMNS SFMP_X8_MAX_COLUMNS
#else
#define SFMP_X8_WIDE_COLUMNS (SFMP_X8_MAX_COLUMNS / 2)
#endif

// ---- per-ISA primitives: x8i holds one int32 per row, x8f one float per row --------------------

#if defined(SFMP_X8_AVX2)

typedef __m256i x8i;
typedef __m256 x8f;

SFMP_X8_INLINE x8i x8i_zero(void) { return _mm256_setzero_si256(); }
SFMP_X8_INLINE x8i x8i_set1(int32_t v) { return _mm256_set1_epi32(v); }
SFMP_X8_INLINE x8i x8i_add(x8i a, x8i b) { return _mm256_add_epi32(a, b); }
SFMP_X8_INLINE x8i x8i_and(x8i a, x8i b) { return _mm256_and_si256(a, b); }
SFMP_X8_INLINE x8i x8i_or(x8i a, x8i b) { return _mm256_or_si256(a, b); }
SFMP_X8_INLINE x8i x8i_mul(x8i a, x8i b) { return _mm256_mullo_epi32(a, b); }
SFMP_X8_INLINE x8i x8i_shl(x8i a, int k) { return _mm256_slli_epi32(a, k); }
SFMP_X8_INLINE x8i x8i_sra(x8i a, int k) { return _mm256_srai_epi32(a, k); }
// All ones where a < b (both below 2^31).
SFMP_X8_INLINE x8i x8i_less(x8i a, x8i b) { return _mm256_cmpgt_epi32(b, a); }
SFMP_X8_INLINE x8i x8i_load_u8(const uint8_t * p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) p)); }
SFMP_X8_INLINE x8f x8f_zero(void) { return _mm256_setzero_ps(); }
SFMP_X8_INLINE x8f x8f_set1(float v) { return _mm256_set1_ps(v); }
SFMP_X8_INLINE x8f x8f_add(x8f a, x8f b) { return _mm256_add_ps(a, b); }
SFMP_X8_INLINE x8f x8f_mul(x8f a, x8f b) { return _mm256_mul_ps(a, b); }
SFMP_X8_INLINE x8f x8f_from_x8i(x8i a) { return _mm256_cvtepi32_ps(a); }
SFMP_X8_INLINE x8f x8f_load_f16(const uint8_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p)); }
SFMP_X8_INLINE void x8f_store(float * p, x8f v) { _mm256_storeu_ps(p, v); }

// a * 2^k + b per lane, rounded once to float as the reference rounds its int64: exact in double
// (below 2^53), then converted.
SFMP_X8_INLINE x8f x8f_from_pair(x8i a, const int k, x8i b) {
    const __m256d scale = _mm256_set1_pd((double) (1 << k));
    const __m256d lo = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(a)), scale),
                                     _mm256_cvtepi32_pd(_mm256_castsi256_si128(b)));
    const __m256d hi = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(a, 1)), scale),
                                     _mm256_cvtepi32_pd(_mm256_extracti128_si256(b, 1)));
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}
// m * t per lane, rounded once to float: exact in double (|m t| < 2^38), then converted.
SFMP_X8_INLINE x8f x8f_from_product(x8i m, x8i t) {
    const __m256d lo = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(m)), _mm256_cvtepi32_pd(_mm256_castsi256_si128(t)));
    const __m256d hi = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(m, 1)), _mm256_cvtepi32_pd(_mm256_extracti128_si256(t, 1)));
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

// An extra-bit plane: row r's 4 bytes, weight 4g + b of a sub-block at byte b, bit g.
typedef __m256i x8_codes;

SFMP_X8_INLINE x8_codes plane_load(const uint8_t * p) { return _mm256_loadu_si256((const __m256i *) p); }
SFMP_X8_INLINE x8_codes plane_zero(void) { return _mm256_setzero_si256(); }
// Rows in `pick` take b, the others a.
SFMP_X8_INLINE x8_codes plane_blend(x8i pick, x8_codes a, x8_codes b) { return _mm256_blendv_epi8(a, b, pick); }
// Rows outside `keep` get no bits.
SFMP_X8_INLINE x8_codes plane_keep(x8i keep, x8_codes a) { return _mm256_and_si256(keep, a); }

// Bits from..from+w-1 of each byte of v, moved to bits to..to+w-1, the others cleared: one 16-bit
// shift (none where from == to) and a mask. Every field lies within its byte before and after, so the
// bits a 16-bit shift carries across bytes are masked off.
SFMP_X8_INLINE __m256i bits_at(__m256i v, const int from, const int w, const int to) {
    const __m256i moved = from > to ? _mm256_srli_epi16(v, from - to) : from < to ? _mm256_slli_epi16(v, to - from) : v;
    return _mm256_and_si256(moved, _mm256_set1_epi8((char) (((1 << w) - 1) << to)));
}

// Group g (weights 4g..4g+3) of one sub-block's codes for the 8 rows: the bits of its W bits of
// pieces, then with X its bit of `plane` as the lowest bit, each piece's bits moved straight to their
// place in the code, one byte per weight.
SFMP_X8_INLINE __m256i group_codes(const uint8_t * codes, const int W, const int X, x8_codes plane, const int g) {
    __m256i code = X ? bits_at(plane, g, 1, 0) : _mm256_setzero_si256();
    int to = W + X;
    SFMP_X8_UNROLL
    for (int w = 4; w >= 1; w /= 2) {
        SFMP_X8_UNROLL
        for (int c = 0; c < sfmp_piece_count(W, w); ++c, codes += 32 * w) {
            const int load = g / (8 / w), k = g % (8 / w);
            to -= w;
            const __m256i bits = bits_at(_mm256_loadu_si256((const __m256i *) (codes + 32 * load)), w * k, w, to);
            code = w == W && !X ? bits : _mm256_or_si256(code, bits);
        }
    }
    return code;
}

SFMP_X8_INLINE __m256i broadcast4(const int8_t * y) {
    int32_t y4;
    memcpy(&y4, y, sizeof(y4));
    return _mm256_set1_epi32(y4);
}

#if defined(SFMP_X8_VNNI)
// s + per lane sum(code * y) over 4 bytes, with y's 4 bytes broadcast. With AVX512VL the broadcast
// is folded into dpbusd (GCC does not do it): one instruction less per column and group.
SFMP_X8_INLINE __m256i dpbusd4(__m256i s, __m256i code, const int8_t * y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__GNUC__)
    __asm__("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(s) : "v"(code), "m"(*(const int32_t *) y));
    return s;
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(s, code, broadcast4(y));
#else
    return _mm256_dpbusd_epi32(s, code, broadcast4(y));
#endif
}
#endif

// A nonlinear sub-block's two 16-entry tables and, per row, which of them it uses.
typedef struct {
    __m256i plain, up;
    x8i up_rows;  // all ones in the lanes of upgraded rows
} x8_tables;

SFMP_X8_INLINE x8_tables x8_tables_make(const uint8_t * plain, const uint8_t * up, x8i up_rows, const int W) {
    (void) W;
    x8_tables t = {_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) plain)),
                   _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) up)), up_rows};
    return t;
}

// Codes to biased levels; U = 0 types have one table.
SFMP_X8_INLINE __m256i lookup(__m256i code, const x8_tables * t, const int U, const int W) {
    (void) W;
    const __m256i plain = _mm256_shuffle_epi8(t->plain, code);
    return U ? _mm256_blendv_epi8(plain, _mm256_shuffle_epi8(t->up, code), t->up_rows) : plain;
}

// Per lane (row) and column: sum((c - code_bias(W)) y) over one sub-block of W = code_width(B, U) bit
// codes, read from `codes` and, where the type stores planes, `plane`; with `tables`, c is the code's
// biased level (below 128). With VNNI, whole codes go to dpbusd.
// Otherwise codes of W <= 7 bits feed maddubs whole; its 16-bit pair sums (|.| <= 2 * 128 * (2^W - 1))
// are widened every `run` groups, before they could overflow. 8-bit codes would saturate maddubs.
// For one column they go as two nibbles: the first stored piece, then the rest. For more, where
// the columns' multiplies outweigh decoding, they go biased: c - 128 as a signed byte, its magnitude
// against y with its sign, one maddubs a column. With |y| <= 127 a pair sum stays within
// 2 * 128 * 127 < 2^15; W = 8 types have two-level activations, whose quantizers
// (sfmp_quantize_row_Q8_*_x2) clamp both levels to [-127, 127].
SFMP_X8_INLINE void code_dot(const uint8_t * codes, const int B, const int U, const x8_tables * tables, x8_codes plane,
                             const int8_t * const * y, const int ncols, x8i * s) {
    const int Ws = stored_width(B, U), X = code_width(B, U) - Ws;
#if defined(SFMP_X8_VNNI)
    for (int c = 0; c < ncols; ++c) {
        s[c] = _mm256_setzero_si256();
    }
    SFMP_X8_UNROLL
    for (int g = 0; g < 8; ++g) {
        const __m256i code = tables ? lookup(group_codes(codes, Ws, X, plane, g), tables, U, Ws + X) : group_codes(codes, Ws, X, plane, g);
        for (int c = 0; c < ncols; ++c) {
            s[c] = dpbusd4(s[c], code, y[c] + 4 * g);
        }
    }
#else
    const int W = code_width(B, U);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[SFMP_X8_MAX_COLUMNS];
    if (W == 8 && !code_bias(W, ncols)) {
        SFMP_X8_UNROLL
        for (int half = 0; half < 2; ++half) {
            acc[0] = _mm256_setzero_si256();
            SFMP_X8_UNROLL
            for (int g = 0; g < 8; ++g) {
                const __m256i nibbles = half ? group_codes(codes + 128, Ws - 4, X, plane, g) : group_codes(codes, 4, 0, plane, g);
                acc[0] = _mm256_add_epi16(acc[0], _mm256_maddubs_epi16(nibbles, broadcast4(y[0] + 4 * g)));
            }
            const __m256i part = _mm256_madd_epi16(acc[0], _mm256_set1_epi16(half ? 1 : 16));
            s[0] = half ? _mm256_add_epi32(s[0], part) : part;
        }
        return;
    }
    if (code_bias(W, ncols)) {
        for (int c = 0; c < ncols; ++c) {
            s[c] = _mm256_setzero_si256();
        }
        SFMP_X8_UNROLL
        for (int g = 0; g < 8; ++g) {
            const __m256i biased = _mm256_xor_si256(group_codes(codes, Ws, X, plane, g), _mm256_set1_epi8((char) code_bias(W, ncols)));
            const __m256i magnitude = _mm256_abs_epi8(biased);
            for (int c = 0; c < ncols; ++c) {
                const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(broadcast4(y[c] + 4 * g), biased));
                s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(pairs, ones));
            }
        }
        return;
    }
    const int run = 32768 / (256 * (tables ? 127 : (1 << W) - 1));
    for (int c = 0; c < ncols; ++c) {
        acc[c] = _mm256_setzero_si256();
        s[c] = _mm256_setzero_si256();
    }
    SFMP_X8_UNROLL
    for (int g = 0; g < 8; ++g) {
        const __m256i code = tables ? lookup(group_codes(codes, Ws, X, plane, g), tables, U, Ws + X) : group_codes(codes, Ws, X, plane, g);
        for (int c = 0; c < ncols; ++c) {
            acc[c] = _mm256_add_epi16(acc[c], _mm256_maddubs_epi16(code, broadcast4(y[c] + 4 * g)));
        }
        if ((g + 1) % run == 0 || g == 7) {
            for (int c = 0; c < ncols; ++c) {
                s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(acc[c], ones));
                acc[c] = _mm256_setzero_si256();
            }
        }
    }
#endif
}

// s + per lane the weight pair's codes (16-bit, lane r: row r) times y's 16-bit pair, broadcast: dpwssd
// with VNNI (the broadcast folded in with AVX512VL, as in dpbusd4), else madd and add.
SFMP_X8_INLINE __m256i madd_pair(__m256i s, __m256i codes, const int16_t * y) {
#if defined(SFMP_X8_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__GNUC__)
    __asm__("vpdpwssd %2%{1to8%}, %1, %0" : "+v"(s) : "v"(codes), "m"(*(const int32_t *) y));
    return s;
#else
    int32_t pair;
    memcpy(&pair, y, sizeof(pair));
#if defined(SFMP_X8_VNNI) && defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(s, codes, _mm256_set1_epi32(pair));
#elif defined(SFMP_X8_VNNI)
    return _mm256_dpwssd_epi32(s, codes, _mm256_set1_epi32(pair));
#else
    s = _mm256_add_epi32(s, _mm256_madd_epi16(codes, _mm256_set1_epi32(pair)));
#if defined(__GNUC__)
    // Keeps gcc from reassociating a column's sum into a tree over every product, which spills them.
    __asm__("" : "+x"(s));
#endif
    return s;
#endif
#endif
}

// As code_dot, against two-level activations as the int16 256 hi + lo (|y| <= 256 * 127 + 127, both
// levels being within +-127), where wide_as_int16. Each group's codes are widened to 16
// bits as weight pairs (4g, 4g + 1) and (4g + 2, 4g + 3), row r's in lane r, so that one madd per
// pair and column adds both levels' products into 32 bits: a pair sums at most 2 * 255 * 32639 and a
// sub-block 32 * 255 * 32639 < 2^31. Without VNNI there is no 16-bit sum to widen and no 8-bit code to
// bias, as two 8-bit levels need; with it, twice the columns share a decode.
SFMP_X8_INLINE void code_dot_int16(const uint8_t * codes, const int B, const int U, const x8_tables * tables, x8_codes plane,
                                   const int16_t * const * y, const int ncols, x8i * s) {
    const int Ws = stored_width(B, U), X = code_width(B, U) - Ws;
    const __m256i by_pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                              0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    for (int c = 0; c < ncols; ++c) {
        s[c] = _mm256_setzero_si256();
    }
    SFMP_X8_UNROLL
    for (int g = 0; g < 8; ++g) {
        const __m256i code = tables ? lookup(group_codes(codes, Ws, X, plane, g), tables, U, Ws + X) : group_codes(codes, Ws, X, plane, g);
        const __m256i paired = _mm256_shuffle_epi8(code, by_pairs);
        const __m256i first = _mm256_unpacklo_epi8(paired, _mm256_setzero_si256());
        const __m256i second = _mm256_unpackhi_epi8(paired, _mm256_setzero_si256());
        for (int c = 0; c < ncols; ++c) {
            s[c] = madd_pair(madd_pair(s[c], first, y[c] + 4 * g), second, y[c] + 4 * g + 2);
        }
    }
}

#else  // NEON: two 128-bit halves, rows 0-3 and rows 4-7

typedef struct {
    int32x4_t lo, hi;
} x8i;

typedef struct {
    float32x4_t lo, hi;
} x8f;

SFMP_X8_INLINE x8i x8i_zero(void) { x8i r = {vdupq_n_s32(0), vdupq_n_s32(0)}; return r; }
SFMP_X8_INLINE x8i x8i_set1(int32_t v) { x8i r = {vdupq_n_s32(v), vdupq_n_s32(v)}; return r; }
SFMP_X8_INLINE x8i x8i_add(x8i a, x8i b) { x8i r = {vaddq_s32(a.lo, b.lo), vaddq_s32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8i x8i_and(x8i a, x8i b) { x8i r = {vandq_s32(a.lo, b.lo), vandq_s32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8i x8i_or(x8i a, x8i b) { x8i r = {vorrq_s32(a.lo, b.lo), vorrq_s32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8i x8i_mul(x8i a, x8i b) { x8i r = {vmulq_s32(a.lo, b.lo), vmulq_s32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8i x8i_shl(x8i a, int k) {
    x8i r = {vshlq_s32(a.lo, vdupq_n_s32(k)), vshlq_s32(a.hi, vdupq_n_s32(k))};
    return r;
}
SFMP_X8_INLINE x8i x8i_sra(x8i a, int k) {
    x8i r = {vshlq_s32(a.lo, vdupq_n_s32(-k)), vshlq_s32(a.hi, vdupq_n_s32(-k))};
    return r;
}
SFMP_X8_INLINE x8i x8i_less(x8i a, x8i b) {
    x8i r = {vreinterpretq_s32_u32(vcltq_s32(a.lo, b.lo)), vreinterpretq_s32_u32(vcltq_s32(a.hi, b.hi))};
    return r;
}
SFMP_X8_INLINE x8i x8i_load_u8(const uint8_t * p) {
    const uint16x8_t v = vmovl_u8(vld1_u8(p));
    x8i r = {vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(v))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(v)))};
    return r;
}
SFMP_X8_INLINE x8f x8f_zero(void) { x8f r = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)}; return r; }
SFMP_X8_INLINE x8f x8f_set1(float v) { x8f r = {vdupq_n_f32(v), vdupq_n_f32(v)}; return r; }
SFMP_X8_INLINE x8f x8f_add(x8f a, x8f b) { x8f r = {vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8f x8f_mul(x8f a, x8f b) { x8f r = {vmulq_f32(a.lo, b.lo), vmulq_f32(a.hi, b.hi)}; return r; }
SFMP_X8_INLINE x8f x8f_from_x8i(x8i a) { x8f r = {vcvtq_f32_s32(a.lo), vcvtq_f32_s32(a.hi)}; return r; }
SFMP_X8_INLINE x8f x8f_load_f16(const uint8_t * p) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(p));
    x8f r = {vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h)};
    return r;
}
SFMP_X8_INLINE void x8f_store(float * p, x8f v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
}

// As the AVX2 x8f_from_pair, in 64-bit integers.
SFMP_X8_INLINE float32x4_t f32_from_pair(int32x4_t a, const int k, int32x4_t b) {
    const int64x2_t shift = vdupq_n_s64(k);
    const int64x2_t lo = vaddq_s64(vshlq_s64(vmovl_s32(vget_low_s32(a)), shift), vmovl_s32(vget_low_s32(b)));
    const int64x2_t hi = vaddq_s64(vshlq_s64(vmovl_high_s32(a), shift), vmovl_high_s32(b));
    return vcvt_high_f32_f64(vcvt_f32_f64(vcvtq_f64_s64(lo)), vcvtq_f64_s64(hi));
}
SFMP_X8_INLINE x8f x8f_from_pair(x8i a, const int k, x8i b) {
    x8f r = {f32_from_pair(a.lo, k, b.lo), f32_from_pair(a.hi, k, b.hi)};
    return r;
}
// As the AVX2 x8f_from_product, in 64-bit integers.
SFMP_X8_INLINE float32x4_t f32_from_product(int32x4_t m, int32x4_t t) {
    return vcvt_high_f32_f64(vcvt_f32_f64(vcvtq_f64_s64(vmull_s32(vget_low_s32(m), vget_low_s32(t)))),
                             vcvtq_f64_s64(vmull_high_s32(m, t)));
}
SFMP_X8_INLINE x8f x8f_from_product(x8i m, x8i t) {
    x8f r = {f32_from_product(m.lo, t.lo), f32_from_product(m.hi, t.hi)};
    return r;
}

typedef struct {
    uint8x16_t lo, hi;
} x8_codes;

// As the AVX2 plane primitives.
SFMP_X8_INLINE x8_codes plane_zero(void) {
    x8_codes v = {vdupq_n_u8(0), vdupq_n_u8(0)};
    return v;
}
SFMP_X8_INLINE x8_codes plane_blend(x8i pick, x8_codes a, x8_codes b) {
    x8_codes v = {vbslq_u8(vreinterpretq_u8_s32(pick.lo), b.lo, a.lo), vbslq_u8(vreinterpretq_u8_s32(pick.hi), b.hi, a.hi)};
    return v;
}
SFMP_X8_INLINE x8_codes plane_keep(x8i keep, x8_codes a) {
    x8_codes v = {vandq_u8(vreinterpretq_u8_s32(keep.lo), a.lo), vandq_u8(vreinterpretq_u8_s32(keep.hi), a.hi)};
    return v;
}

// (code << w) | (the low w bits of bits): one shift-insert, which needs w as an immediate.
SFMP_X8_INLINE uint8x16_t append_bits(uint8x16_t code, uint8x16_t bits, const int w) {
    switch (w) {
        case 4: return vsliq_n_u8(bits, code, 4);
        case 2: return vsliq_n_u8(bits, code, 2);
        default: return vsliq_n_u8(bits, code, 1);
    }
}

// Bits k.. of each byte of both halves of a 32-byte load (a shift right by a variable count).
SFMP_X8_INLINE x8_codes load_shifted(const uint8_t * p, const int k) {
    x8_codes v = {vld1q_u8(p), vld1q_u8(p + 16)};
    if (k) {
        const int8x16_t right = vdupq_n_s8((int8_t) -k);
        v.lo = vshlq_u8(v.lo, right);
        v.hi = vshlq_u8(v.hi, right);
    }
    return v;
}

SFMP_X8_INLINE x8_codes plane_load(const uint8_t * p) {
    return load_shifted(p, 0);
}

SFMP_X8_INLINE x8_codes with_extra(x8_codes code, x8_codes plane, const int g) {
    const int8x16_t right = vdupq_n_s8((int8_t) -g);
    x8_codes v = {append_bits(code.lo, g ? vshlq_u8(plane.lo, right) : plane.lo, 1),
                  append_bits(code.hi, g ? vshlq_u8(plane.hi, right) : plane.hi, 1)};
    return v;
}

// Group g of one sub-block's codes for the 8 rows (as in the AVX2 group_codes). The first piece is
// masked to its w bits unless its field is the byte's top one, which the shift leaves clean; every
// later one is shifted in with vsli, which takes only its low w bits.
SFMP_X8_INLINE x8_codes group_codes(const uint8_t * codes, const int W, const int X, x8_codes plane, const int g) {
    x8_codes code = {vdupq_n_u8(0), vdupq_n_u8(0)};
    int first = 1;
    SFMP_X8_UNROLL
    for (int w = 4; w >= 1; w /= 2) {
        SFMP_X8_UNROLL
        for (int c = 0; c < sfmp_piece_count(W, w); ++c, codes += 32 * w) {
            const int k = g % (8 / w);
            const x8_codes bits = load_shifted(codes + 32 * (g / (8 / w)), w * k);
            if (first && w * (k + 1) == 8) {
                code = bits;
            } else if (first) {
                const uint8x16_t mask = vdupq_n_u8((uint8_t) ((1 << w) - 1));
                code.lo = vandq_u8(bits.lo, mask);
                code.hi = vandq_u8(bits.hi, mask);
            } else {
                code.lo = append_bits(code.lo, bits.lo, w);
                code.hi = append_bits(code.hi, bits.hi, w);
            }
            first = 0;
        }
    }
    return X ? with_extra(code, plane, g) : code;
}

// As the AVX2 x8_tables, as one table: the plain one's 2^W entries, then the upgraded one's, which
// an upgraded row's W-bit codes reach with 2^W added. 16 entries in all (one tbl) where W <= 3, else
// 32 (tbl of two registers).
typedef struct {
    uint8x16x2_t both;
    x8_codes up_index;  // 2^W in the bytes of upgraded rows
} x8_tables;

SFMP_X8_INLINE x8_tables x8_tables_make(const uint8_t * plain, const uint8_t * up, x8i up_rows, const int W) {
    const uint8x16_t offset = vdupq_n_u8((uint8_t) (W <= 3 ? 8 : 16));
    x8_tables t = {{{vld1q_u8(plain), vld1q_u8(up)}},
                   {vandq_u8(vreinterpretq_u8_s32(up_rows.lo), offset), vandq_u8(vreinterpretq_u8_s32(up_rows.hi), offset)}};
    if (W <= 3) {
        t.both.val[0] = vcombine_u8(vget_low_u8(t.both.val[0]), vget_low_u8(t.both.val[1]));
    }
    return t;
}

SFMP_X8_INLINE x8_codes lookup(x8_codes code, const x8_tables * t, const int U, const int W) {
    if (!U) {
        x8_codes v = {vqtbl1q_u8(t->both.val[0], code.lo), vqtbl1q_u8(t->both.val[0], code.hi)};
        return v;
    }
    const uint8x16_t lo = vorrq_u8(code.lo, t->up_index.lo), hi = vorrq_u8(code.hi, t->up_index.hi);
    x8_codes v = {W <= 3 ? vqtbl1q_u8(t->both.val[0], lo) : vqtbl2q_u8(t->both, lo),
                  W <= 3 ? vqtbl1q_u8(t->both.val[0], hi) : vqtbl2q_u8(t->both, hi)};
    return v;
}

// Adds sum(code * y) over each row's 4 bytes of c (4 rows) to acc, y being lane `lane` (4 bytes) of
// y16: with sdot's indexed form no broadcast is needed. Codes below 128 are exact as int8.
SFMP_X8_INLINE int32x4_t dot4_rows(int32x4_t acc, uint8x16_t c, int8x16_t y16, const int lane) {
    const int8x16_t cs = vreinterpretq_s8_u8(c);
#if defined(__ARM_FEATURE_DOTPROD)
    switch (lane) {  // the lane must be an immediate
        case 0: return vdotq_laneq_s32(acc, cs, y16, 0);
        case 1: return vdotq_laneq_s32(acc, cs, y16, 1);
        case 2: return vdotq_laneq_s32(acc, cs, y16, 2);
        default: return vdotq_laneq_s32(acc, cs, y16, 3);
    }
#else
    const int32x4_t words = vreinterpretq_s32_s8(y16);
    int32x4_t y4;
    switch (lane) {
        case 0: y4 = vdupq_laneq_s32(words, 0); break;
        case 1: y4 = vdupq_laneq_s32(words, 1); break;
        case 2: y4 = vdupq_laneq_s32(words, 2); break;
        default: y4 = vdupq_laneq_s32(words, 3); break;
    }
    const int8x16_t y = vreinterpretq_s8_s32(y4);
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(cs), vget_low_s8(y)));  // rows 0, 1: 2 pair sums each
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(cs, y));                      // rows 2, 3
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
#endif
}

// Per lane (row) and column: sum(c y) over one sub-block, c a code or, with `tables`, its biased
// level (as the AVX2 code_dot). 8-bit codes go as two nibbles.
SFMP_X8_INLINE void code_dot(const uint8_t * codes, const int B, const int U, const x8_tables * tables, x8_codes plane,
                             const int8_t * const * y, const int ncols, x8i * s) {
    const int W = code_width(B, U), Ws = stored_width(B, U), X = W - Ws;
    for (int c = 0; c < ncols; ++c) {
        s[c] = x8i_zero();
    }
    SFMP_X8_UNROLL
    for (int half = 0; half < (W == 8 ? 2 : 1); ++half) {
        x8i acc[SFMP_X8_MAX_COLUMNS];
        int8x16_t y16[SFMP_X8_MAX_COLUMNS];  // groups 4m..4m+3 of each column's activations
        for (int c = 0; c < ncols; ++c) {
            acc[c] = x8i_zero();
        }
        SFMP_X8_UNROLL
        for (int g = 0; g < 8; ++g) {
            const x8_codes code = W == 8 ? (half ? group_codes(codes + 128, Ws - 4, X, plane, g) : group_codes(codes, 4, 0, plane, g))
                                  : tables ? lookup(group_codes(codes, Ws, X, plane, g), tables, U, Ws + X)
                                           : group_codes(codes, Ws, X, plane, g);
            for (int c = 0; c < ncols; ++c) {
                if (g % 4 == 0) {
                    y16[c] = vld1q_s8(y[c] + 4 * g);
                }
                acc[c].lo = dot4_rows(acc[c].lo, code.lo, y16[c], g % 4);
                acc[c].hi = dot4_rows(acc[c].hi, code.hi, y16[c], g % 4);
            }
        }
        for (int c = 0; c < ncols; ++c) {
            s[c] = x8i_add(s[c], W == 8 && !half ? x8i_shl(acc[c], 4) : acc[c]);
        }
    }
}

#endif

// ---- shared by both ISAs -----------------------------------------------------------------------

// Per lane (row) and column, the sums of one sub-block's codes times its activations: 8-bit values
// (code_dot); or two-level ones in the wide form (sfmp-x8.h), as int16 (code_dot_int16, where
// wide_as_int16) or as their hi and lo bytes, two 8-bit columns sharing the decode: s[2c] and
// s[2c + 1] (faster there: bench.x8_kernel).
SFMP_X8_INLINE void any_code_dot(const uint8_t * codes, const int B, const int U, const x8_tables * tables, x8_codes plane,
                                 const int wide, const uint8_t * const * y, const int ncols, x8i * s) {
    if (!wide) {
        code_dot(codes, B, U, tables, plane, (const int8_t * const *) y, ncols, s);
        return;
    }
#if defined(SFMP_X8_AVX2)
    if (wide_as_int16(code_width(B, U), ncols)) {
        const int16_t * values[SFMP_X8_MAX_COLUMNS];
        for (int c = 0; c < ncols; ++c) {
            values[c] = (const int16_t *) (y[c] + SFMP_X8_WIDE_VALUES_AT);
        }
        code_dot_int16(codes, B, U, tables, plane, values, ncols, s);
        return;
    }
#endif
    const int8_t * levels[SFMP_X8_MAX_COLUMNS];
    for (int c = 0; c < ncols; ++c) {
        levels[2 * c] = (const int8_t *) y[c];
        levels[2 * c + 1] = (const int8_t *) y[c] + SFMP_SUB_BLOCK;
    }
    code_dot(codes, B, U, tables, plane, levels, 2 * ncols, s);
}

// The integer t of one level (or of the int16 values) from its sum(c y): the header's formula,
// bias * sum(y) added back where code_dot biased the codes.
SFMP_X8_INLINE x8i level_terms(x8i sum_cy, int32_t offset, int32_t sum, const int U, const int NL, x8i plain, const int bias) {
    const x8i s = bias ? x8i_add(sum_cy, x8i_set1(bias * sum)) : sum_cy;
    const x8i t = x8i_add(NL ? s : x8i_shl(s, U ? 1 : 2), x8i_set1(offset));
    return U && !NL ? x8i_add(t, x8i_and(plain, x8i_set1(sum))) : t;
}

// How a sub-block's exact integer m * t is carried, as m * (t_a * 2^shift + t_b), each part's sum
// over a block below 2^31: 8-bit activations take t_a = t (shift 0, no t_b); two 8-bit levels
// t_hi and t_lo (shift 8: t = 256 t_hi + t_lo); int16 values t >> 10 and its low 10 bits. With two
// levels |t| <= 2^9 * 32 * 32639 < 2^30 (|K1 c + K0| <= 2^9), so 8 sub-blocks of m * (t >> 10) stay
// below 8 * 127 * 2^20 < 2^31, and t itself fits int32 (group_s).
SFMP_X8_INLINE int pair_shift(const int W, const int wide, const int ncols) {
    return !wide ? 0 : wide_as_int16(W, ncols) ? 10 : 8;
}

// Sub-block j of the 8 rows of one x8 block: each row's amplitude m, and per column its exact integer
// a = m * t (the header's formula) as the parts t_a and t_b of t (pair_shift). y: 8-bit values, or
// with `wide` two-level activations in their wide form.
SFMP_X8_INLINE x8i sub_block_x8(const uint8_t * xb, const int B, const int U, const int NL, const int wide, const int n_sub,
                                const int j, x8i * before, const uint8_t * const * y, const sfmp_x8_act * const * act,
                                const int ncols, x8i * t_a, x8i * t_b) {
    const x8i m = x8i_load_u8(xb + amplitudes_at(j));
    const x8i amp = x8i_and(m, x8i_set1(SFMP_AMPLITUDE_MAX));
    const x8i plain = x8i_less(m, x8i_set1(SFMP_UPGRADE_FLAG));
    const x8i upgraded = x8i_less(x8i_set1(SFMP_AMPLITUDE_MAX), m);
    // Each row's plane_index: with U <= 2, before[0] marks rows with an upgraded sub-block before j
    // (index 1, else 0); otherwise before[0] and before[1] those with one and two plain ones (j - 1, j - 2).
    x8_codes plane = plane_zero();
    if (stored_planes(B, U) && U <= 2) {
        const x8_codes first = plane_load(xb + extras_at(n_sub, 0));
        plane = plane_keep(upgraded, U == 2 ? plane_blend(before[0], first, plane_load(xb + extras_at(n_sub, 1))) : first);
        before[0] = x8i_or(before[0], upgraded);
    } else if (stored_planes(B, U)) {
        // Planes j, j - 1, j - 2. An index outside 0..U-1 reads other bytes of this block, which only
        // rows outside `upgraded` could pick; clamping it made gcc version the loop (twice the time).
        const uint8_t * at = xb + extras_at(n_sub, j);
        const x8_codes near = plane_blend(before[0], plane_load(at), plane_load(at - 32));
        plane = plane_keep(upgraded, plane_blend(before[1], near, plane_load(at - 64)));
        before[1] = x8i_or(before[1], x8i_and(before[0], plain));
        before[0] = x8i_or(before[0], plain);
    }
    const uint8_t * codes = xb + codes_at(n_sub, B, U, j);
    x8i s[SFMP_X8_MAX_COLUMNS];  // 2 ncols <= SFMP_X8_MAX_COLUMNS where two levels are split
    if (NL) {
        const x8_tables tables = x8_tables_make(U ? sfmp_nl_spread[B] : sfmp_nl_biased[B], sfmp_nl_biased[B + (U > 0)], upgraded, code_width(B, U));
        any_code_dot(codes, B, U, &tables, plane, wide, y, ncols, s);
    } else {
        any_code_dot(codes, B, U, NULL, plane, wide, y, ncols, s);
    }
    const int W = code_width(B, U), shift = pair_shift(W, wide, ncols);
    for (int c = 0; c < ncols; ++c) {
        const sfmp_x8_act * a = act[c];
        if (shift == 0) {
            t_a[c] = level_terms(s[c], a->offset, a->sum, U, NL, plain, code_bias(W, ncols));
        } else if (shift == 8) {
            t_a[c] = level_terms(s[2 * c], a->offset, a->sum, U, NL, plain, code_bias(W, 2 * ncols));
            t_b[c] = level_terms(s[2 * c + 1], a->lo_offset, a->lo_sum, U, NL, plain, code_bias(W, 2 * ncols));
        } else {
            const x8i t = level_terms(s[c], a->offset * SFMP_RESIDUAL_STEPS + a->lo_offset, a->sum * SFMP_RESIDUAL_STEPS + a->lo_sum,
                                      U, NL, plain, 0);
            t_a[c] = x8i_sra(t, shift);
            t_b[c] = x8i_and(t, x8i_set1((1 << shift) - 1));
        }
    }
    return amp;
}

// The columns one kernel call serves.
typedef struct {
    const uint8_t * y[SFMP_X8_MAX_COLUMNS];
    const sfmp_x8_act * acts[SFMP_X8_MAX_COLUMNS];
    float * dst[SFMP_X8_MAX_COLUMNS];
} columns_x8;

// Bytes of column activations per 32 values: 8-bit values in Q8_K or Q8_0 blocks, or the wide form.
SFMP_X8_INLINE const uint8_t * activations_at(const columns_x8 * cols, const int c, const int wide, const int block_size,
                                              const int64_t s) {
    if (wide) {
        return cols->y[c] + SFMP_X8_WIDE_BYTES * s;
    }
    return block_size == 256 ? (const uint8_t *) (((const sfmp_block_q8_K *) cols->y[c])[s / 8].qs + SFMP_SUB_BLOCK * (s % 8))
                             : (const uint8_t *) ((const sfmp_block_q8_0 *) cols->y[c])[s].qs;
}

// _k types: the block's integer a over 8 sub-blocks, as parts A and B of A * 2^shift + B
// (pair_shift); each part fits int32 (8-bit values: at most 8 * 127 * 2 * 32 * 255 * 128).
SFMP_X8_INLINE void group_k(const int B, const int U, const int NL, const int wide, const int64_t nb, const uint8_t * x8,
                            const columns_x8 * cols, const int ncols, const int64_t g) {
    const size_t bsz = block_size_x8(8, B, U);
    const int shift = pair_shift(code_width(B, U), wide, ncols);
    x8f sum[SFMP_X8_MAX_COLUMNS];
    for (int c = 0; c < ncols; ++c) {
        sum[c] = x8f_zero();
    }
    for (int64_t i = 0; i < nb; ++i, x8 += bsz) {
        x8i acc_a[SFMP_X8_MAX_COLUMNS], acc_b[SFMP_X8_MAX_COLUMNS];
        for (int c = 0; c < ncols; ++c) {
            acc_a[c] = x8i_zero();
            acc_b[c] = x8i_zero();
        }
        x8i before[2] = {x8i_zero(), x8i_zero()};  // for plane_index
        for (int j = 0; j < 8; ++j) {
            const uint8_t * y[SFMP_X8_MAX_COLUMNS];
            const sfmp_x8_act * act[SFMP_X8_MAX_COLUMNS];
            x8i t_a[SFMP_X8_MAX_COLUMNS], t_b[SFMP_X8_MAX_COLUMNS];
            for (int c = 0; c < ncols; ++c) {
                y[c] = activations_at(cols, c, wide, 256, 8 * i + j);
                act[c] = cols->acts[c] + 8 * i + j;
            }
            const x8i amp = sub_block_x8(x8, B, U, NL, wide, 8, j, before, y, act, ncols, t_a, t_b);
            for (int c = 0; c < ncols; ++c) {
                acc_a[c] = x8i_add(acc_a[c], x8i_mul(amp, t_a[c]));
                if (shift) {
                    acc_b[c] = x8i_add(acc_b[c], x8i_mul(amp, t_b[c]));
                }
            }
        }
        const x8f d = x8f_load_f16(x8);
        for (int c = 0; c < ncols; ++c) {
            const x8f scale = x8f_mul(d, x8f_set1(cols->acts[c][8 * i].scale));
            sum[c] = x8f_add(sum[c], x8f_mul(scale, shift ? x8f_from_pair(acc_a[c], shift, acc_b[c]) : x8f_from_x8i(acc_a[c])));
        }
    }
    for (int c = 0; c < ncols; ++c) {
        x8f_store(cols->dst[c] + SFMP_X8_ROWS * g, sum[c]);
    }
}

SFMP_X8_INLINE void group_s(const int B, const int U, const int NL, const int wide, const int64_t nb, const uint8_t * x8,
                            const columns_x8 * cols, const int ncols, const int64_t g) {
    const size_t bsz = block_size_x8(2, B, U);
    const int shift = pair_shift(code_width(B, U), wide, ncols);
    x8f sum[SFMP_X8_MAX_COLUMNS], block_sum[SFMP_X8_MAX_COLUMNS];
    for (int c = 0; c < ncols; ++c) {
        sum[c] = x8f_zero();
        block_sum[c] = x8f_zero();  // each block's first sub-block sets it; this keeps gcc from warning
    }
    for (int64_t i = 0; i < nb; ++i, x8 += bsz) {
        const x8f d = x8f_load_f16(x8);
        x8i before[2] = {x8i_zero(), x8i_zero()};
        for (int j = 0; j < 2; ++j) {
            const uint8_t * y[SFMP_X8_MAX_COLUMNS];
            const sfmp_x8_act * act[SFMP_X8_MAX_COLUMNS];
            x8i t_a[SFMP_X8_MAX_COLUMNS], t_b[SFMP_X8_MAX_COLUMNS];
            for (int c = 0; c < ncols; ++c) {
                y[c] = activations_at(cols, c, wide, 64, 2 * i + j);
                act[c] = cols->acts[c] + 2 * i + j;
            }
            const x8i amp = sub_block_x8(x8, B, U, NL, wide, 2, j, before, y, act, ncols, t_a, t_b);
            for (int c = 0; c < ncols; ++c) {
                // t_a * 2^shift + t_b is t itself, below 2^30 (pair_shift)
                const x8f a = shift ? x8f_from_product(amp, x8i_add(x8i_shl(t_a[c], shift), t_b[c])) : x8f_from_x8i(x8i_mul(amp, t_a[c]));
                const x8f v = x8f_mul(x8f_mul(d, x8f_set1(act[c]->scale)), a);
                block_sum[c] = j ? x8f_add(block_sum[c], v) : v;
            }
        }
        for (int c = 0; c < ncols; ++c) {
            sum[c] = x8f_add(sum[c], block_sum[c]);
        }
    }
    for (int c = 0; c < ncols; ++c) {
        x8f_store(cols->dst[c] + SFMP_X8_ROWS * g, sum[c]);
    }
}

SFMP_X8_INLINE void group_x8(const int block_size, const int B, const int U, const int NL, const int wide, const int64_t nb,
                             const uint8_t * x8, const columns_x8 * cols, const int ncols, const int64_t g) {
    if (block_size == 256) {
        group_k(B, U, NL, wide, nb, x8, cols, ncols, g);
    } else {
        group_s(B, U, NL, wide, nb, x8, cols, ncols, g);
    }
}

// Columns per kernel call for each activation form.
SFMP_X8_INLINE int columns_per_call(const int wide) {
    return wide ? SFMP_X8_WIDE_COLUMNS : SFMP_X8_MAX_COLUMNS;
}

// The column count as a constant, so that the loops over columns unroll (only counts the form takes).
#define SFMP_X8_COLUMNS(k) \
    case k: if ((k) <= columns_per_call(wide)) { group_x8(block_size, B, U, NL, wide, nb, x8, cols, k, g); } break;
SFMP_X8_INLINE void group_cols(const int block_size, const int B, const int U, const int NL, const int wide, const int64_t nb,
                               const uint8_t * x8, const columns_x8 * cols, const int ncols, const int64_t g) {
    switch (ncols) {
#if SFMP_X8_MAX_COLUMNS == 8
        SFMP_X8_COLUMNS(8)
        SFMP_X8_COLUMNS(7)
        SFMP_X8_COLUMNS(6)
        SFMP_X8_COLUMNS(5)
#endif
        SFMP_X8_COLUMNS(4)
        SFMP_X8_COLUMNS(3)
        SFMP_X8_COLUMNS(2)
        default: group_x8(block_size, B, U, NL, wide, nb, x8, cols, 1, g); break;
    }
}
#undef SFMP_X8_COLUMNS

// Every `per_call` columns in turn, each row group's weights serving all of them while in cache.
SFMP_X8_INLINE void mul_mat_x8(const int block_size, const int B, const int U, const int NL, const int wide, int64_t n,
                               const uint8_t * x8, int64_t g0, int64_t g1, int ncols, const void * const * vy,
                               const sfmp_x8_act * const * acts, float * const * dst) {
    const int per_call = columns_per_call(wide);
    const int64_t nb = n / block_size;
    const size_t gsz = (size_t) nb * block_size_x8(block_size / SFMP_SUB_BLOCK, B, U);
    for (int64_t g = g0; g < g1; ++g) {
        for (int c0 = 0; c0 < ncols; c0 += per_call) {
            columns_x8 cols;
            const int nc = ncols - c0 < per_call ? ncols - c0 : per_call;
            for (int c = 0; c < nc; ++c) {
                cols.y[c] = (const uint8_t *) vy[c0 + c];
                cols.acts[c] = acts[c0 + c];
                cols.dst[c] = dst[c0 + c];
            }
            group_cols(block_size, B, U, NL, wide, nb, x8 + g * gsz, &cols, nc, g);
        }
    }
}

// One specialised kernel per type and activation form: B, U, the block size and the column count are
// constants, so every loop unrolls. Only types with two-level activations get a wide one.
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                                    \
    static void mul_mat_##lname(int64_t n, const uint8_t * x8, int64_t g0, int64_t g1, int ncols,                \
                                const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst,     \
                                const int wide) {                                                                 \
        const int B = (budget) / (nsub), U = (budget) % (nsub), NL = (grid) == SFMP_GRID_NONLINEAR;             \
        if (SFMP_FINE_ACTIVATIONS(nsub, budget) && wide) {                                                      \
            mul_mat_x8((bs), B, U, NL, 1, n, x8, g0, g1, ncols, vy, acts, dst);                                 \
        } else {                                                                                                \
            mul_mat_x8((bs), B, U, NL, 0, n, x8, g0, g1, ncols, vy, acts, dst);                                 \
        }                                                                                                       \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

static void mul_mat_type(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                         const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst, int wide) {
    switch (type) {
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) \
        case id: mul_mat_##lname(n, (const uint8_t *) x8, group_begin, group_end, ncols, vy, acts, dst, wide); break;
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
        default: break;
    }
}

void sfmp_x8_mul_mat(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                     const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst) {
    mul_mat_type(type, n, x8, group_begin, group_end, ncols, vy, acts, dst, 0);
}

void sfmp_x8_mul_mat_wide(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                          const void * const * wide, const sfmp_x8_act * const * acts, float * const * dst) {
    if (sfmp_fine_activations(type)) {
        mul_mat_type(type, n, x8, group_begin, group_end, ncols, wide, acts, dst, 1);
    }
}

#else

// Never reached: sfmp_x8_supported is false without AVX2 or NEON, so no tensor is interleaved.
void sfmp_x8_mul_mat(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                     const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst) {
    (void) type; (void) n; (void) x8; (void) group_begin; (void) group_end; (void) ncols; (void) vy; (void) acts;
    (void) dst;
}

void sfmp_x8_mul_mat_wide(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                          const void * const * wide, const sfmp_x8_act * const * acts, float * const * dst) {
    sfmp_x8_mul_mat(type, n, x8, group_begin, group_end, ncols, wide, acts, dst);
}

#endif
