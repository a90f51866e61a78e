// The converter's sensitivity analysis (sfmp_gguf/analysis.py is its specification and test oracle).
// Built only into the standalone kernel library the converter loads through cffi, not into ggml.
//
// Every per-weight operation is numpy's float32 one, in numpy's order, and each sub-block's sum is
// numpy's float64 pairwise sum of 32 terms (eight running sums, then added in pairs), so the
// sub-block errors equal analysis.sub_block_errors bit for bit.
#include "sfmp-quants.h"

#include <math.h>
#include <string.h>

#define SFMP_UNIFORM_COLUMNS (SFMP_MAX_BITS - SFMP_MIN_BITS + 1)
#define SFMP_ANALYSIS_COLUMNS (SFMP_UNIFORM_COLUMNS + SFMP_NL_MAX_BITS - SFMP_MIN_BITS + 1)

typedef struct {
    double range_to_rms;   // sum over sub-blocks of max|w| / rms(w) (0 where rms is 0)
    double variance;       // sum over sub-blocks of their variance
    double mean_square;    // sum over sub-blocks of their mean w^2
    double energy;         // sum of h * w^2
} sfmp_analysis_moments;

int sfmp_analysis_columns(void) {
    return SFMP_ANALYSIS_COLUMNS;
}

// numpy's sum of 32 float32 terms in float64.
static double pairwise_sum32(const float * t) {
    double r[8];
    for (int j = 0; j < 8; ++j) {
        r[j] = (double) t[j];
    }
    for (int i = 8; i < SFMP_SUB_BLOCK; i += 8) {
        for (int j = 0; j < 8; ++j) {
            r[j] += (double) t[i + j];
        }
    }
    return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
}

// sum(h * diff * diff), or sum(diff * diff) without importance.
static double weighted_square_sum(const float * x, const float * value, const float * h) {
    float t[SFMP_SUB_BLOCK];
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        const float diff = x[i] - value[i];
        t[i] = h ? (h[i] * diff) * diff : diff * diff;
    }
    return pairwise_sum32(t);
}

// Nonlinear levels as analysis._rounded scales them: L / L[top] in float32, and the midpoints.
typedef struct {
    int count;
    float level[16];
    float mid[15];
} nl_grid;

static void nl_grid_of(int bits, nl_grid * g) {
    const int8_t * L = sfmp_nl_levels[bits];
    g->count = 1 << bits;
    for (int k = 0; k < g->count; ++k) {
        g->level[k] = (float) L[k] / (float) L[g->count - 1];
    }
    for (int k = 0; k + 1 < g->count; ++k) {
        g->mid[k] = (g->level[k + 1] + g->level[k]) / 2.0f;
    }
}

static void sub_block_columns(const float * src, const float * h, const nl_grid * nl, double * out,
                              sfmp_analysis_moments * m) {
    float x[SFMP_SUB_BLOCK];  // a local copy, which the compiler vectorises over
    memcpy(x, src, sizeof(x));
    float amax = 0.0f;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float safe = amax > 0.0f ? amax : 1.0f;
    float value[SFMP_SUB_BLOCK];
    for (int b = SFMP_MIN_BITS; b <= SFMP_MAX_BITS; ++b) {
        const float half = (float) (1 << (b - 1));
        const float step = safe / half;
        const float top = 2.0f * half - 1.0f;
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            float q = floorf(x[i] / step + half);
            q = q < 0.0f ? 0.0f : q;
            q = q > top ? top : q;
            value[i] = ((q + 0.5f) - half) * step;
        }
        *out++ = weighted_square_sum(x, value, h);
    }
    for (int b = SFMP_MIN_BITS; b <= SFMP_NL_MAX_BITS; ++b) {
        const nl_grid * g = &nl[b];
        float ratio[SFMP_SUB_BLOCK], level[SFMP_SUB_BLOCK];
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            ratio[i] = x[i] / safe;
            level[i] = g->level[0];
        }
        for (int k = 0; k + 1 < g->count; ++k) {  // numpy's searchsorted, side "left": the last midpoint below
            const float mid = g->mid[k], above = g->level[k + 1];
            for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
                level[i] = mid < ratio[i] ? above : level[i];
            }
        }
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            value[i] = safe * level[i];
        }
        *out++ = weighted_square_sum(x, value, h);
    }

    // Four running sums each (the moments feed the report and the error scale, not the bytes).
    double sums[3][4] = {{0}};
    for (int i = 0; i < SFMP_SUB_BLOCK; i += 4) {
        for (int l = 0; l < 4; ++l) {
            const double v = (double) x[i + l], sq = v * v;
            sums[0][l] += v;
            sums[1][l] += sq;
            sums[2][l] += h ? (double) h[i + l] * sq : sq;
        }
    }
    const double sum = (sums[0][0] + sums[0][1]) + (sums[0][2] + sums[0][3]);
    const double sum_sq = (sums[1][0] + sums[1][1]) + (sums[1][2] + sums[1][3]);
    const double energy = (sums[2][0] + sums[2][1]) + (sums[2][2] + sums[2][3]);
    const double mean = sum / SFMP_SUB_BLOCK, mean_square = sum_sq / SFMP_SUB_BLOCK;
    const double rms = sqrt(mean_square);
    m->range_to_rms += rms > 0.0 ? (double) amax / rms : 0.0;
    m->variance += fmax(mean_square - mean * mean, 0.0);
    m->mean_square += mean_square;
    m->energy += energy;
}

