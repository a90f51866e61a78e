// sfmp-gguf: CPU dot products of SFMP weights with Q8_K / Q8_0 activations.
// Compiled into ggml-cpu with the backend's architecture flags, and into libsfmp_kernels for tests.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "ggml-sfmp-types.inc"

#ifdef __cplusplus
extern "C" {
#endif

// Which implementation sfmp_cpu_vec_dot uses in this build: "avx2", "neon" or "generic".
const char * sfmp_cpu_path(void);
// Dot product of n weights of SFMP type `type` with activations vy, by the best path built in.
void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy);

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize)                                 \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,  \
                                  const void * vy, size_t by, int nrc);
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

#ifdef __cplusplus
}
#endif
