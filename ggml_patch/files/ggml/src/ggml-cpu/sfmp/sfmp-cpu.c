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

// 32 weights as bytes: weights 0..15 in lo, 16..31 in hi.
typedef struct {
    int8x16_t lo, hi;
} v32_neon;

SFMP_INLINE uint8x16_t low_bits_neon(uint8x16_t v, int shift, int w) {
    return vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t) -shift)), vdupq_n_u8((uint8_t) ((1 << w) - 1)));
}

// Weight i of a piece of width w spanning n weights sits in byte i % span at bit w * (i / span).
SFMP_INLINE v32_neon piece_neon(const uint8_t * piece, int n, int w, int j) {
    const int span = n * w / 8;
    v32_neon p;
    if (span >= 16) {  // each half of the sub-block is 16 consecutive bytes at one shift
        const int lo = 32 * j, hi = 32 * j + 16;
        p.lo = vreinterpretq_s8_u8(low_bits_neon(vld1q_u8(piece + lo % span), w * (lo / span), w));
        p.hi = vreinterpretq_s8_u8(low_bits_neon(vld1q_u8(piece + hi % span), w * (hi / span), w));
        return p;
    }
    // A plane over a 64-weight block (span 8): weight i in byte i % 8 at bit i / 8.
    static const uint8_t bit_lo[16] = {1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2};
    uint64_t u;
    memcpy(&u, piece, sizeof(u));
    const uint8x16_t v = vreinterpretq_u8_u64(vdupq_n_u64(u));
    const uint8x16_t b0 = vshlq_u8(vld1q_u8(bit_lo), vdupq_n_s8((int8_t) (4 * j)));
    const uint8x16_t b1 = vshlq_u8(b0, vdupq_n_s8(2));
    p.lo = vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, b0), vdupq_n_u8(1)));
    p.hi = vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, b1), vdupq_n_u8(1)));
    return p;
}

// An upgrade's extra bits: weight i in byte i % 4 at bit i / 4.
SFMP_INLINE v32_neon extra_bits_neon(const uint8_t * p) {
    static const uint8_t bit_lo[16] = {1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8};
    uint32_t u;
    memcpy(&u, p, sizeof(u));
    const uint8x16_t v = vreinterpretq_u8_u32(vdupq_n_u32(u));
    const uint8x16_t b0 = vld1q_u8(bit_lo);
    v32_neon e;
    e.lo = vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, b0), vdupq_n_u8(1)));
    e.hi = vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, vshlq_n_u8(b0, 4)), vdupq_n_u8(1)));
    return e;
}

SFMP_INLINE v32_neon base_code_neon(const uint8_t * base, int n, int B, int j) {
    v32_neon q = {vdupq_n_s8(0), vdupq_n_s8(0)};
    for (int w = 4; w >= 1; w /= 2) {
        for (int c = 0; c < sfmp_piece_count(B, w); ++c) {
            const v32_neon p = piece_neon(base, n, w, j);
            q.lo = vorrq_s8(vshlq_s8(q.lo, vdupq_n_s8((int8_t) w)), p.lo);
            q.hi = vorrq_s8(vshlq_s8(q.hi, vdupq_n_s8((int8_t) w)), p.hi);
            base += n * w / 8;
        }
    }
    return q;
}

SFMP_INLINE int32x4_t dot16_neon(int32x4_t acc, int8x16_t a, int8x16_t y) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, y);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(y)));
    return vpadalq_s16(acc, vmull_high_s8(a, y));
#endif
}

SFMP_INLINE int32_t dot_neon(v32_neon c, const int8_t * y) {
    return vaddvq_s32(dot16_neon(dot16_neon(vdupq_n_s32(0), c.lo, vld1q_s8(y)), c.hi, vld1q_s8(y + 16)));
}

SFMP_INLINE v32_neon add2_neon(v32_neon a, v32_neon b) {
    v32_neon r = {vaddq_s8(a.lo, b.lo), vaddq_s8(a.hi, b.hi)};
    return r;
}

