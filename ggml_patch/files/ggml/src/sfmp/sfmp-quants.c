// Reference (scalar) SFMP kernels: quantize, dequantize, validate, dot product.
// Built with -ffp-contract=off: quantization must round exactly as the numpy reference does.
#include "sfmp-quants.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define SFMP_N_CANDIDATES 12
#define SFMP_SHRINK_STEP 0.05
#define SFMP_FP16_MAX 65504.0f

static const sfmp_layout SFMP_LAYOUTS[] = {
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid) SFMP_LAYOUT(bs, nsub, budget, tsize, grid),
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
};

const int8_t sfmp_nl_levels[SFMP_NL_MAX_BITS + 1][16] = {{0}, {0}, SFMP_NL_LEVELS_2, SFMP_NL_LEVELS_3, SFMP_NL_LEVELS_4};

const uint8_t sfmp_nl_biased[SFMP_NL_MAX_BITS + 1][16] = {{0}, {0}, SFMP_NL_BIASED_2, SFMP_NL_BIASED_3, SFMP_NL_BIASED_4};
const uint8_t sfmp_nl_spread[SFMP_NL_MAX_BITS][16] = {{0}, {0}, SFMP_NL_SPREAD_2, SFMP_NL_SPREAD_3};

int32_t sfmp_format_version(void) {
    return SFMP_FORMAT_VERSION;
}

int sfmp_type_from_file(int file_type, int64_t format_version) {
#define SFMP_LEGACY_IDS(version, first, count)                                    \
    if (format_version == (version) && file_type >= (first) && file_type < (first) + (count)) { \
        return file_type - (first) + SFMP_FIRST_TYPE_ID;                          \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_LEGACY_IDS
    return file_type;
}

bool sfmp_is_type(int type) {
    return type >= SFMP_FIRST_TYPE_ID && type < SFMP_TYPE_ID_END;
}

const sfmp_layout * sfmp_get_layout(int type) {
    return sfmp_is_type(type) ? &SFMP_LAYOUTS[type - SFMP_FIRST_TYPE_ID] : NULL;
}

// ---- fp16, round to nearest even (our own, so both builds round identically) -------------------

uint16_t sfmp_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {
        return (uint16_t) (sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    }
    if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow
        return (uint16_t) (sign | 0x7c00u);
    }
    if (abs < 0x38800000u) {   // subnormal or zero in fp16
        if (abs < 0x33000000u) {
            return (uint16_t) sign;
        }
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int) (abs >> 23);  // 14..24
        const uint32_t base = mant >> shift;
        const uint32_t rest = mant & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        const uint32_t rounded = base + (rest > halfway || (rest == halfway && (base & 1u)));
        return (uint16_t) (sign | rounded);
    }
    const uint32_t base = (abs - 0x38000000u) >> 13;
    const uint32_t rest = abs & 0x1fffu;
    const uint32_t rounded = base + (rest > 0x1000u || (rest == 0x1000u && (base & 1u)));
    return (uint16_t) (sign | rounded);
}

float sfmp_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0x1f) {
        x = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        const float v = (float) mant * 0x1p-24f;
        return sign ? -v : v;
    } else {
        x = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, sizeof(f));
    return f;
}

// ---- code pieces ----------------------------------------------------------------------------

// The widths of a code's pieces, most significant first (sfmp_piece_count).
static int piece_widths(int bits, int widths[3]) {
    int n = 0;
    for (int w = 4; w >= 1; w /= 2) {
        for (int c = 0; c < sfmp_piece_count(bits, w); ++c) {
            widths[n++] = w;
        }
    }
    return n;
}

// A piece of width w spanning n weights takes n*w/8 bytes: weight i sits in byte i % span at bit
// w * (i / span). Codes of `bits` bits for `n` weights occupy n * bits / 8 bytes from `out`.
static void pack_pieces(const int * q, int n, int bits, uint8_t * out) {
    int widths[3];
    const int np = piece_widths(bits, widths);
    int shift = bits;
    for (int p = 0; p < np; ++p) {
        const int w = widths[p], span = n * w / 8;
        shift -= w;
        memset(out, 0, (size_t) span);
        for (int i = 0; i < n; ++i) {
            out[i % span] |= (uint8_t) (((q[i] >> shift) & ((1 << w) - 1)) << (w * (i / span)));
        }
        out += span;
    }
}

