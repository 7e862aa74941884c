/* Opening a log under hostile conditions, for AddressSanitizer/UBSan builds (make sanitize):
 *
 *   cc -O1 -g -std=gnu11 -fsanitize=address,undefined -Inanomq/_c/src tests/c/test_log_open.c \
 *      nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c -lpthread \
 *      -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc -o build/test_log_open_asan
 *
 * 1. Index files whose entry count wraps `64 + n * 24` (issue 10 item 13): each has a valid CRC
 *    and a size that the wrapped product matches. The open must reject the index and rebuild it
 *    from the segment (never overflow the heap nor loop forever), and every record must be there.
 * 2. Every allocation of nmq_log_open fails in turn, once and from then on (issue 10 item 16):
 *    the open must either succeed with every record, or fail with -ENOMEM without effect on the
 *    data (no record cut, no segment set aside as damaged), and an open after it must find every
 *    record. Leaks are reported by LeakSanitizer at exit. malloc/calloc/realloc are wrapped with
 *    the linker's --wrap, so the failures reach only the calls of the log and of this driver.
 */
#include "crc32c.h"
#include "log.h"
#include "record.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #c,     \
                    nmq_log_last_error());                                                 \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

/* ---- allocation failure injection ---------------------------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
static uint64_t g_allocs;   /* allocations seen since armed */
static uint64_t g_fail_at;  /* 0: none; else the g_fail_at-th allocation fails ... */
static int g_fail_rest;     /* ... and with this set, every one after it too */
static uint64_t g_failed;

static int fail_now(void) {
    if (!g_fail_at) return 0;
    uint64_t k = ++g_allocs;
    int f = k == g_fail_at || (g_fail_rest && k > g_fail_at);
    g_failed += f;
    return f;
}
void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { return fail_now() ? NULL : __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }

/* ---- helpers -------------------------------------------------------------------------------- */

/* Copy the files of directory `from` into a fresh directory `to` (removed first). */
static void copy_dir(const char *from, const char *to) {
    char a[1200], b[1200];
    DIR *d = opendir(to);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                snprintf(b, sizeof b, "%s/%s", to, e->d_name);
                CHECK(unlink(b) == 0);
            }
        closedir(d);
        CHECK(rmdir(to) == 0);
    }
    CHECK(mkdir(to, 0755) == 0);
    d = opendir(from);
    CHECK(d);
    struct dirent *e;
    static uint8_t buf[1 << 16];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(a, sizeof a, "%s/%s", from, e->d_name);
        snprintf(b, sizeof b, "%s/%s", to, e->d_name);
        int in = open(a, O_RDONLY), out = open(b, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        CHECK(in >= 0 && out >= 0);
        ssize_t n;
        while ((n = read(in, buf, sizeof buf)) > 0) CHECK(write(out, buf, (size_t)n) == n);
        CHECK(n == 0);
        close(in);
        close(out);
    }
    closedir(d);
}

static uint64_t count_named(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    CHECK(d);
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

static nmq_log_config config(void) {
    nmq_log_config cfg = {0};
    cfg.segment_bytes = 4096;
    cfg.max_payload = 65536;
    cfg.sync_policy = NMQ_SYNC_NEVER;
    cfg.on_corrupt = NMQ_ON_CORRUPT_QUARANTINE;
    cfg.index_interval = 128;
    return cfg;
}

/* Every record of the log is there, with ids 1..records, and CRCs that hold. */
static void check_all(nmq_log *log, uint64_t records) {
    uint64_t next = 1;
    for (;;) {
        const uint8_t *p;
        uint64_t len, first;
        nmq_seg *seg;
        int n = nmq_log_read(log, next, 64, 1 << 20, &p, &len, &first, &seg);
        CHECK(n >= 0);
        if (n == 0) break;
        CHECK(first == next);
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
        nmq_log_unpin(log, seg);
        next = first + (uint64_t)n;
    }
    CHECK(next == records + 1);
}

/* A log of many small segments (more than the first capacity of every array recovery grows). */
static uint64_t build(const char *dir, int clean) {
    nmq_log_config cfg = config();
    nmq_log *log;
    nmq_recovery_report rep;
    CHECK(nmq_log_open(dir, &cfg, &log, &rep) == 0);
    uint8_t payload[8 * 300], buf[8 * (64 + 300 + 8)]; /* payloads back to back */
    uint32_t lens[8];
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 7);
    uint64_t last = 0;
    for (int it = 0; it < 160; it++) {
        uint32_t count = 1 + (uint32_t)(it % 8);
        for (uint32_t i = 0; i < count; i++) lens[i] = (uint32_t)((it * 37 + i * 11) % 300);
        int64_t len = nmq_records_encode(buf, sizeof buf, payload, lens, NULL, NULL, count, 0, 0, 0, 0, 0, NULL);
        CHECK(len > 0);
        uint64_t f;
        CHECK(nmq_log_append(log, buf, (size_t)len, count, 0, &f, &last) == 0);
    }
    CHECK(nmq_log_sync(log, NULL) == 0);
    CHECK(nmq_log_close(log, clean) == 0);
    nmq_log_free(log);
    return last;
}

