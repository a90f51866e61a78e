// Direct kernel fuzzing: random and mutated SFMP blocks through every entry point of the kernels
// (validate, dequantize, the scalar and the SIMD dot product, the 2x2 tile, the interleaved
// SFMP_X8 repack and kernel), built with
// AddressSanitizer and UndefinedBehaviorSanitizer on x86 and plain under qemu for NEON.
//
//   fuzz_kernels SEED CASES
//
// Every block is fed to every kernel, valid or not: nothing may crash or read outside its block.
// For blocks that validation accepts, the outputs must be finite and the SIMD dot product must
// equal the scalar one (exactly, except AVX2 on 64-weight types, which sums in float lanes: there
// within float32 rounding of the sum of |terms|), and the interleaved kernel must equal the scalar
// one exactly. Prints a summary; exits 1 on the first failure.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sfmp-cpu.h"
#include "sfmp-quants.h"
#include "sfmp-x8.h"

#define MAX_N 1024

static uint64_t rng_state;

static uint32_t next_u32(void) {  // xorshift64*
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t) ((rng_state * 2685821657736338717ull) >> 32);
}

static float next_gauss(void) {
    const float u = ((float) next_u32() + 1.0f) / 4294967296.0f;
    const float v = (float) next_u32() / 4294967296.0f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

// Two-level activations as ggml makes them for types with fine activations (the CPU backend's
// quantizer, which must write the reference's bytes), with the values the dot product sees: the
// values' level plus the residual's.
static void make_two_level(int block_size, int n, const float * x, void * out, float * dequant) {
    const size_t bytes = block_size == 256 ? (size_t) n / 256 * sizeof(sfmp_block_q8_K_x2) : (size_t) n / 32 * sizeof(sfmp_block_q8_0_x2);
    void * reference = malloc(bytes);
    float special[MAX_N];  // x with a NaN, both infinities and a value past float16's range
    memcpy(special, x, sizeof(float) * (size_t) n);
    const float values[4] = {NAN, INFINITY, -INFINITY, 3e38f};
    for (int k = 0; k < 4; ++k) {
        special[next_u32() % (uint32_t) n] = values[k];
    }
    const float * inputs[2] = {special, x};  // x last: its bytes stay in out
    for (int k = 0; k < 2; ++k) {
        (block_size == 256 ? sfmp_quantize_row_Q8_K_x2 : sfmp_quantize_row_Q8_0_x2)(inputs[k], reference, n);
        (block_size == 256 ? sfmp_cpu_quantize_row_Q8_K_x2 : sfmp_cpu_quantize_row_Q8_0_x2)(inputs[k], out, n);
        if (memcmp(reference, out, bytes) != 0) {
            fprintf(stderr, "two-level activations (%d values, blocks of %d%s): %s quantizer differs from the reference\n", n,
                    block_size, k ? "" : ", non-finite ones among them", sfmp_cpu_path());
            exit(1);
        }
    }
    free(reference);
    if (block_size == 256) {
        const sfmp_block_q8_K_x2 * y = (const sfmp_block_q8_K_x2 *) out;
        for (int i = 0; i < n; ++i) {
            dequant[i] = y[i / 256].hi.d * (float) y[i / 256].hi.qs[i % 256] + y[i / 256].lo.d * (float) y[i / 256].lo.qs[i % 256];
        }
    } else {
        const sfmp_block_q8_0_x2 * y = (const sfmp_block_q8_0_x2 *) out;
        for (int i = 0; i < n; ++i) {
            dequant[i] = sfmp_fp16_to_fp32(y[i / 32].hi.d) * (float) y[i / 32].hi.qs[i % 32] +
                         sfmp_fp16_to_fp32(y[i / 32].lo.d) * (float) y[i / 32].lo.qs[i % 32];
        }
    }
}

// Activations as ggml makes them: Q8_K for 256-weight types, Q8_0 otherwise.
static void make_activations(int block_size, int n, const float * x, void * out, float * dequant) {
    if (block_size == 256) {
        sfmp_block_q8_K * y = (sfmp_block_q8_K *) out;
        for (int i = 0; i < n / 256; ++i) {
            float amax = 0.0f, max = 0.0f;
            for (int k = 0; k < 256; ++k) {
                if (fabsf(x[256 * i + k]) > amax) {
                    amax = fabsf(x[256 * i + k]);
                    max = x[256 * i + k];
                }
            }
            const float iscale = amax > 0.0f ? -127.0f / max : 0.0f;
            for (int k = 0; k < 256; ++k) {
                int v = (int) lrintf(iscale * x[256 * i + k]);
                y[i].qs[k] = (int8_t) (v > 127 ? 127 : (v < -128 ? -128 : v));
            }
            for (int g = 0; g < 16; ++g) {
                int sum = 0;
                for (int k = 0; k < 16; ++k) {
                    sum += y[i].qs[16 * g + k];
                }
                y[i].bsums[g] = (int16_t) sum;
            }
            y[i].d = iscale != 0.0f ? 1.0f / iscale : 0.0f;
            for (int k = 0; k < 256; ++k) {
                dequant[256 * i + k] = y[i].d * (float) y[i].qs[k];
            }
        }
    } else {
        sfmp_block_q8_0 * y = (sfmp_block_q8_0 *) out;
        for (int i = 0; i < n / 32; ++i) {
            float amax = 0.0f;
            for (int k = 0; k < 32; ++k) {
                amax = fmaxf(amax, fabsf(x[32 * i + k]));
            }
            const float d = amax / 127.0f;
            y[i].d = sfmp_fp32_to_fp16(d);
            const float dd = sfmp_fp16_to_fp32(y[i].d);
            for (int k = 0; k < 32; ++k) {
                y[i].qs[k] = (int8_t) (d > 0.0f ? lrintf(x[32 * i + k] / d) : 0);
                dequant[32 * i + k] = dd * (float) y[i].qs[k];
            }
        }
    }
}

// One row of n weights: random bytes, a quantized row with bytes flipped, or one with a valid
// upgrade count but random codes, amplitudes and scale.
static void make_weights(int type, const sfmp_layout * L, int n, uint8_t * row, int kind) {
    const size_t bytes = (size_t) (n / L->block_size) * (size_t) L->type_size;
    if (kind == 0) {
        for (size_t i = 0; i < bytes; ++i) {
            row[i] = (uint8_t) next_u32();
        }
        return;
    }
    float x[MAX_N];
    for (int i = 0; i < n; ++i) {
        x[i] = next_gauss() * 0.02f * (next_u32() % 50 == 0 ? 40.0f : 1.0f);
    }
    sfmp_quantize(type, x, row, 1, n, NULL);
    if (kind == 1) {
        const int flips = 1 + (int) (next_u32() % 8);
        for (int f = 0; f < flips; ++f) {
            row[next_u32() % bytes] ^= (uint8_t) (1u << (next_u32() % 8));
        }
    } else {
        for (size_t b = 0; b < bytes; b += (size_t) L->type_size) {
            uint8_t * block = row + b;
            const uint16_t d = sfmp_fp32_to_fp16(ldexpf((float) (next_u32() % 1000), -(int) (next_u32() % 40)));
            block[0] = (uint8_t) d;
            block[1] = (uint8_t) (d >> 8);
            for (int j = 0; j < L->n_sub; ++j) {  // keep the flags, randomise the amplitudes
                block[2 + j] = (uint8_t) ((block[2 + j] & SFMP_UPGRADE_FLAG) | (next_u32() & SFMP_AMPLITUDE_MAX));
            }
            for (int k = 2 + L->n_sub; k < L->type_size; ++k) {
                block[k] = (uint8_t) next_u32();
            }
        }
    }
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SEED CASES\n", argv[0]);
        return 2;
    }
    rng_state = strtoull(argv[1], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;
    const long cases = strtol(argv[2], NULL, 10);
    const int n_types = SFMP_TYPE_ID_END - SFMP_FIRST_TYPE_ID;
    long valid = 0;
    for (long c = 0; c < cases; ++c) {
        const int type = SFMP_FIRST_TYPE_ID + (int) (next_u32() % (uint32_t) n_types);
        const sfmp_layout * L = sfmp_get_layout(type);
        const int n = L->block_size * (1 + (int) (next_u32() % (uint32_t) (MAX_N / L->block_size)));
        const size_t row_bytes = (size_t) (n / L->block_size) * (size_t) L->type_size;
        const size_t act_bytes = (L->fine ? 2 : 1) * (L->block_size == 256 ? sizeof(sfmp_block_q8_K) * (size_t) (n / 256)
                                                                           : sizeof(sfmp_block_q8_0) * (size_t) (n / 32));
        // Exactly sized heap buffers, so AddressSanitizer sees any read past a row.
        uint8_t * rows = malloc(2 * row_bytes);
        void * acts = malloc(2 * act_bytes);
        float * out = malloc(sizeof(float) * (size_t) n);
        float x[MAX_N], ydq[2][MAX_N];
        for (int r = 0; r < 2; ++r) {
            make_weights(type, L, n, rows + r * row_bytes, (int) (next_u32() % 3));
            for (int i = 0; i < n; ++i) {
                x[i] = next_gauss();
            }
            (L->fine ? make_two_level : make_activations)(L->block_size, n, x, (uint8_t *) acts + r * act_bytes, ydq[r]);
        }
        const int ok = sfmp_validate_row(type, rows, 2 * row_bytes);
        float tile[4], single[2][2], generic[2][2];
        sfmp_dequantize_row(type, rows, out, n);
        for (int r = 0; r < 2; ++r) {
            for (int k = 0; k < 2; ++k) {
                sfmp_vec_dot_generic(type, n, &generic[r][k], rows + r * row_bytes, (uint8_t *) acts + k * act_bytes);
                sfmp_cpu_vec_dot(type, n, &single[r][k], rows + r * row_bytes, (uint8_t *) acts + k * act_bytes);
            }
        }
        const int nrows = sfmp_cpu_nrows(type);
        sfmp_cpu_vec_dot_tile(type, n, tile, 2, rows, row_bytes, acts, act_bytes, nrows);
        // The interleaved kernel on one row group: the two rows four times over, both columns.
        uint8_t * group_src = malloc(SFMP_X8_ROWS * row_bytes);
        uint8_t * group = malloc(sfmp_x8_group_size(type, n));
        sfmp_x8_act * prepared = malloc(sizeof(sfmp_x8_act) * (size_t) (n / 32) * 2);
        uint8_t * wide = malloc(SFMP_X8_WIDE_BYTES * (size_t) (n / 32) * 2);  // two-level activations' wide form
        float interleaved[2][SFMP_X8_ROWS];
        const void * vy[2] = {acts, (uint8_t *) acts + act_bytes};
        const void * vw[2] = {wide, wide + SFMP_X8_WIDE_BYTES * (size_t) (n / 32)};
        const sfmp_x8_act * pa[2] = {prepared, prepared + n / 32};
        float * dst[2] = {interleaved[0], interleaved[1]};
        for (int r = 0; r < SFMP_X8_ROWS; ++r) {
            memcpy(group_src + r * row_bytes, rows + (r % 2) * row_bytes, row_bytes);
        }
        sfmp_x8_repack_group(type, group_src, row_bytes, group, n);
        for (int k = 0; k < 2; ++k) {
            if (L->fine) {
                sfmp_x8_prepare_wide(type, vy[k], n, (void *) vw[k], prepared + k * (n / 32));
            } else {
                sfmp_x8_prepare_activations(type, vy[k], n, prepared + k * (n / 32));
            }
        }
        if (sfmp_x8_supported(type)) {
            (L->fine ? sfmp_x8_mul_mat_wide : sfmp_x8_mul_mat)(type, n, group, 0, 1, 2, L->fine ? vw : vy, pa, dst);
        }
        if (ok && sfmp_x8_supported(type)) {
            for (int r = 0; r < SFMP_X8_ROWS; ++r) {
                for (int k = 0; k < 2; ++k) {
                    if (interleaved[k][r] != generic[r % 2][k]) {
                        fprintf(stderr, "case %ld (type %d, n %d): generic %a, interleaved (%s) %a\n", c, type, n,
                                (double) generic[r % 2][k], sfmp_x8_path(), (double) interleaved[k][r]);
                        return 1;
                    }
                }
            }
        }
        free(group_src);
        free(group);
        free(prepared);
        free(wide);
        if (ok) {
            ++valid;
            for (int i = 0; i < n; ++i) {
                if (!isfinite(out[i])) {
                    fprintf(stderr, "case %ld (type %d): dequantized weight %d is %f\n", c, type, i, (double) out[i]);
                    return 1;
                }
            }
            for (int r = 0; r < 2; ++r) {
                float w[MAX_N];
                sfmp_dequantize_row(type, rows + r * row_bytes, w, n);
                for (int k = 0; k < 2; ++k) {
                    double magnitude = 0.0;
                    for (int i = 0; i < n; ++i) {
                        magnitude += fabs((double) w[i] * (double) ydq[k][i]);
                    }
                    const double allowed = (L->block_size == 64 && !strcmp(sfmp_cpu_path(), "avx2"))
                                               ? 64.0 * ldexp(1.0, -24) * magnitude : 0.0;
                    const double tile_value = nrows == 2 ? tile[r + 2 * k] : single[r][k];
                    if (!isfinite(generic[r][k]) || fabs((double) single[r][k] - generic[r][k]) > allowed ||
                        tile_value != single[r][k]) {
                        fprintf(stderr, "case %ld (type %d, n %d): generic %a, %s %a, tile %a\n", c, type, n,
                                (double) generic[r][k], sfmp_cpu_path(), (double) single[r][k], tile_value);
                        return 1;
                    }
                }
            }
        }
        free(rows);
        free(acts);
        free(out);
    }
    printf("%s (interleaved: %s): %ld cases, %ld valid, 0 failures\n", sfmp_cpu_path(), sfmp_x8_path(), cases, valid);
    return 0;
}
