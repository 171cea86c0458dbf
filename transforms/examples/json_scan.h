/*
 * json_scan.h - a deliberately tiny JSON scanner shared by the example plugins.
 * Not part of the ABI. It walks the members of a top-level object without
 * building anything, checks nesting and string syntax, and leaves numbers and
 * literals loosely checked (a run of [0-9A-Za-z+-.]). Keys are compared in
 * their raw (still escaped) form, so "m\u0073g" is not "msg".
 */
#ifndef SPILLWAY_JSON_SCAN_H
#define SPILLWAY_JSON_SCAN_H

#include <stdint.h>
#include <string.h>

#define JS_MAX_DEPTH 64

static inline const uint8_t *js_ws(const uint8_t *p, const uint8_t *e) {
    /* Compact JSON has none: one test for the usual case, a byte above the space. */
    while (p < e && *p <= ' ' && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Byte classes for the scans outside strings: JS_LIT, a byte of a number or literal
 * ([0-9A-Za-z+-.]); JS_QUOTE; JS_OPEN ('{', '['); JS_CLOSE ('}', ']'); 0, anything else. */
enum { JS_LIT = 1, JS_QUOTE = 2, JS_OPEN = 3, JS_CLOSE = 4 };
static const uint8_t js_class[256] = {
    ['"'] = JS_QUOTE, ['{'] = JS_OPEN, ['['] = JS_OPEN, ['}'] = JS_CLOSE, [']'] = JS_CLOSE,
    ['+'] = JS_LIT, ['-'] = JS_LIT, ['.'] = JS_LIT,
    ['0'] = JS_LIT, ['1'] = JS_LIT, ['2'] = JS_LIT, ['3'] = JS_LIT, ['4'] = JS_LIT,
    ['5'] = JS_LIT, ['6'] = JS_LIT, ['7'] = JS_LIT, ['8'] = JS_LIT, ['9'] = JS_LIT,
    ['A'] = JS_LIT, ['B'] = JS_LIT, ['C'] = JS_LIT, ['D'] = JS_LIT, ['E'] = JS_LIT, ['F'] = JS_LIT,
    ['G'] = JS_LIT, ['H'] = JS_LIT, ['I'] = JS_LIT, ['J'] = JS_LIT, ['K'] = JS_LIT, ['L'] = JS_LIT,
    ['M'] = JS_LIT, ['N'] = JS_LIT, ['O'] = JS_LIT, ['P'] = JS_LIT, ['Q'] = JS_LIT, ['R'] = JS_LIT,
    ['S'] = JS_LIT, ['T'] = JS_LIT, ['U'] = JS_LIT, ['V'] = JS_LIT, ['W'] = JS_LIT, ['X'] = JS_LIT,
    ['Y'] = JS_LIT, ['Z'] = JS_LIT,
    ['a'] = JS_LIT, ['b'] = JS_LIT, ['c'] = JS_LIT, ['d'] = JS_LIT, ['e'] = JS_LIT, ['f'] = JS_LIT,
    ['g'] = JS_LIT, ['h'] = JS_LIT, ['i'] = JS_LIT, ['j'] = JS_LIT, ['k'] = JS_LIT, ['l'] = JS_LIT,
    ['m'] = JS_LIT, ['n'] = JS_LIT, ['o'] = JS_LIT, ['p'] = JS_LIT, ['q'] = JS_LIT, ['r'] = JS_LIT,
    ['s'] = JS_LIT, ['t'] = JS_LIT, ['u'] = JS_LIT, ['v'] = JS_LIT, ['w'] = JS_LIT, ['x'] = JS_LIT,
    ['y'] = JS_LIT, ['z'] = JS_LIT,
};

/* Nonzero if one of the 8 bytes of w is '"', '\\' or a control byte (< 0x20): the bytes a
 * string scan must stop at. The classic "has zero byte" test, applied to w ^ '"', w ^ '\\' and
 * w - 0x20; it may misplace the flag above a hit (borrows), never miss one, so a word it flags is
 * then scanned byte by byte. */
static inline uint64_t js_word_special(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w)) & highs;
}

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>

