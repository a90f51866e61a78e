#include "sfmp-cpu.h"

#include "../../sfmp/sfmp-quants.h"

const char * sfmp_cpu_path(void) {
    return "generic";
}

void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy) {
    sfmp_vec_dot_generic(type, n, s, vx, vy);
}

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize)                                 \
    void sfmp_cpu_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,  \
                                  const void * vy, size_t by, int nrc) {                     \
        (void) bs_; (void) bx; (void) by; (void) nrc;                                        \
        sfmp_cpu_vec_dot(id, n, s, vx, vy);                                                  \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
