/*
 * hostile/bad_pointer: hands the host pointers outside its own memory. Mode = config:
 *   "" or "output"  spillway_transform returns out_ptr 0xFFFF0000 (far past memory), len 64
 *   "straddle"      out_ptr = 8 bytes before the end of memory, len 64 (runs off the end)
 *   "alloc"         spillway_alloc (after init) returns 0xFFFFFFF0 for the host to write into
 */
#include "spillway_plugin.h"

enum { OUTPUT, STRADDLE, ALLOC };
static int mode = OUTPUT;

SPW_EXPORT(spillway_abi_version) int32_t spillway_abi_version(void) { return SPILLWAY_ABI_VERSION; }

SPW_EXPORT(spillway_alloc)
int32_t spillway_alloc(int32_t len) {
    if (mode == ALLOC) return (int32_t)0xFFFFFFF0u;
    return len <= 0 ? 0 : (int32_t)(uintptr_t)malloc((size_t)len);
}

SPW_EXPORT(spillway_init)
int32_t spillway_init(int32_t ptr, int32_t len) {
    const char *cfg = (const char *)(uintptr_t)(uint32_t)ptr;
    if (len == 8 && memcmp(cfg, "straddle", 8) == 0) mode = STRADDLE;
    else if (len == 5 && memcmp(cfg, "alloc", 5) == 0) mode = ALLOC;
    return 0;
}

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    (void)len;
    free((void *)(uintptr_t)(uint32_t)ptr);
    uint64_t out_ptr = 0xFFFF0000u;
    if (mode == STRADDLE) out_ptr = (uint64_t)__builtin_wasm_memory_size(0) * 65536u - 8;
    return (int64_t)((out_ptr << 32) | 64u);
}
