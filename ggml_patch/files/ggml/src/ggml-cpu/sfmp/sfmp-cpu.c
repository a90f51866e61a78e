// CPU dot products of SFMP weights with Q8_K / Q8_0 activations, or their two-level pairs (types with
// fine activations): AVX2, NEON, or the scalar reference.
//
// Every path computes the same exact integers per sub-block (see sub_block_dot in sfmp-quants.c), with
// two-level activations 256 * T(hi) + T(lo). _k types (every path) and NEON _s types then take the
// same float operations in the same order as the reference, so their results are bit-identical. The
// AVX2 _s kernels sum blocks in float lanes (block_s_avx2): within 64 * 2^-24 * sum |w * y| of the
// reference (tests/test_kernels.py, tests/native/fuzz_kernels.c).
// Each type gets its own copy of the kernel with B (base bits), U (upgrades) and NL (nonlinear grid)
// as constants: the loops over pieces and sub-blocks unroll, and no branch depends on the data.
#include "sfmp-cpu.h"

#include "../../sfmp/sfmp-quants.h"

#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define SFMP_CPU_PATH "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define SFMP_CPU_PATH "neon-dotprod"
#else
#define SFMP_CPU_PATH "neon"
#endif
#else
#define SFMP_CPU_PATH "generic"
#endif

#if defined(_MSC_VER)
#define SFMP_INLINE static __forceinline
#else
#define SFMP_INLINE static inline __attribute__((always_inline))
#endif

const char * sfmp_cpu_path(void) {
    return SFMP_CPU_PATH;
}

// The first U flagged sub-blocks (all of them in a well-formed block), as sfmp_upgrade_mask
// decides, without a data-dependent branch.
SFMP_INLINE uint32_t first_flags(uint32_t flags, int U) {
    uint32_t mask = 0;
    for (int u = 0; u < U; ++u) {
        const uint32_t low = flags & (0u - flags);
        mask |= low;
        flags ^= low;
    }
    return mask;
}

// A 64-weight block's two upgrade flags, as bits 0 and 1.
SFMP_INLINE uint32_t flags_s(const uint8_t * block) {
    return (uint32_t) (block[SFMP_AMPLITUDE_OFFSET] >> 7 | (block[SFMP_AMPLITUDE_OFFSET + 1] >> 7) << 1);
}

// The rank among upgraded sub-blocks that locates sub-block j's extra bits; a plain sub-block gets
// the last slot, inside the block, and masks what it reads.
SFMP_INLINE int extra_slot(uint32_t mask, int U, int j) {
    const int rank = sfmp_popcount(mask & ((1u << j) - 1));
    return rank < U ? rank : U - 1;
}

#if defined(__AVX2__)

SFMP_INLINE __m256i srl8(__m256i v, int s) {
    return _mm256_srli_epi16(v, s);  // s is a constant after inlining; bits never cross a byte here
}

SFMP_INLINE __m256i low_bits(__m256i v, int w) {
    return _mm256_and_si256(v, _mm256_set1_epi8((char) ((1 << w) - 1)));
}

// Sub-block j of a width-w piece spanning a 256-weight block: 32-byte chunk j % w, shift w * (j / w).
SFMP_INLINE __m256i piece_k(const uint8_t * piece, int w, int j) {
    return low_bits(srl8(_mm256_loadu_si256((const __m256i *) (piece + 32 * (j % w))), w * (j / w)), w);
}

// Sub-block j (0 or 1) of a width-w piece spanning a 64-weight block.
SFMP_INLINE __m256i piece_s(const uint8_t * piece, int w, int j) {
    if (w == 4) {
        return low_bits(srl8(_mm256_loadu_si256((const __m256i *) piece), 4 * j), 4);
    }
    if (w == 2) {
        const __m128i v = _mm_loadu_si128((const __m128i *) piece);
        return low_bits(srl8(_mm256_set_m128i(_mm_srli_epi16(v, 2), v), 4 * j), 2);
    }
    uint64_t u;
    memcpy(&u, piece, sizeof(u));
    const __m256i bit = _mm256_set_epi64x(0x0808080808080808, 0x0404040404040404, 0x0202020202020202,
                                          0x0101010101010101);
    const __m256i mask = j ? _mm256_slli_epi16(bit, 4) : bit;  // weight i: byte i % 8, bit i / 8 (+4)
    const __m256i v = _mm256_set1_epi64x((long long) u);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask), _mm256_set1_epi8(1));
}

// An upgrade's extra bits: weight i in byte i % 4 at bit i / 4.
SFMP_INLINE __m256i extra_bits(const uint8_t * p) {
    uint32_t u;
    memcpy(&u, p, sizeof(u));
    const __m256i bit = _mm256_set_epi64x((long long) 0x8080808040404040ull, 0x2020202010101010,
                                          0x0808080804040404, 0x0202020201010101);
    const __m256i v = _mm256_set1_epi32((int) u);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(1));
}

// Sub-block j's B-bit base code (B <= 7), one byte per weight: pieces most significant first.
SFMP_INLINE __m256i base_code(const uint8_t * base, int block_size, int B, int j) {
    __m256i q = _mm256_setzero_si256();
    for (int w = 4; w >= 1; w /= 2) {
        for (int c = 0; c < sfmp_piece_count(B, w); ++c) {
            const __m256i p = block_size == 256 ? piece_k(base, w, j) : piece_s(base, w, j);
            q = _mm256_or_si256(_mm256_slli_epi16(q, w), p);
            base += block_size * w / 8;
        }
    }
    return q;
}

// Nonlinear grid: sub-block j's levels plus SFMP_NL_BIAS (1..127), by one 16-entry shuffle. An
// upgraded sub-block's code 2q + e indexes the (B + 1)-bit table, a plain one's 2q the spread B-bit one.
SFMP_INLINE __m256i nl_levels_avx2(const uint8_t * block, int n, int B, int U, int j, uint32_t mask) {
    const uint8_t * base = block + SFMP_CODE_OFFSET(n, n / SFMP_SUB_BLOCK, 0);
    __m256i code = base_code(base, n, B, j);
    const uint8_t * table = sfmp_nl_biased[B];
    if (U) {
        const int up = (int) (mask >> j & 1);
        const __m256i e = extra_bits(block + SFMP_EXTRA_OFFSET(n, n / SFMP_SUB_BLOCK, B, extra_slot(mask, U, j)));
        code = _mm256_or_si256(_mm256_add_epi8(code, code), _mm256_and_si256(e, _mm256_set1_epi8((char) -up)));
        table = up ? sfmp_nl_biased[B + 1] : sfmp_nl_spread[B];
    }
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) table)), code);
}

