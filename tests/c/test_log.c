/* Multi-threaded driver of the C log for ThreadSanitizer / AddressSanitizer builds:
 *
 *   cc -O1 -g -std=gnu11 -fsanitize=thread -Inanomq/_c/src tests/c/test_log.c \
 *      nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c -lpthread -o build/test_log_tsan
 *   ./build/test_log_tsan [seconds-ish iterations]
 *
 * One appender (with small segments, so it rotates constantly, and retention), two threads calling
 * sync() (group commit racing rotation), and one reader verifying every record it reads (CRC and
 * contiguous ids) and unpinning segments that retention may have retired. Then an unclean close,
 * a reopen, and a check that every id up to the last durable one is present. Finally a damage
 * phase (mainly for ASan/UBSan): random byte flips, garbage runs and truncations in segment, index
 * and checkpoint files, each followed by a reopen (quarantine mode) and a full CRC-checked read,
 * or a refused open: damaged input must never make recovery or reads touch memory out of bounds.
 */
#include "log.h"
#include "record.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

static nmq_log *g_log;
static uint8_t buf2[4 * (64 + 2048 + 8)];
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

    /* damage phase */
    unsigned seed = 12345;
    int damage_iters = argc > 2 ? atoi(argv[2]) : 300;
    int refused = 0, corrupt = 0, cut = 0, read_refused = 0;
    for (int it = 0; it < damage_iters; it++) {
        char names[64][300];
        int nn = 0;
        DIR *dd = opendir(dir);
        struct dirent *e;
        while ((e = readdir(dd)) && nn < 64) {
            if (strstr(e->d_name, ".log") || strstr(e->d_name, ".idx") || !strcmp(e->d_name, "checkpoint"))
                if (!strstr(e->d_name, "quarantine")) snprintf(names[nn++], 300, "%s/%s", dir, e->d_name);
        }
        closedir(dd);
        if (nn == 0) break;
        const char *victim = names[rand_r(&seed) % nn];
        int fd = open(victim, O_RDWR);
        struct stat stt;
        int what = rand_r(&seed) % 6;
        if (what == 4) { /* a file deleted (the last segment: ids lost at the end, NMQ-S9-8) */
            if (fd >= 0) close(fd);
            fd = -1;
            CHECK(unlink(victim) == 0);
        } else if (what == 5) { /* a stray file named like a segment (NMQ-S9-9) */
            char stray[300];
            uint8_t g[200];
            for (int k = 0; k < 200; k++) g[k] = (uint8_t)rand_r(&seed);
            snprintf(stray, sizeof stray, "%s/%020u.log", dir, (unsigned)(rand_r(&seed) % 40000));
            int sfd = open(stray, O_CREAT | O_WRONLY | O_TRUNC, 0644);
            CHECK(sfd >= 0 && write(sfd, g, sizeof g) == (ssize_t)sizeof g);
            close(sfd);
        } else if (fd >= 0 && fstat(fd, &stt) == 0 && stt.st_size > 0) {
            off_t pos = (off_t)(rand_r(&seed) % (unsigned)stt.st_size);
            if (what == 0) { /* flip one bit */
                uint8_t b;
                if (pread(fd, &b, 1, pos) == 1) { b ^= (uint8_t)(1u << (rand_r(&seed) % 8)); CHECK(pwrite(fd, &b, 1, pos) == 1); }
            } else if (what == 1) { /* a run of garbage */
                uint8_t g[256];
                for (int k = 0; k < 256; k++) g[k] = (uint8_t)rand_r(&seed);
                CHECK(pwrite(fd, g, 1 + rand_r(&seed) % 256, pos) > 0);
            } else if (what == 2) { /* truncate */
                CHECK(ftruncate(fd, pos) == 0);
            } else { /* a plausible-looking header with a huge size */
                uint8_t h[64] = {0};
                uint64_t id = 1 + (uint64_t)(rand_r(&seed) % 30000);
                uint32_t sz = 0xFFFFFFF0u;
                memcpy(h, &id, 8);
                memcpy(h + 20, &sz, 4);
                CHECK(pwrite(fd, h, sizeof h, pos & ~(off_t)7) == (ssize_t)sizeof h);
            }
        }
        if (fd >= 0) close(fd);
        nmq_log_config qc = cfg;
        qc.on_corrupt = (it % 3 == 0) ? NMQ_ON_CORRUPT_RAISE : NMQ_ON_CORRUPT_QUARANTINE;
        qc.verify_all = it % 2;
        qc.retention_bytes = 0;
        int orc = nmq_log_open(dir, &qc, &g_log, &rep);
        if (orc != 0) {
            CHECK(orc == NMQ_LOG_ECORRUPT || orc > -1000);
            refused++;
            continue;
        }
        corrupt += rep.corruption != 0;
        cut += rep.truncated_bytes != 0;
        uint64_t nxt = 0;
        for (;;) { /* read everything; a read may refuse damaged trusted bytes, never crash */
            const uint8_t *p;
            uint64_t len, first;
            nmq_seg *seg;
            int n = nmq_log_read(g_log, nxt, 1000, 1 << 22, &p, &len, &first, &seg);
            if (n < 0) read_refused++;
            if (n <= 0) break;
            uint64_t off = 0;
            for (int i = 0; i < n; i++) {
                uint32_t size, crc;
                memcpy(&size, p + off + 20, 4);
                memcpy(&crc, p + off + 24, 4);
                CHECK(nmq_record_crc(p + off, size) == crc);
                off += nmq_record_span(size);
            }
            nmq_log_unpin(g_log, seg);
            nxt = first + (uint64_t)n;
        }
        uint64_t id;
        nmq_log_find_ts(g_log, (uint64_t)rand_r(&seed) << 20, &id);
        if (it % 5 == 0) { /* appends still work after recovery */
            int64_t len = nmq_records_encode(buf2, sizeof buf2, payload, lens, NULL, NULL, 4, 0, 0, 0, 0, 0, NULL);
            uint64_t f, l;
            CHECK(nmq_log_append(g_log, buf2, (size_t)len, 4, 0, &f, &l) == 0);
        }
        CHECK(nmq_log_close(g_log, it % 2) == 0);
        nmq_log_free(g_log);
    }
    printf("damage phase: %d iterations ok (%d opens refused, %d corruptions quarantined, %d tails cut, "
           "%d reads refused)\n", damage_iters, refused, corrupt, cut, read_refused);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}
