// CPU dot products of SFMP weights with Q8_K / Q8_0 activations: AVX2, NEON, or the scalar reference.
//
// Every path computes each block's (or, for the 64-weight types, each sub-block's) integer sum
// exactly as the reference does, then applies the same float operations in the same order, so
// all paths return bit-identical results.
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

const char * sfmp_cpu_path(void) {
    return SFMP_CPU_PATH;
}

#if defined(__AVX2__)

// Piece unpackers: 32 weights of one piece as bytes, weight k in byte k.
static inline __m256i nibbles_avx2(const uint8_t * p) {
    const __m128i v = _mm_loadu_si128((const __m128i *) p);
    const __m128i f = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), f), _mm_and_si128(v, f));
}

static inline __m256i crumbs_avx2(const uint8_t * p) {
    uint64_t u;
    memcpy(&u, p, sizeof(u));
    const __m256i v = _mm256_srlv_epi64(_mm256_set1_epi64x((long long) u), _mm256_set_epi64x(6, 4, 2, 0));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x03));
}

static inline __m256i plane_avx2(const uint8_t * p) {
    uint32_t u;
    memcpy(&u, p, sizeof(u));
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int) u),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
                                          _mm256_set1_epi64x(-1));
    return _mm256_and_si256(set, _mm256_set1_epi8(1));
}

static inline int clamp_offset(int off, int size, int payload_bytes) {
    return off + size <= payload_bytes ? off : payload_bytes - size;
}

// Eight int32 partial sums of q * y for one sub-block. Each piece is decoded at a clamped in-block
// offset and masked away when the precision has no such piece; only the leading-nibble count
// (none, one, or the two of an 8-bit code) still branches. q = (hi << (bits - 4)) + lo, where hi is the
// leading nibble and lo < 16 the rest, so both products fit maddubs without saturation.
static inline __m256i sub_block_dot_avx2(const uint8_t * qs, int pos, int bits, int payload_bytes, __m256i y) {
    const int nn = bits >> 2, nc = (bits >> 1) & 1, np = bits & 1;
    const int off_c = pos + 16 * nn, off_p = off_c + 8 * nc;
    const __m256i hi = _mm256_and_si256(nibbles_avx2(qs + clamp_offset(pos, 16, payload_bytes)),
                                        _mm256_set1_epi8((char) -(nn > 0)));
    const __m256i c = _mm256_and_si256(crumbs_avx2(qs + clamp_offset(off_c, 8, payload_bytes)),
                                       _mm256_set1_epi8((char) -nc));
    const __m256i p = _mm256_and_si256(plane_avx2(qs + clamp_offset(off_p, 4, payload_bytes)),
                                       _mm256_set1_epi8((char) -np));
    __m256i lo = _mm256_or_si256(_mm256_sll_epi16(c, _mm_cvtsi32_si128(np)), p);
    __m128i hi_shift = _mm_cvtsi32_si128(nn ? bits - 4 : 0);
    if (nn == 0) {
        lo = _mm256_or_si256(lo, hi);  // no leading nibble: hi is all zeros
    } else if (nn == 2) {
        lo = nibbles_avx2(qs + pos + 16);  // 8 bits: two nibbles and nothing else
    }
    const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y), _mm256_set1_epi16(1));
    const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y), _mm256_set1_epi16(1));
    return _mm256_add_epi32(_mm256_sll_epi32(phi, hi_shift), plo);
}

static inline int32_t hsum_i32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static void vec_dot_k_avx2(const sfmp_layout * L, int n, float * s, const void * vx, const void * vy) {
    const uint8_t * block = (const uint8_t *) vx;
    const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / 256; ++i, block += L->type_size) {
        const float d = sfmp_block_d(block);
        __m256i vacc = _mm256_setzero_si256();
        int32_t acc = 0;
        sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
        int bits, m;
        const uint8_t * codes;
        while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
            const int j = c.j - 1;
            const __m256i yv = _mm256_loadu_si256((const __m256i *) (y[i].qs + 32 * j));
            const int32_t f = sfmp_sub_block_factor(m, bits);
            const __m256i qy = sub_block_dot_avx2(c.qs, (int) (codes - c.qs), bits, c.budget_bytes, yv);
            vacc = _mm256_add_epi32(vacc, _mm256_mullo_epi32(qy, _mm256_set1_epi32(2 * f)));
            acc += f * (1 - (1 << bits)) * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        acc += hsum_i32_avx2(vacc);
        sumf += (d * y[i].d) * (float) acc * (1.0f / 256.0f);
    }
    *s = sumf;
}

