/* CRC-32C: SSE4.2 `crc32` instruction path plus a portable slicing-by-8 fallback, picked at run
 * time. The tables are built on first use under a once-flag so the library needs no init call. */
#include "crc32c.h"

#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[t][n] = c;
        }
    }
}

uint32_t nmq_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&table_once, build_table);
    const unsigned char *p = buf;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* little-endian hosts only: the wire format is little-endian too */
        w ^= crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^
              table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

/* Compiled for SSE4.2 only in this function, so the rest of the library runs on any x86-64.
 * One dependency chain of crc32q: latency 3 cycles, ~8 bytes per 3 cycles (≈ 8 GB/s at 3 GHz),
 * which already exceeds what the log and the network need. */
__attribute__((target("sse4.2"))) uint32_t nmq_crc32c_hw(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 32) {
        uint64_t a, b, d, e;
        memcpy(&a, p, 8); memcpy(&b, p + 8, 8); memcpy(&d, p + 16, 8); memcpy(&e, p + 24, 8);
        c = _mm_crc32_u64(c, a);
        c = _mm_crc32_u64(c, b);
        c = _mm_crc32_u64(c, d);
        c = _mm_crc32_u64(c, e);
        p += 32;
        len -= 32;
    }
    while (len >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        c = _mm_crc32_u64(c, a);
        p += 8;
        len -= 8;
    }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

int nmq_crc32c_hw_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#else
uint32_t nmq_crc32c_hw(uint32_t crc, const void *buf, size_t len) { return nmq_crc32c_sw(crc, buf, len); }
int nmq_crc32c_hw_available(void) { return 0; }
#endif

/* 0 = not decided yet, 1 = software, 2 = hardware. Relaxed is enough: every value is valid and
 * the choice only affects speed, never the result. */
static _Atomic int selected = 0;

int nmq_crc32c_select(int which) {
    int v;
    if (which == 1) v = 1;
    else if (which == 2) v = nmq_crc32c_hw_available() ? 2 : 1;
    else v = nmq_crc32c_hw_available() ? 2 : 1;
    atomic_store_explicit(&selected, v, memory_order_relaxed);
    return v;
}

uint32_t nmq_crc32c(uint32_t crc, const void *buf, size_t len) {
    int s = atomic_load_explicit(&selected, memory_order_relaxed);
    if (s == 0) s = nmq_crc32c_select(0);
    return s == 2 ? nmq_crc32c_hw(crc, buf, len) : nmq_crc32c_sw(crc, buf, len);
}
