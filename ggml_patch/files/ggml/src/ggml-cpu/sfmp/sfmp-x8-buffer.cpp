// The SFMP_X8 buffer type: ggml's extra-buffer interface around sfmp-x8.c. The weights are
// interleaved once, when the model loader uploads them; MUL_MAT and MUL_MAT_ID (mixture-of-experts)
// quantize the activations (Q8_K or Q8_0, as the plain path does), then the threads share the row groups.
// Types with two-level activations (sfmp-quants.h) take them in the kernel's wide form, both levels
// in one pass (sfmp_x8_mul_mat_wide). With SFMP_ACTIVATIONS=8bit lo is all zeros, so they run the
// 8-bit kernel on hi alone.
#include "sfmp-x8-buffer.h"

#include "sfmp-x8.h"

#include "../../sfmp/sfmp-quants.h"
#define GGML_COMMON_DECL_CPP
#include "../../ggml-common.h"
#include "../../ggml-impl.h"
#include "../traits.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

// sfmp-quants.h mirrors ggml's activation blocks, as the standalone kernel library has no ggml headers.
static_assert(sizeof(sfmp_block_q8_K) == sizeof(block_q8_K) && offsetof(sfmp_block_q8_K, d) == offsetof(block_q8_K, d) &&
                  offsetof(sfmp_block_q8_K, qs) == offsetof(block_q8_K, qs) &&
                  offsetof(sfmp_block_q8_K, bsums) == offsetof(block_q8_K, bsums),
              "sfmp_block_q8_K differs from ggml's block_q8_K");
static_assert(sizeof(sfmp_block_q8_0) == sizeof(block_q8_0) && offsetof(sfmp_block_q8_0, d) == offsetof(block_q8_0, d) &&
                  offsetof(sfmp_block_q8_0, qs) == offsetof(block_q8_0, qs),
              "sfmp_block_q8_0 differs from ggml's block_q8_0");

namespace {

// Row groups per chunk: the chunk's weights stay in cache while every activation row passes.
constexpr int64_t GROUPS_PER_CHUNK = 16;
// Activation rows per kernel call: the kernel decodes each block once for up to 8 (fewer on some paths).
constexpr int64_t COLUMNS_PER_CALL = 8;

// Every ne1 rows (one matrix, or one expert of a 3-D tensor) split into whole row groups, so a group
// never crosses experts and expert e's groups follow those of expert e - 1.
bool interleavable(const ggml_tensor * t) {
    return sfmp_x8_supported(t->type) && ggml_is_contiguous(t) && t->ne[1] % SFMP_X8_ROWS == 0;
}

// Bytes of one matrix (one expert) once interleaved.
size_t matrix_bytes(const ggml_tensor * t) {
    return sfmp_x8_group_size(t->type, t->ne[0]) * (size_t) (t->ne[1] / SFMP_X8_ROWS);
}

// Per activation row in the work buffer: its Q8_K / Q8_0 blocks (or, with two-level activations, their
// wide form), then its prepared terms per 32 values.
struct activation_layout {
    ggml_type type;  // Q8_K or Q8_0: of the 8-bit blocks, or of each level
    bool      wide;
    size_t    block;  // bytes of one block (of one level)
    size_t    quantized;
    size_t    stride;
    size_t    total;  // every row of src1

