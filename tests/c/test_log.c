/* Multi-threaded driver of the C log for ThreadSanitizer / AddressSanitizer builds:
 *
 *   cc -O1 -g -std=gnu11 -fsanitize=thread -Inanomq/_c/src tests/c/test_log.c \
 *      nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c -lpthread -o build/test_log_tsan
 *   ./build/test_log_tsan [seconds-ish iterations]
 *
 * One appender (with small segments, so it rotates constantly, and retention), two threads calling
 * sync() (group commit racing rotation), and one reader verifying every record it reads (CRC and
 * contiguous ids) and unpinning segments that retention may have retired. Then an unclean close,
 * a reopen, and a check that every id up to the last durable one is present.
 */
#include "log.h"
#include "record.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static nmq_log *g_log;
static atomic_int g_stop;
static atomic_ullong g_max_durable;

#define CHECK(c)                                                                  \
    do {                                                                          \
        if (!(c)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #c, \
                    nmq_log_last_error());                                        \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

static void *syncer(void *arg) {
    (void)arg;
    while (!atomic_load(&g_stop)) {
        uint64_t d = 0;
        CHECK(nmq_log_sync(g_log, &d) == 0);
        unsigned long long m = atomic_load(&g_max_durable);
        while (d > m && !atomic_compare_exchange_weak(&g_max_durable, &m, d)) {
        }
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    uint64_t next = 1;
    while (!atomic_load(&g_stop)) {
        const uint8_t *p;
        uint64_t len, first;
        nmq_seg *seg;
        int n = nmq_log_read(g_log, next, 64, 1 << 20, &p, &len, &first, &seg);
        CHECK(n >= 0);
        if (n == 0) continue;
        CHECK(first >= next); /* retention may have moved the start forward */
        uint64_t off = 0;
        for (int i = 0; i < n; i++) {
            uint64_t id;
            uint32_t size, crc;
            memcpy(&id, p + off, 8);
            memcpy(&size, p + off + 20, 4);
            memcpy(&crc, p + off + 24, 4);
            CHECK(id == first + (uint64_t)i);
            CHECK(nmq_record_crc(p + off, size) == crc);
            off += nmq_record_span(size);
        }
        CHECK(off == len);
        nmq_log_unpin(g_log, seg);
        next = first + (uint64_t)n;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 2000;
    char dir[] = "/tmp/nmq-test-log-XXXXXX";
    CHECK(mkdtemp(dir));
    nmq_log_config cfg = {0};
    cfg.segment_bytes = 64 * 1024;
    cfg.max_payload = 65536;
    cfg.sync_policy = NMQ_SYNC_ALWAYS;
    cfg.retention_bytes = 512 * 1024;
    nmq_recovery_report rep;
    CHECK(nmq_log_open(dir, &cfg, &g_log, &rep) == 0);

    uint8_t payload[2048];
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 31);
    uint32_t lens[16];
    uint8_t *buf = malloc(16 * (64 + 2048 + 8));
    pthread_t th[3];
    pthread_create(&th[0], NULL, syncer, NULL);
    pthread_create(&th[1], NULL, syncer, NULL);
    pthread_create(&th[2], NULL, reader, NULL);
    uint64_t expect = 1;
    for (int it = 0; it < iters; it++) {
        uint32_t count = 1 + (uint32_t)(it % 16);
        for (uint32_t i = 0; i < count; i++) lens[i] = (uint32_t)((it * 7 + i * 13) % 120);
        size_t total = 0;
        for (uint32_t i = 0; i < count; i++) total += lens[i];
        (void)total;
        int64_t len = nmq_records_encode(buf, 16 * (64 + 2048 + 8), payload, lens, NULL, NULL, count, 0, 0, 0, 0, 0, NULL);
        CHECK(len > 0);
        uint64_t f, l;
        CHECK(nmq_log_append(g_log, buf, (size_t)len, count, 0, &f, &l) == 0);
        CHECK(f == expect && l == expect + count - 1);
        expect = l + 1;
        if (it % 100 == 0) {
            uint64_t deleted;
            CHECK(nmq_log_retain(g_log, 0, &deleted) == 0);
        }
    }
    atomic_store(&g_stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    nmq_log_stats st;
    nmq_log_stats_get(g_log, &st);
    CHECK(st.next_id == expect);
    CHECK(st.durable_id >= atomic_load(&g_max_durable));
    uint64_t durable = st.durable_id;
    CHECK(nmq_log_close(g_log, 0) == 0);
    nmq_log_free(g_log);

    CHECK(nmq_log_open(dir, &cfg, &g_log, &rep) == 0);
    CHECK(rep.corruption == 0);
    CHECK(rep.next_id >= durable + 1);
    nmq_log_stats_get(g_log, &st);
    printf("ok: %llu records, durable %llu, %llu segments kept, recovery %s\n", (unsigned long long)(expect - 1),
           (unsigned long long)durable, (unsigned long long)st.segments, rep.clean ? "clean" : "unclean");
    CHECK(nmq_log_close(g_log, 1) == 0);
    nmq_log_free(g_log);
    free(buf);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}