SFMP_INLINE int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// Eight int32 partial sums of c * y for signed c with |c| <= 127 and any y: |y| goes in the unsigned
// operand, so y = -128 (never in ggml's Q8_0, but allowed) is still exact.
SFMP_INLINE __m256i dot_i8(__m256i c, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(c, y)),
                             _mm256_set1_epi16(1));
}

SFMP_INLINE float half_to_float(const uint8_t * p) {
#if defined(__F16C__)
    return _cvtsh_ss((unsigned short) (p[0] | (p[1] << 8)));  // exact, like sfmp_fp16_to_fp32
#else
    return sfmp_block_d(p);
#endif
}

SFMP_INLINE int lowest_bit(uint32_t v) {
#if defined(_MSC_VER)
    unsigned long i;
    _BitScanForward(&i, v);
    return (int) i;
#else
    return __builtin_ctz(v);
#endif
}

// _k types: sum(y * o) over the block from unsigned codes and Q8_K's block sums:
// 4*A + 2*(1 - 2^B)*C + 2*E - D with A = sum_j m_j sum(y q), C = sum_j m_j ysum_j,
// E = sum_up m_j sum(y e), D = sum_up m_j ysum_j (sfmp-quants.c spells out the units).
// Nonlinear grid: A - 64*C with A = sum_j m_j sum(y (L + 64)).
// One weight block against `ncols` activation blocks: the decoded codes serve every column.
SFMP_INLINE void block_k_avx2(const uint8_t * block, const int B, const int U, const int NL,
                              const sfmp_block_q8_K * const * ys, const int ncols, int64_t * total) {
    const __m128i sc = _mm_loadl_epi64((const __m128i *) (block + SFMP_AMPLITUDE_OFFSET));
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x7f)));
    const __m256i mm = _mm256_broadcastsi128_si256(m16);
    const uint8_t * base = block + SFMP_CODE_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, 0);
    const uint32_t mask = first_flags((uint32_t) _mm_movemask_epi8(sc) & 0xffu, U);
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int j = 0; j < 8; ++j) {
        const __m256i mj = _mm256_shuffle_epi8(mm, _mm256_set1_epi16((short) ((2 * j + 1) << 8 | 2 * j)));
        if (B == 8) {  // 8-bit codes would saturate maddubs: take the nibbles apart
            const __m256i hi = piece_k(base, 4, j), lo = piece_k(block + SFMP_CODE_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, 4), 4, j);
            for (int c = 0; c < ncols; ++c) {
                const __m256i yj = _mm256_loadu_si256((const __m256i *) (ys[c]->qs + 32 * j));
                const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yj), mj);
                const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, yj), mj);
                acc[c] = _mm256_add_epi32(acc[c], _mm256_add_epi32(_mm256_slli_epi32(ph, 4), pl));
            }
        } else {
            const __m256i q = NL ? nl_levels_avx2(block, 256, B, U, j, mask) : base_code(base, 256, B, j);
            for (int c = 0; c < ncols; ++c) {
                const __m256i yj = _mm256_loadu_si256((const __m256i *) (ys[c]->qs + 32 * j));
                acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(q, yj), mj));
            }
        }
    }
    const __m256i mdup = _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
    for (int c = 0; c < ncols; ++c) {
        const __m256i bsums = _mm256_loadu_si256((const __m256i *) ys[c]->bsums);
        const int64_t m_ysum = hsum_i32(_mm256_madd_epi16(bsums, mdup));
        total[c] = NL ? hsum_i32(acc[c]) - SFMP_NL_BIAS * m_ysum
                      : 4 * (int64_t) hsum_i32(acc[c]) + 2 * (int64_t) (1 - (1 << B)) * m_ysum;
    }
    if (U && !NL) {
        __m256i acc_e[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        int64_t d_sum[2] = {0, 0};
        uint32_t left = mask;
        for (int u = 0; u < U && left; ++u, left &= left - 1) {
            const int j = lowest_bit(left);
            const int m = block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX;
            const __m256i e = extra_bits(block + SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, u));
            for (int c = 0; c < ncols; ++c) {
                const __m256i yj = _mm256_loadu_si256((const __m256i *) (ys[c]->qs + 32 * j));
                acc_e[c] = _mm256_add_epi32(acc_e[c], _mm256_madd_epi16(_mm256_maddubs_epi16(e, yj), _mm256_set1_epi16((short) m)));
                d_sum[c] += m * (ys[c]->bsums[2 * j] + ys[c]->bsums[2 * j + 1]);
            }
        }
        for (int c = 0; c < ncols; ++c) {
            total[c] += 2 * (int64_t) hsum_i32(acc_e[c]) - d_sum[c];
        }
    }
}

// `nr` weight rows (bx bytes apart) against `nr` activation columns (by bytes apart), written as
// ggml's mul_mat expects: s[r + c * bs]. With two-level activations (FINE, nr 1) the decoded block
// meets hi and lo as two columns, whose integers combine before the one float step.
SFMP_INLINE void tile_k_avx2(const int B, const int U, const int NL, const int FINE, const int nr, int n, float * s,
                             size_t bs, const void * vx, size_t bx, const void * vy, size_t by) {
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, U);
    const float unit = 1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) / (float) (FINE ? SFMP_RESIDUAL_STEPS : 1);
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_K_x2) : sizeof(sfmp_block_q8_K);
    const size_t y_column = FINE ? sizeof(sfmp_block_q8_K) : by;
    float sums[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t * y = (const uint8_t *) vy + (size_t) i * y_stride;
        const sfmp_block_q8_K * ys[2] = {(const sfmp_block_q8_K *) y, (const sfmp_block_q8_K *) (y + y_column)};
        for (int r = 0; r < nr; ++r) {
            const uint8_t * block = (const uint8_t *) vx + r * bx + (size_t) i * type_size;
            int64_t total[2];
            block_k_avx2(block, B, U, NL, ys, FINE ? 2 : nr, total);
            if (FINE) {
                total[0] = SFMP_RESIDUAL_STEPS * total[0] + total[1];
            }
            for (int c = 0; c < nr; ++c) {
                sums[r][c] += (half_to_float(block) * ys[c]->d) * ((float) total[c] * unit);
            }
        }
    }
    for (int r = 0; r < nr; ++r) {
        for (int c = 0; c < nr; ++c) {
            s[r + c * bs] = sums[r][c];
        }
    }
}

