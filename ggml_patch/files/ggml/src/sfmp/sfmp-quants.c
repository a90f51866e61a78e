// Reference (scalar) SFMP kernels: quantize, dequantize, validate, dot product.
// Built with -ffp-contract=off: quantization must round exactly as the numpy reference does.
#include "sfmp-quants.h"

#include <math.h>
#include <string.h>

#define SFMP_N_CANDIDATES 12
#define SFMP_SHRINK_STEP 0.05
#define SFMP_FP16_MAX 65504.0f

static const sfmp_layout SFMP_LAYOUTS[] = {
#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize) {bs, nsub, budget, tsize},
#include "ggml-sfmp-types.inc"
#undef SFMP_TYPE
};

int32_t sfmp_format_version(void) {
    return SFMP_FORMAT_VERSION;
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

// A code of `bits` bits is stored as pieces, most significant first: nibbles, a crumb, a plane.
static int piece_widths(int bits, int widths[3]) {
    int n = 0;
    for (int i = 0; i < bits / 4; ++i) {
        widths[n++] = 4;
    }
    if (bits % 4 >= 2) {
        widths[n++] = 2;
    }
    if (bits % 2) {
        widths[n++] = 1;
    }
    return n;
}

static void pack_codes(const int q[SFMP_SUB_BLOCK], int bits, uint8_t * out) {
    int widths[3];
    const int n = piece_widths(bits, widths);
    int shift = bits;
    for (int p = 0; p < n; ++p) {
        const int w = widths[p];
        shift -= w;
        const int mask = (1 << w) - 1;
        if (w == 4) {
            for (int k = 0; k < 16; ++k) {
                out[k] = (uint8_t) (((q[k] >> shift) & mask) | (((q[k + 16] >> shift) & mask) << 4));
            }
        } else if (w == 2) {
            for (int k = 0; k < 8; ++k) {
                out[k] = (uint8_t) (((q[k] >> shift) & mask) | (((q[k + 8] >> shift) & mask) << 2) |
                                    (((q[k + 16] >> shift) & mask) << 4) | (((q[k + 24] >> shift) & mask) << 6));
            }
        } else {
            uint32_t word = 0;
            for (int k = 0; k < 32; ++k) {
                word |= (uint32_t) ((q[k] >> shift) & 1) << k;
            }
            for (int k = 0; k < 4; ++k) {
                out[k] = (uint8_t) (word >> (8 * k));
            }
        }
        out += 4 * w;
    }
}

static void unpack_codes(const uint8_t * in, int bits, int q[SFMP_SUB_BLOCK]) {
    int widths[3];
    const int n = piece_widths(bits, widths);
    for (int k = 0; k < SFMP_SUB_BLOCK; ++k) {
        q[k] = 0;
    }
    for (int p = 0; p < n; ++p) {
        const int w = widths[p];
        for (int k = 0; k < SFMP_SUB_BLOCK; ++k) {
            int v;
            if (w == 4) {
                v = k < 16 ? in[k] & 15 : in[k - 16] >> 4;
            } else if (w == 2) {
                v = (in[k % 8] >> (2 * (k / 8))) & 3;
            } else {
                v = (in[k / 8] >> (k % 8)) & 1;
            }
            q[k] = (q[k] << w) | v;
        }
        in += 4 * w;
    }
}

// ---- quantization ---------------------------------------------------------------------------

static double quantize_code(double x, double step, double half) {
    double q = floor(x / step + half);
    if (q < 0.0) {
        q = 0.0;
    }
    if (q > 2.0 * half - 1.0) {
        q = 2.0 * half - 1.0;
    }
    return q;
}

static double sub_block_error(const double * x, const double * w, double step, double half) {
    double err = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        const double q = quantize_code(x[i], step, half);
        const double diff = x[i] - (q + 0.5 - half) * step;
        err += w[i] * (diff * diff);
    }
    return err;
}

