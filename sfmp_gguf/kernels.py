"""Our C kernels, loaded through cffi from the standalone library built from ggml_patch/.

The library is compiled from the very files the patch puts into ggml, so a test of it is a test of
what llama.cpp runs. ``load`` finds it by an explicit path, else $SFMP_KERNELS_LIB, else in the
build folder of ``python -m sfmp_gguf.llama.build`` (``paths.build_folder``, computed without
importing ``sfmp_gguf.llama`` and without fetching anything).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cffi
import numpy as np

from sfmp_gguf.format import ACTIVATIONS, SfmpType
from sfmp_gguf.paths import KERNEL_LIBRARY, build_folder

LIBRARY_ENV = "SFMP_KERNELS_LIB"
# SFMP_X8_WIDE_BYTES (sfmp-x8.h): bytes of two-level activations' wide form per 32 values.
X8_WIDE_BYTES = 128

CDEF = """
int32_t sfmp_format_version(void);
uint16_t sfmp_fp32_to_fp16(float f);
float sfmp_fp16_to_fp32(uint16_t h);
size_t sfmp_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * quant_weights);
void sfmp_dequantize_row(int type, const void * src, float * dst, int64_t k);
bool sfmp_validate_row(int type, const void * data, size_t nbytes);
void sfmp_vec_dot_generic(int type, int n, float * s, const void * vx, const void * vy);
bool sfmp_fine_activations(int type);
void sfmp_quantize_row_Q8_K_x2(const float * x, void * y, int64_t n);
void sfmp_quantize_row_Q8_0_x2(const float * x, void * y, int64_t n);
void sfmp_cpu_quantize_row_Q8_K_x2(const float * x, void * y, int64_t n);
void sfmp_cpu_quantize_row_Q8_0_x2(const float * x, void * y, int64_t n);
int sfmp_cpu_nrows(int type);
const char * sfmp_cpu_path(void);
void sfmp_cpu_vec_dot(int type, int n, float * s, const void * vx, const void * vy);
void sfmp_cpu_vec_dot_tile(int type, int n, float * s, size_t bs, const void * vx, size_t bx,
                           const void * vy, size_t by, int nrc);
const char * sfmp_x8_path(void);
bool sfmp_x8_supported(int type);
size_t sfmp_x8_group_size(int type, int64_t n_per_row);
void sfmp_x8_repack_group(int type, const void * src, size_t row_stride, void * dst, int64_t n_per_row);
typedef struct { int32_t offset; int32_t sum; float scale; int32_t lo_offset; int32_t lo_sum; } sfmp_x8_act;
void sfmp_x8_prepare_activations(int type, const void * vy, int64_t n, sfmp_x8_act * acts);
void sfmp_x8_mul_mat(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                     const void * const * vy, const sfmp_x8_act * const * acts, float * const * dst);
void sfmp_x8_prepare_wide(int type, const void * vy, int64_t n, void * wide, sfmp_x8_act * acts);
void sfmp_x8_mul_mat_wide(int type, int64_t n, const void * x8, int64_t group_begin, int64_t group_end, int ncols,
                          const void * const * wide, const sfmp_x8_act * const * acts, float * const * dst);
typedef struct { double range_to_rms, variance, mean_square, energy; } sfmp_analysis_moments;
int sfmp_analysis_columns(void);
void sfmp_analysis_sub_blocks(const float * w, int64_t rows, int64_t n, const float * h, int64_t h_row_stride,
                              double * errors, sfmp_analysis_moments * moments);
void sfmp_analysis_type_errors(const double * errors, int64_t n_blocks, int n_sub, int n_types,
                               const int32_t * types, double * totals);
