/*
 * spillway_plugin.h - the guest side of Spillway's transformation-plugin ABI, version 1.
 *
 * The ABI itself is specified in transforms/README.md; this header only makes
 * it convenient from C. It needs nothing beyond what wasi-libc provides
 * (stdint.h, stddef.h, stdlib.h for malloc/realloc/free, string.h for memcpy).
 *
 * Typical plugin (one translation unit):
 *
 *     #include "spillway_plugin.h"
 *     SPILLWAY_DEFINE_ABI()      // spillway_abi_version + spillway_alloc
 *
 *     SPW_EXPORT(spillway_transform)
 *     int64_t spillway_transform(int32_t ptr, int32_t len) {
 *         spw_batch in; spw_out out; spw_record r;
 *         if (!spw_batch_open(&in, ptr, len)) return spw_fail_batch(&in);
 *         spw_out_begin(&out, (uint32_t)len + 64);
 *         while (spw_batch_next(&in, &r))
 *             spw_out_ok(&out, r.id, r.data, r.len);
 *         return spw_out_finish(&out, &in);
 *     }
 *
 * Memory ownership, as the ABI defines it:
 *   - a buffer the host obtained from spillway_alloc and passed to
 *     spillway_init / spillway_transform belongs to the plugin from that call on;
 *     spw_out_finish() / spw_fail_batch() free the batch buffer;
 *   - the output buffer returned by spillway_transform must stay valid until the
 *     host's next call into the instance; spw_out_begin() frees the previous one.
 */
#ifndef SPILLWAY_PLUGIN_H
#define SPILLWAY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SPILLWAY_ABI_VERSION 1

/* Magics are the four ASCII bytes, i.e. these little-endian u32 values. */
#define SPW_BATCH_MAGIC 0x31575053u  /* "SPW1" */
#define SPW_OUTPUT_MAGIC 0x31525053u /* "SPR1" */

/* Per-record result codes (the u8 "result" field). */
enum { SPW_OK = 0, SPW_DROPPED = 1, SPW_FAILED = 2 };

/* Host-enforced limits (README, "Host rules"). Exceeding one fails the batch. */
#define SPW_MAX_OUTPUT_BYTES (7u * 1024u * 1024u) /* whole output buffer */
#define SPW_MAX_KEYS 50                           /* partition keys per record */
#define SPW_MAX_KEY_BYTES 256                     /* key name, 1..256 bytes UTF-8 */
#define SPW_MAX_VALUE_BYTES 1024                  /* key value, 0..1024 bytes UTF-8 */
#define SPW_MAX_ERROR_BYTES 1024                  /* longer messages are truncated, not rejected */

/* Fixed sizes of the framing. */
#define SPW_BATCH_HEADER 8   /* magic + record_count */
#define SPW_RECORD_HEADER 20 /* id u64 + arrival_ms i64 + data_len u32 */
#define SPW_OUTPUT_HEADER 8  /* magic + result_count */

#define SPW_EXPORT(name) __attribute__((export_name(#name)))

/* ---- little-endian accessors (wasm32 is little-endian; memcpy keeps them alignment-safe) ---- */

static inline uint16_t spw_get_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t spw_get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t spw_get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void spw_put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void spw_put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void spw_put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ---- the default exports ---- */

/* Defines spillway_abi_version() and spillway_alloc() (malloc-backed). Use once per plugin. */
#define SPILLWAY_DEFINE_ABI()                                                        \
    SPW_EXPORT(spillway_abi_version) int32_t spillway_abi_version(void) {            \
        return SPILLWAY_ABI_VERSION;                                                 \
    }                                                                                \
    SPW_EXPORT(spillway_alloc) int32_t spillway_alloc(int32_t len) {                 \
        return len <= 0 ? 0 : (int32_t)(uintptr_t)malloc((size_t)len);              \
    }

/* ---- reading the input batch ---- */

typedef struct spw_record {
    uint64_t id;          /* opaque; echo it back exactly */
    int64_t arrival_ms;   /* approximate arrival time, ms since the Unix epoch */
    const uint8_t *data;  /* points into the batch buffer: valid until spw_out_finish() */
    uint32_t len;
} spw_record;

typedef struct spw_batch {
    uint8_t *buf;   /* the batch buffer (owned by the plugin) */
    uint32_t len;
    uint32_t pos;   /* offset of the next record */
    uint32_t count; /* record_count from the header */
    uint32_t next;  /* index of the next record */
    int error;      /* non-zero: malformed batch (bad magic, truncated, trailing bytes) */
} spw_batch;

/* Returns 1 if the header is valid. */
static inline int spw_batch_open(spw_batch *b, int32_t ptr, int32_t len) {
    b->buf = (uint8_t *)(uintptr_t)(uint32_t)ptr;
    b->len = (uint32_t)len;
    b->pos = SPW_BATCH_HEADER;
    b->count = 0;
    b->next = 0;
    b->error = 0;
    if (b->buf == NULL || len < SPW_BATCH_HEADER || spw_get_u32(b->buf) != SPW_BATCH_MAGIC) {
        b->error = 1;
        return 0;
    }
    b->count = spw_get_u32(b->buf + 4);
    return 1;
}

