/* The NanoMQ topic log (see log.h for the layout and threading contract, spec/storage.md for the
 * normative rules). Invariants maintained here:
 *
 *  I1  segs[0..nsegs) are contiguous: segs[i+1]->first_id == segs[i]->last_id + 1.
 *  I2  Only segs[nsegs-1] (the active segment) is written; it is preallocated to `cap` bytes and
 *      every byte of it at or beyond `size` is zero (recovery re-establishes this after a crash), so
 *      a zero id word marks the end of the log for any reader of the mapping.
 *  I3  Bytes below `size` never change once published; readers may use them without the mutex.
 *  I4  `durable_size` (per segment) and `durable_id` only grow, and only after a successful
 *      fdatasync covering them. Rotation does no I/O beyond creating the new segment: the old one
 *      becomes *unsealed* (the `unsealed` segments before the active one), and sync() seals them
 *      in order (fdatasync, index, truncation, directory fsync, checkpoint) before it syncs the
 *      active segment. So `durable_id` never passes the end of an unsealed segment, and the
 *      segments before the first unsealed one are fully durable, as are their directory entries
 *      and that of the segment after each (a seal fsyncs the directory after the next segment was
 *      created).
 *  I5  A segment's memory and fd live until it is retired (retention/close) *and* unpinned.
 *  Locks: sync_mu orders sync() callers (taken first); mu guards the segment list and the tail
 *  (taken second, never held across an fdatasync of sync()); seg_mu is a leaf guarding each
 *  segment's durable_size/redirty/fail_gen. Order: sync_mu -> mu -> seg_mu. Rotation, which runs
 *  under mu, therefore never takes sync_mu: its seal sync coordinates with sync() through seg_mu.
 */
#define _GNU_SOURCE
#include "log.h"
#include "crc32c.h"
#include "record.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define IDX_MAGIC "NMQIDX01"
#define CKPT_MAGIC "NMQCKPT1"
#define FILE_HDR 64u
#define IDX_ENTRY 24u

typedef struct {
    uint64_t id, ts, off;
} idx_entry;

struct nmq_seg {
    uint64_t first_id, last_id; /* last_id = first_id - 1 while empty */
    uint64_t first_ts, last_ts;
    uint64_t size;              /* bytes of published records */
    uint64_t cap;               /* mapped length */
    uint64_t durable_size;      /* guarded by log->seg_mu */
    int redirty;                /* a sync failed: rewrite [durable_size, size) before the next one */
    uint64_t fail_gen;          /* failed syncs so far: a sync that raced a failure proves nothing */
    int fd;
    uint8_t *map;
    idx_entry *idx;
    uint64_t nidx, idx_cap, idx_due;
    uint64_t trust_end;         /* records below this offset were accepted on open without a CRC
                                 * check (index or checkpoint): reads verify them lazily */
    int pins, retired;
    int sealing;                /* a seal_next() is writing its files: retention keeps it (mu) */
};

struct nmq_log {
    pthread_mutex_t mu, sync_mu, tmu, seg_mu;
    pthread_cond_t tcv;
    pthread_t syncer;
    int syncer_on, stop;
    nmq_log_config cfg;
    char dir[PATH_MAX];
    int dirfd, lockfd;
    nmq_seg **segs;
    uint64_t nsegs, segs_cap;
    uint8_t *stage_hdrs;      /* stamped headers of the batch being appended (appender only) */
    struct iovec *stage_iov;
    uint32_t stage_cap;
    uint64_t next_id, last_ts, total_bytes;
    uint64_t unsealed;        /* rotated-out segments before the active one not yet sealed (I4; mu) */
    _Atomic uint64_t durable_id;
    int last_sync_errno;
    int closed;
    /* Steps recovery could not finish for lack of space (NMQ-S10-8): the log opened read-only, and
     * every append first retries them, in this order, and fails without effect until they succeed. */
    uint64_t pend_q_from, pend_q_to; /* torn bytes of the active segment still to copy and zero */
    int pend_alloc;                  /* the active segment is still to preallocate */
    int pend_ckpt;                   /* the unclean checkpoint is still to write (NMQ-S5-3) */
    int pend_errno;
    _Atomic uint64_t fdatasyncs; /* group commits performed (fdatasync calls on the active segment) */
    long refs; /* 1 for the handle + one per pin */
};

/* ------------------------------------------------------------------------------------------ */
/* errors and fault injection                                                                   */

static __thread char g_err[512];
const char *nmq_log_last_error(void) { return g_err; }
#define SETERR(...) snprintf(g_err, sizeof g_err, __VA_ARGS__)

static _Atomic uint64_t f_nth[NMQ_FAULT_KINDS], f_count[NMQ_FAULT_KINDS], f_seen[NMQ_FAULT_KINDS];
static _Atomic int f_err[NMQ_FAULT_KINDS];

void nmq_log_fault_set(int kind, uint64_t nth, uint64_t count, int err) {
    if (kind <= 0 || kind >= NMQ_FAULT_KINDS) return;
    atomic_store(&f_seen[kind], 0);
    atomic_store(&f_count[kind], count);
    atomic_store(&f_err[kind], err);
    atomic_store(&f_nth[kind], nth);
}

void nmq_log_fault_clear(void) {
    for (int k = 0; k < NMQ_FAULT_KINDS; k++) atomic_store(&f_nth[k], 0);
}

/* Returns the errno to inject for this call of `kind`, or 0. */
static int fault(int kind) {
    uint64_t nth = atomic_load(&f_nth[kind]);
    if (!nth) return 0;
    uint64_t seen = atomic_fetch_add(&f_seen[kind], 1) + 1;
    uint64_t count = atomic_load(&f_count[kind]);
    if (seen >= nth && (count == 0 || seen < nth + count)) return atomic_load(&f_err[kind]);
    return 0;
}

