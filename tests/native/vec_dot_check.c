// Runs the SIMD and scalar SFMP dot products on cases read from stdin, for cross-architecture checks
// under emulation (NEON under qemu-aarch64). Input, repeated until EOF, little-endian:
//   int32 type, int32 n, int32 x_bytes, int32 y_bytes, x_bytes of weights, y_bytes of activations.
// Output: the path compiled in, then one line per case: "<generic> <simd>" as C99 hex floats.
#include <stdio.h>
#include <stdlib.h>

#include "sfmp-cpu.h"
#include "sfmp-quants.h"

int main(void) {
    printf("path %s\n", sfmp_cpu_path());
    int32_t header[4];
    while (fread(header, sizeof(int32_t), 4, stdin) == 4) {
        void * x = malloc((size_t) header[2]);
        void * y = malloc((size_t) header[3]);
        if (!x || !y || fread(x, 1, (size_t) header[2], stdin) != (size_t) header[2] ||
            fread(y, 1, (size_t) header[3], stdin) != (size_t) header[3]) {
            fprintf(stderr, "truncated input\n");
            return 1;
        }
        float generic = 0.0f, simd = 0.0f;
        sfmp_vec_dot_generic(header[0], header[1], &generic, x, y);
        sfmp_cpu_vec_dot(header[0], header[1], &simd, x, y);
        printf("%a %a\n", (double) generic, (double) simd);
        free(x);
        free(y);
    }
    return 0;
}