/* Fills *r with the next record; returns 0 at the end of the batch or on a malformed batch. */
static inline int spw_batch_next(spw_batch *b, spw_record *r) {
    if (b->error || b->next >= b->count) {
        if (!b->error && b->pos != b->len) b->error = 1; /* trailing bytes */
        return 0;
    }
    if (b->len - b->pos < SPW_RECORD_HEADER) { b->error = 1; return 0; }
    const uint8_t *p = b->buf + b->pos;
    r->id = spw_get_u64(p);
    r->arrival_ms = (int64_t)spw_get_u64(p + 8);
    r->len = spw_get_u32(p + 16);
    if (r->len > b->len - b->pos - SPW_RECORD_HEADER) { b->error = 1; return 0; }
    r->data = p + SPW_RECORD_HEADER;
    b->pos += SPW_RECORD_HEADER + r->len;
    b->next++;
    return 1;
}

static inline void spw_batch_free(spw_batch *b) {
    free(b->buf);
    b->buf = NULL;
}

/* ---- building the output buffer ----
 *
 * spw_out_begin(); then per record spw_out_result() (or spw_out_ok / _dropped / _failed),
 * then its pieces (spw_out_piece, or spw_out_piece_begin + spw_out_append* + spw_out_piece_end,
 * or spw_out_piece_space for a piece of known length written in place),
 * then its partition keys (spw_out_key); finally spw_out_finish().
 * Any misuse or allocation failure sets o->error, and spw_out_finish() then returns 0
 * (the whole batch failed) instead of emitting a malformed buffer.
 */
typedef struct spw_out {
    uint8_t *buf;
    uint32_t len, cap;
    uint32_t count;     /* results written */
    uint32_t pieces_at; /* offset of the open result's piece_count; 0 = no open result */
    uint32_t piece_at;  /* offset of the open piece's length; 0 = no open piece */
    uint32_t keys_at;   /* offset of the open result's key_count; 0 = no key yet */
    uint32_t npieces;
    uint32_t nkeys;
    int error;
} spw_out;

/* The previous batch's output, freed when the next one begins. */
static uint8_t *spw__last_output;

static inline int spw__reserve(spw_out *o, uint32_t n) {
    if (o->error) return 0;
    if (n > SPW_MAX_OUTPUT_BYTES || o->len > SPW_MAX_OUTPUT_BYTES - n) { o->error = 1; return 0; }
    if (o->len + n <= o->cap) return 1;
    uint32_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + n) cap *= 2; /* <= 2 * SPW_MAX_OUTPUT_BYTES: no overflow */
    uint8_t *nb = (uint8_t *)realloc(o->buf, cap);
    if (nb == NULL) { o->error = 1; return 0; }
    o->buf = nb;
    o->cap = cap;
    return 1;
}

static inline void spw__bytes(spw_out *o, const void *p, uint32_t n) {
    if (n && spw__reserve(o, n)) { memcpy(o->buf + o->len, p, n); o->len += n; }
}
static inline void spw__u16(spw_out *o, uint16_t v) { uint8_t b[2]; spw_put_u16(b, v); spw__bytes(o, b, 2); }
static inline void spw__u32(spw_out *o, uint32_t v) { uint8_t b[4]; spw_put_u32(b, v); spw__bytes(o, b, 4); }
static inline void spw__u64(spw_out *o, uint64_t v) { uint8_t b[8]; spw_put_u64(b, v); spw__bytes(o, b, 8); }

/* size_hint: initial capacity (e.g. the batch length plus a little). */
static inline void spw_out_begin(spw_out *o, uint32_t size_hint) {
    free(spw__last_output);
    spw__last_output = NULL;
    memset(o, 0, sizeof *o);
    if (size_hint < SPW_OUTPUT_HEADER) size_hint = SPW_OUTPUT_HEADER;
    if (size_hint > SPW_MAX_OUTPUT_BYTES) size_hint = SPW_MAX_OUTPUT_BYTES;
    spw__reserve(o, size_hint);
    spw__u32(o, SPW_OUTPUT_MAGIC);
    spw__u32(o, 0); /* result_count, patched by spw_out_finish */
}

static inline void spw_out_piece_end(spw_out *o) {
    if (!o->piece_at) { o->error = 1; return; }
    if (!o->error) spw_put_u32(o->buf + o->piece_at, o->len - o->piece_at - 4);
    o->piece_at = 0;
}

static inline void spw__close_result(spw_out *o) {
    if (!o->pieces_at) return;
    if (o->piece_at) spw_out_piece_end(o);
    if (!o->keys_at) spw__u16(o, 0);
    if (!o->error) {
        spw_put_u32(o->buf + o->pieces_at, o->npieces);
        if (o->keys_at) spw_put_u16(o->buf + o->keys_at, (uint16_t)o->nkeys);
    }
    o->pieces_at = 0;
    o->keys_at = 0;
}

