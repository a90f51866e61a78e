// The SFMP_X8 buffer type: ggml's extra-buffer interface around sfmp-x8.c. The weights are
// interleaved once, when the model loader uploads them; MUL_MAT quantizes the activations (Q8_K or
// Q8_0, as the plain path does), then the threads share the row groups.
#include "sfmp-x8-buffer.h"

#include "sfmp-x8.h"

#include "../../ggml-impl.h"
#include "../traits.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace {

bool interleavable(const ggml_tensor * t) {
    return sfmp_x8_supported(t->type) && t->ne[1] % SFMP_X8_ROWS == 0 && t->ne[2] == 1 && t->ne[3] == 1;
}

// Per activation row in the work buffer: its Q8_K / Q8_0 blocks, then its prepared terms per 32 values.
struct activation_layout {
    ggml_type type;
    size_t    quantized;
    size_t    stride;

    explicit activation_layout(const ggml_tensor * op)
        : type(ggml_get_type_traits_cpu(op->src[0]->type)->vec_dot_type),
          quantized(GGML_PAD(ggml_row_size(type, op->src[1]->ne[0]), alignof(sfmp_x8_act))),
          stride(quantized + sizeof(sfmp_x8_act) * (op->src[1]->ne[0] / 32)) {}
};

// Row groups per chunk: the chunk's weights stay in cache while every activation row passes.
constexpr int64_t GROUPS_PER_CHUNK = 16;
// Activation rows per kernel call: the kernel decodes each block once for up to 4.
constexpr int64_t COLUMNS_PER_CALL = 4;

class x8_tensor_traits : public ggml::cpu::tensor_traits {
    bool work_size(int /* n_threads */, const ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = activation_layout(op).stride * ggml_nrows(op->src[1]);
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        mul_mat(params, op);
        return true;
    }

    static void mul_mat(ggml_compute_params * params, ggml_tensor * dst) {
        const ggml_tensor * src0 = dst->src[0];
        const ggml_tensor * src1 = dst->src[1];
        GGML_TENSOR_BINARY_OP_LOCALS
        GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13 && nb0 == sizeof(float));

        const activation_layout act(dst);
        const ggml_from_float_t from_float = ggml_get_type_traits_cpu(act.type)->from_float;
        const int64_t ncols = ne11 * ne12 * ne13;
        char * wdata = static_cast<char *>(params->wdata);
        GGML_ASSERT(params->wsize >= act.stride * ncols);
        // Activation row c is (i11, i12, i13) of src1 and writes the same (i1, i2, i3) of dst.
        auto row_offset = [&](int64_t c, size_t stride1, size_t stride2, size_t stride3) {
            return (c % ne11) * stride1 + (c / ne11 % ne12) * stride2 + (c / (ne11 * ne12)) * stride3;
        };

        for (int64_t c = params->ith; c < ncols; c += params->nth) {
            const char * x = static_cast<const char *>(src1->data) + row_offset(c, nb11, nb12, nb13);
            char * col = wdata + c * act.stride;
            from_float(reinterpret_cast<const float *>(x), col, ne10);
            sfmp_x8_prepare_activations(src0->type, col, ne10, reinterpret_cast<sfmp_x8_act *>(col + act.quantized));
        }
        ggml_barrier(params->threadpool);

        const int64_t ngroups = ne01 / SFMP_X8_ROWS;
        const int64_t per_thread = (ngroups + params->nth - 1) / params->nth;
        const int64_t first = std::min(ngroups, params->ith * per_thread);
        const int64_t last = std::min(ngroups, first + per_thread);
        for (int64_t g0 = first; g0 < last; g0 += GROUPS_PER_CHUNK) {
            const int64_t g1 = std::min(last, g0 + GROUPS_PER_CHUNK);
            for (int64_t c0 = 0; c0 < ncols; c0 += COLUMNS_PER_CALL) {
                const void * y[COLUMNS_PER_CALL];
                const sfmp_x8_act * acts[COLUMNS_PER_CALL];
                float * out[COLUMNS_PER_CALL];
                const int nc = (int) std::min<int64_t>(COLUMNS_PER_CALL, ncols - c0);
                for (int i = 0; i < nc; ++i) {
                    const int64_t c = c0 + i;
                    const char * col = wdata + c * act.stride;
                    y[i] = col;
                    acts[i] = reinterpret_cast<const sfmp_x8_act *>(col + act.quantized);
                    out[i] = reinterpret_cast<float *>(static_cast<char *>(dst->data) + row_offset(c, nb1, nb2, nb3));
                }
                sfmp_x8_mul_mat(src0->type, ne00, src0->data, g0, g1, nc, y, acts, out);
            }
        }
    }
};