// Codes of weights [first, first + count) of a piece group packed over `n` weights.
static void unpack_pieces(const uint8_t * in, int n, int bits, int first, int count, int * q) {
    int widths[3];
    const int np = piece_widths(bits, widths);
    for (int i = 0; i < count; ++i) {
        q[i] = 0;
    }
    for (int p = 0; p < np; ++p) {
        const int w = widths[p], span = n * w / 8;
        for (int i = 0; i < count; ++i) {
            const int k = first + i;
            q[i] = (q[i] << w) | ((in[k % span] >> (w * (k / span))) & ((1 << w) - 1));
        }
        in += span;
    }
}

// Sub-block j's codes and precision, as sfmp_gguf/quant/reference.py decodes them.
static int sub_block_codes(const sfmp_layout * L, const uint8_t * block, uint32_t upgraded, int j,
                           int q[SFMP_SUB_BLOCK]) {
    unpack_pieces(block + SFMP_CODE_OFFSET(L->block_size, L->n_sub, 0), L->block_size, L->base_bits, SFMP_SUB_BLOCK * j, SFMP_SUB_BLOCK, q);
    if (!(upgraded >> j & 1)) {
        return L->base_bits;
    }
    int e[SFMP_SUB_BLOCK];
    const int rank = sfmp_popcount(upgraded & ((1u << j) - 1));
    unpack_pieces(block + SFMP_EXTRA_OFFSET(L->block_size, L->n_sub, L->base_bits, rank), SFMP_SUB_BLOCK, 1, 0, SFMP_SUB_BLOCK, e);
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        q[i] = 2 * q[i] + e[i];
    }
    return L->base_bits + 1;
}

// ---- quantization ---------------------------------------------------------------------------

// One precision of one grid, as the quantizer sees it: a weight x is coded as value(q) * step, with
// step = amplitude / div (uniform: values q + 1/2 - 2^(b-1) over div = 2^(b-1); nonlinear: values
// L[q] over div = 64). reference.py spells out the same operations.
//
// A nonlinear code is the number of midpoints of neighbouring levels that t = x / step reaches. The
// midpoints are integers or halves, so t >= mid exactly when floor(2t) >= 2 mid: the code is a table
// lookup at floor(2t), clamped to the table (|2 mid| < 128).
#define SFMP_NL_TABLE 256
typedef struct {
    bool nonlinear;
    int bits;
    double half;  // 2^(bits-1)
    double div;
    uint8_t nl_code[SFMP_NL_TABLE];  // at floor(2t) + 128
    double nl_value[SFMP_NL_TABLE];  // L[code]
} grid_levels;

static void levels_of(const sfmp_layout * L, int bits, grid_levels * g) {
    g->nonlinear = L->grid == SFMP_GRID_NONLINEAR;
    g->bits = bits;
    g->half = (double) (1 << (bits - 1));
    g->div = g->nonlinear ? SFMP_NL_UNIT : g->half;
    if (!g->nonlinear) {
        return;
    }
    const int8_t * levels = sfmp_nl_levels[bits];
    for (int i = 0; i < SFMP_NL_TABLE; ++i) {
        int q = 0;
        for (int k = 0; k + 1 < (1 << bits); ++k) {
            q += i - SFMP_NL_TABLE / 2 >= levels[k] + levels[k + 1];
        }
        g->nl_code[i] = (uint8_t) q;
        g->nl_value[i] = (double) levels[q];
    }
}

// floor(2t) + 128 clamped to the table; NaN takes the lowest level, as no midpoint compares true.
static int nl_index(double t) {
    const double twice = 2.0 * t;
    if (!(twice >= -SFMP_NL_TABLE / 2)) {
        return 0;
    }
    return twice >= SFMP_NL_TABLE / 2 - 1 ? SFMP_NL_TABLE - 1 : (int) floor(twice) + SFMP_NL_TABLE / 2;
}