/* Starts the result for one input record. status: SPW_OK, SPW_DROPPED or SPW_FAILED. */
static inline void spw_out_result(spw_out *o, uint64_t id, uint8_t status) {
    spw__close_result(o);
    spw__u64(o, id);
    spw__bytes(o, &status, 1);
    if (o->error) return;
    o->pieces_at = o->len;
    spw__u32(o, 0); /* piece_count, patched on close */
    o->npieces = 0;
    o->nkeys = 0;
    o->count++;
}

/* Streaming piece: begin, append any number of times, end. */
static inline void spw_out_piece_begin(spw_out *o) {
    if (!o->pieces_at || o->keys_at) { o->error = 1; return; } /* pieces come before keys */
    if (o->piece_at) spw_out_piece_end(o);
    if (o->error) return;
    o->piece_at = o->len;
    spw__u32(o, 0);
    o->npieces++;
}
static inline void spw_out_append(spw_out *o, const void *p, uint32_t n) {
    if (!o->piece_at) { o->error = 1; return; }
    spw__bytes(o, p, n);
}
static inline void spw_out_append_str(spw_out *o, const char *s) {
    spw_out_append(o, s, (uint32_t)strlen(s));
}

/* A whole piece at once. */
static inline void spw_out_piece(spw_out *o, const void *p, uint32_t n) {
    spw_out_piece_begin(o);
    spw_out_append(o, p, n);
    spw_out_piece_end(o);
}

/* A whole piece of n bytes that the caller writes in place: returns where to write them, or
 * NULL after an error (which spw_out_finish reports). For a piece whose length is known
 * beforehand it saves streaming's checks and bookkeeping per append. The pointer is valid
 * until the next spw_out_* call. */
static inline uint8_t *spw_out_piece_space(spw_out *o, uint32_t n) {
    spw_out_piece_begin(o);
    if (o->error || !spw__reserve(o, n)) return NULL;
    uint8_t *at = o->buf + o->len;
    o->len += n;
    spw_out_piece_end(o);
    return o->error ? NULL : at;
}

/* A partition key of the open result (after its pieces). Checks the ABI's limits. */
static inline void spw_out_key(spw_out *o, const void *k, uint32_t klen, const void *v, uint32_t vlen) {
    if (!o->pieces_at || klen == 0 || klen > SPW_MAX_KEY_BYTES || vlen > SPW_MAX_VALUE_BYTES ||
        o->nkeys >= SPW_MAX_KEYS) {
        o->error = 1;
        return;
    }
    if (o->piece_at) spw_out_piece_end(o);
    if (!o->keys_at) {
        if (o->error) return;
        o->keys_at = o->len;
        spw__u16(o, 0);
    }
    spw__u16(o, (uint16_t)klen);
    spw__bytes(o, k, klen);
    spw__u16(o, (uint16_t)vlen);
    spw__bytes(o, v, vlen);
    o->nkeys++;
}
static inline void spw_out_key_str(spw_out *o, const char *k, const char *v) {
    spw_out_key(o, k, (uint32_t)strlen(k), v, (uint32_t)strlen(v));
}

/* Shorthands for the common cases. */
static inline void spw_out_ok(spw_out *o, uint64_t id, const void *data, uint32_t len) {
    spw_out_result(o, id, SPW_OK);
    spw_out_piece(o, data, len);
}
static inline void spw_out_dropped(spw_out *o, uint64_t id) { spw_out_result(o, id, SPW_DROPPED); }
static inline void spw_out_failed(spw_out *o, uint64_t id, const char *msg) {
    spw_out_result(o, id, SPW_FAILED);
    if (msg) {
        size_t n = strlen(msg);
        spw_out_piece(o, msg, (uint32_t)(n > SPW_MAX_ERROR_BYTES ? SPW_MAX_ERROR_BYTES : n));
    }
}

/* The return value for a failed batch (frees the batch buffer). */
static inline int64_t spw_fail_batch(spw_batch *b) {
    if (b) spw_batch_free(b);
    return 0;
}

/* Closes the output, frees the batch buffer and returns the value spillway_transform returns:
 * (out_ptr << 32) | out_len, or 0 if anything went wrong (the host then fails the whole batch). */
static inline int64_t spw_out_finish(spw_out *o, spw_batch *b) {
    spw__close_result(o);
    if (b) {
        if (b->error) o->error = 1;
        spw_batch_free(b);
    }
    if (o->error || o->buf == NULL) {
        free(o->buf);
        o->buf = NULL;
        return 0;
    }
    spw_put_u32(o->buf + 4, o->count);
    spw__last_output = o->buf;
    return (int64_t)(((uint64_t)(uint32_t)(uintptr_t)o->buf << 32) | o->len);
}

/* ---- misc ---- */

/* 1 if p[0..n) is well-formed UTF-8 (what the host requires of partition keys and values). */
static inline int spw_utf8_valid(const uint8_t *p, uint32_t n) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        uint32_t need, cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (n - i - 1 < need) return 0;
        for (uint32_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += need + 1;
    }
    return 1;
}

#endif /* SPILLWAY_PLUGIN_H */
