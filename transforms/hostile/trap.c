/*
 * hostile/trap: dies instead of answering. Mode = config:
 *   "" (no config)  `unreachable` in spillway_transform
 *   "init"          `unreachable` in spillway_init (the instance never becomes usable)
 *   "exit"          exit(3) in spillway_transform (WASI proc_exit)
 */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

static char mode;

SPW_EXPORT(spillway_init)
int32_t spillway_init(int32_t ptr, int32_t len) {
    if (len > 0) mode = *(const char *)(uintptr_t)(uint32_t)ptr;
    if (mode == 'i') __builtin_trap();
    return 0;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
    if (mode == 'e') exit(3);
    __builtin_trap();
}