// Best amplitude for one sub-block at one precision; see reference.py::_search_amplitudes.
static void fit_sub_block(const double * x, const double * w, int bits, double * amp_out, double * err_out) {
    double amax = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        amax = fmax(amax, fabs(x[i]));
    }
    if (amax == 0.0) {
        *amp_out = 0.0;
        *err_out = 0.0;
        return;
    }
    const double half = (double) (1 << (bits - 1));
    const double a0 = amax / (1.0 - 0.5 / half);
    double best_amp = 0.0, best_err = INFINITY;
    for (int k = 0; k < SFMP_N_CANDIDATES; ++k) {
        const double amp = a0 * (1.0 - SFMP_SHRINK_STEP * (double) k);
        const double step = amp / half;
        const double err = sub_block_error(x, w, step, half);
        if (err < best_err) {
            best_err = err;
            best_amp = amp;
        }
        double num = 0.0, den = 0.0;
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            const double u = quantize_code(x[i], step, half) + 0.5 - half;
            num += (w[i] * x[i]) * u;
            den += (w[i] * u) * u;
        }
        if (den > 0.0 && num > 0.0) {
            const double refit = num / den * half;
            const double rerr = sub_block_error(x, w, refit / half, half);
            if (rerr < best_err) {
                best_err = rerr;
                best_amp = refit;
            }
        }
    }
    *amp_out = best_amp;
    *err_out = best_err;
}

// Weighted error of a sub-block at a stored amplitude; zero amplitude decodes to zeros.
static double final_error(const double * x, const double * w, double amp, double half) {
    if (amp > 0.0) {
        return sub_block_error(x, w, amp / half, half);
    }
    double err = 0.0;
    for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
        err += w[i] * (x[i] * x[i]);
    }
    return err;
}

#define SFMP_N_PRECISIONS (SFMP_MAX_BITS - SFMP_MIN_BITS + 1)
#define SFMP_MAX_SUB 8

static void quantize_block(const sfmp_layout * L, const float * xf, const float * qw, uint8_t * out) {
    const int n = L->block_size;
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

    double amp[SFMP_MAX_SUB][SFMP_N_PRECISIONS], err[SFMP_MAX_SUB][SFMP_N_PRECISIONS];
    for (int j = 0; j < L->n_sub; ++j) {
        for (int b = SFMP_MIN_BITS; b <= SFMP_MAX_BITS; ++b) {
            fit_sub_block(x + SFMP_SUB_BLOCK * j, w + SFMP_SUB_BLOCK * j, b,
                          &amp[j][b - SFMP_MIN_BITS], &err[j][b - SFMP_MIN_BITS]);
        }
    }

    // Share the bit budget: one bit at a time to the sub-block whose error drops most.
    int bits[SFMP_MAX_SUB];
    for (int j = 0; j < L->n_sub; ++j) {
        bits[j] = SFMP_MIN_BITS;
    }
    for (int left = L->budget - SFMP_MIN_BITS * L->n_sub; left > 0; --left) {
        int pick = 0;
        double best_gain = -INFINITY;
        for (int j = 0; j < L->n_sub; ++j) {
            if (bits[j] >= SFMP_MAX_BITS) {
                continue;
            }
            const int lvl = bits[j] - SFMP_MIN_BITS;
            const double gain = err[j][lvl] - err[j][lvl + 1];
            if (gain > best_gain) {
                best_gain = gain;
                pick = j;
            }
        }
        bits[pick]++;
    }

    double max_amp = 0.0;
    for (int j = 0; j < L->n_sub; ++j) {
        max_amp = fmax(max_amp, amp[j][bits[j] - SFMP_MIN_BITS]);
    }
    const float d32 = fminf((float) (max_amp / SFMP_AMPLITUDE_MAX), SFMP_FP16_MAX);
    const uint16_t d16 = sfmp_fp32_to_fp16(d32);
    const double d = (double) sfmp_fp16_to_fp32(d16);

    memset(out, 0, (size_t) L->type_size);
    out[0] = (uint8_t) (d16 & 0xff);
    out[1] = (uint8_t) (d16 >> 8);
    uint8_t * qs = out + 2 + L->n_sub;
    for (int j = 0; j < L->n_sub; ++j) {
        const double chosen = amp[j][bits[j] - SFMP_MIN_BITS];
        const double half = (double) (1 << (bits[j] - 1));
        const double * xj = x + SFMP_SUB_BLOCK * j;
        const double * wj = w + SFMP_SUB_BLOCK * j;
        // m rounds down or up, whichever errs less: rounding to nearest could clip the largest
        // weights, which costs more than the quantization noise itself at high precision.
        const double floor_m = d > 0.0 ? floor(chosen / d) : 0.0;
        double m = 0.0, best_err = INFINITY;
        for (int k = 0; k < 2; ++k) {
            double cand = floor_m + (double) k;
            cand = cand < 0.0 ? 0.0 : (cand > SFMP_AMPLITUDE_MAX ? SFMP_AMPLITUDE_MAX : cand);
            if (!(d > 0.0)) {
                cand = 0.0;
            }
            const double cand_err = final_error(xj, wj, d * cand, half);
            if (k == 0 || cand_err < best_err) {
                best_err = cand_err;
                m = cand;
            }
        }
        const double a = d * m;
        int q[SFMP_SUB_BLOCK];
        for (int i = 0; i < SFMP_SUB_BLOCK; ++i) {
            q[i] = a > 0.0 ? (int) quantize_code(x[SFMP_SUB_BLOCK * j + i], a / half, half) : (int) half;
        }
        out[2 + j] = (uint8_t) (((bits[j] - SFMP_MIN_BITS) << 5) | (int) m);
        pack_codes(q, bits[j], qs);
        qs += 4 * bits[j];
    }
}

