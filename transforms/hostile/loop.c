/* hostile/loop: spins forever in spillway_transform. Only fuel or epoch interruption stops it. */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

static volatile uint32_t spin;

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
    for (;;) spin++;
}