// Rows [0, rows) of a (rows, n) matrix: the importance-weighted squared rounding error of each
// sub-block at every analysis column (analysis.COLUMNS), into errors[sub-block][column], and the
// moments added into *moments. h: NULL, or importance whose row r starts at h + r * h_row_stride
// (stride 0: one row of per-column importance for all rows).
void sfmp_analysis_sub_blocks(const float * w, int64_t rows, int64_t n, const float * h, int64_t h_row_stride,
                              double * errors, sfmp_analysis_moments * moments) {
    nl_grid nl[SFMP_NL_MAX_BITS + 1];
    for (int b = SFMP_MIN_BITS; b <= SFMP_NL_MAX_BITS; ++b) {
        nl_grid_of(b, &nl[b]);
    }
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; j += SFMP_SUB_BLOCK) {
            sub_block_columns(w + r * n + j, h ? h + r * h_row_stride + j : NULL, nl, errors, moments);
            errors += SFMP_ANALYSIS_COLUMNS;
        }
    }
}

// Each type's expected error over n_blocks blocks of n_sub sub-blocks, added into totals[type]: the
// sum of every sub-block's error at the base column, less each block's `upgrades` largest gains
// from base to next column. types: (base column, next column, upgrades) per type.
void sfmp_analysis_type_errors(const double * errors, int64_t n_blocks, int n_sub, int n_types,
                               const int32_t * types, double * totals) {
    for (int t = 0; t < n_types; ++t) {
        const int base = types[3 * t], next = types[3 * t + 1], upgrades = types[3 * t + 2];
        double total = 0.0;
        for (int64_t blk = 0; blk < n_blocks; ++blk) {
            const double * e = errors + blk * n_sub * SFMP_ANALYSIS_COLUMNS;
            double gain[32];
            for (int j = 0; j < n_sub; ++j) {
                total += e[j * SFMP_ANALYSIS_COLUMNS + base];
                gain[j] = upgrades ? e[j * SFMP_ANALYSIS_COLUMNS + base] - e[j * SFMP_ANALYSIS_COLUMNS + next] : 0.0;
            }
            for (int u = 0; u < upgrades; ++u) {  // take the largest remaining gain, u times
                int pick = u;
                for (int j = u + 1; j < n_sub; ++j) {
                    pick = gain[j] > gain[pick] ? j : pick;
                }
                total -= gain[pick];
                gain[pick] = gain[u];
            }
        }
        totals[t] += total;
    }
}

// How many of the n values lie beyond the threshold in magnitude (the report's outlier share).
int64_t sfmp_count_beyond(const float * w, int64_t n, float threshold) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
        count += fabsf(w[i]) > threshold;
    }
    return count;
}