size_t sfmp_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * quant_weights) {
    const sfmp_layout * L = sfmp_get_layout(type);
    if (!L || n_per_row % L->block_size) {
        return 0;
    }
    const int64_t nb = n_per_row / L->block_size;
    uint8_t * out = (uint8_t *) dst;
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < nb; ++i) {
            const float * qw = quant_weights ? quant_weights + i * L->block_size : NULL;
            quantize_block(L, src + r * n_per_row + i * L->block_size, qw, out);
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
        memset(dst, 0, sizeof(float) * (size_t) L->block_size);
        const float d = sfmp_block_d(block);
        sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
        int bits, m, q[SFMP_SUB_BLOCK];
        const uint8_t * codes;
        while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
            unpack_codes(codes, bits, q);
            const float scale = (d * (float) m) / (float) (1 << bits);
            float * y = dst + SFMP_SUB_BLOCK * (c.j - 1);
            for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
                y[t] = scale * (float) (2 * q[t] + 1 - (1 << bits));
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
        const uint16_t d = sfmp_block_d_bits(block);
        if ((d & 0x7c00u) == 0x7c00u) {
            return false;  // NaN or Inf scale
        }
        sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
        int bits, m;
        const uint8_t * codes;
        while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
        }
        if (c.j != L->n_sub) {
            return false;  // a precision tag out of range, or codes running past the block
        }
    }
    return true;
}

// ---- dot products -----------------------------------------------------------------------------

// Sum over one sub-block of w * y in units of d*m*y_scale/256, exactly in integers:
// w = (2q + 1 - 2^bits) / 2^bits, so 256*w*y = (2q + 1 - 2^bits) * y * 2^(8 - bits).
static int32_t sub_block_dot(const uint8_t * codes, int bits, int m, const int8_t * y) {
    int q[SFMP_SUB_BLOCK];
    unpack_codes(codes, bits, q);
    int32_t qy = 0, ysum = 0;
    for (int t = 0; t < SFMP_SUB_BLOCK; ++t) {
        qy += q[t] * y[t];
        ysum += y[t];
    }
    return sfmp_sub_block_factor(m, bits) * (2 * qy + (1 - (1 << bits)) * ysum);
}

void sfmp_vec_dot_generic(int type, int n, float * s, const void * vx, const void * vy) {
    const sfmp_layout * L = sfmp_get_layout(type);
    const uint8_t * block = (const uint8_t *) vx;
    const int nb = n / L->block_size;
    float sumf = 0.0f;
    if (L->block_size == 256) {
        const sfmp_block_q8_K * y = (const sfmp_block_q8_K *) vy;
        for (int i = 0; i < nb; ++i, block += L->type_size) {
            const float d = sfmp_block_d(block);
            sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
            int bits, m;
            const uint8_t * codes;
            int32_t acc = 0;
            while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
                acc += sub_block_dot(codes, bits, m, y[i].qs + SFMP_SUB_BLOCK * (c.j - 1));
            }
            sumf += (d * y[i].d) * (float) acc * (1.0f / 256.0f);
        }
    } else {
        const sfmp_block_q8_0 * y = (const sfmp_block_q8_0 *) vy;
        for (int i = 0; i < nb; ++i, block += L->type_size) {
            const float d = sfmp_block_d(block);
            sfmp_sub_block_cursor c = sfmp_block_cursor(L, block);
            int bits, m;
            const uint8_t * codes;
            while (sfmp_next_sub_block(&c, &bits, &m, &codes)) {
                const sfmp_block_q8_0 * yb = &y[L->n_sub * i + c.j - 1];
                const int32_t acc = sub_block_dot(codes, bits, m, yb->qs);
                sumf += (d * sfmp_fp16_to_fp32(yb->d)) * (float) acc * (1.0f / 256.0f);
            }
        }
    }
    *s = sumf;
}

// ---- per-type entry points ----------------------------------------------------------------------

#define SFMP_TYPE(id, lname, uname, bs, nsub, budget, tsize)                                           \
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
