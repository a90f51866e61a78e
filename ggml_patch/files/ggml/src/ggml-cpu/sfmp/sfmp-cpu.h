// sfmp-gguf: CPU dot products of SFMP weights with Q8_K / Q8_0 activations or their two-level pairs.
// Compiled into ggml-cpu with the backend's architecture flags, and into libsfmp_kernels for tests.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "ggml-sfmp-types.inc"

#ifdef __cplusplus
extern "C" {
#endif

// Rows per vec_dot call that ggml's mul_mat may ask for (type traits' nrows): the AVX2 kernels
// also compute 2x2 tiles (two weight rows by two activation columns) for prompt processing.
#if defined(__AVX2__)
#define SFMP_CPU_NROWS 2
#else
#define SFMP_CPU_NROWS 1
#endif

// Rows per vec_dot call of this type: 1 for types with two-level activations, else SFMP_CPU_NROWS.
int sfmp_cpu_nrows(int type);
// Which implementation sfmp_cpu_vec_dot uses in this build: "avx2", "neon" or "generic".
const char * sfmp_cpu_path(void);
// Dot product of n weights of SFMP type `type` with activations vy, by the best path built in.
void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy);
// ggml's vec_dot contract: nrc (1 or sfmp_cpu_nrows(type)) rows bx bytes apart by nrc columns by bytes
// apart, result (row r, column c) in s[r + c * bs].
void sfmp_cpu_vec_dot_tile(int type, int n, float * s, size_t bs, const void * vx, size_t bx,
                           const void * vy, size_t by, int nrc);

// Two-level activations as sfmp_quantize_row_Q8_K_x2 / _Q8_0_x2 make them, byte for byte (AVX2: in
// SIMD; elsewhere: the reference itself). ggml's from_float for the two-level activation types.
void sfmp_cpu_quantize_row_Q8_K_x2(const float * x, void * y, int64_t n);
void sfmp_cpu_quantize_row_Q8_0_x2(const float * x, void * y, int64_t n);

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                 \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,  \
                                  const void * vy, size_t by, int nrc);
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

#ifdef __cplusplus
}
#endif
