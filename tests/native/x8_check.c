// Runs the interleaved (SFMP_X8) kernel and the scalar reference on cases read from stdin, for
// cross-architecture checks under emulation (NEON under qemu-aarch64). Input, repeated until EOF,
// little-endian: int32 type, int32 n, int32 rows (a multiple of 8), int32 columns, int32 wide, then
// rows rows of weights and columns rows of activations (Q8_K or Q8_0; for a type with two-level
// activations, the pairs). With wide the kernel takes the pairs in their wide form; else, as the
// buffer under SFMP_ACTIVATIONS=8bit, their hi level. Output: the kernel's path, then for each
// column and row "<generic> <interleaved>" as C99 hex floats.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sfmp-quants.h"
#include "sfmp-x8.h"

int main(void) {
    printf("path %s\n", sfmp_x8_path());
    int32_t h[5];
    while (fread(h, sizeof(int32_t), 5, stdin) == 5) {
        const int type = h[0], n = h[1], rows = h[2], cols = h[3], wide = h[4];
        const sfmp_layout * L = sfmp_get_layout(type);
        if (!L || rows % SFMP_X8_ROWS || cols < 1 || cols > 64 || (wide && !L->fine)) {
            fprintf(stderr, "bad case header\n");
            return 1;
        }
        const size_t row_bytes = (size_t) (n / L->block_size) * L->type_size;
        const size_t level_block = L->block_size == 256 ? sizeof(sfmp_block_q8_K) : sizeof(sfmp_block_q8_0);
        const size_t blocks = (size_t) n / (L->block_size == 256 ? 256 : 32), levels = L->fine ? 2 : 1;
        const size_t act_bytes = blocks * level_block * levels, hi_bytes = blocks * level_block;
        const size_t group = sfmp_x8_group_size(type, n);
        unsigned char * x = malloc(row_bytes * rows), * y = malloc(act_bytes * cols), * x8 = malloc(group * (rows / 8));
        const size_t taken_bytes = wide ? SFMP_X8_WIDE_BYTES * (size_t) (n / 32) : hi_bytes;  // per column, as the kernel takes it
        unsigned char * taken = malloc(taken_bytes * cols);
        sfmp_x8_act * acts = malloc(sizeof(sfmp_x8_act) * (n / 32) * cols);
        float * out = malloc(sizeof(float) * rows * cols);
        if (!x || !y || !x8 || !taken || !acts || !out || fread(x, 1, row_bytes * rows, stdin) != row_bytes * rows ||
            fread(y, 1, act_bytes * cols, stdin) != act_bytes * cols) {
            fprintf(stderr, "truncated input\n");
            return 1;
        }
        const void * vy[64];
        const sfmp_x8_act * pa[64];
        float * dst[64];
        for (int g = 0; g < rows / 8; ++g) {
            sfmp_x8_repack_group(type, x + g * 8 * row_bytes, row_bytes, x8 + g * group, n);
        }
        for (int c = 0; c < cols; ++c) {
            unsigned char * col = taken + c * taken_bytes;
            vy[c] = col;
            pa[c] = acts + c * (n / 32);
            dst[c] = out + c * rows;
            if (wide) {
                sfmp_x8_prepare_wide(type, y + c * act_bytes, n, col, acts + c * (n / 32));
                continue;
            }
            for (size_t b = 0; b < blocks; ++b) {
                memcpy(col + b * level_block, y + c * act_bytes + b * levels * level_block, level_block);
            }
            sfmp_x8_prepare_activations(type, col, n, acts + c * (n / 32));
        }
        (wide ? sfmp_x8_mul_mat_wide : sfmp_x8_mul_mat)(type, n, x8, 0, rows / 8, cols, vy, pa, dst);
        for (int c = 0; c < cols; ++c) {
            for (int r = 0; r < rows; ++r) {
                float generic = 0.0f;
                sfmp_vec_dot_generic(type, n, &generic, x + r * row_bytes, y + c * act_bytes);
                printf("%a %a\n", (double) generic, (double) dst[c][r]);
            }
        }
        free(x); free(y); free(taken); free(x8); free(acts); free(out);
    }
    return 0;
}
