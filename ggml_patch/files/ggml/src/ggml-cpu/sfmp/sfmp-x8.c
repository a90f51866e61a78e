// SFMP weights with 8 rows interleaved: the repack and the AVX2 mat-vec (layout in sfmp-x8.h).
//
// Per sub-block and row the kernel computes the scalar reference's exact integer
//   a = m * (K1 * sum(c y) + (K0 + [U > 0 and not upgraded]) * sum(y))
// (c the W-bit code; U = 0: K1 = 4, K0 = 2 (1 - 2^B); U > 0: K1 = 2, K0 = 1 - 2^(B+1)), then the
// reference's float operations in the reference's order, one row per lane: the results are equal.
#include "sfmp-x8.h"

#include "../../sfmp/sfmp-quants.h"

#include <string.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define SFMP_X8_AVX2 1
#endif

#if defined(_MSC_VER)
#define SFMP_X8_INLINE static __forceinline
#define SFMP_X8_UNROLL
#else
#define SFMP_X8_INLINE static inline __attribute__((always_inline))
// Shift counts and piece offsets must become constants: unroll the loops over pieces and groups.
#define SFMP_X8_UNROLL _Pragma("GCC unroll 8")
#endif

// Code width in the interleaved layout: an upgraded sub-block's B + 1 bits, a plain one's B bits
// shifted up by one, so that every sub-block of the type has the same width.
SFMP_X8_INLINE int code_width(int B, int U) {
    return B + (U > 0);
}

SFMP_X8_INLINE size_t block_size_x8(int n_sub, int W) {
    return (size_t) (2 * SFMP_X8_ROWS + SFMP_X8_ROWS * n_sub + 32 * W * n_sub);
}

// How many pieces of width w (4, 2 or 1) a W-bit code has; the wider ones hold the higher bits.
SFMP_X8_INLINE int piece_count(int W, int w) {
    return w == 4 ? W / 4 : (w == 2 ? (W % 4) / 2 : W % 2);
}

bool sfmp_x8_supported(int type) {
#if defined(SFMP_X8_AVX2)
    return sfmp_is_type(type);
#else
    (void) type;
    return false;
#endif
}

size_t sfmp_x8_group_size(int type, int64_t n_per_row) {
    const sfmp_layout * L = sfmp_get_layout(type);
    if (!L) {
        return 0;
    }
    return (size_t) (n_per_row / L->block_size) * block_size_x8(L->n_sub, code_width(L->base_bits, L->upgrades));
}

void sfmp_x8_repack_group(int type, const void * src, size_t row_stride, void * dst, int64_t n_per_row) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const int W = code_width(L->base_bits, L->upgrades);
    const size_t bsz = block_size_x8(L->n_sub, W);
    const int64_t nb = n_per_row / L->block_size;
    memset(dst, 0, (size_t) nb * bsz);
    for (int64_t i = 0; i < nb; ++i) {
        uint8_t * out = (uint8_t *) dst + i * bsz;
        for (int r = 0; r < SFMP_X8_ROWS; ++r) {
            const uint8_t * block = (const uint8_t *) src + r * row_stride + i * L->type_size;
            const uint32_t upgraded = sfmp_upgrade_mask(L, block);
            memcpy(out + 2 * r, block, 2);
            for (int j = 0; j < L->n_sub; ++j) {
                out[2 * SFMP_X8_ROWS + SFMP_X8_ROWS * j + r] =
                    (uint8_t) ((block[2 + j] & SFMP_AMPLITUDE_MAX) | ((upgraded >> j & 1) ? SFMP_UPGRADE_FLAG : 0));
                int q[SFMP_SUB_BLOCK];
                const int bits = sfmp_sub_block_codes(L, block, upgraded, j, q);
                uint8_t * piece = out + 2 * SFMP_X8_ROWS + SFMP_X8_ROWS * L->n_sub + 32 * W * j;
                int shift = W;
                for (int w = 4; w >= 1; w /= 2) {
                    for (int c = 0; c < piece_count(W, w); ++c, piece += 32 * w) {
                        shift -= w;
                        for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
                            const int g = t / 4, load = g / (8 / w), k = g % (8 / w);
                            const int v = ((q[t] << (W - bits)) >> shift) & ((1 << w) - 1);
                            piece[32 * load + 4 * r + t % 4] |= (uint8_t) (v << (w * k));
                        }
                    }
                }
            }
        }
    }
}