SFMP_INLINE void vec_dot_k_avx2(const int B, const int U, const int NL, const int FINE, int n, float * s, size_t bs,
                                const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    if (nrc == 2 && !FINE) {
        tile_k_avx2(B, U, NL, 0, 2, n, s, bs, vx, bx, vy, by);
    } else {
        tile_k_avx2(B, U, NL, FINE, 1, n, s, bs, vx, bx, vy, by);
    }
}

SFMP_INLINE float hsum_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// _s types: signed codes, so no activation sums are needed. Per sub-block the exact integer
// t = 2 * sum(y o) + [upgraded] * sum(y (2e - 1)), o = 2q + 1 - 2^B, in units of d * y_d / 2^(B+1),
// is scaled and summed in float lanes like ggml's Q8_0 kernel: the result differs from the scalar
// reference only by float rounding. Nonlinear grid: t = sum(y L), in units of d * y_d / 64.
// One weight block against `ncols` activation columns, sub-block j's Q8_0 block y_stride * j bytes on.
// With two-level activations (FINE) the columns are hi and lo, and the lanes take 256 * t(hi) + t(lo)
// (|t| < 2^18 per lane) at hi's scale over 256 into acc[0].
SFMP_INLINE void block_s_avx2(const uint8_t * block, const int B, const int U, const int NL, const int FINE,
                              const uint8_t * const * ys, size_t y_stride, const int ncols, __m256 * acc) {
    const __m256i one = _mm256_set1_epi8(1);
    const uint32_t mask = first_flags(flags_s(block), U);
    const __m256i pm = U ? _mm256_sub_epi8(_mm256_slli_epi16(extra_bits(block + SFMP_EXTRA_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, B, 0)), 1), one)
                         : _mm256_setzero_si256();  // 2e - 1
    const float d = half_to_float(block) * (1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) /
                                            (float) (FINE ? SFMP_RESIDUAL_STEPS : 1));
    for (int j = 0; j < 2; ++j) {
        const __m256i up = _mm256_set1_epi8((char) -(int) (mask >> j & 1));
        const float dm = d * (float) (block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX);
        __m256i code, hi, lo;
        if (NL) {
            code = _mm256_sub_epi8(nl_levels_avx2(block, 64, B, U, j, mask), _mm256_set1_epi8(SFMP_NL_BIAS));
        } else if (B == 8) {  // 2 sum(y o) = 4 sum(y q) - 510 sum(y), q = 16 hi + lo taken apart for maddubs
            hi = piece_s(block + SFMP_CODE_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, 0), 4, j);
            lo = piece_s(block + SFMP_CODE_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, 4), 4, j);
        } else if (B == 7) {  // 2o + (2e - 1) would not fit a byte: o and 2e - 1 go apart
            const __m256i q = base_code(block + SFMP_CODE_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, 0), SFMP_S_BLOCK, B, j);
            code = _mm256_add_epi8(_mm256_add_epi8(q, q), _mm256_set1_epi8((char) (1 - (1 << B))));
            lo = _mm256_and_si256(pm, up);
        } else {  // 2o + (2e - 1) = 4q + 2 - 2^(B+1) + (2e - 1)
            const __m256i q = base_code(block + SFMP_CODE_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, 0), SFMP_S_BLOCK, B, j);
            code = _mm256_add_epi8(_mm256_add_epi8(_mm256_slli_epi16(q, 2), _mm256_set1_epi8((char) (2 - (2 << B)))),
                                   _mm256_and_si256(pm, up));
        }
        __m256i ts[2];
        for (int c = 0; c < ncols; ++c) {
            const sfmp_block_q8_0 * y = (const sfmp_block_q8_0 *) (ys[c] + j * y_stride);
            const __m256i yj = _mm256_loadu_si256((const __m256i *) y->qs);
            __m256i t;
            if (B == 8 && !NL) {
                const __m256i ones16 = _mm256_set1_epi16(1);
                const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yj), ones16);
                const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, yj), ones16);
                const __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(one, yj), ones16);
                t = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32(ph, 6), _mm256_slli_epi32(pl, 2)),
                                     _mm256_mullo_epi32(sum, _mm256_set1_epi32(510)));
            } else if (B == 7 && !NL) {
                t = _mm256_add_epi32(_mm256_slli_epi32(dot_i8(code, yj), 1), dot_i8(lo, yj));
            } else {
                t = dot_i8(code, yj);
            }
            ts[c] = t;
        }
        if (FINE) {
            ts[0] = _mm256_add_epi32(_mm256_slli_epi32(ts[0], 8), ts[1]);  // SFMP_RESIDUAL_STEPS * hi + lo
        }
        for (int c = 0; c < (FINE ? 1 : ncols); ++c) {
            const float scale = dm * half_to_float((const uint8_t *) &((const sfmp_block_q8_0 *) (ys[c] + j * y_stride))->d);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ts[c]), _mm256_set1_ps(scale), acc[c]);
        }
    }
}

// `nr` weight rows against `nr` activation columns (by bytes apart): s[r + c * bs]. With two-level
// activations (FINE, nr 1) hi and lo are block_s_avx2's two columns.
SFMP_INLINE void tile_s_avx2(const int B, const int U, const int NL, const int FINE, const int nr, int n, float * s,
                             size_t bs, const void * vx, size_t bx, const void * vy, size_t by) {
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, B, U);
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_0_x2) : sizeof(sfmp_block_q8_0);
    __m256 acc[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
    for (int i = 0; i < n / 64; ++i) {
        const uint8_t * y = (const uint8_t *) vy + (size_t) (2 * i) * y_stride;
        const uint8_t * ys[2] = {y, y + (FINE ? sizeof(sfmp_block_q8_0) : by)};
        for (int r = 0; r < nr; ++r) {
            block_s_avx2((const uint8_t *) vx + r * bx + (size_t) i * type_size, B, U, NL, FINE, ys, y_stride,
                         FINE ? 2 : nr, acc[r]);
        }
    }
    for (int r = 0; r < nr; ++r) {
        for (int c = 0; c < nr; ++c) {
            s[r + c * bs] = hsum_f32(acc[r][c]);
        }
    }
}

SFMP_INLINE void vec_dot_s_avx2(const int B, const int U, const int NL, const int FINE, int n, float * s, size_t bs,
                                const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    if (nrc == 2 && !FINE) {
        tile_s_avx2(B, U, NL, 0, 2, n, s, bs, vx, bx, vy, by);
    } else {
        tile_s_avx2(B, U, NL, FINE, 1, n, s, bs, vx, bx, vy, by);
    }
}