// Nearest level. Uniform: floor(x / step + half), clamped. Nonlinear: t = x / step against the
// midpoints of neighbouring levels (exact halves), ties upwards as floor does.
static int level_code(const grid_levels * g, double x, double step) {
    if (g->nonlinear) {
        return g->nl_code[nl_index(x / step)];
    }
    double q = floor(x / step + g->half);
    if (q < 0.0) {
        q = 0.0;
    }
    if (q > 2.0 * g->half - 1.0) {
        q = 2.0 * g->half - 1.0;
    }
    return (int) q;
}

static double level_value(const grid_levels * g, int q) {
    return g->nonlinear ? (double) sfmp_nl_levels[g->bits][q] : (double) q + 0.5 - g->half;
}

static double sub_block_error(const grid_levels * g, const double * x, const double * w, double step) {
    double err = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        const double diff = x[i] - level_value(g, level_code(g, x[i], step)) * step;
        err += w[i] * (diff * diff);
    }
    return err;
}

// The amplitude search evaluates its candidates side by side, one per lane, so each operation below
// is the scalar one (level_code, level_value, sub_block_error) applied lane by lane, with the same
// rounding; every lane adds its weights left to right, as the reference does.
#define SFMP_LANES 4  // a multiple of it is evaluated at once
#if defined(__GNUC__)
typedef double sfmp_vd __attribute__((vector_size(SFMP_LANES * sizeof(double))));
typedef int64_t sfmp_vi __attribute__((vector_size(SFMP_LANES * sizeof(double))));

static inline sfmp_vd lanes_select(sfmp_vi mask, sfmp_vd yes, sfmp_vd no) {
    return (sfmp_vd) (((sfmp_vi) yes & mask) | ((sfmp_vi) no & ~mask));
}

// floor(v) for |v| < 2^51: the instruction where there is one, else round to nearest through the
// 1.5 * 2^52 shift and step down if above.
static inline sfmp_vd lanes_floor(sfmp_vd v) {
#if defined(__AVX__)
    return (sfmp_vd) _mm256_floor_pd((__m256d) v);
#else
    const sfmp_vd shift = (sfmp_vd) {0} + 6755399441055744.0;
    const sfmp_vd nearest = (v + shift) - shift;
    return lanes_select(nearest > v, nearest - 1.0, nearest);
#endif
}

// v clamped to [low, high]; a NaN stays NaN, as it does through the scalar comparisons.
static inline sfmp_vd lanes_clamp(sfmp_vd v, double low, double high) {
#if defined(__AVX__)
    return (sfmp_vd) _mm256_min_pd(_mm256_set1_pd(high), _mm256_max_pd(_mm256_set1_pd(low), (__m256d) v));
#else
    v = lanes_select(v < low, (sfmp_vd) {0} + low, v);
    return lanes_select(v > high, (sfmp_vd) {0} + high, v);
#endif
}

// The value of x's nearest level at each lane's step: floor(x / step + half) clamped to the codes (as
// a clamp of the argument, which floors to the same code), or, nonlinear, the table at nl_index.
static inline sfmp_vd lanes_value(const grid_levels * g, double x, sfmp_vd step) {
    if (g->nonlinear) {
        const sfmp_vd low = (sfmp_vd) {0} - SFMP_NL_TABLE / 2, high = (sfmp_vd) {0} + (SFMP_NL_TABLE / 2 - 1);
        sfmp_vd twice = 2.0 * (x / step);
        twice = lanes_select(twice >= low, twice, low);  // NaN: the lowest level
        twice = lanes_select(twice >= high, high, twice);
        const sfmp_vd index = lanes_floor(twice) + SFMP_NL_TABLE / 2;
#if defined(__AVX2__)
        return (sfmp_vd) _mm256_i32gather_pd(g->nl_value, _mm256_cvtpd_epi32((__m256d) index), 8);
#else
        sfmp_vd v;
        for (int k = 0; k < SFMP_LANES; ++k) {
            v[k] = g->nl_value[(int) index[k]];
        }
        return v;
#endif
    }
    // q + 0.5 - half is exact in any order (small integers and halves): one addition
    return lanes_floor(lanes_clamp(x / step + g->half, 0.0, 2.0 * g->half - 1.0)) + (0.5 - g->half);
}