static void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- 1. index counts --------------------------------------------------------------------- */

static void wrapped_index_counts(const char *base, uint64_t records) {
    char work[512], src[512], idx[600];
    snprintf(work, sizeof work, "%s/idx", base);
    snprintf(src, sizeof src, "%s/clean", base);
    for (uint64_t k = 1; k < 8; k++) {
        copy_dir(src, work);
        /* the first sealed segment's index: its header, and one entry, is all the file holds */
        snprintf(idx, sizeof idx, "%s/%020u.idx", work, 1u);
        int fd = open(idx, O_RDWR);
        CHECK(fd >= 0);
        uint8_t b[64 + 24];
        CHECK(pread(fd, b, sizeof b, 0) == (ssize_t)sizeof b);
        /* 64 + n * 24 == 88 modulo 2^64 for n = 1 + k * 2^61 */
        uint64_t n = 1 + (k << 61);
        st64(b + 48, n);
        st32(b + 56, 0);
        st32(b + 56, nmq_crc32c(0, b, sizeof b));
        CHECK(ld64(b + 64) == 1);
        CHECK(ftruncate(fd, 0) == 0 && pwrite(fd, b, sizeof b, 0) == (ssize_t)sizeof b);
        close(fd);
        nmq_log_config cfg = config();
        nmq_log *log;
        nmq_recovery_report rep;
        CHECK(nmq_log_open(work, &cfg, &log, &rep) == 0);
        CHECK(rep.corruption == 0 && rep.quarantined_files == 0);
        CHECK(rep.indexes_rebuilt >= 1);
        CHECK(rep.records == records);
        check_all(log, records);
        CHECK(nmq_log_close(log, 1) == 0);
        nmq_log_free(log);
    }
    printf("ok: 7 index files with wrapped entry counts rejected, indexes rebuilt\n");
}

/* ---- 2. allocation failures ------------------------------------------------------------------ */

static void failing_allocations(const char *base, const char *variant, uint64_t records, int rest) {
    char work[512], src[512];
    snprintf(work, sizeof work, "%s/alloc", base);
    snprintf(src, sizeof src, "%s/%s", base, variant);
    nmq_log_config cfg = config();
    uint64_t opened = 0, refused = 0;
    for (uint64_t k = 1;; k++) {
        copy_dir(src, work);
        nmq_log *log = NULL;
        nmq_recovery_report rep;
        g_allocs = 0;
        g_failed = 0;
        g_fail_rest = rest;
        g_fail_at = k;
        int rc = nmq_log_open(work, &cfg, &log, &rep);
        g_fail_at = 0;
        uint64_t failed = g_failed;
        if (rc == 0) {
            opened++;
            CHECK(rep.corruption == 0);
            CHECK(rep.records == records);
            check_all(log, records);
            CHECK(nmq_log_close(log, 1) == 0);
            nmq_log_free(log);
        } else {
            refused++;
            CHECK(rc == -ENOMEM);
        }
        /* nothing was cut nor set aside, and the next open finds every record */
        CHECK(count_named(work, "quarantine") == 0);
        CHECK(nmq_log_open(work, &cfg, &log, &rep) == 0);
        CHECK(rep.corruption == 0 && rep.quarantined_files == 0 && rep.records == records);
        check_all(log, records);
        CHECK(nmq_log_close(log, 0) == 0);
        nmq_log_free(log);
        if (failed == 0) break; /* the open made fewer than k allocations: every one has failed */
    }
    printf("ok: %s log, allocations failing %s: %llu opens succeeded, %llu refused with ENOMEM\n", variant,
           rest ? "from the nth on" : "one at a time", (unsigned long long)opened, (unsigned long long)refused);
}

/* argv[1]: "index" or "alloc" runs that part only (default: both) */
int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : "";
    /* tmpfs when there is one: several hundred opens, each syncing files */
    struct stat sb;
    char base[64];
    snprintf(base, sizeof base, "%s/nmq-test-log-open-XXXXXX", stat("/dev/shm", &sb) == 0 ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(base));
    char dir[600], cmd[700];
    snprintf(dir, sizeof dir, "%s/clean", base);
    uint64_t records = build(dir, 1);
    CHECK(count_named(dir, ".log") > 32); /* more than 2 x 16 segments: every array grows twice */
    snprintf(dir, sizeof dir, "%s/unclean", base);
    CHECK(build(dir, 0) == records);
    if (strcmp(only, "alloc")) wrapped_index_counts(base, records);
    if (strcmp(only, "index")) {
        failing_allocations(base, "clean", records, 0);
        failing_allocations(base, "clean", records, 1);
        failing_allocations(base, "unclean", records, 0);
        failing_allocations(base, "unclean", records, 1);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    CHECK(system(cmd) == 0);
    return 0;
}