#define SFMP_VEC_DOT_K vec_dot_k_avx2
#define SFMP_VEC_DOT_S vec_dot_s_avx2

#endif  // __AVX2__


#if defined(__ARM_NEON) && defined(__aarch64__) && !defined(__AVX2__)

// acc + the 4 lanes' partial sums of a * y.
SFMP_INLINE int32x4_t dot16_neon(int32x4_t acc, int8x16_t a, int8x16_t y) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, y);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(y)));
    return vpadalq_s16(acc, vmull_high_s8(a, y));
#endif
}

// ---- _k types: unsigned codes, Q8_K's block sums, one horizontal sum per block ------------------

// An upgrade's extra bits, 32 weights in 4 bytes: weight i in byte i % 4 at bit i / 4 (this is
// weights 0..15's bit; shifted left by 4, weights 16..31's).
static const uint8_t extra_bit_neon[16] = {1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8};

// The loops over sub-blocks must unroll, so that every piece offset and shift is a constant.
#define SFMP_NEON_UNROLL _Pragma("GCC unroll 8")

// An fp16 scale, by the hardware conversion: exact, the value sfmp_fp16_to_fp32 gives for every
// finite or infinite input, without the call.
SFMP_INLINE float half_neon(const uint8_t * p) {
    __fp16 h;
    memcpy(&h, p, sizeof(h));
    return (float) h;
}

// (high << w) | (low's low w bits): SLI inserts a piece below the bits gathered so far and drops
// whatever lies above the piece in its byte.
SFMP_INLINE uint8x16_t sli_neon(uint8x16_t low, uint8x16_t high, int w) {
    return w == 4 ? vsliq_n_u8(low, high, 4) : (w == 2 ? vsliq_n_u8(low, high, 2) : vsliq_n_u8(low, high, 1));
}

// Weights first..first+15 of a width-w piece spanning n weights, shifted down to bit 0; `clean`:
// with the bits above cleared (not needed where they shift out at the top of the byte).
SFMP_INLINE uint8x16_t piece16_neon(const uint8_t * piece, int n, int w, int first, int clean) {
    const int span = n * w / 8, shift = w * (first / span);
    const uint8x16_t v = vshlq_u8(vld1q_u8(piece + first % span), vdupq_n_s8((int8_t) -shift));
    return clean && shift + w < 8 ? vandq_u8(v, vdupq_n_u8((uint8_t) ((1 << w) - 1))) : v;
}

// A plane over a 64-weight block (span 8): weight i in byte i % 8 at bit i / 8. Weights
// first..first+15 as 0 or -1 (SLI takes bit 0).
SFMP_INLINE uint8x16_t plane16_s_neon(const uint8_t * piece, int first) {
    static const uint8_t bit_lo[16] = {1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2};
    uint64_t u;
    memcpy(&u, piece, sizeof(u));
    return vtstq_u8(vreinterpretq_u8_u64(vdupq_n_u64(u)), vshlq_u8(vld1q_u8(bit_lo), vdupq_n_s8((int8_t) (first / 8))));
}

// The codes of weights first..first+15 of an n-weight block: unsigned q for B <= 7; q - 128 for
// B == 8, whose codes do not fit a signed byte.
SFMP_INLINE uint8x16_t code16_neon(const uint8_t * base, int n, int B, int first) {
    if (B == 8) {  // two nibble pieces: both low nibbles (SLI) or both high nibbles (SRI)
        const int span = n / 2;
        const uint8x16_t hi = vld1q_u8(base + first % span), lo = vld1q_u8(base + span + first % span);
        return veorq_u8(first < span ? vsliq_n_u8(lo, hi, 4) : vsriq_n_u8(hi, lo, 4), vdupq_n_u8(0x80));
    }
    uint8x16_t q = vdupq_n_u8(0);
    int bits = 0;
    for (int w = 4; w >= 1; w /= 2) {
        for (int c = 0; c < sfmp_piece_count(B, w); ++c) {
            const uint8x16_t p = n * w / 8 < 16 ? plane16_s_neon(base, first) : piece16_neon(base, n, w, first, bits == 0);
            q = bits ? sli_neon(p, q, w) : p;
            bits += w;
            base += n * w / 8;
        }
    }
    return q;
}

// sum(c y) over one sub-block, as four int32 partial sums.
SFMP_INLINE int32x4_t dot32_neon(int8x16_t lo, int8x16_t hi, const int8_t * y) {
    return dot16_neon(dot16_neon(vdupq_n_s32(0), lo, vld1q_s8(y)), hi, vld1q_s8(y + 16));
}

// The 8 sub-blocks' partial sums as [t0 t1 t2 t3] and [t4 t5 t6 t7].
SFMP_INLINE void reduce8_neon(const int32x4_t v[8], int32x4_t * t03, int32x4_t * t47) {
    *t03 = vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]));
    *t47 = vpaddq_s32(vpaddq_s32(v[4], v[5]), vpaddq_s32(v[6], v[7]));
}