// Weighted squared error at each candidate step and, where num is given, the sums of the weighted
// least-squares refit.
static void candidate_sums(const grid_levels * g, const double * x, const double * w, const double * step,
                           int count, double * err, double * num, double * den) {
    for (int k = 0; k < count; k += SFMP_LANES) {
        sfmp_vd s, e = {0}, nu = {0}, de = {0};
        memcpy(&s, step + k, sizeof(s));
        if (num) {
            for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
                const sfmp_vd u = lanes_value(g, x[i], s);
                const sfmp_vd diff = x[i] - u * s;
                e += w[i] * (diff * diff);
                nu += (w[i] * x[i]) * u;
                de += (w[i] * u) * u;
            }
            memcpy(num + k, &nu, sizeof(nu));
            memcpy(den + k, &de, sizeof(de));
        } else {
            for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
                const sfmp_vd diff = x[i] - lanes_value(g, x[i], s) * s;
                e += w[i] * (diff * diff);
            }
        }
        memcpy(err + k, &e, sizeof(e));
    }
}
#else
static void candidate_sums(const grid_levels * g, const double * x, const double * w, const double * step,
                           int count, double * err, double * num, double * den) {
    for (int k = 0; k < count; ++k) {
        err[k] = sub_block_error(g, x, w, step[k]);
        if (num) {
            num[k] = den[k] = 0.0;
            for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
                const double u = level_value(g, level_code(g, x[i], step[k]));
                num[k] += (w[i] * x[i]) * u;
                den[k] += (w[i] * u) * u;
            }
        }
    }
}
#endif

// Best amplitude for one sub-block at one precision; see reference.py::_search_amplitudes. The
// candidates are A_0, refit(A_0), A_1, refit(A_1), ...; the first minimum wins.
static void fit_sub_block(const grid_levels * g, const double * x, const double * w, double * amp_out,
                          double * err_out) {
    double amax = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        amax = fmax(amax, fabs(x[i]));
    }
    if (amax == 0.0) {
        *amp_out = 0.0;
        *err_out = 0.0;
        return;
    }
    const double a0 = amax / (level_value(g, (1 << g->bits) - 1) / g->div);  // the largest |x| on the top level
    double amp[SFMP_N_CANDIDATES], step[SFMP_N_CANDIDATES], err[SFMP_N_CANDIDATES];
    double num[SFMP_N_CANDIDATES], den[SFMP_N_CANDIDATES];
    for (int k = 0; k < SFMP_N_CANDIDATES; ++k) {
        amp[k] = a0 * (1.0 - SFMP_SHRINK_STEP * (double) k);
        step[k] = amp[k] / g->div;
    }
    candidate_sums(g, x, w, step, SFMP_N_CANDIDATES, err, num, den);
    double refit[SFMP_N_CANDIDATES], refit_step[SFMP_N_CANDIDATES], refit_err[SFMP_N_CANDIDATES];
    for (int k = 0; k < SFMP_N_CANDIDATES; ++k) {
        refit[k] = den[k] > 0.0 && num[k] > 0.0 ? num[k] / den[k] * g->div : amp[k];
        refit_step[k] = refit[k] / g->div;
    }
    candidate_sums(g, x, w, refit_step, SFMP_N_CANDIDATES, refit_err, NULL, NULL);
    double best_amp = 0.0, best_err = INFINITY;
    for (int k = 0; k < SFMP_N_CANDIDATES; ++k) {
        if (err[k] < best_err) {
            best_err = err[k];
            best_amp = amp[k];
        }
        if (den[k] > 0.0 && num[k] > 0.0 && refit_err[k] < best_err) {
            best_err = refit_err[k];
            best_amp = refit[k];
        }
    }
    *amp_out = best_amp;
    *err_out = best_err;
}

// Weighted errors of a sub-block at two stored amplitudes; zero amplitude decodes to zeros.
static void final_errors(const grid_levels * g, const double * x, const double * w, const double amp[2],
                         double err[2]) {
    double step[SFMP_LANES], lane_err[SFMP_LANES];
    for (int k = 0; k < SFMP_LANES; ++k) {
        step[k] = amp[k % 2] > 0.0 ? amp[k % 2] / g->div : 1.0;
    }
    candidate_sums(g, x, w, step, SFMP_LANES, lane_err, NULL, NULL);
    double zero_err = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        zero_err += w[i] * (x[i] * x[i]);
    }
    for (int k = 0; k < 2; ++k) {
        err[k] = amp[k] > 0.0 ? lane_err[k] : zero_err;
    }
}