    explicit activation_layout(const ggml_tensor * op)
        : type(ggml_blck_size(op->src[0]->type) == 256 ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0),
          wide(sfmp_fine_activations(op->src[0]->type) && sfmp_two_level_activations()),
          block(ggml_type_size(type)),
          quantized(GGML_PAD(wide ? SFMP_X8_WIDE_BYTES * (size_t) (op->src[1]->ne[0] / 32) : ggml_row_size(type, op->src[1]->ne[0]),
                             alignof(sfmp_x8_act))),
          stride(quantized + sizeof(sfmp_x8_act) * (op->src[1]->ne[0] / 32)),
          total(GGML_PAD(stride * ggml_nrows(op->src[1]), sizeof(float))) {}
};

// MUL_MAT_ID's work buffer after the activations: where each expert's rows start (n_expert + 1
// entries), then every (slot, token) of ids, sorted by expert. Bounded by the size of ids.
struct expert_row {
    int32_t slot, token;
};

size_t expert_lists_size(const ggml_tensor * op) {
    return sizeof(int32_t) * (op->src[0]->ne[2] + 1) + sizeof(expert_row) * ggml_nelements(op->src[2]);
}


// This thread's share [first, last) of n row groups.
std::pair<int64_t, int64_t> thread_share(int64_t n, const ggml_compute_params * params) {
    const int64_t per_thread = (n + params->nth - 1) / params->nth;
    const int64_t first = std::min(n, params->ith * per_thread);
    return {first, std::min(n, first + per_thread)};
}

// Quantize and prepare every row of src1 (rows shared out among the threads), then wait for all.
// Row c is (c % ne11, c / ne11 % ne12, c / (ne11 ne12)) of src1, at c * stride in the work buffer.
void prepare_activations(ggml_compute_params * params, const ggml_tensor * op, const activation_layout & act) {
    const ggml_tensor * src1 = op->src[1];
    const ggml_type weights = op->src[0]->type;
    const ggml_from_float_t from_float = ggml_get_type_traits_cpu(ggml_get_type_traits_cpu(weights)->vec_dot_type)->from_float;
    const int64_t ne10 = src1->ne[0], ne11 = src1->ne[1], ne12 = src1->ne[2];
    const int64_t bs = ggml_blck_size(act.type);
    for (int64_t c = params->ith; c < ggml_nrows(src1); c += params->nth) {
        const float * x = reinterpret_cast<const float *>(static_cast<const char *>(src1->data) + (c % ne11) * src1->nb[1] +
                                                          (c / ne11 % ne12) * src1->nb[2] + (c / (ne11 * ne12)) * src1->nb[3]);
        char * row = static_cast<char *>(params->wdata) + c * act.stride;
        auto * terms = reinterpret_cast<sfmp_x8_act *>(row + act.quantized);
        if (!sfmp_fine_activations(weights)) {
            from_float(x, row, ne10);
            sfmp_x8_prepare_activations(weights, row, ne10, terms);
        } else {  // each two-level block into its wide form, or its hi level alone when lo is all zeros
            alignas(sizeof(float)) char pair[2 * sizeof(sfmp_block_q8_K)];
            for (int64_t b = 0; b < ne10 / bs; ++b) {
                from_float(x + b * bs, pair, bs);
                if (act.wide) {
                    sfmp_x8_prepare_wide(weights, pair, bs, row + SFMP_X8_WIDE_BYTES * (bs / 32) * b, terms + bs / 32 * b);
                } else {
                    memcpy(row + b * act.block, pair, act.block);
                }
            }
            if (!act.wide) {
                sfmp_x8_prepare_activations(weights, row, ne10, terms);
            }
        }
    }
    ggml_barrier(params->threadpool);
}

// Row groups [first, last) of the interleaved matrix x8 against ncols prepared activation rows:
// column(i) gives the i-th one's index in the work buffer and the dst row it writes.
template <typename Column>
void mul_groups(const ggml_compute_params * params, const ggml_tensor * src0, const activation_layout & act,
                const void * x8, int64_t first, int64_t last, int64_t ncols, Column column) {
    const char * wdata = static_cast<const char *>(params->wdata);
    for (int64_t g0 = first; g0 < last; g0 += GROUPS_PER_CHUNK) {
        const int64_t g1 = std::min(last, g0 + GROUPS_PER_CHUNK);
        for (int64_t c0 = 0; c0 < ncols; c0 += COLUMNS_PER_CALL) {
            const void * y[COLUMNS_PER_CALL];
            const sfmp_x8_act * acts[COLUMNS_PER_CALL];
            float * out[COLUMNS_PER_CALL];
            const int nc = (int) std::min<int64_t>(COLUMNS_PER_CALL, ncols - c0);
            for (int i = 0; i < nc; ++i) {
                const auto [c, dst_row] = column(c0 + i);
                const char * row = wdata + c * act.stride;
                y[i] = row;
                acts[i] = reinterpret_cast<const sfmp_x8_act *>(row + act.quantized);
                out[i] = dst_row;
            }
            (act.wide ? sfmp_x8_mul_mat_wide : sfmp_x8_mul_mat)(src0->type, src0->ne[0], x8, g0, g1, nc, y, acts, out);
        }
    }
}

class x8_tensor_traits : public ggml::cpu::tensor_traits {
    bool work_size(int /* n_threads */, const ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT && op->op != GGML_OP_MUL_MAT_ID) {
            return false;
        }
        const activation_layout act(op);
        size = act.total + (op->op == GGML_OP_MUL_MAT_ID ? expert_lists_size(op) : 0);
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT) {
            mul_mat(params, op);
            return true;
        }
        if (op->op == GGML_OP_MUL_MAT_ID) {
            mul_mat_id(params, op);
            return true;
        }
        return false;
    }

    static void mul_mat(ggml_compute_params * params, ggml_tensor * dst) {
        const ggml_tensor * src0 = dst->src[0];
        const ggml_tensor * src1 = dst->src[1];
        GGML_TENSOR_BINARY_OP_LOCALS
        GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13 && nb0 == sizeof(float));

        const activation_layout act(dst);
        GGML_ASSERT(params->wsize >= act.total);
        prepare_activations(params, dst, act);

        // Activation row c writes the same (i1, i2, i3) of dst as it has in src1.
        const auto [first, last] = thread_share(ne01 / SFMP_X8_ROWS, params);
        mul_groups(params, src0, act, src0->data, first, last, ggml_nrows(src1), [&](int64_t c) {
            char * d = static_cast<char *>(dst->data) + (c % ne11) * nb1 + (c / ne11 % ne12) * nb2 + (c / (ne11 * ne12)) * nb3;
            return std::make_pair(c, reinterpret_cast<float *>(d));
        });
    }

    // dst[:, slot, token] = expert ids[slot, token] times src1 row (slot % ne11, token): the
    // activations are quantized once, each expert's rows are gathered, then the threads share each
    // used expert's row groups, so its weights are read once for all of its tokens.
    static void mul_mat_id(ggml_compute_params * params, ggml_tensor * dst) {
        const ggml_tensor * src0 = dst->src[0];
        const ggml_tensor * src1 = dst->src[1];
        const ggml_tensor * ids = dst->src[2];
        GGML_TENSOR_BINARY_OP_LOCALS
        const int64_t n_expert = ne02, n_used = ids->ne[0], n_tokens = ids->ne[1];
        GGML_ASSERT(ne0 == ne01 && ne1 == n_used && ne2 == n_tokens && ne12 == n_tokens && ne3 == 1 && ne13 == 1);
        GGML_ASSERT(nb0 == sizeof(float) && n_used % ne11 == 0);

        const activation_layout act(dst);
        GGML_ASSERT(params->wsize >= act.total + expert_lists_size(dst));
        int32_t * start = reinterpret_cast<int32_t *>(static_cast<char *>(params->wdata) + act.total);
        expert_row * rows = reinterpret_cast<expert_row *>(start + n_expert + 1);
        auto expert_of = [&](int64_t slot, int64_t token) {
            const int32_t e = *reinterpret_cast<const int32_t *>(static_cast<const char *>(ids->data) +
                                                                 token * ids->nb[1] + slot * ids->nb[0]);
            GGML_ASSERT(e >= 0 && e < n_expert);
            return e;
        };
        if (params->ith == 0) {
            // Counting sort: start[e] ends as the count of experts <= e, then filling backwards
            // moves it down to expert e's first row while keeping the rows in (token, slot) order.
            std::fill(start, start + n_expert + 1, 0);
            for (int64_t token = 0; token < n_tokens; ++token) {
                for (int64_t slot = 0; slot < n_used; ++slot) {
                    ++start[expert_of(slot, token)];
                }
            }
            std::partial_sum(start, start + n_expert, start);
            start[n_expert] = (int32_t) (n_used * n_tokens);
            for (int64_t token = n_tokens - 1; token >= 0; --token) {
                for (int64_t slot = n_used - 1; slot >= 0; --slot) {
                    rows[--start[expert_of(slot, token)]] = {(int32_t) slot, (int32_t) token};
                }
            }
        }
        prepare_activations(params, dst, act);  // its barrier also publishes the lists

        const auto [first, last] = thread_share(ne01 / SFMP_X8_ROWS, params);
        for (int64_t e = 0; e < n_expert; ++e) {
            const expert_row * expert_rows = rows + start[e];
            const char * x8 = static_cast<const char *>(src0->data) + e * matrix_bytes(src0);
            mul_groups(params, src0, act, x8, first, last, start[e + 1] - start[e], [&](int64_t i) {
                const expert_row r = expert_rows[i];
                char * d = static_cast<char *>(dst->data) + r.slot * nb1 + r.token * nb2;
                return std::make_pair(r.slot % ne11 + r.token * ne11, reinterpret_cast<float *>(d));
            });
        }
    }
};