x8_tensor_traits traits;

class x8_extra_buffer_type : public ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const ggml_tensor * op) override {
        const ggml_tensor * weights = op->src[0];
        const ggml_tensor * act = op->src[1];
        return op->op == GGML_OP_MUL_MAT && weights->buffer && weights->buffer->buft == sfmp_x8_buffer_type() &&
               interleavable(weights) && act->type == GGML_TYPE_F32 && act->nb[0] == sizeof(float) &&
               (!act->buffer || ggml_backend_buft_is_host(act->buffer->buft));
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT && op->src[0]->buffer && op->src[0]->buffer->buft == sfmp_x8_buffer_type()) {
            return static_cast<ggml::cpu::tensor_traits *>(op->src[0]->extra);
        }
        return nullptr;
    }
};

ggml_status init_tensor(ggml_backend_buffer_t, ggml_tensor * tensor) {
    tensor->extra = &traits;
    return GGML_STATUS_SUCCESS;
}

// The loader uploads one tensor at a time; large ones are interleaved by all cores.
void set_tensor(ggml_backend_buffer_t, ggml_tensor * tensor, const void * data, size_t offset, size_t size) {
    GGML_ASSERT(offset == 0 && size == ggml_nbytes(tensor));
    GGML_ASSERT(interleavable(tensor));
    const size_t group = sfmp_x8_group_size(tensor->type, tensor->ne[0]);
    const int64_t ngroups = tensor->ne[1] / SFMP_X8_ROWS;
    auto repack = [&](int64_t first, int64_t last) {
        for (int64_t g = first; g < last; ++g) {
            sfmp_x8_repack_group(tensor->type, static_cast<const char *>(data) + g * SFMP_X8_ROWS * tensor->nb[1],
                                 tensor->nb[1], static_cast<char *>(tensor->data) + g * group, tensor->ne[0]);
        }
    };
    constexpr int64_t MIN_WEIGHTS_PER_THREAD = 1 << 20;
    const int64_t by_size = ggml_nelements(tensor) / MIN_WEIGHTS_PER_THREAD;
    const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), by_size));
    std::vector<std::thread> workers;
    const int64_t per_thread = (ngroups + nthreads - 1) / nthreads;
    for (int64_t t = 1; t < nthreads; ++t) {
        workers.emplace_back(repack, std::min(ngroups, t * per_thread), std::min(ngroups, (t + 1) * per_thread));
    }
    repack(0, std::min(ngroups, per_thread));
    for (auto & worker : workers) {
        worker.join();
    }
}

const char * get_name(ggml_backend_buffer_type_t) {
    return "SFMP_X8";
}

ggml_backend_buffer_t alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer == nullptr) {
        return nullptr;
    }
    buffer->buft = buft;
    buffer->iface.init_tensor = init_tensor;
    buffer->iface.set_tensor = set_tensor;
    buffer->iface.get_tensor = nullptr;  // the file's layout is not kept
    buffer->iface.cpy_tensor = nullptr;
    return buffer;
}

size_t get_alignment(ggml_backend_buffer_type_t) {
    return TENSOR_ALIGNMENT;
}

// Interleaved codes are B + 1 bits wide for types with upgrades, so some tensors grow a little.
size_t get_alloc_size(ggml_backend_buffer_type_t, const ggml_tensor * tensor) {
    if (!interleavable(tensor)) {
        return ggml_nbytes(tensor);
    }
    return std::max(ggml_nbytes(tensor),
                    sfmp_x8_group_size(tensor->type, tensor->ne[0]) * (size_t) (tensor->ne[1] / SFMP_X8_ROWS));
}

}  // namespace

ggml_backend_buffer_type_t sfmp_x8_buffer_type(void) {
    static ggml_backend_buffer_type buffer_type = {
        /* .iface   = */ {
            /* .get_name       = */ get_name,
            /* .alloc_buffer   = */ alloc_buffer,
            /* .get_alignment  = */ get_alignment,
            /* .get_max_size   = */ nullptr,
            /* .get_alloc_size = */ get_alloc_size,
            /* .is_host        = */ nullptr,
        },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new x8_extra_buffer_type(),
    };
    return sfmp_x8_supported(GGML_TYPE_SFMP400_S) ? &buffer_type : nullptr;
}