// Nonlinear grid: sum(y L) over sub-block j by one 16-entry table lookup (see nl_levels_avx2).
SFMP_INLINE int32_t nl_dot_neon(const uint8_t * block, int n, int B, int U, int j, uint32_t mask, const int8_t * y) {
    const v32_neon q = base_code_neon(block + SFMP_CODE_OFFSET(n, n / SFMP_SUB_BLOCK, 0), n, B, j);
    uint8x16_t lo = vreinterpretq_u8_s8(q.lo), hi = vreinterpretq_u8_s8(q.hi);
    const uint8_t * table = sfmp_nl_biased[B];
    if (U) {
        const int up = (int) (mask >> j & 1);
        const v32_neon e = extra_bits_neon(block + SFMP_EXTRA_OFFSET(n, n / SFMP_SUB_BLOCK, B, extra_slot(mask, U, j)));
        const uint8x16_t keep = vdupq_n_u8((uint8_t) -up);
        lo = vorrq_u8(vaddq_u8(lo, lo), vandq_u8(vreinterpretq_u8_s8(e.lo), keep));
        hi = vorrq_u8(vaddq_u8(hi, hi), vandq_u8(vreinterpretq_u8_s8(e.hi), keep));
        table = up ? sfmp_nl_biased[B + 1] : sfmp_nl_spread[B];
    }
    const uint8x16_t t = vld1q_u8(table);
    const int8x16_t bias = vdupq_n_s8(SFMP_NL_BIAS);
    const v32_neon levels = {vsubq_s8(vreinterpretq_s8_u8(vqtbl1q_u8(t, lo)), bias),
                             vsubq_s8(vreinterpretq_s8_u8(vqtbl1q_u8(t, hi)), bias)};
    return dot_neon(levels, y);
}

// t = 2 * sum(y o) + [upgraded] * sum(y (2e - 1)) for sub-block j, o = 2q + 1 - 2^B: the exact
// integer of sub_block_dot in sfmp-quants.c, without m. Nonlinear grid: sum(y L).
SFMP_INLINE int32_t sub_block_dot_neon(const uint8_t * block, int n, int B, int U, int NL, int j, uint32_t mask,
                                       const int8_t * y) {
    const int n_sub = n / SFMP_SUB_BLOCK;
    const uint8_t * base = block + SFMP_CODE_OFFSET(n, n_sub, 0);
    if (NL) {
        return nl_dot_neon(block, n, B, U, j, mask, y);
    }
    if (B == 8) {  // o = 2 (q - 128) + 1
        const v32_neon hi = piece_neon(base, n, 4, j), lo = piece_neon(block + SFMP_CODE_OFFSET(n, n_sub, 4), n, 4, j);
        const int8x16_t flip = vdupq_n_s8(-128);
        v32_neon sq = {veorq_s8(vorrq_s8(vshlq_n_s8(hi.lo, 4), lo.lo), flip),
                       veorq_s8(vorrq_s8(vshlq_n_s8(hi.hi, 4), lo.hi), flip)};
        const v32_neon ones = {vdupq_n_s8(1), vdupq_n_s8(1)};
        return 4 * dot_neon(sq, y) + 2 * dot_neon(ones, y);
    }
    const v32_neon q = base_code_neon(base, n, B, j);
    const int8x16_t bias = vdupq_n_s8((int8_t) (1 - (1 << B)));
    const v32_neon o = {vaddq_s8(vaddq_s8(q.lo, q.lo), bias), vaddq_s8(vaddq_s8(q.hi, q.hi), bias)};
    if (!(U && (mask >> j & 1))) {
        return B == 7 ? 2 * dot_neon(o, y) : dot_neon(add2_neon(o, o), y);
    }
    const int rank = sfmp_popcount(mask & ((1u << j) - 1));
    const v32_neon e = extra_bits_neon(block + SFMP_EXTRA_OFFSET(n, n_sub, B, rank));
    const v32_neon pm = {vsubq_s8(vaddq_s8(e.lo, e.lo), vdupq_n_s8(1)), vsubq_s8(vaddq_s8(e.hi, e.hi), vdupq_n_s8(1))};
    if (B == 7) {  // 2o + (2e - 1) would not fit a byte
        return 2 * dot_neon(o, y) + dot_neon(pm, y);
    }
    return dot_neon(add2_neon(add2_neon(o, o), pm), y);
}

