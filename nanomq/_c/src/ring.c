/* NanoMQ ring buffer: see ring.h for the layout and the publication protocol. */
#define _GNU_SOURCE
#include "ring.h"

#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LINE 128 /* two cache lines: the adjacent-line prefetcher pulls pairs */

struct nmq_ring_hdr {
    /* Immutable after init; magic is written last with release so an opener that acquires a
     * valid magic sees every other field. */
    _Atomic uint64_t magic;
    uint32_t version;
    uint32_t mode;
    uint64_t capacity;
    uint32_t max_record;
    uint32_t hdr_size;
    uint32_t max_producers;
    /* Producer side: next free byte. SPSC: written by the one producer (release/seq_cst).
     * MPSC: the claim counter, advanced by CAS. */
    _Alignas(LINE) _Atomic uint64_t tail;
    /* Consumer side: first unconsumed byte. Written only by the consumer. */
    _Alignas(LINE) _Atomic uint64_t head;
    /* Wake-up for a sleeping consumer: futex word bumped by a producer that sees the flag. */
    _Alignas(LINE) _Atomic uint32_t data_seq;
    _Atomic uint32_t consumer_waiting;
    /* Wake-up for producers sleeping on a full ring (a count: several may wait in MPSC). */
    _Alignas(LINE) _Atomic uint32_t space_seq;
    _Atomic uint32_t producers_waiting;
    /* Peer table: who holds which role, for liveness checks done by the caller. */
    _Alignas(LINE) _Atomic uint32_t consumer_pid;
    _Atomic uint32_t consumers_ever;
    _Atomic uint32_t consumers_closed;
    _Atomic uint32_t producers_ever;
    _Atomic uint32_t producers_closed;
    _Atomic uint32_t producer_pid[NMQ_RING_MAX_PRODUCERS];
};

_Static_assert(sizeof(struct nmq_ring_hdr) <= NMQ_RING_HDR_SIZE, "ring header too large");

