// sfmp-gguf: CUDA kernels for the SFMP types: dequantization (also feeding cuBLAS), a mat-vec kernel
// for small batches (MUL_MAT and MUL_MAT_ID), and get_rows. Hooked into convert.cu, getrows.cu and ggml-cuda.cu by the patch.
#pragma once

#include "common.cuh"

static __host__ __device__ __forceinline__ bool sfmp_cuda_is_type(ggml_type type) {
    return type >= SFMP_FIRST_TYPE_ID && type < SFMP_TYPE_ID_END;
}

// convert.cu's function-pointer signature, one instantiation per type and destination type.
template <int type, typename dst_t>
void sfmp_dequantize_row_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream);

template <typename dst_t>
void sfmp_get_rows_cuda(ggml_type type, const void * src0_d, const int32_t * src1_d, dst_t * dst_d,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream);

// dst = src0 * src1 for src1 with at most MMVQ_MAX_BATCH_SIZE columns (F32 src1 and dst).
void sfmp_cuda_mul_mat_vec(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                           ggml_tensor * dst);

// MUL_MAT_ID for at most MMVQ_MAX_BATCH_SIZE tokens: dst[:, slot, token] = expert ids[slot, token]
// times src1 row (slot % ne11, token) (F32 src1 and dst).
void sfmp_cuda_mul_mat_vec_id(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              const ggml_tensor * ids, ggml_tensor * dst);