// The upgrades' part of a block's integer, for the activations y (FINE: y[0] and y[1]): an upgraded
// sub-block's integer is its plain one plus m sum(y (2e - 1)) (uniform grid; m (2e - 1) fits a byte,
// so one dot product adds it in), or plus m sum(y D[2q + e]) (nonlinear: D the (B + 1)-bit levels
// less the B-bit level of q; `codes` holds every sub-block's q). The first U flagged sub-blocks
// count, as in sfmp_upgrade_mask; `flags` has sub-block j's flag at bit 8j + 7, as the amplitude
// bytes hold them.
SFMP_INLINE void upgrades_k_neon(const uint8_t * block, const int B, const int U, const int NL, const int FINE,
                                 uint64_t flags, const uint8_t codes[8][32], const sfmp_block_q8_K * y,
                                 int32x4_t ext[2]) {
    const uint8x16_t b0 = vld1q_u8(extra_bit_neon), b1 = vshlq_n_u8(b0, 4);
    const uint8_t * amplitude = block + SFMP_AMPLITUDE_OFFSET;
    ext[0] = ext[1] = vdupq_n_s32(0);
    for (int u = 0; u < U && flags; ++u, flags &= flags - 1) {
        const size_t j = (size_t) __builtin_ctzll(flags) >> 3;
        const int8_t m = (int8_t) (amplitude[j] & SFMP_AMPLITUDE_MAX);
        uint32_t bits;  // weight i's extra bit: byte i % 4, bit i / 4
        memcpy(&bits, block + SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, u), sizeof(bits));
        const uint8x16_t e = vreinterpretq_u8_u32(vdupq_n_u32(bits));
        int8x16_t c0, c1;
        if (NL) {
            const int8x16_t d = vreinterpretq_s8_u8(vsubq_u8(vld1q_u8(sfmp_nl_biased[B + 1]), vld1q_u8(sfmp_nl_spread[B])));
            c0 = vqtbl1q_s8(d, vsliq_n_u8(vtstq_u8(e, b0), vld1q_u8(codes[j]), 1));
            c1 = vqtbl1q_s8(d, vsliq_n_u8(vtstq_u8(e, b1), vld1q_u8(codes[j] + 16), 1));
        } else {
            const int8x16_t pm = vdupq_n_s8(m), nm = vnegq_s8(pm);
            c0 = vbslq_s8(vtstq_u8(e, b0), pm, nm);
            c1 = vbslq_s8(vtstq_u8(e, b1), pm, nm);
        }
        for (int c = 0; c < 1 + FINE; ++c) {
            const int8_t * yj = y[c].qs + 32 * j;
            const int32x4_t dot = dot16_neon(dot16_neon(NL ? vdupq_n_s32(0) : ext[c], c0, vld1q_s8(yj)), c1, vld1q_s8(yj + 16));
            ext[c] = NL ? vmlaq_n_s32(ext[c], dot, m) : dot;
        }
    }
}

// A block's exact integer (see block_k_avx2), with t_j = sum(y_j c_j) and s_j = sum(y_j) from bsums:
//   uniform: sum_j m_j (4 t_j + K s_j) + the upgrades' part, K = 2 (1 - 2^B)
//            (B == 8: c = q - 128, K = 2);
//            widened codes c = 2q + e (e = 0 if plain): sum_j m_j (2 t_j + (K - [j upgraded]) s_j)
//            (B == 7: c = 2q + e - 128, K + 256 - [j upgraded]);
//   nonlinear: sum_j m_j (t_j - 64 s_j) + the upgrades' part, c the biased level L + 64.
// int32 throughout: the arithmetic is modular and every block total fits (|total| <= 8 * 127 *
// 255 * 128 * 32 * 2 < 2^31, Q8_K values in -128..127), so the wrapped sum is the exact one.
SFMP_INLINE int32_t total_k_neon(const uint8_t * block, const int B, const int NL, const int WIDE, uint32_t up,
                                 const int32x4_t v[8], int32x4_t ext, const sfmp_block_q8_K * y) {
    int32x4_t t03, t47;
    reduce8_neon(v, &t03, &t47);
    const int16x8_t s = vpaddq_s16(vld1q_s16(y->bsums), vld1q_s16(y->bsums + 8));
    const int k0 = NL ? -SFMP_NL_BIAS : (B == 8 ? 2 : 2 * (1 - (1 << B)) + (WIDE && B == 7 ? 256 : 0));
    int16x8_t k = vdupq_n_s16((int16_t) k0);
    if (WIDE && !NL) {  // -1 in the upgraded lanes
        static const uint16_t bit[8] = {1, 2, 4, 8, 16, 32, 64, 128};
        k = vaddq_s16(k, vreinterpretq_s16_u16(vtstq_u16(vdupq_n_u16((uint16_t) up), vld1q_u16(bit))));
    }
    if (!NL) {
        t03 = vshlq_n_s32(t03, WIDE ? 1 : 2);
        t47 = vshlq_n_s32(t47, WIDE ? 1 : 2);
    }
    const int32x4_t u03 = vmlal_s16(t03, vget_low_s16(k), vget_low_s16(s)), u47 = vmlal_high_s16(t47, k, s);
    const uint16x8_t m = vmovl_u8(vand_u8(vld1_u8(block + SFMP_AMPLITUDE_OFFSET), vdup_n_u8(SFMP_AMPLITUDE_MAX)));
    const int32x4_t acc = vmlaq_s32(vmlaq_s32(ext, u03, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)))), u47,
                                    vreinterpretq_s32_u32(vmovl_high_u16(m)));
    return vaddvq_s32(acc);
}

// A sub-block's codes widened to 2q + e, e its extra bits at `extra` (0 where not `upgraded`):
// nonlinear, their levels (the (B + 1)-bit table where upgraded, the spread B-bit one otherwise);
// uniform B == 7, less 128 (2q + e - 128 fits a signed byte).
SFMP_INLINE void widen_neon(uint8x16_t * lo, uint8x16_t * hi, const uint8_t * extra, int upgraded, const int B,
                            const int NL, uint8x16_t levels, uint8x16_t levels_up) {
    const uint8x16_t b0 = vld1q_u8(extra_bit_neon), b1 = vshlq_n_u8(b0, 4);
    uint32_t bits;
    memcpy(&bits, extra, sizeof(bits));
    const uint8x16_t e = vreinterpretq_u8_u32(vdupq_n_u32(bits & (0u - (uint32_t) upgraded)));
    *lo = vsliq_n_u8(vtstq_u8(e, b0), *lo, 1);
    *hi = vsliq_n_u8(vtstq_u8(e, b1), *hi, 1);
    if (NL) {
        const uint8x16_t table = vbslq_u8(vdupq_n_u8((uint8_t) -upgraded), levels_up, levels);
        *lo = vqtbl1q_u8(table, *lo);
        *hi = vqtbl1q_u8(table, *hi);
    } else if (B == 7) {
        *lo = veorq_u8(*lo, vdupq_n_u8(0x80));
        *hi = veorq_u8(*hi, vdupq_n_u8(0x80));
    }
}