// One Q8_K block (FINE: a two-level pair, 256 * hi + lo) per weight block.
SFMP_INLINE float row_k_neon(const int B, const int U, const int NL, const int FINE, int n, const void * vx,
                             const uint8_t * vy) {
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_K_x2) : sizeof(sfmp_block_q8_K);
    const uint8_t * block = (const uint8_t *) vx;
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_K_BLOCK, SFMP_K_NSUB, B, U);
    const float unit = 1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) / (float) (FINE ? SFMP_RESIDUAL_STEPS : 1);
    float sumf = 0.0f;
    for (int i = 0; i < n / 256; ++i, block += type_size) {
        uint32_t flags = 0;
        for (int j = 0; j < 8; ++j) {
            flags |= (uint32_t) (block[SFMP_AMPLITUDE_OFFSET + j] >> 7) << j;
        }
        const uint32_t mask = first_flags(flags, U);
        const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) (vy + (size_t) i * y_stride);
        int64_t total = 0, lo = 0;
        for (int j = 0; j < 8; ++j) {
            const int64_t m = block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX;
            total += m * sub_block_dot_neon(block, 256, B, U, NL, j, mask, y->qs + 32 * j);
            if (FINE) {
                lo += m * sub_block_dot_neon(block, 256, B, U, NL, j, mask, y[1].qs + 32 * j);
            }
        }
        total = FINE ? SFMP_RESIDUAL_STEPS * total + lo : total;
        sumf += (sfmp_block_d(block) * y->d) * ((float) total * unit);
    }
    return sumf;
}

// One Q8_0 block (FINE: a two-level pair, 256 * hi + lo) per sub-block.
SFMP_INLINE float row_s_neon(const int B, const int U, const int NL, const int FINE, int n, const void * vx,
                             const uint8_t * vy) {
    const size_t y_stride = FINE ? sizeof(sfmp_block_q8_0_x2) : sizeof(sfmp_block_q8_0);
    const uint8_t * block = (const uint8_t *) vx;
    const int type_size = SFMP_EXTRA_OFFSET(SFMP_S_BLOCK, SFMP_S_NSUB, B, U);
    const float unit = 1.0f / (float) (NL ? SFMP_NL_UNIT : 2 << B) / (float) (FINE ? SFMP_RESIDUAL_STEPS : 1);
    float sumf = 0.0f;
    for (int i = 0; i < n / 64; ++i, block += type_size) {
        const sfmp_block_q8_0 * yb[2] = {(const sfmp_block_q8_0 *) (vy + (size_t) (2 * i) * y_stride),
                                         (const sfmp_block_q8_0 *) (vy + (size_t) (2 * i + 1) * y_stride)};
        const uint32_t mask = first_flags(flags_s(block), U);
        const float d = sfmp_block_d(block);
        int64_t a[2];
        for (int j = 0; j < 2; ++j) {
            const int64_t m = block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX;
            a[j] = m * sub_block_dot_neon(block, 64, B, U, NL, j, mask, yb[j]->qs);
            if (FINE) {
                a[j] = SFMP_RESIDUAL_STEPS * a[j] + m * sub_block_dot_neon(block, 64, B, U, NL, j, mask, yb[j][1].qs);
            }
        }
        const int64_t a0 = a[0], a1 = a[1];
        sumf += (d * sfmp_fp16_to_fp32(yb[0]->d)) * ((float) a0 * unit) + (d * sfmp_fp16_to_fp32(yb[1]->d)) * ((float) a1 * unit);
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