static int final_code(const grid_levels * g, double x, double amp) {
    return amp > 0.0 ? level_code(g, x, amp / g->div) : (int) g->half;
}

#define SFMP_MAX_SUB 8

// levels: the grid at B and at B + 1 bits.
static void quantize_block(const sfmp_layout * L, const grid_levels levels[2], const float * xf, const float * qw,
                           uint8_t * out) {
    const int n = L->block_size, B = L->base_bits;
    double x[256], w[256];
    double sum_x2 = 0.0;
    for (int i = 0; i < n; ++i) {
        x[i] = (double) xf[i];
        sum_x2 += x[i] * x[i];
    }
    const double sigma2 = 2.0 * sum_x2 / (double) n;
    for (int i = 0; i < n; ++i) {
        w[i] = (qw ? (double) qw[i] : 1.0) * sqrt(sigma2 + x[i] * x[i]);
    }

    // Amplitude and error of each sub-block at B and, for types with upgrades, B + 1 bits.
    double amp[SFMP_MAX_SUB][2], err[SFMP_MAX_SUB][2];
    for (int j = 0; j < L->n_sub; ++j) {
        for (int k = 0; k < (L->upgrades ? 2 : 1); ++k) {
            fit_sub_block(&levels[k], x + SFMP_SUB_BLOCK * j, w + SFMP_SUB_BLOCK * j, &amp[j][k], &err[j][k]);
        }
    }
    // Upgrade the sub-blocks whose error drops most; ties go to the lower index.
    uint32_t upgraded = 0;
    for (int u = 0; u < L->upgrades; ++u) {
        int pick = -1;
        double best_gain = 0.0;
        for (int j = 0; j < L->n_sub; ++j) {
            const double gain = err[j][0] - err[j][1];
            if (!(upgraded >> j & 1) && (pick < 0 || gain > best_gain)) {
                best_gain = gain;
                pick = j;
            }
        }
        upgraded |= 1u << pick;
    }

    double max_amp = 0.0;
    for (int j = 0; j < L->n_sub; ++j) {
        max_amp = fmax(max_amp, amp[j][upgraded >> j & 1]);
    }
    const float d32 = fminf((float) (max_amp / SFMP_AMPLITUDE_MAX), SFMP_FP16_MAX);
    const uint16_t d16 = sfmp_fp32_to_fp16(d32);
    const double d = (double) sfmp_fp16_to_fp32(d16);

    memset(out, 0, (size_t) L->type_size);
    out[0] = (uint8_t) (d16 & 0xff);
    out[1] = (uint8_t) (d16 >> 8);
    int base[256] = {0}, extra[SFMP_MAX_SUB * SFMP_SUB_BLOCK];
    int n_extra = 0;
    for (int j = 0; j < L->n_sub; ++j) {
        const int up = upgraded >> j & 1;
        const double chosen = amp[j][up];
        const grid_levels * g = &levels[up];
        const double * xj = x + SFMP_SUB_BLOCK * j;
        const double * wj = w + SFMP_SUB_BLOCK * j;
        // m rounds down or up, whichever errs less: rounding to nearest could clip the largest
        // weights, which costs more than the quantization noise itself at high precision.
        const double floor_m = d > 0.0 ? floor(chosen / d) : 0.0;
        double cand[2], cand_amp[2], cand_err[2];
        for (int k = 0; k < 2; ++k) {
            cand[k] = floor_m + (double) k;
            cand[k] = cand[k] < 0.0 ? 0.0 : (cand[k] > SFMP_AMPLITUDE_MAX ? SFMP_AMPLITUDE_MAX : cand[k]);
            if (!(d > 0.0)) {
                cand[k] = 0.0;
            }
            cand_amp[k] = d * cand[k];
        }
        final_errors(g, xj, wj, cand_amp, cand_err);
        const double m = cand_err[1] < cand_err[0] ? cand[1] : cand[0];
        const double a = d * m;
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            const int q = final_code(g, xj[i], a);
            base[SFMP_SUB_BLOCK * j + i] = up ? q >> 1 : q;
            if (up) {
                extra[n_extra * SFMP_SUB_BLOCK + i] = q & 1;
            }
        }
        n_extra += up;
        out[SFMP_AMPLITUDE_OFFSET + j] = (uint8_t) ((up ? SFMP_UPGRADE_FLAG : 0) | (int) m);
    }
    pack_pieces(base, n, B, out + SFMP_CODE_OFFSET(n, L->n_sub, 0));
    for (int u = 0; u < n_extra; ++u) {
        pack_pieces(extra + SFMP_SUB_BLOCK * u, SFMP_SUB_BLOCK, 1, out + SFMP_EXTRA_OFFSET(n, L->n_sub, B, u));
    }
}

