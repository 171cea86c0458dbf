/*
 * hostile/alloc_bomb: grows linear memory 1 MiB at a time, forever, never looking at
 * whether memory.grow succeeded, and writes to the last byte of each region it thinks
 * it got. Under a host memory limit the first refused grow turns that write into an
 * out-of-bounds trap with memory at (about) the limit; with no limit it eats 4 GiB.
 */
#include "spillway_plugin.h"

SPILLWAY_DEFINE_ABI()

#define STEP_PAGES 16 /* 1 MiB */

SPW_EXPORT(spillway_transform)
int64_t spillway_transform(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
    for (;;) {
        uintptr_t pages = __builtin_wasm_memory_size(0);
        (void)__builtin_wasm_memory_grow(0, STEP_PAGES);
        uintptr_t last = (pages + STEP_PAGES) * 65536u - 1;
        *(volatile uint8_t *)last = 0xAB;
    }
}