void sfmp_x8_activation_sums(int type, const void * vy, int64_t n, int32_t * sums) {
    const sfmp_layout * L = sfmp_get_layout(type);
    for (int64_t s = 0; s < n / SFMP_SUB_BLOCK; ++s) {
        const int8_t * q = L->block_size == 256 ? ((const sfmp_block_q8_K *) vy)[s / 8].qs + SFMP_SUB_BLOCK * (s % 8)
                                                : ((const sfmp_block_q8_0 *) vy)[s].qs;
        int32_t sum = 0;
        for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
            sum += q[t];
        }
        sums[s] = sum;
    }
}

#if defined(SFMP_X8_AVX2)

// Per lane (row): sum(c y) over one sub-block of W-bit codes. A piece's partial sums stay in 16 bits
// (at most 8 * 2 * 15 * 128 = 30720), then are weighted by the piece's place in the code.
SFMP_X8_INLINE __m256i code_dot(const uint8_t * codes, const int W, const int8_t * y) {
    __m256i total = _mm256_setzero_si256();
    int shift = W;
    SFMP_X8_UNROLL
    for (int w = 4; w >= 1; w /= 2) {
        SFMP_X8_UNROLL
        for (int c = 0; c < piece_count(W, w); ++c, codes += 32 * w) {
            shift -= w;
            const __m256i mask = _mm256_set1_epi8((char) ((1 << w) - 1));
            __m256i acc = _mm256_setzero_si256();
            SFMP_X8_UNROLL
            for (int load = 0; load < w; ++load) {
                const __m256i v = _mm256_loadu_si256((const __m256i *) (codes + 32 * load));
                SFMP_X8_UNROLL
                for (int k = 0; k < 8 / w; ++k) {
                    int32_t y4;
                    memcpy(&y4, y + 4 * (load * (8 / w) + k), sizeof(y4));
                    const __m256i x = _mm256_and_si256(k ? _mm256_srli_epi16(v, w * k) : v, mask);
                    acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(x, _mm256_set1_epi32(y4)));
                }
            }
            total = _mm256_add_epi32(total, _mm256_madd_epi16(acc, _mm256_set1_epi16((short) (1 << shift))));
        }
    }
    return total;
}

// The exact integer a of sub-block j for the 8 rows of one x8 block.
SFMP_X8_INLINE __m256i sub_block_x8(const uint8_t * xb, const int B, const int U, const int n_sub, const int j,
                                    const int8_t * y, const int32_t ysum) {
    const int W = code_width(B, U);
    const __m256i s = code_dot(xb + 2 * SFMP_X8_ROWS + SFMP_X8_ROWS * n_sub + 32 * W * j, W, y);
    const __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (xb + 2 * SFMP_X8_ROWS + SFMP_X8_ROWS * j)));
    __m256i t;
    if (U) {
        const __m256i plain = _mm256_cmpgt_epi32(_mm256_set1_epi32(SFMP_UPGRADE_FLAG), m);
        t = _mm256_add_epi32(_mm256_slli_epi32(s, 1),
                             _mm256_add_epi32(_mm256_set1_epi32((1 - (2 << B)) * ysum),
                                              _mm256_and_si256(plain, _mm256_set1_epi32(ysum))));
    } else {
        t = _mm256_add_epi32(_mm256_slli_epi32(s, 2), _mm256_set1_epi32(2 * (1 - (1 << B)) * ysum));
    }
    return _mm256_mullo_epi32(_mm256_and_si256(m, _mm256_set1_epi32(SFMP_AMPLITUDE_MAX)), t);
}

