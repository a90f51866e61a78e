// SFMP CUDA kernels. The block format is specified in sfmp_gguf/format.py; decoding mirrors
// ggml/src/sfmp/sfmp-quants.c.
#include "sfmp-cuda.cuh"

#include "convert.cuh"
#include "mmvq.cuh"

struct sfmp_cuda_layout {
    int block_size, n_sub, base_bits, upgrades, type_size, grid;
};

// The nonlinear grid's levels by precision, in 1/64ths of the amplitude.
static __constant__ int8_t sfmp_cuda_nl_levels[5][16] = {{0}, {0}, SFMP_NL_LEVELS_2, SFMP_NL_LEVELS_3, SFMP_NL_LEVELS_4};

static __host__ __device__ sfmp_cuda_layout sfmp_cuda_get_layout(int type) {
    switch (type) {
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) \
        case id: return {bs, nsub, (budget) / (nsub), (budget) % (nsub), tsize, grid};
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
        default: return {0, 0, 0, 0, 0, 0};
    }
}

// The 32 weights of sub-block j of a block. Only the first `upgrades` flagged sub-blocks count as
// upgraded, so a malformed block still decodes inside its own bytes, as on the CPU.
static __device__ void sfmp_decode_sub_block(const uint8_t * block, const sfmp_cuda_layout L, const int j,
                                             float * out) {
    int rank = 0;  // flagged sub-blocks before j: this one's slot in the extra bits
    for (int i = 0; i < j; ++i) {
        rank += block[SFMP_AMPLITUDE_OFFSET + i] >> 7;
    }
    const bool upgraded = (block[SFMP_AMPLITUDE_OFFSET + j] >> 7) && rank < L.upgrades;
    const int bits = L.base_bits + (upgraded ? 1 : 0);
    const float d = __half2float(*(const half *) block);
    const bool nonlinear = L.grid == SFMP_GRID_NONLINEAR;
    const float scale = (d * (float) (block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX)) / (float) (nonlinear ? SFMP_NL_UNIT : 1 << bits);
    const uint8_t * base = block + SFMP_CODE_OFFSET(L.block_size, L.n_sub, 0);
    const uint8_t * extra = block + SFMP_EXTRA_OFFSET(L.block_size, L.n_sub, L.base_bits, rank);
    for (int t = 0; t < 32; ++t) {
        const int i = 32 * j + t;
        int q = 0;
        const uint8_t * p = base;
        // Pieces most significant first: weight i of a width-w piece is in byte i % span at bit w * (i / span).
        for (int w = 4, left = L.base_bits; left > 0; ) {
            if (left < w) {
                w /= 2;
                continue;
            }
            const int span = L.block_size * w / 8;
            q = (q << w) | ((p[i % span] >> (w * (i / span))) & ((1 << w) - 1));
            p += span;
            left -= w;
        }
        if (upgraded) {
            q = 2 * q + ((extra[t % 4] >> (t / 4)) & 1);
        }
        out[t] = scale * (float) (nonlinear ? sfmp_cuda_nl_levels[bits][q] : 2 * q + 1 - (1 << bits));
    }
}

// ---- dequantization: one thread per sub-block ---------------------------------------------------

template <typename dst_t>
static __global__ void k_sfmp_dequantize(const uint8_t * __restrict__ x, dst_t * __restrict__ y,
                                         const sfmp_cuda_layout L, const int64_t n_sub_total) {
    const int64_t s = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= n_sub_total) {
        return;
    }
    float v[32];
    sfmp_decode_sub_block(x + (s / L.n_sub) * L.type_size, L, (int) (s % L.n_sub), v);
    for (int t = 0; t < 32; ++t) {
        y[32 * s + t] = ggml_cuda_cast<dst_t>(v[t]);
    }
}

template <int type, typename dst_t>
void sfmp_dequantize_row_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    const sfmp_cuda_layout L = sfmp_cuda_get_layout(type);
    const int64_t n_sub_total = k / 32;
    const int threads = 128;
    k_sfmp_dequantize<<<(n_sub_total + threads - 1) / threads, threads, 0, stream>>>(
        (const uint8_t *) vx, y, L, n_sub_total);
}

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                                      \
    template void sfmp_dequantize_row_cuda<id, float>(const void *, float *, const int64_t, cudaStream_t);       \
    template void sfmp_dequantize_row_cuda<id, half>(const void *, half *, const int64_t, cudaStream_t);         \
    template void sfmp_dequantize_row_cuda<id, nv_bfloat16>(const void *, nv_bfloat16 *, const int64_t, cudaStream_t);
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE

