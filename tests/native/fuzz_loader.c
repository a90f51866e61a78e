// The loader fuzz harness, built with AddressSanitizer and UndefinedBehaviorSanitizer. For every GGUF
// path read from stdin (one per line) it loads the model through llama.cpp's loader with tensor
// validation on (what --check-tensors does), and if the loader accepts it, runs one dequantization
// and one vec_dot over the first row of every SFMP tensor. Prints one line per file:
// "rejected", or "accepted" when every result was finite; exits 1 on a non-finite result, and the
// sanitizers abort on any memory error or undefined behaviour.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-cpu.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) level; (void) text; (void) user;
}

static int is_sfmp(enum ggml_type type) {
    return (int) type >= SFMP_FIRST_TYPE_ID && (int) type < SFMP_TYPE_ID_END;
}

// Dequantize and dot the first row of an SFMP tensor; 0 if every value is finite.
static int exercise(const struct ggml_tensor * t) {
    const int64_t n = t->ne[0];
    const struct ggml_type_traits_cpu * cpu = ggml_get_type_traits_cpu(t->type);
    float * row = malloc(sizeof(float) * (size_t) n);
    float * x = malloc(sizeof(float) * (size_t) n);
    void * act = malloc(ggml_row_size(cpu->vec_dot_type, n));
    for (int64_t i = 0; i < n; ++i) {
        x[i] = (float) ((i * 7919) % 201 - 100) / 100.0f;
    }
    ggml_get_type_traits(t->type)->to_float(t->data, row, n);
    ggml_get_type_traits_cpu(cpu->vec_dot_type)->from_float(x, act, n);
    float dot = 0.0f;
    cpu->vec_dot((int) n, &dot, 0, t->data, 0, act, 0, 1);
    int bad = !isfinite(dot);
    for (int64_t i = 0; i < n && !bad; ++i) {
        bad = !isfinite(row[i]);
    }
    if (bad) {
        fprintf(stderr, "%s: non-finite result from an accepted tensor\n", ggml_get_name(t));
    }
    free(row);
    free(x);
    free(act);
    return bad;
}

int main(void) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    ggml_cpu_init();
    char path[4096];
    while (fgets(path, sizeof(path), stdin)) {
        path[strcspn(path, "\n")] = 0;
        struct llama_model_params params = llama_model_default_params();
        params.check_tensors = true;
        struct llama_model * model = llama_model_load_from_file(path, params);
        if (!model) {
            printf("rejected\n");
            fflush(stdout);
            continue;
        }
        llama_model_free(model);
        struct ggml_context * ctx = NULL;
        struct gguf_init_params gparams = {false, &ctx};
        struct gguf_context * gguf = gguf_init_from_file(path, gparams);
        if (!gguf) {
            fprintf(stderr, "%s: llama.cpp accepted the file but gguf cannot read it again\n", path);
            return 1;
        }
        for (struct ggml_tensor * t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
            if (is_sfmp(t->type) && exercise(t)) {
                return 1;
            }
        }
        gguf_free(gguf);
        ggml_free(ctx);
        printf("accepted\n");
        fflush(stdout);
    }
    llama_backend_free();
    return 0;
}