static void slow_fault(void) {
    int us = fault(NMQ_FAULT_SLOW_FSYNC);
    if (us > 0) {
        struct timespec t = {us / 1000000, (long)(us % 1000000) * 1000};
        nanosleep(&t, NULL);
    }
}
static int x_fdatasync(int fd) {
    slow_fault();
    int e = fault(NMQ_FAULT_FSYNC);
    if (e) { errno = e; return -1; }
    return fdatasync(fd);
}
static int x_fsync(int fd) {
    slow_fault();
    int e = fault(NMQ_FAULT_FSYNC);
    if (e) { errno = e; return -1; }
    return fsync(fd);
}
static int x_ftruncate(int fd, off_t len) {
    int e = fault(NMQ_FAULT_FTRUNCATE);
    if (e) { errno = e; return -1; }
    return ftruncate(fd, len);
}
static int x_fallocate(int fd, off_t len) {
    int e = fault(NMQ_FAULT_FALLOCATE);
    if (e) { errno = e; return -1; }
    if (fallocate(fd, 0, 0, len) == 0) return 0;
    if (errno != EOPNOTSUPP) return -1;
    return ftruncate(fd, len); /* a filesystem without fallocate: sparse, ENOSPC may become SIGBUS */
}
/* Write all of buf at off (pwrite loop). */
static int x_pwrite_all(int fd, const uint8_t *buf, size_t len, off_t off) {
    int e = fault(NMQ_FAULT_WRITE);
    if (e) { errno = e; return -1; }
    while (len) {
        ssize_t n = pwrite(fd, buf, len, off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n; len -= (size_t)n; off += n;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* little helpers                                                                               */

static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}


static void seg_name(char *out, size_t n, uint64_t first_id, const char *ext) {
    snprintf(out, n, "%020llu.%s", (unsigned long long)first_id, ext);
}

static int fsync_dir(nmq_log *log) {
    return x_fsync(log->dirfd) ? -errno : 0;
}

/* Room for `extra` more index entries; -ENOMEM when the allocation fails or its size would not
 * fit in a size_t (never a wrapped, too small buffer). */
static int idx_reserve(nmq_seg *s, uint64_t extra) {
    const uint64_t max = SIZE_MAX / sizeof(idx_entry);
    if (extra > max - s->nidx) return -ENOMEM;
    uint64_t need = s->nidx + extra;
    if (need <= s->idx_cap) return 0;
    uint64_t cap = s->idx_cap ? s->idx_cap : 64;
    while (cap < need) cap = cap > max / 2 ? max : cap * 2;
    idx_entry *p = realloc(s->idx, (size_t)cap * sizeof *p);
    if (!p) return -ENOMEM;
    s->idx = p;
    s->idx_cap = cap;
    return 0;
}

static inline void idx_add(nmq_log *log, nmq_seg *s, uint64_t id, uint64_t ts, uint64_t off) {
    if (off >= s->idx_due) {
        s->idx[s->nidx++] = (idx_entry){id, ts, off};
        s->idx_due = off + log->cfg.index_interval;
    }
}

static void seg_destroy(nmq_seg *s) {
    if (s->map && s->map != MAP_FAILED) munmap(s->map, s->cap);
    if (s->fd >= 0) close(s->fd);
    free(s->idx);
    free(s);
}

static nmq_seg *seg_new(uint64_t first_id) {
    nmq_seg *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->first_id = first_id;
    s->last_id = first_id - 1;
    s->fd = -1;
    return s;
}

static int seg_map(nmq_seg *s, uint64_t cap) {
    if (s->map) munmap(s->map, s->cap);
    s->map = NULL;
    s->cap = 0;
    if (cap == 0) return 0;
    void *m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (m == MAP_FAILED) return -errno;
    s->map = m;
    s->cap = cap;
    return 0;
}

static void unpin_locked(nmq_log *log, nmq_seg *s, int *destroy_seg) {
    s->pins--;
    log->refs--;
    *destroy_seg = s->retired && s->pins == 0;
}

static void log_destroy(nmq_log *log) {
    pthread_mutex_destroy(&log->mu);
    pthread_mutex_destroy(&log->sync_mu);
    pthread_mutex_destroy(&log->seg_mu);
    pthread_mutex_destroy(&log->tmu);
    pthread_cond_destroy(&log->tcv);
    free(log->segs);
    free(log->stage_hdrs);
    free(log->stage_iov);
    free(log);
}

void nmq_log_unpin(nmq_log *log, nmq_seg *s) {
    if (!s) return;
    int destroy_seg;
    pthread_mutex_lock(&log->mu);
    unpin_locked(log, s, &destroy_seg);
    int destroy_log = log->refs == 0;
    pthread_mutex_unlock(&log->mu);
    if (destroy_seg) seg_destroy(s);
    if (destroy_log) log_destroy(log);
}

/* ------------------------------------------------------------------------------------------ */
/* index and checkpoint files                                                                   */

/* Write <seg>.idx atomically (tmp + fsync + rename). The caller fsyncs the directory. */
static int idx_write(nmq_log *log, nmq_seg *s) {
    char name[64], tmp[80];
    seg_name(name, sizeof name, s->first_id, "idx");
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    size_t len = FILE_HDR + s->nidx * IDX_ENTRY;
    uint8_t *b = calloc(1, len);
    if (!b) return -ENOMEM;
    memcpy(b, IDX_MAGIC, 8);
    st32(b + 8, 1);
    st32(b + 12, IDX_ENTRY);
    st64(b + 16, s->first_id);
    st64(b + 24, s->last_id);
    st64(b + 32, s->last_ts);
    st64(b + 40, s->size);
    st64(b + 48, s->nidx);
    for (uint64_t i = 0; i < s->nidx; i++) {
        uint8_t *e = b + FILE_HDR + i * IDX_ENTRY;
        st64(e, s->idx[i].id);
        st64(e + 8, s->idx[i].ts);
        st64(e + 16, s->idx[i].off);
    }
    st32(b + 56, nmq_crc32c(0, b, len));
    int rc = 0;
    int fd = openat(log->dirfd, tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) rc = -errno;
    if (!rc && x_pwrite_all(fd, b, len, 0)) rc = -errno;
    if (!rc && x_fsync(fd)) rc = -errno;
    if (fd >= 0) close(fd);
    if (!rc && renameat(log->dirfd, tmp, log->dirfd, name)) rc = -errno;
    if (rc) unlinkat(log->dirfd, tmp, 0);
    free(b);
    return rc;
}

/* Does a loaded index agree with its segment (NMQ-S4-3)? A CRC only proves the file is the one
 * written, not that it belongs to these bytes: the entries must be ordered and inside the valid
 * length, the header walk from the last entry must land exactly on that length with the index's
 * last id and timestamp, and the segment must end there (end of file, or a zero id word). The
 * walk covers at most one index interval of headers. */
static int idx_agrees(nmq_seg *s, uint64_t file_size) {
    uint64_t n = s->nidx, size = s->size;
    if (size > file_size || (size && !n) || (n && (s->idx[0].id != s->first_id || s->idx[0].off != 0))) return 0;
    for (uint64_t i = 1; i < n; i++)
        if (s->idx[i].id <= s->idx[i - 1].id || s->idx[i].off <= s->idx[i - 1].off || s->idx[i].ts < s->idx[i - 1].ts)
            return 0;
    if (n == 0) return s->last_id + 1 == s->first_id;
    if (s->idx[n - 1].off >= size) return 0;
    uint64_t off = s->idx[n - 1].off, id = s->idx[n - 1].id, ts = s->idx[n - 1].ts;
    while (off < size) {
        if (size - off < NMQ_HEADER_SIZE || ld64(s->map + off) != id) return 0;
        uint64_t sp = nmq_record_span(ld32(s->map + off + 20));
        if (sp > size - off) return 0;
        ts = ld64(s->map + off + 8);
        off += sp;
        id++;
    }
    if (id - 1 != s->last_id || ts != s->last_ts) return 0;
    return size == file_size || (file_size - size >= 8 && ld64(s->map + size) == 0);
}

/* Load <seg>.idx if it is valid and agrees with the segment file; 0 on success. The entry count
 * is checked against the file's size by division (n * 24 could wrap), so it is never more than
 * the entries the file holds. */
static int idx_load(nmq_log *log, nmq_seg *s, uint64_t file_size) {
    char name[64];
    seg_name(name, sizeof name, s->first_id, "idx");
    int fd = openat(log->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    uint8_t *b = NULL;
    int ok = 0;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)FILE_HDR && st.st_size < (1 << 30)) {
        b = malloc((size_t)st.st_size);
        if (b && pread(fd, b, (size_t)st.st_size, 0) == st.st_size) ok = 1;
    }
    close(fd);
    if (ok) {
        uint64_t n = ld64(b + 48), body = (uint64_t)st.st_size - FILE_HDR;
        uint32_t crc = ld32(b + 56);
        st32(b + 56, 0);
        ok = memcmp(b, IDX_MAGIC, 8) == 0 && ld32(b + 8) == 1 && ld32(b + 12) == IDX_ENTRY &&
             ld64(b + 16) == s->first_id && body % IDX_ENTRY == 0 && n == body / IDX_ENTRY &&
             nmq_crc32c(0, b, (size_t)st.st_size) == crc && ld64(b + 40) <= file_size &&
             ld64(b + 24) + 1 >= s->first_id && (n > 0 || ld64(b + 40) == 0);
        if (ok && n) ok = ld64(b + FILE_HDR) == s->first_id && ld64(b + FILE_HDR + 16) == 0;
        if (ok && idx_reserve(s, n) == 0) {
            for (uint64_t i = 0; i < n; i++) {
                const uint8_t *e = b + FILE_HDR + i * IDX_ENTRY;
                s->idx[i] = (idx_entry){ld64(e), ld64(e + 8), ld64(e + 16)};
            }
            s->nidx = n;
            s->last_id = ld64(b + 24);
            s->last_ts = ld64(b + 32);
            s->size = ld64(b + 40);
            s->first_ts = n ? s->idx[0].ts : 0;
            s->idx_due = n ? s->idx[n - 1].off + log->cfg.index_interval : 0;
            ok = idx_agrees(s, file_size);
        } else {
            ok = 0;
        }
    }
    free(b);
    return ok ? 0 : -1;
}

typedef struct {
    int valid, clean;
    uint64_t seg, off, next_id, last_ts;
} ckpt_t;

/* The checkpoint vouches that every id below `next_id` is durable and that recovery may start
 * scanning at segment `seg`, offset `off`. Callers serialize (open, the appender under mu with
 * no seal possible yet, seals under sync_mu, close under sync_mu). */
static int ckpt_write(nmq_log *log, int clean, uint64_t seg, uint64_t off, uint64_t next_id, uint64_t last_ts) {
    uint8_t b[FILE_HDR] = {0};
    memcpy(b, CKPT_MAGIC, 8);
    st32(b + 8, 1);
    st32(b + 12, clean ? 1 : 0);
    st64(b + 16, seg);
    st64(b + 24, off);
    st64(b + 32, next_id);
    st64(b + 40, last_ts);
    st32(b + 48, nmq_crc32c(0, b, FILE_HDR));
    int rc = 0;
    int fd = openat(log->dirfd, "checkpoint.tmp", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) rc = -errno;
    if (!rc && x_pwrite_all(fd, b, sizeof b, 0)) rc = -errno;
    if (!rc && x_fsync(fd)) rc = -errno;
    if (fd >= 0) close(fd);
    if (!rc && renameat(log->dirfd, "checkpoint.tmp", log->dirfd, "checkpoint")) rc = -errno;
    if (!rc) rc = fsync_dir(log);
    if (rc) unlinkat(log->dirfd, "checkpoint.tmp", 0);
    return rc;
}

static ckpt_t ckpt_read(nmq_log *log) {
    ckpt_t c = {0};
    uint8_t b[FILE_HDR];
    int fd = openat(log->dirfd, "checkpoint", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return c;
    ssize_t n = pread(fd, b, sizeof b, 0);
    close(fd);
    if (n != (ssize_t)sizeof b) return c;
    uint32_t crc = ld32(b + 48);
    st32(b + 48, 0);
    if (memcmp(b, CKPT_MAGIC, 8) || ld32(b + 8) != 1 || nmq_crc32c(0, b, FILE_HDR) != crc) return c;
    c.valid = 1;
    c.clean = ld32(b + 12) & 1;
    c.seg = ld64(b + 16);
    c.off = ld64(b + 24);
    c.next_id = ld64(b + 32);
    c.last_ts = ld64(b + 40);
    return c;
}

/* ------------------------------------------------------------------------------------------ */
/* sync                                                                                         */

static int seal_next(nmq_log *log, int *sealed);

/* Make s durable up to `upto` bytes. The caller keeps s alive (pin or mu). May run concurrently
 * for the same segment (a sync() leader and a rotation): shared state is under the leaf seg_mu,
 * and the fdatasync itself runs without it. */
static int seg_sync(nmq_log *log, nmq_seg *s, uint64_t upto) {
    pthread_mutex_lock(&log->seg_mu);
    uint64_t from = s->durable_size, gen = s->fail_gen;
    int redirty = s->redirty;
    pthread_mutex_unlock(&log->seg_mu);
    if (from >= upto && !redirty) return 0;
    if (redirty && upto > from) {
        /* After a failed fdatasync the kernel may have marked the pages clean without writing
         * them (the "fsyncgate" behaviour); rewriting the bytes from the mapping re-dirties them
         * so the next fdatasync really covers them. */
        if (x_pwrite_all(s->fd, s->map + from, upto - from, (off_t)from)) return -errno;
    }
    int rc = x_fdatasync(s->fd) ? -errno : 0;
    pthread_mutex_lock(&log->seg_mu);
    if (rc) {
        s->redirty = 1;
        s->fail_gen++;
    } else if (s->fail_gen == gen) {
        /* no failure raced this sync: it really covered [0, upto), rewritten range included */
        s->redirty = 0;
        if (upto > s->durable_size) s->durable_size = upto;
    } else {
        rc = -EIO; /* a concurrent sync failed meanwhile: the error may have been consumed there */
    }
    pthread_mutex_unlock(&log->seg_mu);
    return rc;
}

int nmq_log_sync(nmq_log *log, uint64_t *durable_id) {
    pthread_mutex_lock(&log->mu);
    if (log->closed) {
        pthread_mutex_unlock(&log->mu);
        return NMQ_LOG_ECLOSED;
    }
    nmq_seg *s = log->segs[log->nsegs - 1];
    uint64_t target_id = log->next_id - 1, target_size = s->size;
    if (atomic_load(&log->durable_id) >= target_id) {
        if (durable_id) *durable_id = atomic_load(&log->durable_id);
        pthread_mutex_unlock(&log->mu);
        return 0;
    }
    s->pins++;
    log->refs++;
    pthread_mutex_unlock(&log->mu);

    /* Group commit: whoever holds sync_mu syncs everything published so far; a caller that waited
     * behind it usually finds its target already covered and returns without a syscall. */
    pthread_mutex_lock(&log->sync_mu);
    int rc = 0;
    if (atomic_load(&log->durable_id) < target_id) {
        /* Leader: first seal the segments rotated out since the last sync (I4), then widen the
         * target to everything published by now, so the appenders that queued behind the previous
         * fdatasync are all covered by this one (the group). A rotation between the last seal and
         * the widening leaves a segment unsealed: seal again, so the active segment is synced only
         * when every earlier one is durable. */
        int sealed = 1;
        for (;;) {
            while (rc == 0 && sealed) rc = seal_next(log, &sealed); /* each sets its own error */
            if (rc) break;
            pthread_mutex_lock(&log->mu);
            if (log->closed) {
                pthread_mutex_unlock(&log->mu);
                rc = NMQ_LOG_ECLOSED;
                break;
            }
            if (log->unsealed == 0) break; /* with mu held */
            pthread_mutex_unlock(&log->mu);
            sealed = 1;
        }
        if (rc == 0) {
            nmq_seg *a = log->segs[log->nsegs - 1];
            a->pins++;
            log->refs++;
            int destroy_seg;
            unpin_locked(log, s, &destroy_seg); /* refs stays >= 1: we hold a's pin */
            if (destroy_seg) seg_destroy(s);
            s = a;
            target_id = log->next_id - 1;
            target_size = a->size;
            pthread_mutex_unlock(&log->mu);
            rc = seg_sync(log, s, target_size);
            atomic_fetch_add(&log->fdatasyncs, 1);
            if (rc == 0) {
                uint64_t d = atomic_load(&log->durable_id);
                while (d < target_id && !atomic_compare_exchange_weak(&log->durable_id, &d, target_id)) {
                }
            } else {
                SETERR("fdatasync of segment %020llu failed: %s", (unsigned long long)s->first_id, strerror(-rc));
            }
        }
    }
    pthread_mutex_unlock(&log->sync_mu);
    if (durable_id) *durable_id = atomic_load(&log->durable_id);
    nmq_log_unpin(log, s);
    return rc;
}

static void *syncer_main(void *arg) {
    nmq_log *log = arg;
    pthread_mutex_lock(&log->tmu);
    while (!log->stop) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        uint64_t ns = (uint64_t)t.tv_nsec + (uint64_t)log->cfg.interval_ms * 1000000ull;
        t.tv_sec += (time_t)(ns / 1000000000ull);
        t.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&log->tcv, &log->tmu, &t);
        if (log->stop) break;
        pthread_mutex_unlock(&log->tmu);
        int rc = nmq_log_sync(log, NULL);
        pthread_mutex_lock(&log->tmu);
        if (rc < 0 && rc > -1000) log->last_sync_errno = -rc;
        else if (rc == 0) log->last_sync_errno = 0;
    }
    pthread_mutex_unlock(&log->tmu);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* segments                                                                                     */

/* Create, preallocate and map a new empty segment file; the directory is fsynced so the file
 * itself survives a crash before anything in it is acknowledged. */
/* Create and map a segment file. `sync_dir`: fsync the directory so the file's entry is durable
 * at once; rotation passes 0 and leaves that to the seal of the segment before it (I4). */
static int seg_create(nmq_log *log, uint64_t first_id, uint64_t cap, int sync_dir, nmq_seg **out) {
    char name[64];
    seg_name(name, sizeof name, first_id, "log");
    nmq_seg *s = seg_new(first_id);
    if (!s) return -ENOMEM;
    int rc = 0;
    s->fd = openat(log->dirfd, name, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    if (s->fd < 0) rc = -errno;
    if (!rc && x_fallocate(s->fd, (off_t)cap)) rc = -errno;
    if (!rc) rc = seg_map(s, cap);
    if (!rc && sync_dir) rc = fsync_dir(log);
    if (rc) {
        SETERR("cannot create segment %s: %s", name, strerror(-rc));
        seg_destroy(s);
        unlinkat(log->dirfd, name, 0);
        return rc;
    }
    *out = s;
    return 0;
}

/* Give the empty active segment room for `cap` bytes. Caller holds mu, which every reader of the
 * segment list takes, and an empty segment has no record a reader could have pinned a view of, so
 * its mapping may be replaced. The new mapping is made before the old one is dropped: on failure
 * the segment is as it was. */
static int seg_grow_empty(nmq_log *log, nmq_seg *s, uint64_t cap) {
    if (x_fallocate(s->fd, (off_t)cap)) {
        int e = errno;
        SETERR("cannot grow segment %020llu to %llu bytes: %s", (unsigned long long)s->first_id,
               (unsigned long long)cap, strerror(e));
        return -e;
    }
    void *m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        SETERR("cannot map segment %020llu at %llu bytes: %s", (unsigned long long)s->first_id,
               (unsigned long long)cap, strerror(e));
        return -e;
    }
    if (s->map) munmap(s->map, s->cap);
    s->map = m;
    s->cap = cap;
    (void)log;
    return 0;
}

static int segs_push(nmq_log *log, nmq_seg *s) {
    if (log->nsegs == log->segs_cap) {
        uint64_t cap = log->segs_cap ? log->segs_cap * 2 : 16;
        nmq_seg **p = realloc(log->segs, cap * sizeof *p);
        if (!p) return -ENOMEM;
        log->segs = p;
        log->segs_cap = cap;
    }
    log->segs[log->nsegs++] = s;
    return 0;
}

/* The capacity of a segment that must hold a batch of `need` bytes: the configured segment size,
 * or for a larger batch (a batch is never split across segments, and the announced limits may
 * allow one larger than a segment: NMQ-S3-6) the batch rounded up to whole pages. */
static uint64_t seg_cap_for(const nmq_log *log, uint64_t need) {
    uint64_t cap = (need + 4095) & ~4095ull;
    return cap > log->cfg.segment_bytes ? cap : log->cfg.segment_bytes;
}

/* Start a new active segment with room for `need` bytes; the old one becomes unsealed, and the
 * next sync() seals it (I4): on the appender's thread (the broker's event loop) rotation only
 * creates and maps a file, it never waits for a disk flush. Caller holds mu. On failure nothing
 * changed. */
static int rotate(nmq_log *log, uint64_t need) {
    nmq_seg *s = NULL;
    if (log->nsegs == log->segs_cap) {
        int rc = segs_push(log, NULL); /* grow the array first so the final push cannot fail */
        if (rc) return rc;
        log->nsegs--;
    }
    int rc = seg_create(log, log->next_id, seg_cap_for(log, need), 0, &s);
    if (rc) return rc;
    (void)segs_push(log, s); /* cannot fail: the array was grown above */
    log->unsealed++;
    return 0;
}

/* Seal the oldest unsealed segment, if there is one (*sealed says): fdatasync it whole, write its
 * index, cut its preallocated tail, fsync the directory (which makes the entries of the segments
 * created after it durable too), move durable_id to its last id and the checkpoint past it.
 * Caller holds sync_mu (seals run one at a time, in order) and not mu: the appender keeps writing
 * the active segment meanwhile, and an unsealed segment is never written again (I2). */
static int seal_next(nmq_log *log, int *sealed) {
    *sealed = 0;
    pthread_mutex_lock(&log->mu);
    if (log->closed) { pthread_mutex_unlock(&log->mu); return NMQ_LOG_ECLOSED; }
    if (log->unsealed == 0) { pthread_mutex_unlock(&log->mu); return 0; }
    nmq_seg *o = log->segs[log->nsegs - 1 - log->unsealed];
    o->pins++;
    log->refs++;
    o->sealing = 1; /* retention must not delete its files while this seal writes its index */
    pthread_mutex_unlock(&log->mu);
    int rc = seg_sync(log, o, o->size);
    if (rc) {
        SETERR("sealing segment %020llu: fdatasync failed: %s", (unsigned long long)o->first_id, strerror(-rc));
    } else {
        /* the index and the truncation are optimisations recovery can do without (an unsealed
         * segment is scanned): their failure does not fail the seal */
        idx_write(log, o);
        x_ftruncate(o->fd, (off_t)o->size);
        if ((rc = fsync_dir(log)))
            SETERR("sealing segment %020llu: fsync of the directory failed: %s", (unsigned long long)o->first_id,
                   strerror(-rc));
    }
    if (rc == 0) {
        pthread_mutex_lock(&log->mu);
        log->unsealed--; /* o is still the oldest unsealed one: retention keeps a segment being sealed */
        o->sealing = 0;
        pthread_mutex_unlock(&log->mu);
        uint64_t d = atomic_load(&log->durable_id);
        while (d < o->last_id && !atomic_compare_exchange_weak(&log->durable_id, &d, o->last_id)) {
        }
        (void)ckpt_write(log, 0, o->last_id + 1, 0, o->last_id + 1, o->last_ts); /* retried by the next seal or close */
        *sealed = 1;
    }
    if (rc) {
        pthread_mutex_lock(&log->mu);
        o->sealing = 0;
        pthread_mutex_unlock(&log->mu);
    }
    nmq_log_unpin(log, o);
    return rc;
}

/* Writes go through pwritev, not memcpy into the mapping: on this VM a first store to each page of
 * a shared file mapping costs a page fault (~1-10 us per 4 KiB page: 0.4-4 GB/s, very noisy),
 * while pwrite copies into the page cache at 8-10 GB/s with no faults. Readers still use the
 * mapping (Linux's page cache is unified, so they see the written bytes). The headers are stamped
 * in a small staging array and the payloads are written straight from the caller's buffer: one
 * pwritev per batch, no extra copy. Returns 0 or -errno; on error some bytes may have been written. */
static int write_run(nmq_log *log, int fd, struct iovec *iov, int n, off_t off) {
    int e = fault(NMQ_FAULT_WRITE);
    if (e) return -e;
    while (n > 0) {
        int chunk = n < IOV_MAX ? n : IOV_MAX;
        ssize_t w = pwritev(fd, iov, chunk, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (w == 0) return -EIO;
        off += w;
        while (n > 0 && (size_t)w >= iov->iov_len) { /* drop the iovecs fully written */
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && w) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    (void)log;
    return 0;
}

static int stage_reserve(nmq_log *log, uint32_t count) {
    if (count <= log->stage_cap) return 0;
    uint8_t *h = realloc(log->stage_hdrs, (size_t)count * NMQ_HEADER_SIZE);
    if (!h) return -ENOMEM;
    log->stage_hdrs = h;
    struct iovec *v = realloc(log->stage_iov, (size_t)count * 2 * sizeof *v);
    if (!v) return -ENOMEM;
    log->stage_iov = v;
    log->stage_cap = count;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* append                                                                                       */

static int finish_pending(nmq_log *log);

int nmq_log_append(nmq_log *log, const uint8_t *buf, size_t len, uint32_t count, uint64_t ts_ns,
                   uint64_t *first_id, uint64_t *last_id) {
    if (count == 0 || len < NMQ_HEADER_SIZE || (len & 7u)) {
        SETERR("append needs count >= 1 and a length that is a multiple of 8 (got %u, %zu)", count, len);
        return NMQ_LOG_EBADREC;
    }
    if (len > NMQ_LOG_MAX_BATCH_BYTES) {
        SETERR("batch of %zu bytes exceeds the largest batch the log takes (%llu)", len,
               (unsigned long long)NMQ_LOG_MAX_BATCH_BYTES);
        return NMQ_LOG_ETOOBIG;
    }
    /* Framing check (the broker validated the records; the log must still never publish a run it
     * cannot walk, or readers and recovery would go astray). */
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (len - off < NMQ_HEADER_SIZE) { SETERR("record %u truncated", i); return NMQ_LOG_EBADREC; }
        uint32_t size = ld32(buf + off + 20);
        if (size > log->cfg.max_payload) { SETERR("record %u: payload %u > max %u", i, size, log->cfg.max_payload); return NMQ_LOG_EBADREC; }
        size_t span = nmq_record_span(size);
        if (len - off < span) { SETERR("record %u truncated", i); return NMQ_LOG_EBADREC; }
        uint8_t pad = 0; /* padding is stored as given and must be zero (recovery checks it) */
        for (size_t p = NMQ_HEADER_SIZE + size; p < span; p++) pad |= buf[off + p];
        if (pad) { SETERR("record %u: non-zero padding", i); return NMQ_LOG_EBADREC; }
        off += span;
    }
    if (off != len) { SETERR("%zu bytes after %u records", len - off, count); return NMQ_LOG_EBADREC; }

    pthread_mutex_lock(&log->mu);
    int rc = 0;
    if (log->closed) { rc = NMQ_LOG_ECLOSED; goto out; }
    if ((log->pend_q_to || log->pend_alloc || log->pend_ckpt) && (rc = finish_pending(log))) {
        SETERR("append: the log is read-only until recovery can finish (no space?): %s", strerror(-rc));
        goto out;
    }
    nmq_seg *s = log->segs[log->nsegs - 1];
    if (s->cap - s->size < len) {
        /* An empty active segment (a new log, or one recovered empty) is grown in place: a new
         * segment would need its first id, which is this one's. */
        rc = s->size == 0 ? seg_grow_empty(log, s, seg_cap_for(log, len)) : rotate(log, len);
        if (rc) goto out;
        s = log->segs[log->nsegs - 1];
    }
    if ((rc = idx_reserve(s, len / log->cfg.index_interval + 2))) goto out;
    if ((rc = stage_reserve(log, count))) goto out;
    uint64_t ts = ts_ns ? ts_ns : now_ns();
    if (ts < log->last_ts) ts = log->last_ts; /* clock stepped back: timestamps never decrease */
    uint64_t id0 = log->next_id;
    uint64_t nidx0 = s->nidx, due0 = s->idx_due;
    struct iovec *iov = log->stage_iov;
    off = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *r = buf + off;
        uint8_t *h = log->stage_hdrs + (size_t)i * NMQ_HEADER_SIZE;
        uint32_t size = ld32(r + 20);
        size_t span = nmq_record_span(size);
        uint64_t id = id0 + i;
        memcpy(h, r, NMQ_HEADER_SIZE);
        st64(h, id);
        st64(h + 8, ts);
        st32(h + 16, log->cfg.topic_id);
        st32(h + 24, 0);
        uint32_t c = nmq_crc32c(0, h, NMQ_HEADER_SIZE);
        st32(h + 24, nmq_crc32c(c, r + NMQ_HEADER_SIZE, size));
        idx_add(log, s, id, ts, s->size + off);
        iov[2 * i] = (struct iovec){h, NMQ_HEADER_SIZE};
        iov[2 * i + 1] = (struct iovec){(void *)(r + NMQ_HEADER_SIZE), span - NMQ_HEADER_SIZE};
        off += span;
    }
    /* The first record's id word is written as zero (I2: the end-of-log mark) and only stored,
     * with release ordering, once the whole run is in place: that store publishes the run to
     * readers of the mapping in any process. */
    st64(log->stage_hdrs, 0);
    rc = write_run(log, s->fd, iov, (int)(2 * count), (off_t)s->size);
    uint8_t *dst = s->map + s->size;
    if (rc) {
        memset(dst, 0, len); /* restore I2 over whatever part was written */
        s->nidx = nidx0;
        s->idx_due = due0;
        SETERR("append: write failed: %s", strerror(-rc));
        goto out;
    }
    atomic_store_explicit((_Atomic uint64_t *)(void *)dst, id0, memory_order_release);
    if (s->last_id < s->first_id) s->first_ts = ts;
    s->size += len;
    s->last_id = id0 + count - 1;
    s->last_ts = ts;
    log->next_id = id0 + count;
    log->last_ts = ts;
    log->total_bytes += len;
    if (first_id) *first_id = id0;
    if (last_id) *last_id = id0 + count - 1;
out:
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* read and find                                                                                */

/* Index of the segment holding id (caller holds mu; id within [first, next)). */
static uint64_t seg_for_id(nmq_log *log, uint64_t id) {
    uint64_t lo = 0, hi = log->nsegs - 1;
    while (lo < hi) {
        uint64_t mid = (lo + hi + 1) / 2;
        if (log->segs[mid]->first_id <= id) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Byte offset of record `id` inside s (id must be in s): nearest index entry, then header hops.
 * Returns UINT64_MAX if the walk meets a header that does not fit (damaged data that was trusted
 * from an index): hops are bounded by the segment, so damage can never send a reader astray. */
static uint64_t offset_of(nmq_seg *s, uint64_t id) {
    uint64_t lo = 0, hi = s->nidx, off = 0, cur = s->first_id;
    while (lo < hi) { /* last entry with entry.id <= id */
        uint64_t mid = (lo + hi) / 2;
        if (s->idx[mid].id <= id) lo = mid + 1;
        else hi = mid;
    }
    if (lo) { off = s->idx[lo - 1].off; cur = s->idx[lo - 1].id; }
    while (cur < id) {
        if (s->size - off < NMQ_HEADER_SIZE) return UINT64_MAX;
        uint64_t span = nmq_record_span(ld32(s->map + off + 20));
        if (span > s->size - off) return UINT64_MAX;
        off += span;
        cur++;
    }
    if (s->size - off < NMQ_HEADER_SIZE || ld64(s->map + off) != id) return UINT64_MAX;
    return off;
}

/* CRC and zero padding of a record (used on bytes trusted without a check at open). */
static int record_ok(const uint8_t *r, uint32_t size) {
    uint8_t pad = 0;
    for (uint64_t p = NMQ_HEADER_SIZE + (uint64_t)size; p < nmq_record_span(size); p++) pad |= r[p];
    return pad == 0 && nmq_record_crc(r, size) == ld32(r + 24);
}

static int corrupt_read(nmq_seg *s, uint64_t off, uint64_t id) {
    SETERR("record %llu in segment %020llu at offset %llu fails its check (CRC or framing); reopen the "
           "log with verify_all to quarantine the damage", (unsigned long long)id, (unsigned long long)s->first_id,
           (unsigned long long)off);
    return NMQ_LOG_ECORRUPT;
}

static uint64_t first_id_locked(nmq_log *log) {
    return log->segs[0]->first_id;
}

int nmq_log_read(nmq_log *log, uint64_t from_id, uint32_t max_records, uint64_t max_bytes,
                 const uint8_t **ptr, uint64_t *len, uint64_t *first_id, nmq_seg **seg) {
    *seg = NULL;
    *len = 0;
    *ptr = NULL;
    pthread_mutex_lock(&log->mu);
    if (log->closed) { pthread_mutex_unlock(&log->mu); return NMQ_LOG_ECLOSED; }
    uint64_t first = first_id_locked(log);
    if (from_id < first) from_id = first;
    *first_id = from_id;
    if (from_id >= log->next_id || max_records == 0) { pthread_mutex_unlock(&log->mu); return 0; }
    uint64_t si = seg_for_id(log, from_id);
    nmq_seg *s = log->segs[si];
    while (from_id > s->last_id && si + 1 < log->nsegs) {
        /* ids in a hole (lost at the end of the log, never reused: NMQ-S9-8) are skipped, as ids below
         * the first retained one are: the result's first_id says where the records start */
        s = log->segs[++si];
        from_id = s->first_id;
        *first_id = from_id;
    }
    if (from_id >= log->next_id) { pthread_mutex_unlock(&log->mu); return 0; }
    uint64_t start = offset_of(s, from_id), off = start;
    if (start == UINT64_MAX) {
        int rc = corrupt_read(s, 0, from_id);
        pthread_mutex_unlock(&log->mu);
        return rc;
    }
    uint32_t n = 0;
    while (n < max_records && off < s->size) {
        const uint8_t *r = s->map + off;
        uint32_t size = ld32(r + 20);
        uint64_t span = nmq_record_span(size);
        if (n && off + span - start > max_bytes) break;
        /* Lazy verification of trusted bytes: a record is never returned unless its CRC was
         * checked, at append, at recovery, or here. */
        if (span > s->size - off || ld64(r) != from_id + n ||
            (off < s->trust_end && !record_ok(r, size))) {
            if (n) break;
            int rc = corrupt_read(s, off, from_id);
            pthread_mutex_unlock(&log->mu);
            return rc;
        }
        off += span;
        n++;
    }
    s->pins++;
    log->refs++;
    pthread_mutex_unlock(&log->mu);
    *ptr = s->map + start;
    *len = off - start;
    *seg = s;
    return (int)n;
}

int nmq_log_find_ts(nmq_log *log, uint64_t ts, uint64_t *id) {
    pthread_mutex_lock(&log->mu);
    if (log->closed) { pthread_mutex_unlock(&log->mu); return NMQ_LOG_ECLOSED; }
    *id = log->next_id;
    uint64_t i = 0;
    while (i < log->nsegs && (log->segs[i]->last_id < log->segs[i]->first_id || log->segs[i]->last_ts < ts)) i++;
    if (i < log->nsegs) {
        nmq_seg *s = log->segs[i];
        /* timestamps are non-decreasing, so binary-search the index for the last entry < ts */
        uint64_t lo = 0, hi = s->nidx, off = 0, cur = s->first_id;
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (s->idx[mid].ts < ts) lo = mid + 1;
            else hi = mid;
        }
        if (lo) { off = s->idx[lo - 1].off; cur = s->idx[lo - 1].id; }
        while (cur <= s->last_id && s->size - off >= NMQ_HEADER_SIZE && ld64(s->map + off + 8) < ts) {
            uint64_t span = nmq_record_span(ld32(s->map + off + 20));
            if (span > s->size - off) break; /* damaged trusted data: reads will report it */
            off += span;
            cur++;
        }
        *id = cur;
    }
    pthread_mutex_unlock(&log->mu);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* retention                                                                                    */

/* Remove segs[0] from the log (files unlinked; memory freed once unpinned). Caller holds mu. */
static void drop_first(nmq_log *log) {
    nmq_seg *s = log->segs[0];
    char name[64];
    seg_name(name, sizeof name, s->first_id, "log");
    unlinkat(log->dirfd, name, 0);
    seg_name(name, sizeof name, s->first_id, "idx");
    unlinkat(log->dirfd, name, 0);
    log->total_bytes -= s->size;
    memmove(log->segs, log->segs + 1, (log->nsegs - 1) * sizeof *log->segs);
    log->nsegs--;
    s->retired = 1;
    if (s->pins == 0) seg_destroy(s);
}

/* The segments are unlinked under mu (they leave the list at once), but the directory fsync that
 * makes the unlinks durable runs after mu is released: appends take mu, and the event loop must
 * not wait for a directory fsync (issue 10 item 17). That is safe: the unlinked segments are
 * already out of the list, so nothing appended, read or sealed meanwhile refers to them; a new
 * segment never takes a deleted one's name (names are first ids, which only grow); and a crash
 * before the fsync can bring the files back exactly as a crash before it under mu could. sync_mu,
 * held throughout (taken first: sync_mu -> mu), keeps close() from closing dirfd under the fsync,
 * and orders it with the seals' own directory fsyncs; appends never take sync_mu. */
int nmq_log_retain(nmq_log *log, uint64_t now, uint64_t *deleted) {
    pthread_mutex_lock(&log->sync_mu);
    pthread_mutex_lock(&log->mu);
    if (log->closed) {
        pthread_mutex_unlock(&log->mu);
        pthread_mutex_unlock(&log->sync_mu);
        return NMQ_LOG_ECLOSED;
    }
    if (!now) now = now_ns();
    uint64_t n = 0;
    while (log->nsegs > 1) { /* never the active segment */
        nmq_seg *s = log->segs[0];
        int old = log->cfg.retention_ms > 0 && s->last_ts + (uint64_t)log->cfg.retention_ms * 1000000ull < now;
        int big = log->cfg.retention_bytes > 0 && log->total_bytes > (uint64_t)log->cfg.retention_bytes;
        int hole = s->last_id < s->first_id; /* a leading hole holds nothing (NMQ-S9-8) */
        if (!old && !big && !hole) break;
        if (s->sealing) break; /* being sealed right now: its turn comes at the next retention run */
        /* an unsealed segment may go too (nobody may have synced since it was rotated out): it
         * leaves the queue of seals with it (I4) */
        if (log->unsealed == log->nsegs - 1) log->unsealed--;
        drop_first(log);
        n++;
    }
    pthread_mutex_unlock(&log->mu);
    int rc = n ? fsync_dir(log) : 0;
    pthread_mutex_unlock(&log->sync_mu);
    if (deleted) *deleted = n;
    return rc;
}

int nmq_log_trim(nmq_log *log, uint64_t *trimmed_bytes) {
    /* MADV_DONTNEED on a MAP_SHARED file mapping only drops this process's page-table entries:
     * the pages stay in the page cache (dirty ones are written back as usual) and the next read
     * through the mapping maps them again. Nothing is lost, and views handed out stay valid. It
     * keeps the broker's resident size from growing with every segment a subscriber has read. */
    pthread_mutex_lock(&log->mu);
    if (log->closed) { pthread_mutex_unlock(&log->mu); return NMQ_LOG_ECLOSED; }
    uint64_t n = 0;
    for (uint64_t i = 0; i < log->nsegs; i++) {
        nmq_seg *s = log->segs[i];
        if (s->size && madvise(s->map, (size_t)s->cap, MADV_DONTNEED) == 0) n += s->size;
    }
    pthread_mutex_unlock(&log->mu);
    if (trimmed_bytes) *trimmed_bytes = n;
    return 0;
}

int nmq_log_stats_get(nmq_log *log, nmq_log_stats *st) {
    pthread_mutex_lock(&log->mu);
    memset(st, 0, sizeof *st);
    st->closed = log->closed;
    if (!log->closed) {
        st->first_id = first_id_locked(log);
        st->segments = log->nsegs;
    }
    st->next_id = log->next_id;
    st->durable_id = atomic_load(&log->durable_id);
    st->total_bytes = log->total_bytes;
    st->last_timestamp_ns = log->last_ts;
    st->fdatasyncs = atomic_load(&log->fdatasyncs);
    st->read_only_errno = (log->pend_q_to || log->pend_alloc || log->pend_ckpt) ? log->pend_errno : 0;
    pthread_mutex_unlock(&log->mu);
    pthread_mutex_lock(&log->tmu);
    st->last_sync_errno = log->last_sync_errno;
    pthread_mutex_unlock(&log->tmu);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* recovery                                                                                     */

/* SCAN_NOMEM: the index could not grow; recovery fails with -ENOMEM (never a cut: it is no damage) */
enum { SCAN_END = 0, SCAN_BAD = 1, SCAN_NOMEM = 2 };

/* Walk records of s from off to limit, expecting ids from *expect and timestamps >= *last_ts,
 * verifying CRCs when check_crc. Builds the sparse index. Returns where it stopped in *stop. */
static int scan(nmq_log *log, nmq_seg *s, uint64_t off, uint64_t limit, int check_crc, uint64_t *stop) {
    int rc = SCAN_END;
    uint64_t expect = s->last_id + 1;
    if (limit > off) {
        /* cold cache: ask for readahead of the whole range up front (page faults one by one read
         * the disk at a fraction of its bandwidth); a no-op for cached pages */
        uint64_t a = off & ~4095ull;
        madvise(s->map + a, limit - a, MADV_SEQUENTIAL);
        madvise(s->map + a, limit - a, MADV_WILLNEED);
    }
    while (limit - off >= NMQ_HEADER_SIZE) {
        const uint8_t *r = s->map + off;
        uint64_t id = ld64(r);
        if (id == 0) {
            /* an all-zero header is the end of the log (I2); anything else with id 0 is damage */
            int zero = 1;
            for (unsigned k = 0; k < NMQ_HEADER_SIZE; k += 8) zero &= ld64(r + k) == 0;
            rc = zero ? SCAN_END : SCAN_BAD;
            break;
        }
        uint32_t size = ld32(r + 20);
        uint64_t ts = ld64(r + 8);
        uint64_t span = nmq_record_span(size);
        if (id != expect || span > limit - off || (s->last_id >= s->first_id && ts < s->last_ts)) {
            rc = SCAN_BAD;
            break;
        }
        /* the padding is not covered by the CRC but must be zero: a flipped bit there is damage */
        uint64_t pad = 0;
        for (uint64_t p = NMQ_HEADER_SIZE + (uint64_t)size; p < span; p++) pad |= r[p];
        if (pad || (check_crc && nmq_record_crc(r, size) != ld32(r + 24))) {
            rc = SCAN_BAD;
            break;
        }
        if (idx_reserve(s, 1)) { rc = SCAN_NOMEM; break; }
        idx_add(log, s, id, ts, off);
        if (s->last_id < s->first_id) s->first_ts = ts;
        s->last_id = id;
        s->last_ts = ts;
        expect++;
        off += span;
    }
    s->size = off;
    *stop = off;
    return rc;
}

/* One past the last non-zero byte of s in [from, file_size), rounded up to 8. */
static uint64_t nonzero_end(nmq_seg *s, uint64_t from, uint64_t file_size) {
    uint64_t end = from;
    for (uint64_t p = from & ~7ull; p + 8 <= file_size; p += 8)
        if (ld64(s->map + p)) end = p + 8;
    return end;
}

/* Copy s[from, to) into <seg>.log.<from>.quarantine so cut bytes are never silently destroyed. */
static int quarantine_bytes(nmq_log *log, nmq_seg *s, uint64_t from, uint64_t to) {
    char name[96];
    snprintf(name, sizeof name, "%020llu.log.%llu.quarantine", (unsigned long long)s->first_id,
             (unsigned long long)from);
    int fd = openat(log->dirfd, name, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    int rc = x_pwrite_all(fd, s->map + from, to - from, 0) ? -errno : 0;
    if (!rc && x_fsync(fd)) rc = -errno;
    close(fd);
    if (rc) unlinkat(log->dirfd, name, 0); /* a partial copy is no copy */
    return rc;
}

static int quarantine_file(nmq_log *log, uint64_t first_id) {
    char name[64], q[96];
    seg_name(name, sizeof name, first_id, "log");
    snprintf(q, sizeof q, "%s.quarantine", name);
    if (renameat(log->dirfd, name, log->dirfd, q)) return -errno;
    seg_name(name, sizeof name, first_id, "idx");
    unlinkat(log->dirfd, name, 0);
    return 0;
}

/* Is the bad record at off a single damaged record followed by valid data (corruption) rather
 * than a torn tail? True when the next record after it is intact and carries the next id. */
static int followed_by_valid(nmq_seg *s, uint64_t off, uint64_t limit) {
    const uint8_t *r = s->map + off;
    uint64_t span = nmq_record_span(ld32(r + 20));
    uint64_t expect = s->last_id + 2;
    if (span > limit - off || limit - off - span < NMQ_HEADER_SIZE) return 0;
    const uint8_t *n = r + span;
    uint32_t size = ld32(n + 20);
    if (ld64(n) != expect || nmq_record_span(size) > limit - off - span) return 0;
    return nmq_record_crc(n, size) == ld32(n + 24);
}

static int load_segments(nmq_log *log, uint64_t **ids, uint64_t *n) {
    int fd = dup(log->dirfd);
    if (fd < 0) return -errno;
    DIR *d = fdopendir(fd);
    if (!d) { int e = errno; close(fd); return -e; }
    uint64_t cap = 16;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    if (!*ids) { closedir(d); return -ENOMEM; }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        size_t l = strlen(nm);
        int digits = l >= 20;
        for (int k = 0; digits && k < 20; k++) digits = nm[k] >= '0' && nm[k] <= '9';
        if (!digits) continue;
        if (l == 24 && strcmp(nm + 20, ".log") == 0) {
            if (*n == cap) {
                uint64_t *p = realloc(*ids, (cap *= 2) * sizeof **ids);
                if (!p) { free(*ids); *ids = NULL; closedir(d); return -ENOMEM; }
                *ids = p;
            }
            (*ids)[(*n)++] = strtoull(nm, NULL, 10);
        } else if (l == 28 && strcmp(nm + 20, ".idx.tmp") == 0) {
            unlinkat(log->dirfd, nm, 0);
        }
    }
    closedir(d);
    for (uint64_t i = 1; i < *n; i++) /* insertion sort: a topic has few segments */
        for (uint64_t j = i; j > 0 && (*ids)[j - 1] > (*ids)[j]; j--) {
            uint64_t t = (*ids)[j]; (*ids)[j] = (*ids)[j - 1]; (*ids)[j - 1] = t;
        }
    return 0;
}

static int open_seg_file(nmq_log *log, uint64_t first_id, nmq_seg **out, uint64_t *file_size) {
    char name[64];
    seg_name(name, sizeof name, first_id, "log");
    nmq_seg *s = seg_new(first_id);
    if (!s) return -ENOMEM;
    s->fd = openat(log->dirfd, name, O_RDWR | O_CLOEXEC);
    struct stat st;
    int rc = 0;
    if (s->fd < 0 || fstat(s->fd, &st)) rc = -errno;
    if (!rc) {
        /* round up: bytes past EOF within its page read as zero, so a torn odd-sized tail is seen */
        *file_size = ((uint64_t)st.st_size + 7) & ~7ull;
        rc = seg_map(s, *file_size);
    }
    if (rc) { seg_destroy(s); return rc; }
    *out = s;
    return 0;
}

static void report_corrupt(nmq_recovery_report *rep, int kind, nmq_seg *s, uint64_t off, const char *what) {
    if (rep->corruption) return;
    rep->corruption = kind;
    rep->corrupt_segment = s->first_id;
    rep->corrupt_offset = off;
    rep->corrupt_id = s->last_id + 1;
    snprintf(rep->message, sizeof rep->message, "%s in segment %020llu at offset %llu (expected id %llu)", what,
             (unsigned long long)s->first_id, (unsigned long long)off, (unsigned long long)(s->last_id + 1));
}

enum { PROBE_VALID = 0, PROBE_EMPTY = 1, PROBE_BAD = 2, PROBE_NOMEM = 3 };

/* What a segment file starts with (NMQ-S9-9): an intact record carrying the id of its name
 * (VALID), nothing (EMPTY: an empty file, or an all-zero first header), or anything else (BAD).
 * A file that cannot be read is VALID here: opening it in earnest reports it (`unreadable`).
 * NOMEM: no memory to read the first record, so no verdict (never BAD: that would set it aside). */
static int probe_segment(nmq_log *log, uint64_t first_id) {
    char name[64];
    seg_name(name, sizeof name, first_id, "log");
    int fd = openat(log->dirfd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return PROBE_VALID;
    if (fstat(fd, &st)) { close(fd); return PROBE_VALID; }
    uint8_t h[NMQ_HEADER_SIZE] = {0};
    ssize_t got = pread(fd, h, sizeof h, 0);
    int kind = PROBE_BAD, zero = 1;
    for (unsigned k = 0; k < sizeof h; k++) zero &= h[k] == 0;
    if (got < 0) kind = PROBE_VALID;
    else if (zero) kind = PROBE_EMPTY;
    else if (got == (ssize_t)sizeof h && first_id != 0 && ld64(h) == first_id) {
        uint32_t size = ld32(h + 20);
        uint64_t sp = nmq_record_span(size);
        if (size <= (1u << 30) && sp <= (uint64_t)st.st_size) {
            uint8_t *r = malloc(sp);
            if (!r) kind = PROBE_NOMEM;
            else if (pread(fd, r, sp, 0) == (ssize_t)sp && record_ok(r, size)) kind = PROBE_VALID;
            free(r);
        }
    }
    close(fd);
    return kind;
}

/* An all-zero header at `off` of the last segment is the end of the log only if no intact record
 * follows it (NMQ-S8-7): search the 8-aligned offsets after it, up to the last non-zero byte, for a
 * record with a later id (at most one per 64 bytes from `off`) whose length fits and whose CRC holds. */
static int record_after_zero(nmq_seg *s, uint64_t off, uint64_t file_size) {
    uint64_t expect = s->last_id + 1, end = nonzero_end(s, off, file_size);
    for (uint64_t q = off + NMQ_HEADER_SIZE; q + NMQ_HEADER_SIZE <= end; q += 8) {
        uint64_t id = ld64(s->map + q);
        if (id <= expect || id - expect > (q - off) / NMQ_HEADER_SIZE) continue;
        uint32_t size = ld32(s->map + q + 20);
        if (nmq_record_span(size) <= file_size - q && record_ok(s->map + q, size)) return 1;
    }
    return 0;
}

/* An empty segment file (no bytes at all): a hole standing for ids lost at the end of the log,
 * never handed out again (NMQ-S9-8). */
static int hole_create(nmq_log *log, uint64_t first_id, nmq_seg **out) {
    char name[64];
    seg_name(name, sizeof name, first_id, "log");
    nmq_seg *s = seg_new(first_id);
    if (!s) return -ENOMEM;
    s->fd = openat(log->dirfd, name, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        int rc = -errno;
        seg_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* The log ends at L but the checkpoint vouched for ids up to next - 1 (segments lost at the end,
 * NMQ-S9-3): seal the last segment, add an empty hole segment named L + 1 (or make the last
 * segment the hole when it is empty), and continue with a new active segment at `next`, so the
 * lost ids are never handed out again and the records before them stay readable (NMQ-S9-8). */
static int make_hole(nmq_log *log, uint64_t next) {
    nmq_seg *l = log->segs[log->nsegs - 1];
    int rc;
    char name[64];
    if (l->last_id >= l->first_id) {
        nmq_seg *h = NULL;
        if ((rc = seg_sync(log, l, l->size))) return rc;
        idx_write(log, l);
        x_ftruncate(l->fd, (off_t)l->size);
        if ((rc = hole_create(log, l->last_id + 1, &h))) return rc;
        if ((rc = segs_push(log, h))) { seg_destroy(h); return rc; }
    } else {
        /* an empty last segment: truncated to nothing it is the hole (a later open knows a hole by
         * its size 0, so this must succeed) */
        if (x_ftruncate(l->fd, 0)) return -errno;
        if ((rc = seg_map(l, 0))) return rc;
        seg_name(name, sizeof name, l->first_id, "idx");
        unlinkat(log->dirfd, name, 0);
    }
    nmq_seg *a = NULL;
    if ((rc = seg_create(log, next, log->cfg.segment_bytes, 1, &a))) return rc; /* fsyncs the directory */
    a->durable_size = 0;
    if ((rc = segs_push(log, a))) { seg_destroy(a); return rc; }
    return 0;
}

static int recover(nmq_log *log, nmq_recovery_report *rep) {
    uint64_t *ids = NULL, n = 0;
    int rc = load_segments(log, &ids, &n);
    if (rc) return rc;
    ckpt_t ck = ckpt_read(log);
    rep->clean = ck.valid && ck.clean;
    rep->checkpoint_used = ck.valid && !log->cfg.verify_all;
    int quarantine = log->cfg.on_corrupt == NMQ_ON_CORRUPT_QUARANTINE;
    /* NMQ-S9-9: a file named like a segment that is not one of this log's is set aside, so it cannot
     * take the log with it: a name of id 0, a file other than the last that does not begin with an
     * intact record carrying the id of its name, and such a last file beyond the checkpoint's
     * segment that does not continue the log. That last case is decided in the scan below: the
     * checkpoint moves past a segment only when it is sealed (I4), so after a crash the active
     * segment may lie beyond it with its first record torn (a write cut by SIGKILL); it is the
     * log's own when its name is the id after the segment before it. */
    uint64_t m = 0;
    int tail_suspect = 0; /* the last file, torn at its first record, beyond the checkpoint */
    for (uint64_t i = 0; i < n; i++) {
        int k = probe_segment(log, ids[i]);
        if (k == PROBE_NOMEM) {
            SETERR("recovery: out of memory reading segment %020llu", (unsigned long long)ids[i]);
            free(ids);
            return -ENOMEM;
        }
        int stray = ids[i] == 0 || (k == PROBE_BAD && i + 1 < n);
        if (!stray && k == PROBE_BAD && m > 0 && ck.valid && ids[i] > ck.seg) tail_suspect = 1;
        if (!stray) { ids[m++] = ids[i]; continue; }
        if (!quarantine) {
            rep->corruption = 1;
            rep->corrupt_segment = ids[i];
            snprintf(rep->message, sizeof rep->message, "segment file %020llu.log is not a segment of this log "
                     "(its first record is not an intact record with the id of its name)", (unsigned long long)ids[i]);
            SETERR("%s", rep->message);
            free(ids);
            return NMQ_LOG_ECORRUPT;
        }
        if (quarantine_file(log, ids[i]) == 0) {
            rep->quarantined_files++;
            rep->stray_files++;
        }
    }
    n = m;
    if (rep->stray_files) fsync_dir(log);
    uint64_t expect = 0;
    int prev_hole = 0;
    uint64_t cut_from = UINT64_MAX; /* index into ids[] from which segment files are quarantined */
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        nmq_seg *s = NULL;
        uint64_t fsize = 0;
        int is_last = i == n - 1;
        rc = open_seg_file(log, ids[i], &s, &fsize);
        if (rc) { SETERR("cannot open segment %020llu: %s", (unsigned long long)ids[i], strerror(-rc)); break; }
        if (is_last && tail_suspect && s->first_id != expect) { /* a stray after the log (NMQ-S9-9) */
            seg_destroy(s);
            if (!quarantine) {
                rep->corruption = 1;
                rep->corrupt_segment = ids[i];
                snprintf(rep->message, sizeof rep->message, "segment file %020llu.log is not a segment of this log "
                         "(its first record is not an intact record with the id of its name)", (unsigned long long)ids[i]);
                SETERR("%s", rep->message);
                rc = NMQ_LOG_ECORRUPT;
                break;
            }
            if (quarantine_file(log, ids[i]) == 0) {
                rep->quarantined_files++;
                rep->stray_files++;
            }
            fsync_dir(log);
            continue;
        }
        if (i > 0 && s->first_id != expect && !(prev_hole && s->first_id > expect)) {
            /* a later file with the expected id makes the ones before it strays (NMQ-S9-9) */
            uint64_t j = i + 1;
            while (j < n && ids[j] != expect) j++;
            if (j < n && quarantine) {
                seg_destroy(s);
                for (uint64_t k = i; k < j; k++)
                    if (quarantine_file(log, ids[k]) == 0) {
                        rep->quarantined_files++;
                        rep->stray_files++;
                    }
                fsync_dir(log);
                i = j - 1;
                continue;
            }
            report_corrupt(rep, 2, s, 0, "id gap: segment does not start at the next id");
            rep->corrupt_id = expect;
            snprintf(rep->message, sizeof rep->message, "id gap: segment %020llu does not start at the next id "
                     "%llu", (unsigned long long)s->first_id, (unsigned long long)expect);
            seg_destroy(s);
            cut_from = i;
            break;
        }
        int trusted = !log->cfg.verify_all && ck.valid && s->first_id <= ck.seg;
        int loaded = 0;
        int want_idx = trusted && (s->first_id < ck.seg || (ck.clean && s->first_id == ck.seg));
        if (want_idx && idx_load(log, s, fsize) == 0 && (s->first_id < ck.seg || s->size == ck.off)) {
            loaded = 1;
            rep->indexes_loaded++;
            rep->trusted_bytes += s->size;
            s->trust_end = s->size;
        }
        uint64_t stop = loaded ? s->size : 0; /* where the records end */
        int res = SCAN_END;
        if (!loaded) {
            if (want_idx || !is_last) rep->indexes_rebuilt++;
            if (want_idx) { /* a rejected index may have been half-filled: start from nothing */
                s->nidx = 0; s->idx_due = 0; s->size = 0; s->last_id = s->first_id - 1; s->last_ts = 0;
            }
            uint64_t tlimit = trusted ? (s->first_id < ck.seg ? fsize : (ck.off < fsize ? ck.off : fsize)) : 0;
            if (tlimit) {
                /* durable and checked before the checkpoint: walk headers without CRCs */
                res = scan(log, s, 0, tlimit, 0, &stop);
                rep->trusted_bytes += stop;
                s->trust_end = stop;
                if (res == SCAN_END && stop < tlimit && s->first_id == ck.seg) res = SCAN_BAD;
            }
            if (res == SCAN_END) {
                uint64_t from = stop;
                res = scan(log, s, from, fsize, 1, &stop);
                rep->verified_bytes += stop - from;
            }
            /* verify_all checks every byte, but what the checkpoint vouched for is still known:
             * records ending before its offset are damage (bad-record), not a torn tail, exactly as
             * without verify_all above [NMQ-S9-3] */
            if (res == SCAN_END && log->cfg.verify_all && ck.valid && s->first_id == ck.seg &&
                stop < (ck.off < fsize ? ck.off : fsize))
                res = SCAN_BAD;
        }
        if (res == SCAN_NOMEM) {
            rc = -ENOMEM;
            SETERR("recovery: out of memory indexing segment %020llu", (unsigned long long)s->first_id);
            seg_destroy(s);
            break;
        }
        /* NMQ-S8-7: a zeroed header with intact records after it is damage, not the end of the log
         * (a crash never zeroes a published header; a dying writer leaves a non-zero header behind
         * a zero id word) */
        int zero_hdr = 0;
        if (res == SCAN_END && is_last && !loaded && stop + NMQ_HEADER_SIZE <= fsize && record_after_zero(s, stop, fsize)) {
            res = SCAN_BAD;
            zero_hdr = 1;
        }
        int corrupt_here = 0;
        if (res == SCAN_BAD) {
            /* bytes the checkpoint vouched for were durable: damage there is never a torn write */
            int vouched = ck.valid && (s->first_id < ck.seg || (s->first_id == ck.seg && stop < ck.off));
            /* A zero id word over a non-zero header is a run whose writer died before publishing
             * it (NMQ-S6-3): the rest of the run may be complete and valid, yet it was never
             * visible, so it is a torn tail whatever follows it. */
            int unpublished = !zero_hdr && stop + 8 <= fsize && ld64(s->map + stop) == 0;
            int torn = !zero_hdr && is_last && !vouched && (unpublished || !followed_by_valid(s, stop, fsize));
            if (!torn) {
                report_corrupt(rep, 1, s, stop, "record fails its check (bad CRC, id or length)");
                corrupt_here = 1;
                cut_from = i + 1;
            }
        }
        if (corrupt_here && log->cfg.on_corrupt == NMQ_ON_CORRUPT_RAISE) { seg_destroy(s); break; }
        /* Restore I2 after a cut, and after any unclean shutdown of the last segment: stale bytes
         * beyond the tail (an unsynced torn write) must not survive to be misread later. */
        if (res == SCAN_BAD || (is_last && (!rep->clean || log->cfg.verify_all))) {
            uint64_t end = nonzero_end(s, stop, fsize);
            if (end > stop) {
                /* keep a copy: nothing is silently destroyed. Without space for it the bytes stay
                 * (the log ends at `stop` all the same) and appends wait (NMQ-S10-8). */
                int qrc = quarantine_bytes(log, s, stop, end);
                if (qrc == -ENOSPC || qrc == -EDQUOT) {
                    log->pend_q_from = stop;
                    log->pend_q_to = end;
                    log->pend_errno = -qrc;
                } else if (qrc) {
                    rc = qrc;
                    SETERR("recovery: cannot save the %llu bytes cut from segment %020llu: %s",
                           (unsigned long long)(end - stop), (unsigned long long)s->first_id, strerror(-qrc));
                    seg_destroy(s);
                    break;
                }
                rep->quarantined_files += qrc == 0;
                rep->truncated_bytes += end - stop;
                if (!rep->truncated_segment) {
                    rep->truncated_segment = s->first_id;
                    rep->truncated_offset = stop;
                    if (!rep->corruption)
                        snprintf(rep->message, sizeof rep->message,
                                 "cut a torn tail of %llu bytes in segment %020llu at offset %llu (kept in a "
                                 ".quarantine file)", (unsigned long long)(end - stop),
                                 (unsigned long long)s->first_id, (unsigned long long)stop);
                }
                if (qrc == 0) memset(s->map + stop, 0, end - stop);
            }
        }
        /* After an unclean shutdown, data that survived only in the page cache (SIGKILL) is not yet
         * durable: sync it before the checkpoint below vouches for it. */
        if (!rep->clean && (!ck.valid || s->first_id >= ck.seg) && x_fdatasync(s->fd)) {
            rc = -errno;
            SETERR("recovery: fdatasync of segment %020llu: %s", (unsigned long long)s->first_id, strerror(errno));
            seg_destroy(s);
            break;
        }
        expect = s->last_id + 1;
        prev_hole = fsize == 0 && s->last_id < s->first_id;
        s->durable_size = s->size;
        if ((rc = segs_push(log, s))) { seg_destroy(s); break; }
        log->total_bytes += s->size;
        if (corrupt_here) break;
    }
    if (rc == 0 && !rep->corruption && ck.valid && log->nsegs > 0) {
        /* Every id below the checkpoint's next id was durable when it was written: if the log now
         * ends earlier, segment files are missing at the end (deleted or lost), and appending
         * would hand out those ids again. */
        nmq_seg *l = log->segs[log->nsegs - 1];
        if (l->last_id + 1 < ck.next_id) {
            uint64_t lost = l->last_id + 1;
            report_corrupt(rep, 2, l, l->size, "segments missing at the end of the log");
            snprintf(rep->message, sizeof rep->message,
                     "segments missing at the end of the log: it ends at id %llu but the checkpoint vouches "
                     "for ids up to %llu; ids %llu..%llu are never handed out again, the log continues at id %llu",
                     (unsigned long long)l->last_id, (unsigned long long)(ck.next_id - 1), (unsigned long long)lost,
                     (unsigned long long)(ck.next_id - 1), (unsigned long long)ck.next_id);
            if (quarantine && (rc = make_hole(log, ck.next_id)))
                SETERR("recovery: cannot continue the log after lost ids at %llu: %s", (unsigned long long)ck.next_id,
                       strerror(-rc));
        }
    }
    if (rc == 0 && rep->corruption && log->cfg.on_corrupt == NMQ_ON_CORRUPT_RAISE) {
        SETERR("%s", rep->message);
        rc = NMQ_LOG_ECORRUPT;
    }
    if (rc == 0 && cut_from != UINT64_MAX) {
        for (uint64_t i = cut_from; i < n; i++) {
            if (quarantine_file(log, ids[i]) == 0) rep->quarantined_files++;
        }
        fsync_dir(log);
    }
    free(ids);
    if (rc) return rc;
    if (log->nsegs == 0) {
        /* empty directory, or every segment gone: ids never go back (the checkpoint remembers) */
        uint64_t start = ck.valid && ck.next_id > 1 ? ck.next_id : 1;
        nmq_seg *s = NULL;
        if ((rc = seg_create(log, start, log->cfg.segment_bytes, 1, &s))) return rc;
        s->durable_size = 0;
        if ((rc = segs_push(log, s))) { seg_destroy(s); return rc; }
    }
    nmq_seg *a = log->segs[log->nsegs - 1];
    if (a->cap < log->cfg.segment_bytes) {
        /* the last segment was sealed (truncated) or short: preallocate it again to write into.
         * Without space it is mapped at full size all the same (reads stay below its end) and
         * appends wait for the preallocation (NMQ-S10-8). */
        if (x_fallocate(a->fd, (off_t)log->cfg.segment_bytes)) {
            if (errno != ENOSPC && errno != EDQUOT) return -errno;
            log->pend_alloc = 1;
            log->pend_errno = errno;
        }
        if ((rc = seg_map(a, log->cfg.segment_bytes))) return rc;
    }
    {
        /* the active segment's index is rewritten at clean close; a stale one must never be trusted */
        char name[64];
        seg_name(name, sizeof name, a->first_id, "idx");
        unlinkat(log->dirfd, name, 0);
    }
    log->next_id = a->last_id + 1;
    /* timestamps never decrease (NMQ-S3-5), also across an empty active segment or a restart */
    log->last_ts = ck.valid ? ck.last_ts : 0;
    for (uint64_t i = 0; i < log->nsegs; i++)
        if (log->segs[i]->last_id >= log->segs[i]->first_id && log->segs[i]->last_ts > log->last_ts)
            log->last_ts = log->segs[i]->last_ts;
    atomic_store(&log->durable_id, log->next_id - 1);
    for (uint64_t i = 0; i < log->nsegs; i++) rep->records += log->segs[i]->last_id + 1 - log->segs[i]->first_id;
    rep->segments = log->nsegs;
    rep->bytes = log->total_bytes;
    rep->first_id = log->segs[0]->first_id;
    rep->next_id = log->next_id;
    /* From now on a crash is not a clean shutdown: replace the marker before accepting appends.
     * Without space for it, appends wait until it is written (NMQ-S5-3, NMQ-S10-8). */
    if (log->pend_q_to || log->pend_alloc) {
        log->pend_ckpt = 1;
        return 0;
    }
    rc = ckpt_write(log, 0, a->first_id, a->size, log->next_id, log->last_ts);
    if (rc == -ENOSPC || rc == -EDQUOT) {
        log->pend_ckpt = 1;
        log->pend_errno = -rc;
        return 0;
    }
    return rc;
}

/* Finish what recovery left for lack of space (caller holds mu); 0 when the log is writable. */
static int finish_pending(nmq_log *log) {
    nmq_seg *a = log->segs[log->nsegs - 1];
    int rc;
    if (log->pend_q_to > log->pend_q_from) {
        if ((rc = quarantine_bytes(log, a, log->pend_q_from, log->pend_q_to))) return rc;
        memset(a->map + log->pend_q_from, 0, log->pend_q_to - log->pend_q_from);
        if (x_fdatasync(a->fd) || fsync_dir(log)) return -errno;
        log->pend_q_from = log->pend_q_to = 0;
    }
    if (log->pend_alloc) {
        if (x_fallocate(a->fd, (off_t)log->cfg.segment_bytes)) return -errno;
        log->pend_alloc = 0;
    }
    if (log->pend_ckpt) {
        if ((rc = ckpt_write(log, 0, a->first_id, a->size, log->next_id, log->last_ts))) return rc;
        log->pend_ckpt = 0;
    }
    log->pend_errno = 0;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* open / close                                                                                 */

int nmq_log_open(const char *dir, const nmq_log_config *cfg, nmq_log **out, nmq_recovery_report *rep) {
    uint64_t t0 = mono_ns();
    memset(rep, 0, sizeof *rep);
    g_err[0] = 0;
    if (cfg->segment_bytes < 4096 || cfg->segment_bytes > (1ull << 40) || cfg->max_payload > (1u << 30) ||
        cfg->sync_policy < 0 || cfg->sync_policy > 2 || (cfg->sync_policy == NMQ_SYNC_INTERVAL && cfg->interval_ms == 0)) {
        SETERR("invalid log configuration");
        return NMQ_LOG_EINVAL;
    }
    if (mkdir(dir, 0755) && errno != EEXIST) { SETERR("mkdir %s: %s", dir, strerror(errno)); return -errno; }
    nmq_log *log = calloc(1, sizeof *log);
    if (!log) return -ENOMEM;
    log->cfg = *cfg;
    log->cfg.segment_bytes = (cfg->segment_bytes + 4095) & ~4095ull;
    if (!log->cfg.index_interval) log->cfg.index_interval = 4096;
    snprintf(log->dir, sizeof log->dir, "%s", dir);
    pthread_mutex_init(&log->mu, NULL);
    pthread_mutex_init(&log->sync_mu, NULL);
    pthread_mutex_init(&log->seg_mu, NULL);
    pthread_mutex_init(&log->tmu, NULL);
    pthread_cond_init(&log->tcv, NULL);
    log->refs = 1;
    log->lockfd = -1;
    int rc = 0;
    log->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dirfd < 0) rc = -errno;
    if (!rc) {
        log->lockfd = openat(log->dirfd, "lock", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
        if (log->lockfd < 0) rc = -errno;
        else if (flock(log->lockfd, LOCK_EX | LOCK_NB)) {
            rc = errno == EWOULDBLOCK ? NMQ_LOG_ELOCKED : -errno;
            if (rc == NMQ_LOG_ELOCKED) SETERR("%s is locked by another process", dir);
        }
    }
    if (!rc) rc = recover(log, rep);
    if (!rc && cfg->sync_policy == NMQ_SYNC_INTERVAL) {
        if (pthread_create(&log->syncer, NULL, syncer_main, log)) rc = -EAGAIN;
        else log->syncer_on = 1;
    }
    rep->duration_ns = mono_ns() - t0;
    if (rc) {
        if (!g_err[0]) SETERR("opening log %s: %s", dir, rc > -1000 ? strerror(-rc) : "error");
        for (uint64_t i = 0; i < log->nsegs; i++) seg_destroy(log->segs[i]);
        if (log->lockfd >= 0) close(log->lockfd);
        if (log->dirfd >= 0) close(log->dirfd);
        log_destroy(log);
        return rc;
    }
    *out = log;
    return 0;
}

int nmq_log_close(nmq_log *log, int clean) {
    /* stop the interval syncer first: it takes mu and sync_mu itself */
    pthread_mutex_lock(&log->tmu);
    int join = log->syncer_on;
    log->syncer_on = 0;
    log->stop = 1;
    pthread_cond_broadcast(&log->tcv);
    pthread_mutex_unlock(&log->tmu);
    if (join) pthread_join(log->syncer, NULL);
    int rc = 0;
    if (clean) rc = nmq_log_sync(log, NULL); /* seals every rotated-out segment too (I4) */
    pthread_mutex_lock(&log->sync_mu); /* no seal of another thread's sync() writes the checkpoint now */
    pthread_mutex_lock(&log->mu);
    if (log->closed) {
        pthread_mutex_unlock(&log->mu);
        pthread_mutex_unlock(&log->sync_mu);
        return rc == NMQ_LOG_ECLOSED ? 0 : rc;
    }
    /* torn bytes not yet copied to a quarantine file must be found again by the next recovery:
     * no clean checkpoint then (NMQ-S10-8); nor while a segment is unsealed */
    if (clean && rc == 0 && !log->pend_q_to && log->unsealed == 0) {
        nmq_seg *a = log->segs[log->nsegs - 1];
        rc = idx_write(log, a);
        if (rc == 0) rc = ckpt_write(log, 1, a->first_id, a->size, log->next_id, log->last_ts);
    }
    log->closed = 1;
    for (uint64_t i = 0; i < log->nsegs; i++) {
        nmq_seg *s = log->segs[i];
        s->retired = 1;
        if (s->pins == 0) seg_destroy(s);
    }
    log->nsegs = 0;
    if (log->lockfd >= 0) close(log->lockfd); /* releases the flock */
    if (log->dirfd >= 0) close(log->dirfd);
    log->lockfd = log->dirfd = -1;
    pthread_mutex_unlock(&log->mu);
    pthread_mutex_unlock(&log->sync_mu);
    return rc;
}

uint64_t nmq_log_unsealed(nmq_log *log) {
    pthread_mutex_lock(&log->mu);
    uint64_t n = log->unsealed;
    pthread_mutex_unlock(&log->mu);
    return n;
}

void nmq_log_free(nmq_log *log) {
    if (!log) return;
    nmq_log_close(log, 0);
    pthread_mutex_lock(&log->mu);
    long refs = --log->refs;
    pthread_mutex_unlock(&log->mu);
    if (refs == 0) log_destroy(log);
}

/* Change the retention of an open log (the broker's per-topic setting, NMQ-ADM-3-8): the next
 * nmq_log_retain applies it. Under mu, which nmq_log_retain holds while it reads the settings. */
int nmq_log_set_retention(nmq_log *log, int64_t retention_ms, int64_t retention_bytes) {
    if (!log) return NMQ_LOG_EINVAL;
    pthread_mutex_lock(&log->mu);
    log->cfg.retention_ms = retention_ms;
    log->cfg.retention_bytes = retention_bytes;
    pthread_mutex_unlock(&log->mu);
    return 0;
}