/* The stops of a string scan among the 16 bytes at p, as a bitmask: '"', '\\' and bytes < 0x20. */
static inline uint32_t js_stops16(const uint8_t *p) {
    v128_t v = wasm_v128_load(p);
    v128_t stop = wasm_v128_or(wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('"')),
                                            wasm_i8x16_eq(v, wasm_i8x16_splat('\\'))),
                               wasm_u8x16_lt(v, wasm_i8x16_splat(0x20)));
    return (uint32_t)wasm_i8x16_bitmask(stop);
}

/* p at the opening quote; returns the position after the closing quote, or NULL. Strings are
 * most of a JSON record: 16 bytes at a time, and the bitmask of the stops says where the first
 * one is. */
static inline const uint8_t *js_string_end(const uint8_t *p, const uint8_t *e) {
    p++;
    /* Most strings end within 16 bytes: the first block is looked at before the loop, each
     * entry of which costs a deadline (epoch) check in the compiled plugin. */
    if (e - p >= 16) {
        uint32_t bits = js_stops16(p);
        if (!bits) p += 16;
        else if (p[__builtin_ctz(bits)] == '"') return p + __builtin_ctz(bits) + 1;
    }
    while (p < e) {
        if (e - p >= 16) {
            uint32_t bits = js_stops16(p);
            if (!bits) { p += 16; continue; }
            p += __builtin_ctz(bits);
        }
        if (*p == '"') return p + 1;
        if (*p == '\\') { if (++p == e) return NULL; }
        else if (*p < 0x20) return NULL;
        p++;
    }
    return NULL;
}
#else
/* p at the opening quote; returns the position after the closing quote, or NULL. Skips 8 plain
 * bytes at a time: strings are most of a JSON record. */
static inline const uint8_t *js_string_end(const uint8_t *p, const uint8_t *e) {
    for (p++; p < e; p++) {
        while (e - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8); /* unaligned load; little-endian, as wasm is */
            if (js_word_special(w)) break;
            p += 8;
        }
        if (p == e) return NULL;
        if (*p == '"') return p + 1;
        if (*p == '\\') { if (++p == e) return NULL; }
        else if (*p < 0x20) return NULL;
    }
    return NULL;
}
#endif

/* p at the first byte of a value; returns the position after it, or NULL. */
static inline const uint8_t *js_value_end(const uint8_t *p, const uint8_t *e) {
    char stack[JS_MAX_DEPTH];
    int depth = 0;
    if (p >= e) return NULL;
    if (*p != '{' && *p != '[') {
        if (*p == '"') return js_string_end(p, e);
        const uint8_t *s = p;
        while (p < e && js_class[*p] == JS_LIT) p++;
        return p == s ? NULL : p;
    }
    while (p < e) {
        uint8_t c = *p;
        switch (js_class[c]) {
        case JS_QUOTE:
            if (!(p = js_string_end(p, e))) return NULL;
            continue;
        case JS_OPEN:
            if (depth == JS_MAX_DEPTH) return NULL;
            stack[depth++] = c == '{' ? '}' : ']';
            break;
        case JS_CLOSE:
            if (depth == 0 || stack[--depth] != c) return NULL;
            if (depth == 0) return p + 1;
            break;
        }
        p++;
    }
    return NULL;
}

typedef struct js_obj {
    const uint8_t *p, *e; /* cursor, end */
    const uint8_t *close; /* after the walk: the top-level '}' */
    uint32_t members;
    int state;            /* 0 first member, 1 later member, 2 done ok, -1 error */
} js_obj;

typedef struct js_member {
    const uint8_t *key_tok;   /* the key's opening quote */
    const uint8_t *key;       /* raw key bytes inside the quotes */
    uint32_t key_len;
    const uint8_t *val;       /* raw value token (strings keep their quotes) */
    uint32_t val_len;
} js_member;

