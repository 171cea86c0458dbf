/*
 * partition_keys: passes each record on unchanged with two partition keys, for
 * S3 prefixes like "!{partitionKeyFromLambda:tenant}/!{partitionKeyFromLambda:kind}/":
 *   tenant = the (unescaped) value of the top-level string field "tenant"
 *   kind   = the plugin's config string (required: an empty config fails init)
 * A record without a usable "tenant" -> ProcessingFailed.
 */
#include <stdio.h>
#include "spillway_plugin.h"
#include "json_scan.h"

SPILLWAY_DEFINE_ABI()

static const uint8_t *kind;
static uint32_t kind_len;

SPW_EXPORT(spillway_init)
int32_t spillway_init(int32_t ptr, int32_t len) {
    const uint8_t *cfg = (const uint8_t *)(uintptr_t)(uint32_t)ptr;
    if (len <= 0 || len > SPW_MAX_VALUE_BYTES || !spw_utf8_valid(cfg, (uint32_t)len)) {
        fprintf(stderr, "partition_keys: config must be 1..%d bytes of UTF-8 (the \"kind\" key)\n",
                SPW_MAX_VALUE_BYTES);
        return 1;
    }
    kind = cfg; /* the config buffer is ours: keep it for the instance's lifetime */
    kind_len = (uint32_t)len;
    return 0;
}

static void keyed_record(spw_out *out, const spw_record *r, uint8_t *scratch) {
    js_obj obj;
    js_member m;
    const char *err = "record is not a JSON object";
    if (js_obj_open(&obj, r->data, r->len)) {
        err = "no string field \"tenant\"";
        while (js_obj_next(&obj, &m)) {
            if (!js_key_is(&m, "tenant") || m.val[0] != '"') continue;
            int32_t n = js_unescape(m.val, m.val_len, scratch);
            if (n < 0 || !spw_utf8_valid(scratch, (uint32_t)n)) { err = "bad \"tenant\" string"; break; }
            if (n == 0 || n > SPW_MAX_VALUE_BYTES) { err = "\"tenant\" must be 1..1024 bytes"; break; }
            spw_out_ok(out, r->id, r->data, r->len);
            spw_out_key(out, "tenant", 6, scratch, (uint32_t)n);
            spw_out_key(out, "kind", 4, kind, kind_len);
            return;
        }
    }
    spw_out_failed(out, r->id, err);
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    spw_batch in;
    spw_out out;
    spw_record r;
    if (!spw_batch_open(&in, ptr, len) || !kind) return spw_fail_batch(&in);
    uint8_t *scratch = malloc((size_t)len); /* an unescaped value is never longer than its record */
    if (!scratch) return spw_fail_batch(&in);
    spw_out_begin(&out, (uint32_t)len + 64u * in.count + 64);
    while (spw_batch_next(&in, &r)) keyed_record(&out, &r, scratch);
    free(scratch);
    return spw_out_finish(&out, &in);
}
