/*
 * hostile/absurd_length: a well-formed echo output with one field made absurd. Mode = config:
 *   "" or "length"  out_len = 0x7fffffff (the pointer is valid)
 *   "count"         result_count = 0xffffffff, followed by the real (fewer) results
 *   "piece"         the first piece's length = 0x7fffffff
 *   "extra"         one result more than there were records (the first record twice)
 */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

static char mode = 'l';

SPW_EXPORT(spillway_init)
int32_t spillway_init(int32_t ptr, int32_t len) {
    if (len > 0) mode = *(const char *)(uintptr_t)(uint32_t)ptr;
    return 0;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r, first = {0};
    int n = 0;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64);
    while (spw_batch_next(&in, &r)) {
        if (n++ == 0) first = r;
        spw_out_ok(&out, r.id, r.data, r.len);
    }
    if (mode == 'e' && n > 0) spw_out_ok(&out, first.id, first.data, first.len);
    uint64_t packed = (uint64_t)spw_out_finish(&out, &in);
    uint8_t *buf = (uint8_t *)(uintptr_t)(packed >> 32);
    if (!packed) return 0;
    switch (mode) {
    case 'c': spw_put_u32(buf + 4, 0xFFFFFFFFu); break;
    case 'p': if (n > 0) spw_put_u32(buf + SPW_OUTPUT_HEADER + 8 + 1 + 4, 0x7FFFFFFFu); break;
    case 'e': break;
    default: packed = (packed & 0xFFFFFFFF00000000ull) | 0x7FFFFFFFu;
    }
    return (int64_t)packed;
}