int64_t sfmp_count_beyond(const float * w, int64_t n, float threshold);
"""


@dataclass(frozen=True)
class Kernels:
    """numpy-friendly wrappers around one loaded copy of the library."""

    ffi: cffi.FFI
    lib: object

    def _ptr(self, array: np.ndarray, ctype: str):
        return self.ffi.cast(ctype, self.ffi.from_buffer(array))

    def quantize(self, x: np.ndarray, t: SfmpType, qw: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        out = np.zeros((rows, n // t.block_size * t.type_size), dtype=np.uint8)
        weights = self.ffi.NULL
        if qw is not None:
            qw = np.ascontiguousarray(qw, dtype=np.float32)
            weights = self._ptr(qw, "float *")
        written = self.lib.sfmp_quantize(t.type_id, self._ptr(x, "float *"), self._ptr(out, "void *"),
                                         rows, n, weights)
        if written != out.size:
            raise ValueError(f"{t.name}: cannot quantize rows of {n}")
        return out

    def dequantize(self, data: np.ndarray, t: SfmpType) -> np.ndarray:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        rows = data.shape[0] if data.ndim > 1 else 1
        n = data.size // rows // t.type_size * t.block_size
        out = np.zeros((rows, n), dtype=np.float32)
        for r in range(rows):
            self.lib.sfmp_dequantize_row(t.type_id, self._ptr(data.reshape(rows, -1)[r], "void *"),
                                         self._ptr(out[r], "float *"), n)
        return out

    def validate(self, data: np.ndarray, t: SfmpType) -> bool:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        return bool(self.lib.sfmp_validate_row(t.type_id, self._ptr(data, "void *"), data.size))

    def two_level_activations(self, x: np.ndarray, t: SfmpType, path: str = "generic") -> np.ndarray:
        """Floats -> the two-level activation bytes of ``t``'s block size, by the C reference
        (``generic``) or the SIMD twin ggml's CPU backend runs (``cpu``)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        kind = ACTIVATIONS[t.variant.activation]
        out = np.zeros(x.size // kind.block_size * kind.type_size, dtype=np.uint8)
        fn = getattr(self.lib, f"sfmp_{'' if path == 'generic' else 'cpu_'}quantize_row_{kind.base}_x2")
        fn(self._ptr(x, "float *"), self._ptr(out, "void *"), x.size)
        return out

    def vec_dot(self, weights: np.ndarray, activations: np.ndarray, t: SfmpType, path: str = "generic") -> float:
        """One row of SFMP weights against activations quantized to Q8_K or Q8_0 (raw bytes)."""
        weights = np.ascontiguousarray(weights, dtype=np.uint8)
        activations = np.ascontiguousarray(activations, dtype=np.uint8)
        n = weights.size // t.type_size * t.block_size
        result = self.ffi.new("float *")
        fn = self.lib.sfmp_vec_dot_generic if path == "generic" else self.lib.sfmp_cpu_vec_dot
        fn(t.type_id, n, result, self._ptr(weights, "void *"), self._ptr(activations, "void *"))
        return float(result[0])

    def vec_dot_tile(self, weights: np.ndarray, activations: np.ndarray, t: SfmpType) -> np.ndarray:
        """Two weight rows against two activation rows in one SIMD call (ggml's nrc = 2), as the
        CPU backend does for prompt processing: result[r, c]."""
        weights = np.ascontiguousarray(weights, dtype=np.uint8)
        activations = np.ascontiguousarray(activations, dtype=np.uint8)
        n = weights.shape[1] // t.type_size * t.block_size
        out = np.zeros(4, dtype=np.float32)
        self.lib.sfmp_cpu_vec_dot_tile(t.type_id, n, self._ptr(out, "float *"), 2, self._ptr(weights, "void *"),
                                       weights.shape[1], self._ptr(activations, "void *"), activations.shape[1], 2)
        return out.reshape(2, 2).T  # s[r + c * bs] with bs = 2

    def x8_pack(self, weights: np.ndarray, t: SfmpType) -> np.ndarray:
        """Weight rows (a multiple of 8, in the file's layout) interleaved as the SFMP_X8 buffer holds
        them, 8 rows per group."""
        weights = np.ascontiguousarray(weights, dtype=np.uint8)
        rows, row_bytes = weights.shape
        n = row_bytes // t.type_size * t.block_size
        if not self.lib.sfmp_x8_supported(t.type_id) or rows % 8:
            raise ValueError(f"{t.name}: no interleaved kernel for {rows} rows in this build")
        group = self.lib.sfmp_x8_group_size(t.type_id, n)
        packed = np.zeros(rows // 8 * group, dtype=np.uint8)
        for g in range(rows // 8):
            self.lib.sfmp_x8_repack_group(t.type_id, self._ptr(weights[8 * g:], "void *"), row_bytes,
                                          self._ptr(packed[g * group:], "void *"), n)
        return packed

    def x8_prepare(self, activations: np.ndarray, t: SfmpType, n: int, wide: bool) -> tuple[list[np.ndarray], list]:
        """Each row of ``n`` activations (raw bytes) as the interleaved kernel takes it, with its
        prepared terms: the Q8_K / Q8_0 rows themselves, or with ``wide`` the two-level pairs' wide
        form."""
        activations = np.ascontiguousarray(np.atleast_2d(activations), dtype=np.uint8)
        if wide and not t.fine_activations:
            raise ValueError(f"{t.name} takes 8-bit activations: it has no wide form")
        prepared = [self.ffi.new("sfmp_x8_act[]", n // 32) for _ in activations]
        forms = [np.zeros(n // 32 * X8_WIDE_BYTES, dtype=np.uint8) for _ in activations] if wide else list(activations)
        for row, form, terms in zip(activations, forms, prepared):
            if wide:
                self.lib.sfmp_x8_prepare_wide(t.type_id, self._ptr(row, "void *"), n, self._ptr(form, "void *"), terms)
            else:
                self.lib.sfmp_x8_prepare_activations(t.type_id, self._ptr(row, "void *"), n, terms)
        return forms, prepared

    def interleaved_mat_mul(self, weights: np.ndarray, activations: np.ndarray, t: SfmpType, wide: bool = False
                            ) -> np.ndarray:
        """All weight rows (a multiple of 8) against each activation row (one per row of
        ``activations``, raw bytes) through the SFMP_X8 buffer type's layout and kernel:
        result[column, row]. The rows are Q8_K / Q8_0 blocks, or with ``wide`` (types with two-level
        activations) the two-level pairs, which the kernel takes in its wide form."""
        packed = self.x8_pack(weights, t)
        rows, row_bytes = np.shape(weights)
        n = row_bytes // t.type_size * t.block_size
        forms, prepared = self.x8_prepare(activations, t, n, wide)
        out = np.zeros((len(forms), rows), dtype=np.float32)
        y = self.ffi.new("void *[]", [self._ptr(a, "void *") for a in forms])
        acts = self.ffi.new("sfmp_x8_act *[]", prepared)
        dst = self.ffi.new("float *[]", [self._ptr(o, "float *") for o in out])
        mul_mat = self.lib.sfmp_x8_mul_mat_wide if wide else self.lib.sfmp_x8_mul_mat
        mul_mat(t.type_id, n, self._ptr(packed, "void *"), 0, rows // 8, len(forms), y, acts, dst)
        return out

    def sub_block_errors(self, w: np.ndarray, importance: np.ndarray | None, per_row: bool = False
                         ) -> tuple[np.ndarray, dict[str, float]]:
        """The analysis of (rows, n) float32 weights (native/sfmp-analysis.c): every sub-block's error
        at each of analysis.COLUMNS, (rows * n / 32, columns) float64, and the moments' sums.
        ``importance``: None, one row for all rows (n,), or with ``per_row`` one row per weight row."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        rows, n = w.shape
        errors = np.empty((rows * n // 32, self.lib.sfmp_analysis_columns()))
        h, stride = self.ffi.NULL, 0
        if importance is not None:
            importance = np.ascontiguousarray(importance, dtype=np.float32)
            h, stride = self._ptr(importance, "float *"), n if per_row else 0
        moments = self.ffi.new("sfmp_analysis_moments *")
        self.lib.sfmp_analysis_sub_blocks(self._ptr(w, "float *"), rows, n, h, stride, self._ptr(errors, "double *"),
                                          moments)
        return errors, {k: getattr(moments, k) for k in ("range_to_rms", "variance", "mean_square", "energy")}

    def type_errors(self, errors: np.ndarray, n_sub: int, types: np.ndarray) -> np.ndarray:
        """Each type's expected error from sub-block errors: types (count, 3) int32 rows of (base
        column, next column, upgrades)."""
        errors = np.ascontiguousarray(errors, dtype=np.float64)
        types = np.ascontiguousarray(types, dtype=np.int32)
        totals = np.zeros(len(types))
        self.lib.sfmp_analysis_type_errors(self._ptr(errors, "double *"), len(errors) // n_sub, n_sub, len(types),
                                           self._ptr(types, "int32_t *"), self._ptr(totals, "double *"))
        return totals

    def count_beyond(self, w: np.ndarray, threshold: float) -> int:
        """How many values of float32 ``w`` exceed ``threshold`` in magnitude."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        return int(self.lib.sfmp_count_beyond(self._ptr(w, "float *"), w.size, threshold))

    @property
    def cpu_path(self) -> str:
        return self.ffi.string(self.lib.sfmp_cpu_path()).decode()

    @property
    def x8_path(self) -> str:
        """The interleaved kernel's instruction set: "avx2-vnni" (AVX512-VNNI), "avx-vnni", "avx2",
        "neon-dotprod", "neon" or "none"."""
        return self.ffi.string(self.lib.sfmp_x8_path()).decode()


def library_path(path: Path | str | None = None) -> Path:
    """The library to load: ``path``, else $SFMP_KERNELS_LIB, else the CPU build folder's copy.
    FileNotFoundError, one line saying how to get it, when that file is not there."""
    if path is not None:
        library, origin = Path(path), ""
    elif os.environ.get(LIBRARY_ENV):
        library, origin = Path(os.environ[LIBRARY_ENV]), f" (from {LIBRARY_ENV})"
    else:
        library, origin = build_folder() / KERNEL_LIBRARY, ""
    if not library.is_file():
        raise FileNotFoundError(f"{library}{origin}: SFMP kernel library not found; build it with "
                                f"`python -m sfmp_gguf.llama.build`, or set {LIBRARY_ENV} to its path")
    return library


def load(path: Path | str | None = None) -> Kernels:
    """The loaded library (one copy per file), found by ``library_path``."""
    return _load(library_path(path).resolve())


@lru_cache(maxsize=None)
def _load(library: Path) -> Kernels:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return Kernels(ffi, ffi.dlopen(str(library)))