// ---- get_rows: one thread per sub-block of a gathered row ----------------------------------------

template <typename dst_t>
static __global__ void k_sfmp_get_rows(const uint8_t * __restrict__ src0, const int32_t * __restrict__ src1,
        dst_t * __restrict__ dst, const sfmp_cuda_layout L, const int64_t ne00, const int64_t ne11,
        const size_t nb01, const size_t nb02, const size_t nb03,
        const size_t s10, const size_t s11, const size_t s12, const size_t s1, const size_t s2, const size_t s3) {
    const int64_t i10 = blockIdx.x;
    const int64_t i11 = blockIdx.z % ne11;
    const int64_t i12 = blockIdx.z / ne11;
    const int64_t s = (int64_t) blockIdx.y * blockDim.x + threadIdx.x;
    if (s >= ne00 / 32) {
        return;
    }
    const int64_t i01 = src1[i10 * s10 + i11 * s11 + i12 * s12];
    const uint8_t * row = src0 + i01 * nb01 + i11 * nb02 + i12 * nb03;
    float v[32];
    sfmp_decode_sub_block(row + (s / L.n_sub) * L.type_size, L, (int) (s % L.n_sub), v);
    dst_t * out = dst + i10 * s1 + i11 * s2 + i12 * s3 + 32 * s;
    for (int t = 0; t < 32; ++t) {
        out[t] = ggml_cuda_cast<dst_t>(v[t]);
    }
}

template <typename dst_t>
void sfmp_get_rows_cuda(ggml_type type, const void * src0_d, const int32_t * src1_d, dst_t * dst_d,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream) {
    const int threads = 64;
    const int64_t n_sub_row = ne00 / 32;
    GGML_ASSERT(ne11 * ne12 <= INT32_MAX && ne10 <= INT32_MAX);
    const dim3 blocks((unsigned) ne10, (unsigned) ((n_sub_row + threads - 1) / threads), (unsigned) (ne11 * ne12));
    k_sfmp_get_rows<<<blocks, threads, 0, stream>>>((const uint8_t *) src0_d, src1_d, dst_d,
        sfmp_cuda_get_layout(type), ne00, ne11, nb01, nb02, nb03,
        nb10 / sizeof(int32_t), nb11 / sizeof(int32_t), nb12 / sizeof(int32_t),
        nb1 / sizeof(dst_t), nb2 / sizeof(dst_t), nb3 / sizeof(dst_t));
}

#define SFMP_GET_ROWS(dst_t)                                                                                \
    template void sfmp_get_rows_cuda<dst_t>(ggml_type, const void *, const int32_t *, dst_t *,              \
        int64_t, size_t, size_t, size_t, int64_t, int64_t, int64_t, size_t, size_t, size_t,               \
        size_t, size_t, size_t, cudaStream_t);
// Every destination type getrows.cu dispatches to, I32 included (as llama.cpp's own quantized types).
SFMP_GET_ROWS(float)
SFMP_GET_ROWS(half)
SFMP_GET_ROWS(nv_bfloat16)
SFMP_GET_ROWS(int32_t)
#undef SFMP_GET_ROWS

// ---- mat-vec: one warp per weight row, lanes stride over its sub-blocks ---------------------------

#define SFMP_MMV_WARPS 4

