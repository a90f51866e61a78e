// The SFMP_X8 buffer type inside ggml's CPU backend: one MUL_MAT with the weights in the SFMP_X8
// buffer and the same MUL_MAT with the weights in the plain CPU buffer, on the same random data.
// With EXPERTS, USED and ACT_ROWS it is MUL_MAT_ID instead: EXPERTS matrices of ROWS rows, COLUMNS
// tokens each routed to USED distinct random experts, with ACT_ROWS (1: shared, or USED) activation
// rows per token. Both are also compared with the same op on the dequantized weights in F32, which
// multiplies the activations unquantized. Prints "<max |x8 - plain|> <max |plain|> <buffer name>
// <max |plain - f32|>"; a type the SFMP_X8 buffer does not take gives
// "nan <max |plain|> none <max |plain - f32|>". tests/test_llama_integration.py bounds the ratios.
// Usage: sfmp_x8_buffer_check TYPE_ID N_PER_ROW ROWS COLUMNS THREADS [EXPERTS USED ACT_ROWS]
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

ggml_backend_buffer_type_t sfmp_x8_buffer_type(void);

int main(int argc, char ** argv) {
    if (argc != 6 && argc != 9) {
        fprintf(stderr, "usage: %s TYPE_ID N_PER_ROW ROWS COLUMNS THREADS [EXPERTS USED ACT_ROWS]\n", argv[0]);
        return 2;
    }
    const auto type = (ggml_type) atoi(argv[1]);
    const int64_t n = atoll(argv[2]), rows = atoll(argv[3]), cols = atoll(argv[4]);
    const int threads = atoi(argv[5]);
    const bool moe = argc == 9;
    const int64_t experts = moe ? atoll(argv[6]) : 1, used = moe ? atoll(argv[7]) : 1, act_rows = moe ? atoll(argv[8]) : 1;
    if (!sfmp_x8_buffer_type()) {
        fprintf(stderr, "this build has no SFMP_X8 buffer type\n");
        return 1;
    }

    std::mt19937 rng(42);
    std::student_t_distribution<float> heavy(3.0f);
    std::vector<float> w(n * rows * experts), x(n * act_rows * cols);
    for (auto & v : w) v = 0.02f * heavy(rng);
    for (auto & v : x) v = heavy(rng);
    std::vector<uint8_t> q(ggml_row_size(type, n) * rows * experts);
    ggml_quantize_chunk(type, w.data(), q.data(), 0, rows * experts, n, nullptr);
    std::vector<int32_t> route(used * cols), order(experts);
    for (int64_t t = 0; t < cols; ++t) {
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        std::copy_n(order.begin(), used, route.begin() + t * used);
    }

    ggml_init_params params = {ggml_tensor_overhead() * 10 + ggml_graph_overhead(), nullptr, true};
    ggml_context * weights_x8 = ggml_init(params);
    ggml_context * weights_plain = ggml_init(params);
    ggml_context * graph_ctx = ggml_init(params);
    ggml_tensor * a_x8 = ggml_new_tensor_3d(weights_x8, type, n, rows, experts);
    ggml_tensor * a_plain = ggml_new_tensor_3d(weights_plain, type, n, rows, experts);
    ggml_tensor * a_f32 = ggml_new_tensor_3d(weights_plain, GGML_TYPE_F32, n, rows, experts);
    std::vector<float> dequantized(w.size());
    ggml_get_type_traits(type)->to_float(q.data(), dequantized.data(), (int64_t) w.size());
    ggml_tensor * b = moe ? ggml_new_tensor_3d(graph_ctx, GGML_TYPE_F32, n, act_rows, cols)
                          : ggml_new_tensor_2d(graph_ctx, GGML_TYPE_F32, n, cols);
    ggml_tensor * ids = ggml_new_tensor_2d(graph_ctx, GGML_TYPE_I32, used, cols);
    ggml_tensor * out_x8 = moe ? ggml_mul_mat_id(graph_ctx, a_x8, b, ids) : ggml_mul_mat(graph_ctx, a_x8, b);
    ggml_tensor * out_plain = moe ? ggml_mul_mat_id(graph_ctx, a_plain, b, ids) : ggml_mul_mat(graph_ctx, a_plain, b);
    ggml_tensor * out_f32 = moe ? ggml_mul_mat_id(graph_ctx, a_f32, b, ids) : ggml_mul_mat(graph_ctx, a_f32, b);

    ggml_backend_buffer_t buf_x8 = ggml_backend_alloc_ctx_tensors_from_buft(weights_x8, sfmp_x8_buffer_type());
    ggml_backend_buffer_t buf_plain = ggml_backend_alloc_ctx_tensors_from_buft(weights_plain, ggml_backend_cpu_buffer_type());
    ggml_backend_buffer_t buf_graph = ggml_backend_alloc_ctx_tensors_from_buft(graph_ctx, ggml_backend_cpu_buffer_type());
    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, threads);
    // What the model loader asks before it places weights in the buffer.
    const bool x8 = ggml_backend_supports_op(backend, out_x8);
    ggml_cgraph * graph = ggml_new_graph(graph_ctx);
    if (x8) {
        ggml_backend_tensor_set(a_x8, q.data(), 0, q.size());
        ggml_build_forward_expand(graph, out_x8);
    }
    ggml_build_forward_expand(graph, out_plain);
    ggml_build_forward_expand(graph, out_f32);
    ggml_backend_tensor_set(a_plain, q.data(), 0, q.size());
    ggml_backend_tensor_set(a_f32, dequantized.data(), 0, dequantized.size() * sizeof(float));
    ggml_backend_tensor_set(b, x.data(), 0, x.size() * sizeof(float));
    ggml_backend_tensor_set(ids, route.data(), 0, route.size() * sizeof(int32_t));

    if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        return 1;
    }
    std::vector<float> r_x8(ggml_nelements(out_x8)), r_plain(ggml_nelements(out_plain)), r_f32(ggml_nelements(out_f32));
    if (x8) {
        ggml_backend_tensor_get(out_x8, r_x8.data(), 0, r_x8.size() * sizeof(float));
    }
    ggml_backend_tensor_get(out_plain, r_plain.data(), 0, r_plain.size() * sizeof(float));
    ggml_backend_tensor_get(out_f32, r_f32.data(), 0, r_f32.size() * sizeof(float));
    double max_diff = x8 ? 0.0 : NAN, max_abs = 0.0, max_f32_diff = 0.0;
    for (size_t i = 0; i < r_plain.size(); ++i) {
        if (x8) {
            max_diff = std::max(max_diff, (double) std::fabs(r_x8[i] - r_plain[i]));
        }
        max_abs = std::max(max_abs, (double) std::fabs(r_plain[i]));
        max_f32_diff = std::max(max_f32_diff, (double) std::fabs(r_plain[i] - r_f32[i]));
    }
    printf("%.9g %.9g %s %.9g\n", max_diff, max_abs, x8 ? ggml_backend_buffer_name(buf_x8) : "none", max_f32_diff);

    ggml_backend_free(backend);
    for (auto * buf : {buf_x8, buf_plain, buf_graph}) ggml_backend_buffer_free(buf);
    for (auto * ctx : {weights_x8, weights_plain, graph_ctx}) ggml_free(ctx);
    return 0;
}
