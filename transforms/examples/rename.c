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
    static const char message[] = "\"message\"", enriched[] = ",\"enriched\":true";
    const uint8_t *p = r->data, *close = obj.close, *end = r->data + r->len;
    /* The output's length is known: one piece written in place (no comma for an empty object). */
    const char *add = obj.members ? enriched : enriched + 1;
    uint32_t add_len = (uint32_t)strlen(add);
    uint32_t size = r->len + add_len + (msg_key ? (uint32_t)(sizeof message - 1) - 5 : 0);
    spw_out_result(out, r->id, SPW_OK);
    uint8_t *d = spw_out_piece_space(out, size);
    if (!d) return;
    if (msg_key) {
        memcpy(d, p, (size_t)(msg_key - p));
        d += msg_key - p;
        memcpy(d, message, sizeof message - 1);
        d += sizeof message - 1;
        p = msg_key + 5; /* past "msg" and its quotes */
    }
    memcpy(d, p, (size_t)(close - p));
    d += close - p;
    memcpy(d, add, add_len);
    d += add_len;
    memcpy(d, close, (size_t)(end - close));
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
