/* Driver of the group-commit threads (syncer.c) for the sanitizers (make sanitize): one appender
 * thread per log appends and requests syncs while the main thread, as the broker's loop does,
 * waits on the eventfd and takes results. It checks what syncer.h promises: every result names a
 * log that was requested, durable ids per log never go back and never pass what was appended,
 * a final request per log reaches everything appended (small segments: seals of rotated-out
 * segments run in the sync threads while the appenders rotate), and freeing with syncs queued
 * returns.
 * TSan checks the locking; ASan/UBSan the ring and table growth (indexes far apart).
 *
 *   test_syncer ROUNDS
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "record.h"
#include "syncer.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

enum { LOGS = 4 };
static const uint32_t INDEX[LOGS] = {0, 3, 200, 5000}; /* far apart: the tables grow */

typedef struct {
    nmq_log *log;
    nmq_syncer *syncer;
    uint32_t index;
    int rounds;
    _Atomic uint64_t appended; /* the last id appended so far */
    _Atomic uint64_t bound;    /* the last id of the append under way: no sync can pass it */
} appender;

/* One record of `size` payload bytes (header zeroed but size and CRC, as the log expects). */
static size_t record(uint8_t *r, uint32_t size, uint8_t fill) {
    memset(r, 0, 64 + size + 8);
    memcpy(r + 20, &size, 4);
    memset(r + 64, fill, size);
    uint32_t crc = nmq_record_crc(r, size);
    memcpy(r + 24, &crc, 4);
    return (64 + size + 7) & ~(size_t)7;
}

static void *append_loop(void *arg) {
    appender *a = arg;
    uint8_t buf[4096];
    for (int i = 0; i < a->rounds; i++) {
        uint32_t n = 1 + (uint32_t)(i % 7);
        size_t len = 0;
        for (uint32_t k = 0; k < n; k++) len += record(buf + len, (uint32_t)(i * 31 + k) % 300, (uint8_t)i);
        uint64_t first = 0, last = 0;
        /* stored before the append: a sync may cover its records before it returns */
        atomic_store(&a->bound, atomic_load(&a->appended) + n);
        CHECK(nmq_log_append(a->log, buf, len, n, 0, &first, &last) == 0);
        CHECK(last == atomic_load(&a->bound));
        atomic_store(&a->appended, last);
        if (i % 3 == 0) CHECK(nmq_syncer_request(a->syncer, a->log, a->index) == 0);
    }
    return NULL;
}

/* Take results for up to `ms` of waiting; checks each against what was appended. */
static void take_all(int efd, nmq_syncer *s, appender *apps, uint64_t *durable, int ms) {
    struct pollfd pfd = {.fd = efd, .events = POLLIN};
    if (poll(&pfd, 1, ms) <= 0) return;
    uint64_t v;
    CHECK(read(efd, &v, sizeof v) == sizeof v && v >= 1);
    nmq_sync_done out[8]; /* small: several takes per wake-up */
    uint32_t n;
    while ((n = nmq_syncer_take(s, out, 8)) > 0) {
        for (uint32_t i = 0; i < n; i++) {
            int j = 0;
            while (j < LOGS && INDEX[j] != out[i].index) j++;
            CHECK(j < LOGS);
            CHECK(out[i].rc == 0);
            CHECK(out[i].durable_id >= durable[j]);
            CHECK(out[i].durable_id <= atomic_load(&apps[j].bound));
            durable[j] = out[i].durable_id;
        }
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 2000;
    char dirs[LOGS][40];
    nmq_log *logs[LOGS];
    nmq_log_config cfg = {.segment_bytes = 1 << 16, .max_payload = 4096, .topic_id = 9, /* rotations */
                          .sync_policy = NMQ_SYNC_NEVER, .on_corrupt = NMQ_ON_CORRUPT_QUARANTINE};
    for (int j = 0; j < LOGS; j++) {
        snprintf(dirs[j], sizeof dirs[j], "/tmp/nanomq-test-syncer-XXXXXX");
        CHECK(mkdtemp(dirs[j]));
        nmq_recovery_report rep;
        CHECK(nmq_log_open(dirs[j], &cfg, &logs[j], &rep) == 0);
    }
    CHECK(nmq_syncer_new(-1, 2) == NULL && nmq_syncer_new(0, 0) == NULL && nmq_syncer_new(0, 65) == NULL);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(efd >= 0);
    nmq_syncer *s = nmq_syncer_new(efd, 3);
    CHECK(s);
    CHECK(nmq_syncer_request(s, logs[0], UINT32_MAX) == NMQ_LOG_EINVAL);
    CHECK(nmq_syncer_request(s, NULL, 1) == NMQ_LOG_EINVAL);

    appender apps[LOGS];
    pthread_t th[LOGS];
    uint64_t durable[LOGS] = {0};
    for (int j = 0; j < LOGS; j++) {
        apps[j] = (appender){.log = logs[j], .syncer = s, .index = INDEX[j], .rounds = rounds};
        atomic_init(&apps[j].appended, 0);
        atomic_init(&apps[j].bound, 0);
        CHECK(pthread_create(&th[j], NULL, append_loop, &apps[j]) == 0);
    }
    for (int i = 0; i < 50; i++) take_all(efd, s, apps, durable, 1);
    for (int j = 0; j < LOGS; j++) CHECK(pthread_join(th[j], NULL) == 0);

    /* a last request per log covers everything appended before it */
    for (int j = 0; j < LOGS; j++) CHECK(nmq_syncer_request(s, logs[j], INDEX[j]) == 0);
    for (int waited = 0;; waited++) {
        int done = 1;
        for (int j = 0; j < LOGS; j++) /* reached, and no sync still queued (AGAIN) */
            done &= durable[j] == atomic_load(&apps[j].appended) && !nmq_syncer_busy(s, INDEX[j]);
        if (done) break;
        CHECK(waited < 10000);
        take_all(efd, s, apps, durable, 10);
    }
    CHECK(!nmq_syncer_busy(s, 1u << 30)); /* beyond the tables */

    /* free with syncs queued and running: it returns, and the logs are still ours to close */
    uint8_t buf[512];
    for (int j = 0; j < LOGS; j++) {
        uint64_t first, last;
        size_t len = record(buf, 100, 1);
        CHECK(nmq_log_append(logs[j], buf, len, 1, 0, &first, &last) == 0);
        CHECK(nmq_syncer_request(s, logs[j], INDEX[j]) == 0);
    }
    nmq_syncer_free(s);
    for (int j = 0; j < LOGS; j++) {
        CHECK(nmq_log_close(logs[j], 1) == 0);
        nmq_log_free(logs[j]);
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dirs[j]);
        CHECK(system(cmd) == 0);
    }
    close(efd);
    printf("syncer: %d rounds x %d logs, durable ids checked\n", rounds, LOGS);
    return 0;
}
