// sfmp-gguf: fine-grained mixed-precision block types for ggml.
// Compiled both into ggml-base (by the patch) and into the standalone test library.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Version of the SFMP block format; files record it so an older build refuses a newer file.
#define SFMP_FORMAT_VERSION 1

int32_t sfmp_format_version(void);

#ifdef __cplusplus
}
#endif
