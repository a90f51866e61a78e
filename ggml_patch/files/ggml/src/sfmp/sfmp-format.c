#include "sfmp-format.h"

int32_t sfmp_format_version(void) {
    return SFMP_FORMAT_VERSION;
}