static void vec_dot_s_avx2(const sfmp_layout * L, int n, float * s, const void * vx, const void * vy) {
    const uint8_t * block = (const uint8_t *) vx;
    const sfmp_block_q8_0 * y = (const sfmp_block_q8_0 *) vy;
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    float sumf = 0.0f;
    for (int i = 0; i < n / 64; ++i, block += L->type_size) {
        const float d = sfmp_block_d(block);
        sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
        int bits, m;
        const uint8_t * codes;
        while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
            const sfmp_block_q8_0 * yb = &y[L->n_sub * i + c.j - 1];
            const __m256i yv = _mm256_loadu_si256((const __m256i *) yb->qs);
            const __m256i qy = sub_block_dot_avx2(c.qs, (int) (codes - c.qs), bits, c.budget_bytes, yv);
            const __m256i ysum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, yv), ones16);
            const int32_t f = sfmp_sub_block_factor(m, bits);
            const __m256i t = _mm256_add_epi32(_mm256_mullo_epi32(qy, _mm256_set1_epi32(2 * f)),
                                               _mm256_mullo_epi32(ysum, _mm256_set1_epi32(f * (1 - (1 << bits)))));
            sumf += (d * sfmp_fp16_to_fp32(yb->d)) * (float) hsum_i32_avx2(t) * (1.0f / 256.0f);
        }
    }
    *s = sumf;
}

#endif  // __AVX2__


#if defined(__ARM_NEON) && defined(__aarch64__) && !defined(__AVX2__)

// 32 codes of one sub-block as bytes, weights 0..15 in lo and 16..31 in hi.
typedef struct {
    uint8x16_t lo, hi;
} codes_neon;

static inline codes_neon piece_neon(const uint8_t * codes, int w) {
    codes_neon p;
    if (w == 4) {
        const uint8x16_t v = vld1q_u8(codes);
        p.lo = vandq_u8(v, vdupq_n_u8(0x0f));
        p.hi = vshrq_n_u8(v, 4);
    } else if (w == 2) {
        const uint8x8_t v = vld1_u8(codes);
        const uint8x8_t three = vdup_n_u8(3);
        p.lo = vcombine_u8(vand_u8(v, three), vand_u8(vshr_n_u8(v, 2), three));
        p.hi = vcombine_u8(vand_u8(vshr_n_u8(v, 4), three), vshr_n_u8(v, 6));
    } else {
        static const uint8_t bit_of[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        static const uint8_t lo_bytes[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
        static const uint8_t hi_bytes[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
        uint32_t u;
        memcpy(&u, codes, sizeof(u));
        const uint8x16_t word = vreinterpretq_u8_u32(vdupq_n_u32(u));
        const uint8x16_t bits = vld1q_u8(bit_of);
        const uint8x16_t one = vdupq_n_u8(1);
        p.lo = vandq_u8(vtstq_u8(vqtbl1q_u8(word, vld1q_u8(lo_bytes)), bits), one);
        p.hi = vandq_u8(vtstq_u8(vqtbl1q_u8(word, vld1q_u8(hi_bytes)), bits), one);
    }
    return p;
}

static inline codes_neon decode_neon(const uint8_t * codes, int bits) {
    codes_neon q = {vdupq_n_u8(0), vdupq_n_u8(0)};
    int left = bits;
    while (left > 0) {
        const int w = left >= 4 ? 4 : (left >= 2 ? 2 : 1);
        const codes_neon p = piece_neon(codes, w);
        if (w == 4) {
            q.lo = vorrq_u8(vshlq_n_u8(q.lo, 4), p.lo);
            q.hi = vorrq_u8(vshlq_n_u8(q.hi, 4), p.hi);
        } else if (w == 2) {
            q.lo = vorrq_u8(vshlq_n_u8(q.lo, 2), p.lo);
            q.hi = vorrq_u8(vshlq_n_u8(q.hi, 2), p.hi);
        } else {
            q.lo = vorrq_u8(vshlq_n_u8(q.lo, 1), p.lo);
            q.hi = vorrq_u8(vshlq_n_u8(q.hi, 1), p.hi);
        }
        codes += 4 * w;
        left -= w;
    }
    return q;
}

// Sum of a * y over 16 lanes, a in 0..127 (reinterpreted as signed).
static inline int32x4_t dot16_neon(int32x4_t acc, uint8x16_t a, int8x16_t y) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, vreinterpretq_s8_u8(a), y);
#else
    const int8x16_t s = vreinterpretq_s8_u8(a);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(s), vget_low_s8(y)));
    return vpadalq_s16(acc, vmull_s8(vget_high_s8(s), vget_high_s8(y)));
