/*
 * hostile/trap: dies instead of answering. Mode = config:
 *   "" (no config)  `unreachable` in spillway_transform
 *   "init"          `unreachable` in spillway_init (the instance never becomes usable)
 *   "exit"          exit(3) in spillway_transform (WASI proc_exit)
 *   "poison"        answers every record Ok and unchanged, but traps on any batch that holds
 *                   a record starting with "POISON" (the host then retries record by record)
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
    if (mode == 'e') exit(3);
    if (mode != 'p') __builtin_trap();
    spw_batch in;
    spw_out out;
    spw_record r;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64);
    while (spw_batch_next(&in, &r)) {
        if (r.len >= 6 && memcmp(r.data, "POISON", 6) == 0) __builtin_trap();
        spw_out_ok(&out, r.id, r.data, r.len);
    }
    return spw_out_finish(&out, &in);
}