// Channel blockIdx.y = (i12, i13) of dst. MUL_MAT (ids == nullptr): ncols columns, the weights of
// channel (i12 / r2, i13 / r3). MUL_MAT_ID: i12 is the expert slot and i13 the token, one column, the
// weights of expert ids[i12, i13] and activation row (i12 % ne11, i13), as ggml's CPU path.
static __global__ void k_sfmp_mul_mat_vec(const uint8_t * __restrict__ x, const float * __restrict__ y,
        float * __restrict__ dst, const sfmp_cuda_layout L, const int64_t ne00, const int64_t ne01,
        const int ncols, const size_t nb01, const int64_t stride_col_y, const int64_t stride_col_dst,
        const int64_t ne12, const int64_t r2, const int64_t r3, const size_t nb02, const size_t nb03,
        const int64_t stride_y2, const int64_t stride_y3, const int64_t stride_dst2, const int64_t stride_dst3,
        const int32_t * __restrict__ ids, const int64_t ids_s0, const int64_t ids_s1, const int64_t ne11) {
    const int64_t row = (int64_t) blockIdx.x * SFMP_MMV_WARPS + threadIdx.y;
    if (row >= ne01) {
        return;
    }
    const int64_t i12 = blockIdx.y % ne12;
    const int64_t i13 = blockIdx.y / ne12;
    const uint8_t * xrow = x + row * nb01 +
        (ids ? ids[i13 * ids_s1 + i12 * ids_s0] * nb02 : (i13 / r3) * nb03 + (i12 / r2) * nb02);
    const float * ybase = y + (ids ? (i12 % ne11) * stride_col_y : i12 * stride_y2) + i13 * stride_y3;
    float acc[MMVQ_MAX_BATCH_SIZE] = {0.0f};
    float v[32];
    for (int64_t s = threadIdx.x; s < ne00 / 32; s += WARP_SIZE) {
        sfmp_decode_sub_block(xrow + (s / L.n_sub) * L.type_size, L, (int) (s % L.n_sub), v);
        for (int c = 0; c < ncols; ++c) {
            const float * yc = ybase + c * stride_col_y + 32 * s;
            float sum = 0.0f;
            for (int t = 0; t < 32; ++t) {
                sum += v[t] * yc[t];
            }
            acc[c] += sum;
        }
    }
    for (int c = 0; c < ncols; ++c) {
        const float total = warp_reduce_sum(acc[c]);
        if (threadIdx.x == 0) {
            dst[i12 * stride_dst2 + i13 * stride_dst3 + c * stride_col_dst + row] = total;
        }
    }
}

void sfmp_cuda_mul_mat_vec(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                           ggml_tensor * dst) {
    GGML_TENSOR_BINARY_OP_LOCALS
    GGML_ASSERT(src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32);
    GGML_ASSERT(nb10 == sizeof(float) && nb0 == sizeof(float));
    GGML_ASSERT(ne11 <= MMVQ_MAX_BATCH_SIZE);
    GGML_ASSERT(ne12 % ne02 == 0 && ne13 % ne03 == 0);
    const sfmp_cuda_layout L = sfmp_cuda_get_layout(src0->type);
    const dim3 blocks((unsigned) ((ne01 + SFMP_MMV_WARPS - 1) / SFMP_MMV_WARPS), (unsigned) (ne12 * ne13));
    const dim3 threads(WARP_SIZE, SFMP_MMV_WARPS);
    k_sfmp_mul_mat_vec<<<blocks, threads, 0, ctx.stream()>>>(
        (const uint8_t *) src0->data, (const float *) src1->data, (float *) dst->data, L, ne00, ne01, (int) ne11,
        nb01, nb11 / sizeof(float), nb1 / sizeof(float), ne12, ne12 / ne02, ne13 / ne03, nb02, nb03,
        nb12 / sizeof(float), nb13 / sizeof(float), nb2 / sizeof(float), nb3 / sizeof(float), nullptr, 0, 0, 1);
    CUDA_CHECK(cudaGetLastError());
}

// Expert ids are read on the device, so the stream is not synchronized (CUDA graphs stay usable).
void sfmp_cuda_mul_mat_vec_id(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              const ggml_tensor * ids, ggml_tensor * dst) {
    GGML_TENSOR_BINARY_OP_LOCALS
    GGML_ASSERT(src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32 && ids->type == GGML_TYPE_I32);
    GGML_ASSERT(nb10 == sizeof(float) && nb0 == sizeof(float) && ids->nb[0] == sizeof(int32_t));
    const int64_t n_used = ids->ne[0], n_tokens = ids->ne[1];
    GGML_ASSERT(ne1 == n_used && ne2 == n_tokens && n_used % ne11 == 0);
    const sfmp_cuda_layout L = sfmp_cuda_get_layout(src0->type);
    const dim3 blocks((unsigned) ((ne01 + SFMP_MMV_WARPS - 1) / SFMP_MMV_WARPS), (unsigned) (n_used * n_tokens));
    const dim3 threads(WARP_SIZE, SFMP_MMV_WARPS);
    k_sfmp_mul_mat_vec<<<blocks, threads, 0, ctx.stream()>>>(
        (const uint8_t *) src0->data, (const float *) src1->data, (float *) dst->data, L, ne00, ne01, 1,
        nb01, nb11 / sizeof(float), 0, n_used, 1, 1, nb02, 0,
        0, nb12 / sizeof(float), nb1 / sizeof(float), nb2 / sizeof(float),
        (const int32_t *) ids->data, 1, ids->nb[1] / sizeof(int32_t), ne11);
    CUDA_CHECK(cudaGetLastError());
}