// _k types: the block's integer over 8 sub-blocks fits int32 (at most 8 * 127 * 2 * 32 * 255 * 128).
SFMP_X8_INLINE void group_k(const int B, const int U, const int64_t nb, const uint8_t * x8,
                            const sfmp_block_q8_K * y, const int32_t * sums, float * out) {
    const size_t bsz = block_size_x8(8, code_width(B, U));
    const __m256 unit = _mm256_set1_ps(1.0f / (float) (2 << B));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i, x8 += bsz) {
        __m256i acc = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
            acc = _mm256_add_epi32(acc, sub_block_x8(x8, B, U, 8, j, y[i].qs + SFMP_SUB_BLOCK * j, sums[8 * i + j]));
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x8));
        sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_set1_ps(y[i].d)),
                                               _mm256_mul_ps(_mm256_cvtepi32_ps(acc), unit)));
    }
    _mm256_storeu_ps(out, sum);
}

SFMP_X8_INLINE void group_s(const int B, const int U, const int64_t nb, const uint8_t * x8,
                            const sfmp_block_q8_0 * y, const int32_t * sums, float * out) {
    const size_t bsz = block_size_x8(2, code_width(B, U));
    const __m256 unit = _mm256_set1_ps(1.0f / (float) (2 << B));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i, x8 += bsz) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x8));
        __m256 block_sum = _mm256_setzero_ps();
        for (int j = 0; j < 2; ++j) {
            const __m256i a = sub_block_x8(x8, B, U, 2, j, y[2 * i + j].qs, sums[2 * i + j]);
            const __m256 v = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_set1_ps(_cvtsh_ss(y[2 * i + j].d))),
                                           _mm256_mul_ps(_mm256_cvtepi32_ps(a), unit));
            block_sum = j ? _mm256_add_ps(block_sum, v) : v;
        }
        sum = _mm256_add_ps(sum, block_sum);
    }
    _mm256_storeu_ps(out, sum);
}

// One specialised kernel per type: B, U and the block size are constants, so every loop unrolls.
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize)                                               \
    static void mul_mat_vec_##lname(int64_t n, const uint8_t * x8, int64_t g0, int64_t g1, const void * vy, \
                                    const int32_t * sums, float * dst) {                                   \
        const int64_t nb = n / (bs);                                                                       \
        const size_t gsz = (size_t) nb * block_size_x8((nsub), code_width((budget) / (nsub), (budget) % (nsub))); \
        for (int64_t g = g0; g < g1; ++g) {                                                                \
            if ((bs) == 256) {                                                                             \
                group_k((budget) / (nsub), (budget) % (nsub), nb, x8 + g * gsz,                            \
                        (const sfmp_block_q8_K *) vy, sums, dst + SFMP_X8_ROWS * g);                       \
            } else {                                                                                       \
                group_s((budget) / (nsub), (budget) % (nsub), nb, x8 + g * gsz,                            \
                        (const sfmp_block_q8_0 *) vy, sums, dst + SFMP_X8_ROWS * g);                       \
            }                                                                                              \
        }                                                                                                  \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

void sfmp_x8_mul_mat_vec(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end,
                         const void * vy, const int32_t * sums, float * dst) {
    switch (type) {
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize) \
        case id: mul_mat_vec_##lname(n, (const uint8_t *) x8, group_begin, group_end, vy, sums, dst); break;
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
        default: break;
    }
}

#else

void sfmp_x8_mul_mat_vec(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end,
                         const void * vy, const int32_t * sums, float * dst) {
    // Never reached: sfmp_x8_supported is false without AVX2, so no tensor is interleaved.
    (void) type; (void) n; (void) x8; (void) group_begin; (void) group_end; (void) vy; (void) sums; (void) dst;
}

#endif