size_t sfmp_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * quant_weights) {
    const sfmp_layout * L = sfmp_get_layout(type);
    if (!L || n_per_row % L->block_size) {
        return 0;
    }
    const int64_t nb = n_per_row / L->block_size;
    grid_levels levels[2];
    for (int k = 0; k < (L->upgrades ? 2 : 1); ++k) {
        levels_of(L, L->base_bits + k, &levels[k]);
    }
    uint8_t * out = (uint8_t *) dst;
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < nb; ++i) {
            const float * qw = quant_weights ? quant_weights + i * L->block_size : NULL;
            quantize_block(L, levels, src + r * n_per_row + i * L->block_size, qw, out);
            out += L->type_size;
        }
    }
    return (size_t) (nrows * nb * L->type_size);
}

// ---- dequantization, validation ---------------------------------------------------------------

void sfmp_dequantize_row(int type, const void * src, float * dst, int64_t k) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const uint8_t * block = (const uint8_t *) src;
    for (int64_t i = 0; i < k / L->block_size; ++i, block += L->type_size, dst += L->block_size) {
        const float d = sfmp_block_d(block);
        const uint32_t upgraded = sfmp_upgrade_mask(L, block);
        for (int j = 0; j < L->n_sub; ++j) {
            int q[SFMP_SUB_BLOCK];
            const int bits = sub_block_codes(L, block, upgraded, j, q);
            const int unit = L->grid == SFMP_GRID_NONLINEAR ? SFMP_NL_UNIT : 1 << bits;
            const float scale = (d * (float) (block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX)) / (float) unit;
            float * y = dst + SFMP_SUB_BLOCK * j;
            for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
                y[t] = scale * (float) sfmp_level(L, bits, q[t]);
            }
        }
    }
}

bool sfmp_validate_row(int type, const void * data, size_t nbytes) {
    const sfmp_layout * L = sfmp_get_layout(type);
    if (!L || nbytes % (size_t) L->type_size) {
        return false;
    }
    const uint8_t * block = (const uint8_t *) data;
    for (size_t i = 0; i < nbytes / (size_t) L->type_size; ++i, block += L->type_size) {
        if ((sfmp_block_d_bits(block) & 0x7c00u) == 0x7c00u) {
            return false;  // NaN or Inf scale
        }
        int flagged = 0;
        for (int j = 0; j < L->n_sub; ++j) {
            flagged += (block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_UPGRADE_FLAG) != 0;
        }
        if (flagged != L->upgrades) {
            return false;  // the upgrade count is part of the type
        }
    }
    return true;
}

// ---- dot products -----------------------------------------------------------------------------

// Uniform grid: with q the base code and e the extra bit, sub-block j contributes, in units of
// d * y_scale / 2^(B+1):
//   m * 2 * sum(y * o)                       o = 2q + 1 - 2^B, the signed odd code
//   + m * sum(y * (2e - 1))                  for an upgraded sub-block: o' = 2o + 2e - 1
// Nonlinear grid: m * sum(y * L[q]) in units of d * y_scale / 64, q the code at the sub-block's
// precision. Every path computes these integers exactly.
static int64_t sub_block_dot(const sfmp_layout * L, const uint8_t * block, uint32_t upgraded, int j,
                           const int8_t * y) {
    int q[SFMP_SUB_BLOCK];
    const int bits = sub_block_codes(L, block, upgraded, j, q);
    int64_t acc = 0;
    for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
        acc += (int64_t) sfmp_level(L, bits, q[t]) * y[t];
    }
    const int64_t m = block[SFMP_AMPLITUDE_OFFSET + j] & SFMP_AMPLITUDE_MAX;
    return m * acc * (L->grid == SFMP_GRID_UNIFORM && bits == L->base_bits ? 2 : 1);
}