x8_tensor_traits traits;

class x8_extra_buffer_type : public ggml::cpu::extra_buffer_type {
    // MUL_MAT takes one matrix; MUL_MAT_ID one per expert (ggml keeps its weights 3-D).
    bool supports_op(ggml_backend_dev_t, const ggml_tensor * op) override {
        const ggml_tensor * weights = op->src[0];
        const ggml_tensor * act = op->src[1];
        const bool shape_ok = op->op == GGML_OP_MUL_MAT    ? weights->ne[2] == 1 && weights->ne[3] == 1 :
                              op->op == GGML_OP_MUL_MAT_ID ? weights->ne[3] == 1 :
                                                             false;
        return shape_ok && weights->buffer && weights->buffer->buft == sfmp_x8_buffer_type() &&
               interleavable(weights) && act->type == GGML_TYPE_F32 && act->nb[0] == sizeof(float) &&
               (!act->buffer || ggml_backend_buft_is_host(act->buffer->buft));
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const ggml_tensor * op) override {
        if ((op->op == GGML_OP_MUL_MAT || op->op == GGML_OP_MUL_MAT_ID) && op->src[0]->buffer &&
            op->src[0]->buffer->buft == sfmp_x8_buffer_type()) {
            return static_cast<ggml::cpu::tensor_traits *>(op->src[0]->extra);
        }
        return nullptr;
    }
};

ggml_status init_tensor(ggml_backend_buffer_t, ggml_tensor * tensor) {
    tensor->extra = &traits;
    return GGML_STATUS_SUCCESS;
}

// The loader uploads one tensor at a time; large ones are interleaved by all cores. The row groups
// of all experts are consecutive, in the file as in the buffer (interleavable).
void set_tensor(ggml_backend_buffer_t, ggml_tensor * tensor, const void * data, size_t offset, size_t size) {
    GGML_ASSERT(offset == 0 && size == ggml_nbytes(tensor));
    GGML_ASSERT(interleavable(tensor));
    const size_t group = sfmp_x8_group_size(tensor->type, tensor->ne[0]);
    const int64_t ngroups = ggml_nrows(tensor) / SFMP_X8_ROWS;
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

// Types whose codes sfmp-x8.c widens (B = 3 with upgrades; without VNNI also B = 5 and 7) grow a little.
size_t get_alloc_size(ggml_backend_buffer_type_t, const ggml_tensor * tensor) {
    if (!interleavable(tensor)) {
        return ggml_nbytes(tensor);
    }
    return std::max(ggml_nbytes(tensor), matrix_bytes(tensor) * (size_t) (tensor->ne[2] * tensor->ne[3]));
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
