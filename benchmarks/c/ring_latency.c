/* Calibration for bench_ipc: one-way latency of the same C ring between two processes, no Python.
 * The producer sends a 64-byte record carrying its intended send time every `interval_ns` (open
 * loop); the consumer busy-polls and records now - stamp. Prints "p50 p99 p99.9 max" in ns.
 *
 * Usage: ring_latency N INTERVAL_NS [PIN]   (PIN=1: producer on the first allowed CPU, consumer
 * on the second)
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin_nth(int nth) {
    cpu_set_t set, one;
    if (sched_getaffinity(0, sizeof set, &set)) return;
    int seen = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        if (seen++ == nth) {
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            sched_setaffinity(0, sizeof one, &one);
            return;
        }
    }
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    uint64_t interval = argc > 2 ? strtoull(argv[2], NULL, 10) : 100000;
    int pin = argc > 3 ? atoi(argv[3]) : 1;
    uint64_t cap = 1u << 20;
    size_t size = nmq_ring_required_size(cap);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t *lat = mmap(NULL, (size_t)n * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || lat == MAP_FAILED || nmq_ring_init(mem, size, cap, NMQ_RING_SPSC)) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        if (pin) pin_nth(1);
        int err;
        nmq_ring *r = nmq_ring_attach(mem, size, &err);
        uint8_t buf[64];
        uint32_t len;
        for (long i = 0; i < n; i++) {
            while (nmq_ring_pop(r, buf, sizeof buf, &len) != 1) {
            }
            uint64_t stamp;
            memcpy(&stamp, buf, 8);
            lat[i] = now_ns() - stamp;
        }
        _exit(0);
    }
    if (pin) pin_nth(0);
    int err;
    nmq_ring *r = nmq_ring_attach(mem, size, &err);
    uint8_t buf[64] = {0};
    uint64_t start = now_ns() + 10000000;
    for (long i = 0; i < n; i++) {
        uint64_t due = start + (uint64_t)i * interval;
        while (now_ns() < due) {
        }
        memcpy(buf, &due, 8);
        while (nmq_ring_push(r, buf, sizeof buf) != 0) {
        }
    }
    waitpid(pid, NULL, 0);
    long skip = n / 20; /* warm-up */
    qsort(lat + skip, (size_t)(n - skip), 8, cmp);
    long m = n - skip;
    uint64_t *v = lat + skip;
    printf("%llu %llu %llu %llu\n", (unsigned long long)v[m / 2], (unsigned long long)v[m * 99 / 100],
           (unsigned long long)v[m * 999 / 1000], (unsigned long long)v[m - 1]);
    return 0;
}