// One activation block every y_stride bytes (a Q8_K block per _k block, a Q8_0 block per sub-block
// of an _s block). With fine activations each is a two-level pair: its integer is 256 * T(hi) + T(lo)
// at hi's scale over 256.
static float row_dot(const sfmp_layout * L, int n, const uint8_t * block, const uint8_t * vy, size_t y_stride) {
    const int nb = n / L->block_size;
    const float unit = 1.0f / (float) (1 << L->unit_shift) / (float) (L->fine ? SFMP_RESIDUAL_STEPS : 1);
    float sumf = 0.0f;
    if (L->block_size == 256) {
        for (int i = 0; i < nb; ++i, block += L->type_size) {
            const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) (vy + (size_t) i * y_stride);
            const uint32_t upgraded = sfmp_upgrade_mask(L, block);
            int64_t acc = 0, lo = 0;
            for (int j = 0; j < L->n_sub; ++j) {
                acc += sub_block_dot(L, block, upgraded, j, y->qs + SFMP_SUB_BLOCK * j);
                if (L->fine) {
                    lo += sub_block_dot(L, block, upgraded, j, y[1].qs + SFMP_SUB_BLOCK * j);
                }
            }
            acc = L->fine ? SFMP_RESIDUAL_STEPS * acc + lo : acc;
            sumf += (sfmp_block_d(block) * y->d) * ((float) acc * unit);
        }
    } else {
        for (int i = 0; i < nb; ++i, block += L->type_size) {
            const uint32_t upgraded = sfmp_upgrade_mask(L, block);
            const float d = sfmp_block_d(block);
            float block_sum = 0.0f;  // per block first, then into the row: the SIMD paths add in this order
            for (int j = 0; j < L->n_sub; ++j) {
                const sfmp_block_q8_0 * yb = (const sfmp_block_q8_0 *) (vy + (size_t) (L->n_sub * i + j) * y_stride);
                int64_t acc = sub_block_dot(L, block, upgraded, j, yb->qs);
                if (L->fine) {
                    acc = SFMP_RESIDUAL_STEPS * acc + sub_block_dot(L, block, upgraded, j, yb[1].qs);
                }
                block_sum = j ? block_sum + (d * sfmp_fp16_to_fp32(yb->d)) * ((float) acc * unit)
                              : (d * sfmp_fp16_to_fp32(yb->d)) * ((float) acc * unit);
            }
            sumf += block_sum;
        }
    }
    return sumf;
}

bool sfmp_fine_activations(int type) {
    const sfmp_layout * L = sfmp_get_layout(type);
    return L != NULL && L->fine;
}

size_t sfmp_activation_block_size(int type) {
    const sfmp_layout * L = sfmp_get_layout(type);
    return L == NULL ? 0 : (L->block_size == 256 ? sizeof(sfmp_block_q8_K) : sizeof(sfmp_block_q8_0));
}

void sfmp_vec_dot_generic(int type, int n, float * s, const void * vx, const void * vy) {
    const sfmp_layout * L = sfmp_get_layout(type);
    *s = row_dot(L, n, (const uint8_t *) vx, (const uint8_t *) vy, (L->fine ? 2 : 1) * sfmp_activation_block_size(type));
}

// ---- two-level activations ------------------------------------------------------------------------

// Round half to even below 2^22 in magnitude, as numpy's rint (sfmp_gguf/quant/activations.py), without
// a libm call: adding and subtracting 1.5 * 2^23 leaves the nearest integer (IEEE arithmetic, which
// this file's build keeps: no fast-math).
static inline float round_even(float v) {
    const float shift = 12582912.0f;
    return (v + shift) - shift;
}

