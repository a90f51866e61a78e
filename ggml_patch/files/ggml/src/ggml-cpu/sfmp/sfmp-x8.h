// sfmp-gguf: SFMP weights with 8 rows interleaved, for a faster CPU mat-mul (the SFMP_X8 buffer type).
//
// Each SIMD lane holds one row, so eight rows share every decode step, every activation load and
// every scale operation, and no horizontal sums are needed. A row group is the tensor's 8 rows
// block by block; for each block index one x8 block holds:
//   uint16_t d[8]                 the rows' fp16 block scales
//   uint8_t  m[n_sub][8]          amplitudes, bit 7 set where the sub-block decodes upgraded
//   uint8_t  planes[U][32]        the rows' extra bits, a 1-bit piece per row (which plane serves
//                                 which sub-block: plane_index in sfmp-x8.c)
//   uint8_t  codes[n_sub][32 B]   B-bit base codes, in pieces of 4, 2 and 1 bits
// A piece of width w spans w 32-byte loads; in load L, row r owns bytes 4r..4r+3, byte b holds
// weight 4g + b of the group g = L * (8 / w) + k at bit w * k. An x8 block takes the bytes of its 8
// file blocks, except where sfmp-x8.c widens codes (B = 3 with upgrades; without VNNI also B = 5
// and 7): no planes, and (B + 1)-bit codes.
// Results are bit-identical to sfmp_vec_dot_generic: the same integers per sub-block and the same
// float operations per lane. For 8-bit codes plain AVX2 needs activations within [-127, 127], which
// the only activations those types take (two-level, sfmp_quantize_row_Q8_*_x2) always are.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SFMP_X8_ROWS 8

// Which kernel this build has: "avx2-vnni" (AVX512-VNNI), "avx-vnni", "avx2", "neon-dotprod", "neon" or "none".
const char * sfmp_x8_path(void);
// True if this build has an interleaved kernel for the type (AVX2 builds, every SFMP type).
bool sfmp_x8_supported(int type);
// Bytes of one row group (8 rows of n_per_row weights).
size_t sfmp_x8_group_size(int type, int64_t n_per_row);
// Interleave 8 rows (row_stride bytes apart, in the file's layout) into one row group at dst.
void sfmp_x8_repack_group(int type, const void * src, size_t row_stride, void * dst, int64_t n_per_row);
// What the kernel needs of each 32 activations besides their int8 values, worked out once per
// activation row (not once per row group): the offset term K0 * sum(y), sum(y), and the scale
// y_d / 2^(B+1) (Q8_0: per 32; Q8_K: per 256, in the first of its 8 entries). With two-level
// activations, offset and sum are hi's, lo_offset and lo_sum lo's (else 0), and the scale hi's / 256.
typedef struct {
    int32_t offset;
    int32_t sum;
    float   scale;
    int32_t lo_offset;
    int32_t lo_sum;
} sfmp_x8_act;

// Fill acts[0 .. n/32) for one activation row vy (Q8_K for _k types, Q8_0 for _s types).
void sfmp_x8_prepare_activations(int type, const void * vy, int64_t n, sfmp_x8_act * acts);
// Row groups [group_begin, group_end) of an interleaved tensor against `ncols` activation rows
// (Q8_K for _k types, Q8_0 for _s types): column c's activations at vy[c], prepared at acts[c], and
// row r of group g's result at dst[c][8 g + r]. Each group is decoded once for up to 8 columns
// (4 without AVX-512).
void sfmp_x8_mul_mat(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                     const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst);

// Two-level activations (sfmp_block_q8_K_x2 / _Q8_0_x2 rows, for the types whose layout is `fine`),
// in the kernel's wide form: per 32 values, hi's 32 bytes, lo's 32, then 256 hi + lo as 32 int16
// (at SFMP_X8_WIDE_VALUES_AT), both levels within [-127, 127] as their quantizers make them.
#define SFMP_X8_WIDE_BYTES 128
#define SFMP_X8_WIDE_VALUES_AT 64
void sfmp_x8_prepare_wide(int type, const void * vy, int64_t n, void * wide, sfmp_x8_act * acts);
// As sfmp_x8_mul_mat against rows in the wide form: both levels in one pass, bit-identical to
// sfmp_vec_dot_generic on the two-level rows.
void sfmp_x8_mul_mat_wide(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                          const void * const * wide, const sfmp_x8_act * const * acts, float * const * dst);

#ifdef __cplusplus
}
#endif
