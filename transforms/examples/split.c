/*
 * split: a record holding several '\n'-separated lines becomes one output record
 * per non-empty line. Each piece keeps its own '\n' (so the delivered bytes are
 * the input minus its empty lines); a last line without '\n' stays without one.
 * A record with no non-empty line becomes Ok with zero pieces (nothing delivered).
 */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

static int blank(const uint8_t *p, const uint8_t *e) {
    for (; p < e; p++)
        if (*p != '\n' && *p != '\r') return 0;
    return 1;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64);
    while (spw_batch_next(&in, &r)) {
        spw_out_result(&out, r.id, SPW_OK);
        const uint8_t *p = r.data, *e = r.data + r.len;
        while (p < e) {
            const uint8_t *nl = memchr(p, '\n', (size_t)(e - p));
            const uint8_t *next = nl ? nl + 1 : e;
            if (!blank(p, next)) spw_out_piece(&out, p, (uint32_t)(next - p));
            p = next;
        }
    }
    return spw_out_finish(&out, &in);
}