/* 1 if data starts (after whitespace) with '{'. */
static inline int js_obj_open(js_obj *o, const uint8_t *data, uint32_t len) {
    o->e = data + len;
    o->p = js_ws(data, o->e);
    o->close = NULL;
    o->members = 0;
    o->state = -1;
    if (o->p == o->e || *o->p != '{') return 0;
    o->p++;
    o->state = 0;
    return 1;
}

/* 1: *m is the next member; 0: end of object (o->state 2 if the whole input was
 * one well-formed object plus whitespace, -1 if it was malformed). */
static inline int js_obj_next(js_obj *o, js_member *m) {
    const uint8_t *p, *e = o->e;
    if (o->state < 0 || o->state == 2) return 0;
    p = js_ws(o->p, e);
    if (p < e && *p == '}' && o->state == 0) goto close;
    if (o->state == 1) {
        if (p < e && *p == '}') goto close;
        if (p == e || *p != ',') goto bad;
        p = js_ws(p + 1, e);
    }
    if (p == e || *p != '"') goto bad;
    m->key_tok = p;
    m->key = p + 1;
    if (!(p = js_string_end(p, e))) goto bad;
    m->key_len = (uint32_t)(p - 1 - m->key);
    p = js_ws(p, e);
    if (p == e || *p != ':') goto bad;
    p = js_ws(p + 1, e);
    m->val = p;
    if (!(p = js_value_end(p, e))) goto bad;
    m->val_len = (uint32_t)(p - m->val);
    o->p = p;
    o->state = 1;
    o->members++;
    return 1;
close:
    o->close = p;
    if (js_ws(p + 1, e) != e) goto bad;
    o->state = 2;
    return 0;
bad:
    o->state = -1;
    return 0;
}

static inline int js_key_is(const js_member *m, const char *k) {
    size_t n = strlen(k);
    return m->key_len == n && memcmp(m->key, k, n) == 0;
}

/* The member's value is exactly the JSON string "s" (no escapes in s). */
static inline int js_val_is_str(const js_member *m, const char *s) {
    size_t n = strlen(s);
    return m->val_len == n + 2 && m->val[0] == '"' && memcmp(m->val + 1, s, n) == 0;
}

static inline int js_hex4(const uint8_t *p, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        uint32_t d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                   : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : 16;
        if (d == 16) return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

/* Decodes the raw string token s[0..n) (with its quotes) into out, which needs n bytes.
 * Returns the decoded length, or -1 on a bad escape / lone surrogate. */
static inline int32_t js_unescape(const uint8_t *s, uint32_t n, uint8_t *out) {
    uint32_t o = 0;
    const uint8_t *p = s + 1, *e = s + n - 1;
    while (p < e) {
        if (*p != '\\') { out[o++] = *p++; continue; }
        if (e - p < 2) return -1;
        uint8_t c = p[1];
        p += 2;
        switch (c) {
        case '"': case '\\': case '/': out[o++] = c; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (e - p < 4 || !js_hex4(p, &cp)) return -1;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || !js_hex4(p + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) out[o++] = (uint8_t)cp;
            else if (cp < 0x800) { out[o++] = 0xC0 | cp >> 6; out[o++] = 0x80 | (cp & 0x3F); }
            else if (cp < 0x10000) {
                out[o++] = 0xE0 | cp >> 12; out[o++] = 0x80 | ((cp >> 6) & 0x3F);
                out[o++] = 0x80 | (cp & 0x3F);
            } else {
                out[o++] = 0xF0 | cp >> 18; out[o++] = 0x80 | ((cp >> 12) & 0x3F);
                out[o++] = 0x80 | ((cp >> 6) & 0x3F); out[o++] = 0x80 | (cp & 0x3F);
            }
            break;
        }
        default: return -1;
        }
    }
    return (int32_t)o;
}

#endif /* SPILLWAY_JSON_SCAN_H */
