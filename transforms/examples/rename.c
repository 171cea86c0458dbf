/*
 * rename: renames the top-level key "msg" to "message" and adds "enriched":true.
 * Everything else in the record is kept byte for byte (whitespace, key order,
 * a trailing newline). A record that is not one JSON object -> ProcessingFailed.
 */
#include "spillway_plugin.h"
#include "json_scan.h"

SPILLWAY_DEFINE_ABI()

static void rename_record(spw_out *out, const spw_record *r) {
    js_obj obj;
    js_member m;
    const uint8_t *msg_key = NULL;
    if (js_obj_open(&obj, r->data, r->len))
        while (js_obj_next(&obj, &m))
            if (!msg_key && js_key_is(&m, "msg")) msg_key = m.key_tok;
    if (obj.state != 2) {
        spw_out_failed(out, r->id, "record is not a JSON object");
        return;
    }
    const uint8_t *p = r->data, *close = obj.close, *end = r->data + r->len;
    spw_out_result(out, r->id, SPW_OK);
    spw_out_piece_begin(out);
    if (msg_key) {
        spw_out_append(out, p, (uint32_t)(msg_key - p));
        spw_out_append_str(out, "\"message\"");
        p = msg_key + 5; /* past "msg" and its quotes */
    }
    spw_out_append(out, p, (uint32_t)(close - p));
    spw_out_append_str(out, obj.members ? ",\"enriched\":true" : "\"enriched\":true");
    spw_out_append(out, close, (uint32_t)(end - close));
    spw_out_piece_end(out);
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r;
    if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 32u * in.count + 64);
    while (spw_batch_next(&in, &r)) rename_record(&out, &r);
    return spw_out_finish(&out, &in);
}