static inline int8_t clamp_int8(float v) {
    return (int8_t) (v > 127.0f ? 127 : (v < -127.0f ? -127 : (int) v));
}

bool sfmp_two_level_activations(void) {
    static int two_level = -1;  // every thread reads the same environment, so a race stores the same value
    if (two_level < 0) {
        const char * mode = getenv("SFMP_ACTIVATIONS");
        if (mode != NULL && *mode != '\0' && strcmp(mode, "8bit") != 0 && strcmp(mode, "two-level") != 0) {
            fprintf(stderr, "sfmp: SFMP_ACTIVATIONS=%s: expected 8bit or two-level\n", mode);
            abort();
        }
        two_level = mode == NULL || strcmp(mode, "8bit") != 0;
    }
    return two_level != 0;
}

// One level pair of `group` values at scale `scale`: hi = x / scale, lo = the residual / (scale / 256),
// or 0 with SFMP_ACTIVATIONS=8bit.
static void two_levels(const float * x, int group, float scale, int8_t * hi, int8_t * lo) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    const float inv_lo = sfmp_two_level_activations() ? inv * (float) SFMP_RESIDUAL_STEPS : 0.0f;
    for (int i = 0; i < group; ++i) {
        hi[i] = clamp_int8(round_even(x[i] * inv));
        lo[i] = clamp_int8(round_even((x[i] - scale * (float) hi[i]) * inv_lo));
    }
}

static float block_amax(const float * x, int group) {
    float amax = 0.0f;
    for (int i = 0; i < group; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    return amax;
}

static void block_sums(const int8_t * qs, int16_t * bsums) {
    for (int g = 0; g < 16; ++g) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) {
            sum += qs[16 * g + i];
        }
        bsums[g] = (int16_t) sum;
    }
}

void sfmp_quantize_row_Q8_K_x2(const float * x, void * vy, int64_t n) {
    sfmp_block_q8_K_x2 * y = (sfmp_block_q8_K_x2 *) vy;
    for (int64_t i = 0; i < n / 256; ++i, x += 256) {
        const float d = block_amax(x, 256) / 127.0f;
        two_levels(x, 256, d, y[i].hi.qs, y[i].lo.qs);
        y[i].hi.d = d;
        y[i].lo.d = d / (float) SFMP_RESIDUAL_STEPS;
        block_sums(y[i].hi.qs, y[i].hi.bsums);
        block_sums(y[i].lo.qs, y[i].lo.bsums);
    }
}

void sfmp_quantize_row_Q8_0_x2(const float * x, void * vy, int64_t n) {
    sfmp_block_q8_0_x2 * y = (sfmp_block_q8_0_x2 *) vy;
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        y[i].hi.d = sfmp_fp32_to_fp16(block_amax(x, 32) / 127.0f);
        const float d = sfmp_fp16_to_fp32(y[i].hi.d);  // the scale the kernels read
        two_levels(x, 32, d, y[i].hi.qs, y[i].lo.qs);
        y[i].lo.d = sfmp_fp32_to_fp16(d / (float) SFMP_RESIDUAL_STEPS);
    }
}

// ---- per-type entry points ----------------------------------------------------------------------

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize, grid)                                           \
    void sfmp_quantize_row_##lname##_ref(const float * x, void * y, int64_t k) {                      \
        sfmp_quantize(id, x, y, 1, k, NULL);                                                          \
    }                                                                                                 \
    void sfmp_dequantize_row_##lname(const void * x, float * y, int64_t k) {                          \
        sfmp_dequantize_row(id, x, y, k);                                                             \
    }                                                                                                 \
    size_t sfmp_quantize_##lname(const float * src, void * dst, int64_t nrows, int64_t n_per_row,     \
                                 const float * quant_weights) {                                       \
        return sfmp_quantize(id, src, dst, nrows, n_per_row, quant_weights);                          \
    }                                                                                                 \
    void sfmp_vec_dot_##lname(int n, float * s, size_t bs_, const void * vx, size_t bx,               \
                              const void * vy, size_t by, int nrc) {                                  \
        (void) bs_; (void) bx; (void) by; (void) nrc;                                                 \
        sfmp_vec_dot_generic(id, n, s, vx, vy);                                                       \
    }
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