// One Q8_K block (FINE: a two-level pair, 256 * hi + lo) per weight block. With few upgrades
// (U <= 2) upgrades_k_neon adds them after the plain sub-blocks; with more, every sub-block's code
// is widened by its extra bit (0 where plain), found by its rank among the flagged sub-blocks.
SFMP_INLINE float row_k_neon(const int B, const int U, const int NL, const int FINE, int n, const void * vx,
                             const uint8_t * vy) {
    const int WIDE = U > 2;
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_K_x2) : sizeof(sfmp_block_q8_K);
    const uint8_t * block = (const uint8_t *) vx;
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, U);
    const float unit = 1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) / (float) (FINE ? SFMP_RESIDUAL_STEPS : 1);
    // Nonlinear levels: B bits; widened, the B-bit table spread over 2q and the (B + 1)-bit one.
    const uint8x16_t levels = vld1q_u8(WIDE ? sfmp_nl_spread[NL ? B : 0] : sfmp_nl_biased[NL ? B : 0]);
    const uint8x16_t levels_up = vld1q_u8(sfmp_nl_biased[NL && WIDE ? B + 1 : 0]);
    float sumf = 0.0f;
    for (int i = 0; i < n / 256; ++i, block += type_size) {
        const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) (vy + (size_t) i * y_stride);
        const uint8_t * base = block + SFMP_CODE_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, 0);
        uint64_t flags;  // sub-block j's upgrade flag at bit 8j + 7
        memcpy(&flags, block + SFMP_AMPLITUDE_OFFSET, sizeof(flags));
        flags &= 0x8080808080808080ull;
        uint8_t codes[8][32];  // nonlinear grid, few upgrades: q, for upgrades_k_neon
        int32x4_t v[2][8];
        uint32_t up = 0;  // widened: the upgraded sub-blocks
        int rank = 0;
        SFMP_NEON_UNROLL
        for (int j = 0; j < 8; ++j) {
            uint8x16_t lo = code16_neon(base, SFMP_K_BLOCK, B, 32 * j), hi = code16_neon(base, SFMP_K_BLOCK, B, 32 * j + 16);
            if (WIDE) {  // only the first U flags count; a plain sub-block reads a valid slot, masked
                const int flag = (int) (flags >> (8 * j + 7)) & 1, upgraded = flag & (rank < U);
                widen_neon(&lo, &hi, block + SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, rank < U ? rank : U - 1),
                           upgraded, B, NL, levels, levels_up);
                up |= (uint32_t) upgraded << j;
                rank += flag;
            } else if (NL) {
                if (U) {
                    vst1q_u8(codes[j], lo);
                    vst1q_u8(codes[j] + 16, hi);
                }
                lo = vqtbl1q_u8(levels, lo);
                hi = vqtbl1q_u8(levels, hi);
            }
            for (int c = 0; c < 1 + FINE; ++c) {
                v[c][j] = dot32_neon(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), y[c].qs + 32 * j);
            }
        }
        int32x4_t ext[2];
        upgrades_k_neon(block, B, WIDE ? 0 : U, NL, FINE, flags, codes, y, ext);
        int64_t total = total_k_neon(block, B, NL, WIDE, up, v[0], ext[0], y);
        if (FINE) {
            total = SFMP_RESIDUAL_STEPS * total + total_k_neon(block, B, NL, WIDE, up, v[1], ext[1], y + 1);
        }
        sumf += (half_neon(block + SFMP_SCALE_OFFSET) * y->d) * ((float) total * unit);
    }
    return sumf;
}

// ---- _s types: one Q8_0 block per sub-block ---------------------------------------------------

// One Q8_0 block (FINE: a two-level pair, 256 * hi + lo) per sub-block. Sub-block j's integer is
// m_j (SH t_j + K_j s_j), t_j = sum(y c) and s_j = sum(y) (no block sums in Q8_0: a dot product with
// ones): as total_k_neon, with every code widened where the type has an upgrade (U = 1: at most
// one of the two sub-blocks, always slot 0). int32 per sub-block and level; FINE combines them in int64.
SFMP_INLINE float row_s_neon(const int B, const int U, const int NL, const int FINE, int n, const void * vx,
                             const uint8_t * vy) {
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_0_x2) : sizeof(sfmp_block_q8_0);
    const uint8_t * block = (const uint8_t *) vx;
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, B, U);
    const float unit = 1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) / (float) (FINE ? SFMP_RESIDUAL_STEPS : 1);
    const uint8x16_t levels = vld1q_u8(U ? sfmp_nl_spread[NL ? B : 0] : sfmp_nl_biased[NL ? B : 0]);
    const uint8x16_t levels_up = vld1q_u8(sfmp_nl_biased[NL && U ? B + 1 : 0]);
    const int8x16_t ones = vdupq_n_s8(1);
    const int sh = NL ? 0 : (U ? 1 : 2);  // t's factor SH as a shift
    const int k0 = NL ? -SFMP_NL_BIAS : (B == 8 ? 2 : 2 * (1 - (1 << B)) + (U && B == 7 ? 256 : 0));
    float sumf = 0.0f;
    for (int i = 0; i < n / 64; ++i, block += type_size) {
        const uint8_t * base = block + SFMP_CODE_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, 0);
        const sfmp_block_q8_0 * yb[2] = {(const sfmp_block_q8_0 *) (vy + (size_t) (2 * i) * y_stride),
                                         (const sfmp_block_q8_0 *) (vy + (size_t) (2 * i + 1) * y_stride)};
        int32x4_t t[2][2], s[2][2];  // [level][sub-block]
        int k[2];
        int flagged = 0;  // the first flag takes slot 0; a second one does not count (U = 1)
        for (int j = 0; j < 2; ++j) {
            uint8x16_t lo = code16_neon(base, SFMP_S_BLOCK, B, 32 * j), hi = code16_neon(base, SFMP_S_BLOCK, B, 32 * j + 16);
            k[j] = k0;
            if (U) {
                const int flag = block[SFMP_AMPLITUDE_OFFSET + j] >> 7, upgraded = flag & !flagged;
                widen_neon(&lo, &hi, block + SFMP_EXTRA_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, B, 0), upgraded, B, NL, levels,
                           levels_up);
                k[j] -= NL ? 0 : upgraded;
                flagged |= flag;
            } else if (NL) {
                lo = vqtbl1q_u8(levels, lo);
                hi = vqtbl1q_u8(levels, hi);
            }
            for (int c = 0; c < 1 + FINE; ++c) {
                const int8_t * y = yb[j][c].qs;
                const int8x16_t y0 = vld1q_s8(y), y1 = vld1q_s8(y + 16);
                t[c][j] = dot16_neon(dot16_neon(vdupq_n_s32(0), vreinterpretq_s8_u8(lo), y0), vreinterpretq_s8_u8(hi), y1);
                s[c][j] = dot16_neon(dot16_neon(vdupq_n_s32(0), ones, y0), ones, y1);
            }
        }
        const int32x2_t m = vset_lane_s32(block[SFMP_AMPLITUDE_OFFSET + 1] & SFMP_AMPLITUDE_MAX,
                                          vdup_n_s32(block[SFMP_AMPLITUDE_OFFSET] & SFMP_AMPLITUDE_MAX), 1);
        // m T = (m << SH) t + (m K) s: two independent products, off each other's latency
        const int32x2_t msh = vshl_s32(m, vdup_n_s32(sh)), mk = vmul_s32(m, vset_lane_s32(k[1], vdup_n_s32(k[0]), 1));
        int32x2_t mt[2];  // [m0 T0, m1 T1] per level
        for (int c = 0; c < 1 + FINE; ++c) {
            const int32x4_t ts = vpaddq_s32(vpaddq_s32(t[c][0], t[c][1]), vpaddq_s32(s[c][0], s[c][1]));  // t0 t1 s0 s1
            mt[c] = vmla_s32(vmul_s32(vget_high_s32(ts), mk), vget_low_s32(ts), msh);
        }
        const float d = half_neon(block + SFMP_SCALE_OFFSET);
        if (FINE) {  // 256 m T(hi) + m T(lo) needs int64, and int64 to float one rounding: scalar
            const int64x2_t a = vaddw_s32(vshlq_n_s64(vmovl_s32(mt[0]), 8), mt[1]);
            sumf += (d * half_neon((const uint8_t *) &yb[0]->d)) * ((float) vgetq_lane_s64(a, 0) * unit) +
                    (d * half_neon((const uint8_t *) &yb[1]->d)) * ((float) vgetq_lane_s64(a, 1) * unit);
        } else {  // the reference's float operations, one sub-block per lane, then the lanes' sum
            uint16x4_t dy = vld1_lane_u16(&yb[0]->d, vdup_n_u16(0), 0);
            dy = vld1_lane_u16(&yb[1]->d, dy, 1);
            const float32x2_t dd = vmul_n_f32(vget_low_f32(vcvt_f32_f16(vreinterpret_f16_u16(dy))), d);
            sumf += vpadds_f32(vmul_f32(dd, vmul_n_f32(vcvt_f32_s32(mt[0]), unit)));
        }
    }
    return sumf;
}


