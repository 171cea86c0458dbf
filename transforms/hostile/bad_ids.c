/*
 * hostile/bad_ids: a well-formed output whose record ids are wrong. With input ids
 * i0, i1, i2, ... (n >= 1) and UNKNOWN = 0xBAD1D0000000BAD1 (never a real id in the tests):
 *   "" or "mixed"  i0, i0, UNKNOWN, i3, ...   (a duplicate and an unknown id)
 *   "dup"          i0, i0, i2, ...            (i0 twice, i1 missing if n > 1)
 *   "missing"      i0 .. i(n-2)               (n-1 results: the last one missing)
 *   "unknown"      i0 .. i(n-2), UNKNOWN      (n results: the last one replaced)
 * and, not hostile but a probe for the tests, "count": every record ProcessingFailed with
 * the message "batch of <n> records", which shows how the host cut its batches.
 */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

#define UNKNOWN 0xBAD1D0000000BAD1ull

static char mode = 'x'; /* x mixed, d dup, m missing, u unknown, c count */

SPW_EXPORT(spillway_init)
int32_t spillway_init(int32_t ptr, int32_t len) {
    const char *cfg = (const char *)(uintptr_t)(uint32_t)ptr;
    if (len == 3 && memcmp(cfg, "dup", 3) == 0) mode = 'd';
    else if (len == 7 && memcmp(cfg, "missing", 7) == 0) mode = 'm';
    else if (len == 7 && memcmp(cfg, "unknown", 7) == 0) mode = 'u';
    else if (len == 5 && memcmp(cfg, "count", 5) == 0) mode = 'c';
    return 0;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r;
    uint32_t i = 0;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    uint64_t *ids = malloc(sizeof(uint64_t) * (in.count + 3));
    if (!ids) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64);
    while (spw_batch_next(&in, &r)) ids[i++] = r.id;
    if (i == 0) { free(ids); return spw_out_finish(&out, &in); }
    switch (mode) {
    case 'c': {
        char msg[40] = "batch of ";
        char digits[12];
        int d = 0;
        uint32_t n = i;
        do { digits[d++] = (char)('0' + n % 10); n /= 10; } while (n);
        int at = 9;
        while (d) msg[at++] = digits[--d];
        memcpy(msg + at, " records", 9);
        for (uint32_t k = 0; k < i; k++) spw_out_failed(&out, ids[k], msg);
        free(ids);
        return spw_out_finish(&out, &in);
    }
    case 'd': if (i < 2) i = 2; ids[1] = ids[0]; break;
    case 'm': i--; break;
    case 'u': ids[i - 1] = UNKNOWN; break;
    default: if (i < 3) i = 3; ids[1] = ids[0]; ids[2] = UNKNOWN;
    }
    for (uint32_t k = 0; k < i; k++) spw_out_ok(&out, ids[k], "x", 1);
    free(ids);
    return spw_out_finish(&out, &in);
}