struct nmq_ring {
    struct nmq_ring_hdr *h;
    uint8_t *data;
    /* copies of the immutable header fields, validated once at attach (never re-read) */
    uint64_t cap, mask;
    uint32_t max_rec, mode, max_prod;
    /* producer-local state (one cache line) */
    _Alignas(64) uint64_t p_tail;  /* SPSC: our own tail (the shared one is only ever stored) */
    uint64_t p_head_cache;         /* last head we saw: the ring has at least this much room */
    uint64_t claim_end;
    uint8_t *claim_frame;
    uint32_t claim_len;
    int claiming;
    /* consumer-local state (another line) */
    _Alignas(64) uint64_t c_head;  /* our read position, may run ahead of the published head */
    uint64_t c_head_pub;           /* last head value stored to shared memory */
    uint64_t c_tail_cache;         /* SPSC: last tail we saw: at least this much is readable */
    uint8_t *peek_frame;
    int peeking;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t frame_size(uint32_t len) { return (8u + (uint64_t)len + 7u) & ~7ull; }

static inline _Atomic uint32_t *frame_size_word(uint8_t *f) { return (_Atomic uint32_t *)f; }
static inline uint32_t *frame_len_word(uint8_t *f) { return (uint32_t *)(f + 4); }

/* Bytes a frame of `fsz` needs at position `pos`: itself plus a padding frame when it would
 * straddle the end of the data area (records are always contiguous). */
static inline uint64_t need_at(const nmq_ring *r, uint64_t pos, uint64_t fsz, uint64_t *pad) {
    uint64_t contig = r->cap - (pos & r->mask);
    if (contig < fsz) {
        *pad = contig;
        return contig + fsz;
    }
    *pad = 0;
    return fsz;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    /* Not FUTEX_PRIVATE: the word lives in memory shared between processes. EAGAIN (value changed),
     * EINTR (signal) and ETIMEDOUT all just return to the caller's re-check. */
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Called by a producer right after publishing (tail or a frame's size, stored seq_cst).
 * Dekker pattern with the consumer's "store waiting=1 (seq_cst); re-check readable": in the single
 * total order of seq_cst operations either we see waiting=1 and wake it, or it sees our data and
 * does not sleep. The common case (consumer not sleeping) costs one load of a line that is only
 * written when the consumer goes to sleep. */
static inline void wake_consumer(nmq_ring *r) {
    if (atomic_load_explicit(&r->h->consumer_waiting, memory_order_seq_cst)) {
        atomic_fetch_add_explicit(&r->h->data_seq, 1, memory_order_seq_cst);
        futex_wake_all(&r->h->data_seq);
    }
}

static inline void wake_producers(nmq_ring *r) {
    if (atomic_load_explicit(&r->h->producers_waiting, memory_order_seq_cst)) {
        atomic_fetch_add_explicit(&r->h->space_seq, 1, memory_order_seq_cst);
        futex_wake_all(&r->h->space_seq);
    }
}

/* ---- lifecycle -------------------------------------------------------------------------- */

size_t nmq_ring_required_size(uint64_t capacity) { return NMQ_RING_HDR_SIZE + capacity; }

static int valid_capacity(uint64_t cap) {
    return cap >= NMQ_RING_MIN_CAPACITY && (cap & (cap - 1)) == 0 && cap <= (1ull << 40);
}

static uint32_t max_record_for(uint64_t cap) {
    /* A frame may take at most half the ring: then a record plus the padding before it always fits
     * into an empty ring wherever head stands. */
    uint64_t m = cap / 2 - 8;
    return m > 0x7FFFFFF0ull ? 0x7FFFFFF0u : (uint32_t)m;
}

static uint32_t producers_for(uint32_t mode) { return mode == NMQ_RING_MPSC ? NMQ_RING_MAX_PRODUCERS : 1; }

/* head and tail are byte positions of whole frames (multiples of 8), and at every instant
 * head <= tail <= head + cap. A live consumer may move head between our reads: read head, tail,
 * head again, and judge only a snapshot in which head stood still (then tail was read while head
 * had that value). A head that never stands still belongs to a ring in active use: only the
 * alignment is checked then. */
static int positions_valid(struct nmq_ring_hdr *h, uint64_t cap) {
    uint64_t h1 = 0, t = 0;
    for (int i = 0; i < 64; i++) {
        h1 = atomic_load_explicit(&h->head, memory_order_acquire);
        t = atomic_load_explicit(&h->tail, memory_order_acquire);
        if (atomic_load_explicit(&h->head, memory_order_acquire) == h1)
            return (h1 & 7u) == 0 && (t & 7u) == 0 && t >= h1 && t - h1 <= cap;
    }
    return (h1 & 7u) == 0 && (t & 7u) == 0;
}

int nmq_ring_init(void *mem, size_t mem_len, uint64_t capacity, uint32_t mode) {
    if (!mem || ((uintptr_t)mem & 7u) || mode > NMQ_RING_MPSC) return NMQ_RING_EINVAL;
    if (!valid_capacity(capacity) || mem_len < nmq_ring_required_size(capacity)) return NMQ_RING_ESIZE;
    struct nmq_ring_hdr *h = mem;
    atomic_store_explicit(&h->magic, 0, memory_order_relaxed);
    memset((uint8_t *)mem + sizeof(h->magic), 0, NMQ_RING_HDR_SIZE - sizeof(h->magic));
    /* MPSC needs a zeroed data area (0 = "not committed"); SPSC does not care, but a clean file is
     * friendlier to debug. */
    memset((uint8_t *)mem + NMQ_RING_HDR_SIZE, 0, capacity);
    h->version = NMQ_RING_VERSION;
    h->mode = mode;
    h->capacity = capacity;
    h->max_record = max_record_for(capacity);
    h->hdr_size = NMQ_RING_HDR_SIZE;
    h->max_producers = producers_for(mode);
    atomic_store_explicit(&h->magic, NMQ_RING_MAGIC, memory_order_release);
    return 0;
}

nmq_ring *nmq_ring_attach(void *mem, size_t mem_len, int *err) {
    int e = 0;
    struct nmq_ring_hdr *h = mem;
    nmq_ring *r = NULL;
    if (!mem || ((uintptr_t)mem & 7u)) { e = NMQ_RING_EINVAL; goto out; }
    if (mem_len < NMQ_RING_HDR_SIZE) { e = NMQ_RING_ESIZE; goto out; }
    if (atomic_load_explicit(&h->magic, memory_order_acquire) != NMQ_RING_MAGIC) { e = NMQ_RING_EBADMAGIC; goto out; }
    if (h->version != NMQ_RING_VERSION) { e = NMQ_RING_EVERSION; goto out; }
    /* Each field is read once into a local: what is checked is what is cached. */
    uint64_t cap = h->capacity;
    uint32_t hdr_size = h->hdr_size, mode = h->mode, max_rec = h->max_record, max_prod = h->max_producers;
    if (!valid_capacity(cap) || hdr_size != NMQ_RING_HDR_SIZE || mode > NMQ_RING_MPSC ||
        mem_len < nmq_ring_required_size(cap) || max_rec != max_record_for(cap)) {
        e = NMQ_RING_ESIZE;
        goto out;
    }
    if (max_prod != producers_for(mode) || !positions_valid(h, cap)) {
        e = NMQ_RING_EHEADER;
        goto out;
    }
    if (posix_memalign((void **)&r, 64, sizeof *r) != 0) { e = NMQ_RING_ENOMEM; r = NULL; goto out; }
    memset(r, 0, sizeof *r);
    r->h = h;
    r->data = (uint8_t *)mem + NMQ_RING_HDR_SIZE;
    r->cap = cap;
    r->mask = cap - 1;
    r->max_rec = max_rec;
    r->mode = mode;
    r->max_prod = max_prod;
    nmq_ring_reload(r);
out:
    if (err) *err = e;
    return r;
}

void nmq_ring_free(nmq_ring *r) { free(r); }

void nmq_ring_reload(nmq_ring *r) {
    uint64_t head = atomic_load_explicit(&r->h->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->h->tail, memory_order_acquire);
    r->p_tail = tail;
    r->p_head_cache = head;
    r->c_head = r->c_head_pub = head;
    r->c_tail_cache = head; /* force a fresh tail load on the next read */
    r->claiming = 0;
    r->peeking = 0;
}

uint64_t nmq_ring_capacity(const nmq_ring *r) { return r->cap; }
uint32_t nmq_ring_max_record(const nmq_ring *r) { return r->max_rec; }
uint32_t nmq_ring_mode(const nmq_ring *r) { return r->mode; }
uint64_t nmq_ring_head(const nmq_ring *r) { return atomic_load_explicit(&r->h->head, memory_order_acquire); }
uint64_t nmq_ring_tail(const nmq_ring *r) { return atomic_load_explicit(&r->h->tail, memory_order_acquire); }
uint64_t nmq_ring_used(const nmq_ring *r) {
    uint64_t head = nmq_ring_head(r);
    uint64_t tail = nmq_ring_tail(r);
    return tail >= head ? tail - head : 0;
}

/* ---- producer ---------------------------------------------------------------------------- */

/* SPSC: is there room for `need` bytes after `extra` bytes already planned past p_tail? Reads the
 * shared head (acquire: the consumer's reads of those bytes happened before it released head, so we
 * may overwrite them) only when the cached copy says no. */
static inline int spsc_room(nmq_ring *r, uint64_t end) {
    if (end - r->p_head_cache <= r->cap) return 1;
    r->p_head_cache = atomic_load_explicit(&r->h->head, memory_order_acquire);
    return end - r->p_head_cache <= r->cap;
}

static inline void write_pad(nmq_ring *r, uint64_t pos, uint64_t pad) {
    uint8_t *f = r->data + (pos & r->mask);
    *frame_len_word(f) = NMQ_RING_PAD_LEN;
    /* MPSC: the release store publishes this frame; SPSC: the later tail store does. */
    atomic_store_explicit(frame_size_word(f), (uint32_t)pad,
                          r->mode == NMQ_RING_MPSC ? memory_order_release : memory_order_relaxed);
}

/* Plan a batch starting at position t with `room` free bytes: how many records fit (*fit) and the
 * bytes they take, padding included (padding depends on where the claim starts). */
static uint64_t plan_records(nmq_ring *r, uint64_t t, uint64_t room, const uint32_t *lens, uint32_t n,
                             uint32_t *fit) {
    uint64_t pos = t, pad;
    uint32_t k = 0;
    for (; k < n; k++) {
        uint64_t need = need_at(r, pos, frame_size(lens[k]), &pad);
        if (pos + need - t > room) break;
        pos += need;
    }
    *fit = k;
    return pos - t;
}

static inline uint64_t room_at(const nmq_ring *r, uint64_t t, uint64_t head) {
    /* head may be newer than a stale t (another producer claimed and the consumer caught up): no
     * room from this t, the CAS would fail anyway. */
    return head > t || t - head > r->cap ? 0 : r->cap - (t - head);
}

/* MPSC: claim space for (a prefix of) the records with a CAS loop on tail. Returns the start
 * position, or UINT64_MAX when not even the first record fits. */
static uint64_t mpsc_claim(nmq_ring *r, const uint32_t *lens, uint32_t n, uint32_t *fit) {
    uint64_t t = atomic_load_explicit(&r->h->tail, memory_order_relaxed);
    for (;;) {
        uint32_t k;
        uint64_t bytes = plan_records(r, t, room_at(r, t, r->p_head_cache), lens, n, &k);
        if (k < n) {
            /* refresh the cached head (acquire: the consumer is done with the bytes below it) */
            r->p_head_cache = atomic_load_explicit(&r->h->head, memory_order_acquire);
            bytes = plan_records(r, t, room_at(r, t, r->p_head_cache), lens, n, &k);
        }
        if (k == 0) {
            uint64_t t2 = atomic_load_explicit(&r->h->tail, memory_order_relaxed);
            if (t2 != t) { /* our view was stale: retry from the current tail */
                t = t2;
                continue;
            }
            *fit = 0;
            return UINT64_MAX;
        }
        /* relaxed is enough for the claim itself: the bytes are published by each frame's
         * release store, and our right to write them came from the acquire load of head. */
        if (atomic_compare_exchange_weak_explicit(&r->h->tail, &t, t + bytes, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *fit = k;
            return t;
        }
    }
}

/* Write frame headers/payloads for `n` records from position t; returns the end position.
 * MPSC frames are committed one by one (release store of size); SPSC frames become visible with the
 * caller's tail store. */
static uint64_t write_records(nmq_ring *r, uint64_t t, const uint8_t *data, const uint32_t *lens, uint32_t n) {
    uint64_t pos = t, pad;
    memory_order mo = r->mode == NMQ_RING_MPSC ? memory_order_seq_cst : memory_order_relaxed;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t fsz = frame_size(lens[i]);
        need_at(r, pos, fsz, &pad);
        if (pad) {
            write_pad(r, pos, pad);
            pos += pad;
        }
        uint8_t *f = r->data + (pos & r->mask);
        *frame_len_word(f) = lens[i];
        memcpy(f + 8, data, lens[i]);
        data += lens[i];
        atomic_store_explicit(frame_size_word(f), (uint32_t)fsz, mo);
        pos += fsz;
    }
    return pos;
}

static inline void spsc_publish(nmq_ring *r, uint64_t end) {
    r->p_tail = end;
    /* seq_cst (xchg on x86) = release for the frames written above, plus the full fence the
     * wake-up handshake needs before reading consumer_waiting. */
    atomic_store_explicit(&r->h->tail, end, memory_order_seq_cst);
    wake_consumer(r);
}

int nmq_ring_push(nmq_ring *r, const uint8_t *data, uint32_t len) {
    if (len > r->max_rec) return NMQ_RING_EMSGSIZE;
    if (r->claiming) return NMQ_RING_EINVAL;
    if (r->mode == NMQ_RING_MPSC) {
        uint32_t k;
        uint64_t t = mpsc_claim(r, &len, 1, &k);
        if (t == UINT64_MAX) return NMQ_RING_EAGAIN;
        write_records(r, t, data, &len, 1);
        wake_consumer(r);
        return 0;
    }
    uint64_t pad, t = r->p_tail;
    uint64_t need = need_at(r, t, frame_size(len), &pad);
    if (!spsc_room(r, t + need)) return NMQ_RING_EAGAIN;
    spsc_publish(r, write_records(r, t, data, &len, 1));
    return 0;
}

int nmq_ring_push_batch(nmq_ring *r, const uint8_t *data, const uint32_t *lens, uint32_t n) {
    if (n > NMQ_RING_MAX_BATCH) return NMQ_RING_EINVAL;
    if (r->claiming) return NMQ_RING_EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (lens[i] > r->max_rec) return NMQ_RING_EMSGSIZE;
    if (n == 0) return 0;
    if (r->mode == NMQ_RING_MPSC) {
        uint32_t k;
        uint64_t t = mpsc_claim(r, lens, n, &k);
        if (t == UINT64_MAX) return 0;
        write_records(r, t, data, lens, k);
        wake_consumer(r);
        return (int)k;
    }
    uint64_t t = r->p_tail;
    uint32_t k;
    plan_records(r, t, room_at(r, t, r->p_head_cache), lens, n, &k);
    if (k < n) {
        r->p_head_cache = atomic_load_explicit(&r->h->head, memory_order_acquire);
        plan_records(r, t, room_at(r, t, r->p_head_cache), lens, n, &k);
    }
    if (k == 0) return 0;
    spsc_publish(r, write_records(r, t, data, lens, k));
    return (int)k;
}

int nmq_ring_claim(nmq_ring *r, uint32_t len, uint8_t **out) {
    if (len > r->max_rec) return NMQ_RING_EMSGSIZE;
    if (r->claiming) return NMQ_RING_EINVAL;
    uint64_t pad, t;
    if (r->mode == NMQ_RING_MPSC) {
        uint32_t k;
        t = mpsc_claim(r, &len, 1, &k);
        if (t == UINT64_MAX) return NMQ_RING_EAGAIN;
    } else {
        t = r->p_tail;
        if (!spsc_room(r, t + need_at(r, t, frame_size(len), &pad))) return NMQ_RING_EAGAIN;
    }
    need_at(r, t, frame_size(len), &pad);
    if (pad) {
        write_pad(r, t, pad);
        t += pad;
    }
    r->claim_frame = r->data + (t & r->mask);
    *frame_len_word(r->claim_frame) = len;
    r->claim_len = len;
    r->claim_end = t + frame_size(len);
    r->claiming = 1;
    *out = r->claim_frame + 8;
    return 0;
}

int nmq_ring_abort(nmq_ring *r) {
    if (!r->claiming) return NMQ_RING_EINVAL;
    r->claiming = 0;
    if (r->mode == NMQ_RING_MPSC) {
        /* The bytes are ours in the shared claim counter and later claims may already lie past them:
         * publish them as padding (release, like a commit), which the consumer skips and zeroes. Any
         * padding before the frame (at the wrap) was published by claim already. */
        *frame_len_word(r->claim_frame) = NMQ_RING_PAD_LEN;
        atomic_store_explicit(frame_size_word(r->claim_frame), (uint32_t)frame_size(r->claim_len),
                              memory_order_seq_cst);
        wake_consumer(r);
    }
    /* SPSC: nothing was published (tail unchanged); the next record overwrites the claimed bytes
     * and any padding claim wrote before them. */
    return 0;
}

int nmq_ring_commit(nmq_ring *r) {
    if (!r->claiming) return NMQ_RING_EINVAL;
    r->claiming = 0;
    if (r->mode == NMQ_RING_MPSC) {
        atomic_store_explicit(frame_size_word(r->claim_frame), (uint32_t)frame_size(r->claim_len),
                              memory_order_seq_cst);
        wake_consumer(r);
    } else {
        atomic_store_explicit(frame_size_word(r->claim_frame), (uint32_t)frame_size(r->claim_len),
                              memory_order_relaxed);
        spsc_publish(r, r->claim_end);
    }
    return 0;
}

/* ---- consumer ---------------------------------------------------------------------------- */

/* The frame at c_head, skipping (consuming) padding frames; NULL when nothing is readable. */
static inline uint8_t *next_frame(nmq_ring *r) {
    for (;;) {
        uint64_t h = r->c_head;
        uint8_t *f = r->data + (h & r->mask);
        uint32_t size;
        if (r->mode == NMQ_RING_MPSC) {
            /* acquire pairs with the producer's release/seq_cst store of size: payload visible */
            size = atomic_load_explicit(frame_size_word(f), memory_order_acquire);
            if (size == 0) return NULL;
        } else {
            if (h == r->c_tail_cache) {
                /* acquire pairs with the producer's tail store: every frame below it is complete */
                r->c_tail_cache = atomic_load_explicit(&r->h->tail, memory_order_acquire);
                if (h == r->c_tail_cache) return NULL;
            }
            size = atomic_load_explicit(frame_size_word(f), memory_order_relaxed);
        }
        if (*frame_len_word(f) != NMQ_RING_PAD_LEN) return f;
        if (r->mode == NMQ_RING_MPSC) memset(f, 0, size);
        r->c_head = h + size;
    }
}

/* Mark the frame at c_head consumed (zeroing it in MPSC so stale bytes never look committed). */
static inline void consume(nmq_ring *r, uint8_t *f) {
    uint32_t size = atomic_load_explicit(frame_size_word(f), memory_order_relaxed);
    if (r->mode == NMQ_RING_MPSC) memset(f, 0, size);
    r->c_head += size;
}

static inline void publish_head(nmq_ring *r) {
    if (r->c_head == r->c_head_pub) return;
    r->c_head_pub = r->c_head;
    /* seq_cst: release (our reads and the zeroing are done before producers may reuse the bytes)
     * plus the fence for the producers' wake-up handshake. */
    atomic_store_explicit(&r->h->head, r->c_head, memory_order_seq_cst);
    wake_producers(r);
}

int nmq_ring_peek(nmq_ring *r, uint8_t **out, uint32_t *len) {
    if (r->peeking) {
        *out = r->peek_frame + 8;
        *len = *frame_len_word(r->peek_frame);
        return 1;
    }
    uint8_t *f = next_frame(r);
    if (!f) {
        publish_head(r); /* padding may have been consumed */
        return 0;
    }
    r->peek_frame = f;
    r->peeking = 1;
    *out = f + 8;
    *len = *frame_len_word(f);
    return 1;
}

int nmq_ring_release(nmq_ring *r) {
    if (!r->peeking) return NMQ_RING_EINVAL;
    r->peeking = 0;
    consume(r, r->peek_frame);
    publish_head(r);
    return 0;
}

int nmq_ring_pop(nmq_ring *r, uint8_t *out, uint32_t cap, uint32_t *len) {
    if (r->peeking) return NMQ_RING_EINVAL;
    uint8_t *f = next_frame(r);
    if (!f) {
        publish_head(r);
        return 0;
    }
    uint32_t n = *frame_len_word(f);
    *len = n;
    if (n > cap) {
        publish_head(r);
        return NMQ_RING_EBUFSIZE;
    }
    memcpy(out, f + 8, n);
    consume(r, f);
    publish_head(r);
    return 1;
}

int nmq_ring_pop_batch(nmq_ring *r, uint8_t *out, size_t cap, uint32_t *lens, uint32_t max_n) {
    if (r->peeking || max_n > NMQ_RING_MAX_BATCH) return NMQ_RING_EINVAL;
    uint32_t k = 0;
    size_t used = 0;
    while (k < max_n) {
        uint8_t *f = next_frame(r);
        if (!f) break;
        uint32_t n = *frame_len_word(f);
        if (n > cap - used) {
            if (k == 0) {
                publish_head(r);
                lens[0] = n;
                return NMQ_RING_EBUFSIZE;
            }
            break;
        }
        memcpy(out + used, f + 8, n);
        used += n;
        lens[k++] = n;
        consume(r, f);
    }
    publish_head(r); /* one release for the whole batch */
    return (int)k;
}

/* ---- waiting ----------------------------------------------------------------------------- */

int nmq_ring_readable(nmq_ring *r) {
    if (r->peeking) return 1;
    uint64_t h = r->c_head;
    if (r->mode == NMQ_RING_MPSC)
        return atomic_load_explicit(frame_size_word(r->data + (h & r->mask)), memory_order_seq_cst) != 0;
    return atomic_load_explicit(&r->h->tail, memory_order_seq_cst) != h;
}

int nmq_ring_writable(nmq_ring *r, uint32_t len) {
    if (len > r->max_rec) return 0;
    uint64_t pad;
    uint64_t t = r->mode == NMQ_RING_MPSC ? atomic_load_explicit(&r->h->tail, memory_order_seq_cst) : r->p_tail;
    uint64_t need = need_at(r, t, frame_size(len), &pad);
    uint64_t head = atomic_load_explicit(&r->h->head, memory_order_seq_cst);
    return t + need - head <= r->cap;
}

/* Common shape of both waits: spin (checking the clock every 64 probes), then yield or sleep on the
 * futex until the deadline. The announce/re-check/sleep order is the consumer half of the Dekker
 * handshake described at wake_consumer(). */
static int wait_common(nmq_ring *r, int writer, uint32_t len, int strategy, uint64_t spin_ns,
                       uint64_t timeout_ns) {
#define READY() (writer ? nmq_ring_writable(r, len) : nmq_ring_readable(r))
    if (READY()) return 1;
    uint64_t start = now_ns();
    uint64_t deadline = start + timeout_ns;
    uint64_t spin_until = strategy == NMQ_WAIT_SPIN ? deadline : start + (spin_ns < timeout_ns ? spin_ns : timeout_ns);
    for (unsigned i = 1;; i++) {
        if (READY()) return 1;
        /* A waiting producer backs off between probes: each probe pulls the head line into its
         * cache, and the consumer's next head store must then take it back (a cross-core round
         * trip per record). A consumer probes tightly: tail only changes when data arrives. */
        for (int k = writer ? 32 : 1; k > 0; k--) cpu_relax();
        if ((i & (writer ? 3 : 63)) == 0 && now_ns() >= spin_until) break;
    }
    if (strategy == NMQ_WAIT_SPIN) return 0;
    if (strategy == NMQ_WAIT_YIELD) {
        for (;;) {
            if (READY()) return 1;
            if (now_ns() >= deadline) return 0;
            sched_yield();
        }
    }
    _Atomic uint32_t *seqw = writer ? &r->h->space_seq : &r->h->data_seq;
    for (;;) {
        uint32_t seq = atomic_load_explicit(seqw, memory_order_seq_cst);
        if (writer)
            atomic_fetch_add_explicit(&r->h->producers_waiting, 1, memory_order_seq_cst);
        else
            atomic_store_explicit(&r->h->consumer_waiting, 1, memory_order_seq_cst);
        int ready = READY();
        uint64_t now = ready ? 0 : now_ns();
        if (!ready && now < deadline) futex_wait(seqw, seq, deadline - now);
        if (writer)
            atomic_fetch_sub_explicit(&r->h->producers_waiting, 1, memory_order_seq_cst);
        else
            atomic_store_explicit(&r->h->consumer_waiting, 0, memory_order_seq_cst);
        if (ready || READY()) return 1;
        if (now_ns() >= deadline) return 0;
    }
#undef READY
}

int nmq_ring_wait_readable(nmq_ring *r, int strategy, uint64_t spin_ns, uint64_t timeout_ns) {
    return wait_common(r, 0, 0, strategy, spin_ns, timeout_ns);
}

int nmq_ring_wait_writable(nmq_ring *r, uint32_t len, int strategy, uint64_t spin_ns, uint64_t timeout_ns) {
    return wait_common(r, 1, len, strategy, spin_ns, timeout_ns);
}

/* ---- peers ------------------------------------------------------------------------------- */

/* The cached, validated max_producers bounds every index into producer_pid[] (never the shared
 * header field, which a peer could rewrite after attach). */
static _Atomic uint32_t *slot_word(const nmq_ring *r, int role, int slot) {
    if (role == 0) return slot == 0 ? &r->h->consumer_pid : NULL;
    if (role != 1 || slot < 0 || (uint32_t)slot >= r->max_prod) return NULL;
    return &r->h->producer_pid[slot];
}

int nmq_ring_register(nmq_ring *r, int role, uint32_t pid) {
    if (pid == 0 || role < 0 || role > 1) return NMQ_RING_EINVAL;
    int n = role == 0 ? 1 : (int)r->max_prod;
    for (int i = 0; i < n; i++) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_strong(slot_word(r, role, i), &expected, pid)) {
            atomic_fetch_add(role == 0 ? &r->h->consumers_ever : &r->h->producers_ever, 1);
            return i;
        }
    }
    return NMQ_RING_EBUSY;
}

int nmq_ring_register_replace(nmq_ring *r, int role, int slot, uint32_t old_pid, uint32_t pid) {
    _Atomic uint32_t *w = slot_word(r, role, slot);
    if (!w || old_pid == 0) return NMQ_RING_EINVAL;
    if (!atomic_compare_exchange_strong(w, &old_pid, pid)) return NMQ_RING_EBUSY;
    if (pid) atomic_fetch_add(role == 0 ? &r->h->consumers_ever : &r->h->producers_ever, 1);
    return slot;
}

void nmq_ring_unregister(nmq_ring *r, int role, int slot, uint32_t pid) {
    _Atomic uint32_t *w = slot_word(r, role, slot);
    if (!w || pid == 0) return;
    if (atomic_compare_exchange_strong(w, &pid, 0))
        atomic_fetch_add(role == 0 ? &r->h->consumers_closed : &r->h->producers_closed, 1);
}

uint32_t nmq_ring_peer_pid(const nmq_ring *r, int role, int slot) {
    _Atomic uint32_t *w = slot_word(r, role, slot);
    return w ? atomic_load(w) : 0;
}

uint32_t nmq_ring_peer_count(const nmq_ring *r, int role, int which) {
    if (role == 0) return atomic_load(which ? &r->h->consumers_closed : &r->h->consumers_ever);
    return atomic_load(which ? &r->h->producers_closed : &r->h->producers_ever);
}

uint32_t nmq_ring_max_producers(const nmq_ring *r) { return r->max_prod; }