// SFMP_CPU_NROWS is 1 here.
SFMP_INLINE void vec_dot_k_neon(const int B, const int U, const int NL, const int FINE, int n, float * s, size_t bs,
                                const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = row_k_neon(B, U, NL, FINE, n, vx, (const uint8_t *) vy);
}

SFMP_INLINE void vec_dot_s_neon(const int B, const int U, const int NL, const int FINE, int n, float * s, size_t bs,
                                const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = row_s_neon(B, U, NL, FINE, n, vx, (const uint8_t *) vy);
}

#define SFMP_VEC_DOT_K vec_dot_k_neon
#define SFMP_VEC_DOT_S vec_dot_s_neon

#endif  // __ARM_NEON

// One specialised kernel per type, with ggml's vec_dot signature.
#if defined(SFMP_VEC_DOT_K)
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                              \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,               \
                                  const void * vy, size_t by, int nrc) {                                  \
        if ((bs) == 256) {                                                                                \
            SFMP_VEC_DOT_K((budget) / (nsub), (budget) % (nsub), (grid) == SFMP_GRID_NONLINEAR,           \
                           SFMP_FINE_ACTIVATIONS(nsub, budget), n, s, bs_, vx, bx, vy, by, nrc);          \
        } else {                                                                                          \
            SFMP_VEC_DOT_S((budget) / (nsub), (budget) % (nsub), (grid) == SFMP_GRID_NONLINEAR,           \
                           SFMP_FINE_ACTIVATIONS(nsub, budget), n, s, bs_, vx, bx, vy, by, nrc);          \
        }                                                                                                 \
    }
#else
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                              \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,               \
                                  const void * vy, size_t by, int nrc) {                                  \
        (void) bs_; (void) bx; (void) by; (void) nrc;                                                     \
        sfmp_vec_dot_generic(id, n, s, vx, vy);                                                           \
    }
#endif
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

void sfmp_cpu_vec_dot_tile(int type, int n, float * s, size_t bs, const void * vx, size_t bx,
                           const void * vy, size_t by, int nrc) {
    switch (type) {
#define SFMP_TYPE(id, lname, uname, bs_, nsub, budget, tsize, grid) \
        case id: sfmp_cpu_vec_dot_##lname(n, s, bs, vx, bx, vy, by, nrc); break;
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
        default: break;
    }
}

int sfmp_cpu_nrows(int type) {
    return sfmp_fine_activations(type) ? 1 : SFMP_CPU_NROWS;
}

void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy) {
    sfmp_cpu_vec_dot_tile(type, n, s, 0, vx, 0, vy, 0, 1);
}

// ---- two-level activations ------------------------------------------------------------------------

#if defined(__AVX2__)

// The reference's round_even and clamp_int8 (sfmp-quants.c) on 8 floats: the same float operations,
// then the low byte of the truncated int32, as the reference's (int8_t) (int) casts leave it (NaN too).
SFMP_INLINE __m256i levels_avx2(__m256 v) {
    const __m256 shift = _mm256_set1_ps(12582912.0f);
    v = _mm256_sub_ps(_mm256_add_ps(v, shift), shift);
    v = _mm256_blendv_ps(v, _mm256_set1_ps(127.0f), _mm256_cmp_ps(v, _mm256_set1_ps(127.0f), _CMP_GT_OQ));
    v = _mm256_blendv_ps(v, _mm256_set1_ps(-127.0f), _mm256_cmp_ps(v, _mm256_set1_ps(-127.0f), _CMP_LT_OQ));
    return _mm256_srai_epi32(_mm256_slli_epi32(_mm256_cvttps_epi32(v), 24), 24);
}

// The low bytes of 8 int32 into 8 int8.
SFMP_INLINE void store_bytes_avx2(int8_t * dst, __m256i v) {
    const __m256i bytes = _mm256_shuffle_epi8(v, _mm256_set1_epi32(0x0c080400));
    const uint32_t lo = (uint32_t) _mm256_cvtsi256_si32(bytes), hi = (uint32_t) _mm256_extract_epi32(bytes, 4);
    memcpy(dst, &lo, 4);
    memcpy(dst + 4, &hi, 4);
}

