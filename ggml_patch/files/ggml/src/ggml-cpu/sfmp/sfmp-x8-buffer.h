// sfmp-gguf: the SFMP_X8 buffer type, an extra CPU buffer type (like CPU_REPACK) that stores SFMP
// weights with 8 rows interleaved and runs their MUL_MAT with the kernels of sfmp-x8.c.
#pragma once

#include "ggml-backend.h"

// NULL where this build has no interleaved kernels (sfmp_x8_supported).
ggml_backend_buffer_type_t sfmp_x8_buffer_type(void);