#endif
}

// Exact sum of q * y over one sub-block; 8-bit codes are split in nibbles to stay signed.
static inline int32_t dot_neon(codes_neon q, const int8_t * y, int bits) {
    const int8x16_t y0 = vld1q_s8(y), y1 = vld1q_s8(y + 16);
    if (bits < 8) {
        return vaddvq_s32(dot16_neon(dot16_neon(vdupq_n_s32(0), q.lo, y0), q.hi, y1));
    }
    const uint8x16_t f = vdupq_n_u8(0x0f);
    const int32x4_t lo = dot16_neon(dot16_neon(vdupq_n_s32(0), vandq_u8(q.lo, f), y0), vandq_u8(q.hi, f), y1);
    const int32x4_t hi = dot16_neon(dot16_neon(vdupq_n_s32(0), vshrq_n_u8(q.lo, 4), y0), vshrq_n_u8(q.hi, 4), y1);
    return vaddvq_s32(lo) + 16 * vaddvq_s32(hi);
}

static void vec_dot_neon(const sfmp_layout * L, int n, float * s, const void * vx, const void * vy) {
    const uint8_t * block = (const uint8_t *) vx;
    float sumf = 0.0f;
    for (int i = 0; i < n / L->block_size; ++i, block += L->type_size) {
        const float d = sfmp_block_d(block);
        int32_t acc = 0;
        sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
        int bits, m;
        const uint8_t * codes;
        while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
            const int j = c.j - 1;
            const codes_neon q = decode_neon(codes, bits);
            const int32_t f = sfmp_sub_block_factor(m, bits);
            if (L->block_size == 256) {
                const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) vy + i;
                const int32_t ysum = y->bsums[2 * j] + y->bsums[2 * j + 1];
                acc += f * (2 * dot_neon(q, y->qs + 32 * j, bits) + (1 - (1 << bits)) * ysum);
            } else {
                const sfmp_block_q8_0 * yb = (const sfmp_block_q8_0 *) vy + L->n_sub * i + j;
                const int32_t ysum = vaddlvq_s8(vld1q_s8(yb->qs)) + vaddlvq_s8(vld1q_s8(yb->qs + 16));
                const int32_t t = f * (2 * dot_neon(q, yb->qs, bits) + (1 - (1 << bits)) * ysum);
                sumf += (d * sfmp_fp16_to_fp32(yb->d)) * (float) t * (1.0f / 256.0f);
            }
        }
        if (L->block_size == 256) {
            sumf += (d * ((const sfmp_block_q8_K *) vy)[i].d) * (float) acc * (1.0f / 256.0f);
        }
    }
    *s = sumf;
}

#endif  // __ARM_NEON

void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy) {
#if defined(__AVX2__)
    const sfmp_layout * L = sfmp_get_layout(type);
    if (L->block_size == 256) {
        vec_dot_k_avx2(L, n, s, vx, vy);
    } else {
        vec_dot_s_avx2(L, n, s, vx, vy);
    }
#elif defined(__ARM_NEON) && defined(__aarch64__)
    vec_dot_neon(sfmp_get_layout(type), n, s, vx, vy);
#else
    sfmp_vec_dot_generic(type, n, s, vx, vy);
#endif
}

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize)                                 \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,  \
                                  const void * vy, size_t by, int nrc) {                     \
        (void) bs_; (void) bx; (void) by; (void) nrc;                                        \
        sfmp_cpu_vec_dot(id, n, s, vx, vy);                                                  \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