// The reference's two_levels: hi = x / scale, lo = the residual / (scale / 256), or 0 without
// `two_level` (SFMP_ACTIVATIONS=8bit, read once per row by the callers).
SFMP_INLINE void two_levels_simd(const float * x, int group, float scale, bool two_level, int8_t * hi, int8_t * lo) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv), vscale = _mm256_set1_ps(scale);
    const __m256 vinv_lo = _mm256_set1_ps(two_level ? inv * (float) SFMP_RESIDUAL_STEPS : 0.0f);
    for (int i = 0; i < group; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256i h = levels_avx2(_mm256_mul_ps(v, vinv));
        const __m256 residual = _mm256_sub_ps(v, _mm256_mul_ps(vscale, _mm256_cvtepi32_ps(h)));
        store_bytes_avx2(hi + i, h);
        store_bytes_avx2(lo + i, levels_avx2(_mm256_mul_ps(residual, vinv_lo)));
    }
}

// The reference's block_amax: NaN is skipped as fmaxf skips it (maxps returns its second operand).
SFMP_INLINE float amax_simd(const float * x, int group) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < group; i += 8) {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

SFMP_INLINE void block_sums_simd(const int8_t * qs, int16_t * bsums) {
    for (int g = 0; g < 16; g += 2) {
        const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (qs + 16 * g)));
        const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (qs + 16 * g + 16)));
        __m256i s = _mm256_hadd_epi16(v, w);  // lanes: v0..3, w0..3 | v4..7, w4..7 (pair sums)
        s = _mm256_hadd_epi16(s, s);
        s = _mm256_hadd_epi16(s, s);
        const __m128i t = _mm_add_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        bsums[g] = (int16_t) _mm_extract_epi16(t, 0);
        bsums[g + 1] = (int16_t) _mm_extract_epi16(t, 1);
    }
}

#define SFMP_TWO_LEVEL_SIMD 1

#elif defined(__ARM_NEON) && defined(__aarch64__)

// As the AVX2 levels_avx2, 8 floats as two halves. fcvtzs, as the reference's (int) cast on aarch64,
// takes NaN to 0; xtn keeps the low byte.
SFMP_INLINE int8x8_t levels_neon(float32x4_t a, float32x4_t b, int32x4_t * wide_a, int32x4_t * wide_b) {
    const float32x4_t shift = vdupq_n_f32(12582912.0f), top = vdupq_n_f32(127.0f), bottom = vdupq_n_f32(-127.0f);
    float32x4_t v[2] = {vsubq_f32(vaddq_f32(a, shift), shift), vsubq_f32(vaddq_f32(b, shift), shift)};
    int32x4_t q[2];
    for (int k = 0; k < 2; ++k) {
        v[k] = vbslq_f32(vcgtq_f32(v[k], top), top, v[k]);
        v[k] = vbslq_f32(vcltq_f32(v[k], bottom), bottom, v[k]);
        q[k] = vcvtq_s32_f32(v[k]);
    }
    const int8x8_t bytes = vmovn_s16(vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])));
    if (wide_a) {  // the bytes back as int32, for the residual
        const int16x8_t h = vmovl_s8(bytes);
        *wide_a = vmovl_s16(vget_low_s16(h));
        *wide_b = vmovl_high_s16(h);
    }
    return bytes;
}

SFMP_INLINE void two_levels_simd(const float * x, int group, float scale, bool two_level, int8_t * hi, int8_t * lo) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    const float32x4_t vinv = vdupq_n_f32(inv), vscale = vdupq_n_f32(scale);
    const float32x4_t vinv_lo = vdupq_n_f32(two_level ? inv * (float) SFMP_RESIDUAL_STEPS : 0.0f);
    for (int i = 0; i < group; i += 8) {
        const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        int32x4_t ha, hb;
        vst1_s8(hi + i, levels_neon(vmulq_f32(a, vinv), vmulq_f32(b, vinv), &ha, &hb));
        const float32x4_t ra = vsubq_f32(a, vmulq_f32(vscale, vcvtq_f32_s32(ha)));
        const float32x4_t rb = vsubq_f32(b, vmulq_f32(vscale, vcvtq_f32_s32(hb)));
        vst1_s8(lo + i, levels_neon(vmulq_f32(ra, vinv_lo), vmulq_f32(rb, vinv_lo), NULL, NULL));
    }
}

// fmaxnm, as the reference's fmaxf, skips NaN.
SFMP_INLINE float amax_simd(const float * x, int group) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int i = 0; i < group; i += 4) {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    }
    return vmaxnmvq_f32(m);
}

SFMP_INLINE void block_sums_simd(const int8_t * qs, int16_t * bsums) {
    for (int g = 0; g < 16; ++g) {
        bsums[g] = vaddlvq_s8(vld1q_s8(qs + 16 * g));
    }
}

#define SFMP_TWO_LEVEL_SIMD 1

#endif

#if defined(SFMP_TWO_LEVEL_SIMD)

void sfmp_cpu_quantize_row_Q8_K_x2(const float * x, void * vy, int64_t n) {
    sfmp_block_q8_K_x2 * y = (sfmp_block_q8_K_x2 *) vy;
    const bool two_level = sfmp_two_level_activations();
    for (int64_t i = 0; i < n / 256; ++i, x += 256) {
        const float d = amax_simd(x, 256) / 127.0f;
        two_levels_simd(x, 256, d, two_level, y[i].hi.qs, y[i].lo.qs);
        y[i].hi.d = d;
        y[i].lo.d = d / (float) SFMP_RESIDUAL_STEPS;
        block_sums_simd(y[i].hi.qs, y[i].hi.bsums);
        block_sums_simd(y[i].lo.qs, y[i].lo.bsums);
    }
}

void sfmp_cpu_quantize_row_Q8_0_x2(const float * x, void * vy, int64_t n) {
    sfmp_block_q8_0_x2 * y = (sfmp_block_q8_0_x2 *) vy;
    const bool two_level = sfmp_two_level_activations();
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        y[i].hi.d = sfmp_fp32_to_fp16(amax_simd(x, 32) / 127.0f);
        const float d = sfmp_fp16_to_fp32(y[i].hi.d);  // the scale the kernels read
        two_levels_simd(x, 32, d, two_level, y[i].hi.qs, y[i].lo.qs);
        y[i].lo.d = sfmp_fp32_to_fp16(d / (float) SFMP_RESIDUAL_STEPS);
    }
}

#else

void sfmp_cpu_quantize_row_Q8_K_x2(const float * x, void * vy, int64_t n) {
    sfmp_quantize_row_Q8_K_x2(x, vy, n);
}

void sfmp_cpu_quantize_row_Q8_0_x2(const float * x, void * vy, int64_t n) {
    sfmp_quantize_row_Q8_0_x2(x, vy, n);
}

#endif
