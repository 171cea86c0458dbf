/*
 * filter: drops records whose top-level "level" is the string "debug"; every
 * other record (including ones that are not JSON) is passed on Ok, unchanged.
 */
#include "spillway_plugin.h"
#include "json_scan.h"

SPILLWAY_DEFINE_ABI()

static int is_debug(const spw_record *r) {
    js_obj obj;
    js_member m;
    if (!js_obj_open(&obj, r->data, r->len)) return 0;
    while (js_obj_next(&obj, &m))
        if (js_key_is(&m, "level") && js_val_is_str(&m, "debug")) return 1;
    return 0;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64);
    while (spw_batch_next(&in, &r)) {
        if (is_debug(&r)) spw_out_dropped(&out, r.id);
        else spw_out_ok(&out, r.id, r.data, r.len);
    }
    return spw_out_finish(&out, &in);
}
