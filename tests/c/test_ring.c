/* Multi-threaded test driver of the C ring, meant to run under ThreadSanitizer and ASan/UBSan
 * (`make sanitize`). SPSC and MPSC (3 producers), every API (push, push_batch, claim/commit, pop,
 * pop_batch, peek/release) and every wait strategy; each record carries (producer, seq) and a
 * payload derived from them, so loss, duplication, reordering and torn reads are all detected.
 *
 * Usage: test_ring [records_per_producer]   (default 200000)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

#define CAP (1u << 14) /* small: forces wrap-around, padding and full-ring waits constantly */
#define NPROD_MPSC 3

static unsigned long n_per_producer = 200000;

struct ctx {
    void *mem;
    int id;
    int strategy;
};

static void die(const char *what, long a, long b) {
    fprintf(stderr, "FAIL: %s (%ld, %ld)\n", what, a, b);
    exit(1);
}

/* Record = u32 producer | u32 len-hint | u64 seq | payload bytes (seq*31+i) & 0xff. */
static uint32_t rec_len(uint64_t seq) { return 16 + (uint32_t)((seq * 2654435761u) % 300); }

static void fill(uint8_t *p, uint32_t prod, uint64_t seq, uint32_t len) {
    memcpy(p, &prod, 4);
    memcpy(p + 4, &len, 4);
    memcpy(p + 8, &seq, 8);
    for (uint32_t i = 16; i < len; i++) p[i] = (uint8_t)(seq * 31 + i + prod);
}

static void check(const uint8_t *p, uint32_t len, uint64_t *next_seq, int nprod) {
    uint32_t prod, hint;
    uint64_t seq;
    if (len < 16) die("short record", len, 0);
    memcpy(&prod, p, 4);
    memcpy(&hint, p + 4, 4);
    memcpy(&seq, p + 8, 8);
    if ((int)prod >= nprod) die("bad producer", prod, 0);
    if (hint != len || len != rec_len(seq)) die("bad length", len, hint);
    if (seq != next_seq[prod]) die("sequence gap/dup/reorder", (long)seq, (long)next_seq[prod]);
    for (uint32_t i = 16; i < len; i++)
        if (p[i] != (uint8_t)(seq * 31 + i + prod)) die("torn payload", (long)seq, i);
    next_seq[prod]++;
}

static void *producer(void *arg) {
    struct ctx *c = arg;
    int err;
    nmq_ring *r = nmq_ring_attach(c->mem, nmq_ring_required_size(CAP), &err);
    if (!r) die("attach", err, 0);
    uint8_t buf[256 * 400];
    uint32_t lens[256];
    uint64_t seq = 0;
    while (seq < n_per_producer) {
        int mode = (int)(seq % 3);
        if (mode == 0) { /* single copy push */
            uint32_t len = rec_len(seq);
            fill(buf, (uint32_t)c->id, seq, len);
            while (nmq_ring_push(r, buf, len) == NMQ_RING_EAGAIN)
                nmq_ring_wait_writable(r, len, c->strategy, 1000, 1000000);
            seq++;
        } else if (mode == 1) { /* zero-copy claim/commit */
            uint32_t len = rec_len(seq);
            uint8_t *p;
            int rc;
            while ((rc = nmq_ring_claim(r, len, &p)) == NMQ_RING_EAGAIN)
                nmq_ring_wait_writable(r, len, c->strategy, 1000, 1000000);
            if (rc) die("claim", rc, 0);
            fill(p, (uint32_t)c->id, seq, len);
            nmq_ring_commit(r);
            seq++;
        } else { /* batch of up to 37 */
            uint32_t n = 0;
            size_t off = 0;
            while (n < 37 && seq + n < n_per_producer) {
                lens[n] = rec_len(seq + n);
                fill(buf + off, (uint32_t)c->id, seq + n, lens[n]);
                off += lens[n];
                n++;
            }
            uint32_t done = 0;
            off = 0;
            while (done < n) {
                int k = nmq_ring_push_batch(r, buf + off, lens + done, n - done);
                if (k < 0) die("push_batch", k, 0);
                for (int i = 0; i < k; i++) off += lens[done + i];
                done += (uint32_t)k;
                if (done < n) nmq_ring_wait_writable(r, lens[done], c->strategy, 1000, 1000000);
            }
            seq += n;
        }
    }
    nmq_ring_free(r);
    return NULL;
}

static void *consumer(void *arg) {
    struct ctx *c = arg;
    int err;
    nmq_ring *r = nmq_ring_attach(c->mem, nmq_ring_required_size(CAP), &err);
    if (!r) die("attach", err, 0);
    uint64_t next[NPROD_MPSC] = {0};
    uint64_t total = 0, want = n_per_producer * (uint64_t)c->id; /* id = number of producers */
    static __thread uint8_t out[256 * 400];
    uint32_t lens[256];
    unsigned turn = 0;
    while (total < want) {
        int got = 0;
        switch (turn++ % 3) {
        case 0: {
            uint32_t len;
            int rc = nmq_ring_pop(r, out, sizeof out, &len);
            if (rc < 0) die("pop", rc, 0);
            if (rc == 1) {
                check(out, len, next, c->id);
                got = 1;
            }
            break;
        }
        case 1: {
            uint8_t *p;
            uint32_t len;
            if (nmq_ring_peek(r, &p, &len)) {
                check(p, len, next, c->id);
                nmq_ring_release(r);
                got = 1;
            }
            break;
        }
        default: {
            int k = nmq_ring_pop_batch(r, out, sizeof out, lens, 256);
            if (k < 0) die("pop_batch", k, 0);
            size_t off = 0;
            for (int i = 0; i < k; i++) {
                check(out + off, lens[i], next, c->id);
                off += lens[i];
            }
            got = k;
        }
        }
        total += (uint64_t)got;
        if (!got) nmq_ring_wait_readable(r, c->strategy, 1000, 1000000);
    }
    for (int p = 0; p < c->id; p++)
        if (next[p] != n_per_producer) die("count", p, (long)next[p]);
    if (nmq_ring_readable(r)) die("extra records", 0, 0);
    nmq_ring_free(r);
    return NULL;
}

static void run(uint32_t mode, int nprod, int strategy) {
    size_t size = nmq_ring_required_size(CAP);
    void *mem;
    if (posix_memalign(&mem, 128, size)) die("alloc", 0, 0);
    if (nmq_ring_init(mem, size, CAP, mode)) die("init", 0, 0);
    pthread_t th[NPROD_MPSC + 1];
    struct ctx cc = {mem, nprod, strategy};
    struct ctx pc[NPROD_MPSC];
    pthread_create(&th[0], NULL, consumer, &cc);
    for (int i = 0; i < nprod; i++) {
        pc[i] = (struct ctx){mem, i, strategy};
        pthread_create(&th[i + 1], NULL, producer, &pc[i]);
    }
    for (int i = 0; i <= nprod; i++) pthread_join(th[i], NULL);
    printf("ok: %s, %d producer(s), strategy %d, %lu records each\n", mode ? "MPSC" : "SPSC", nprod,
           strategy, n_per_producer);
    free(mem);
}

static void unit(void) {
    size_t size = nmq_ring_required_size(64);
    void *mem;
    if (posix_memalign(&mem, 128, size)) die("alloc", 0, 0);
    int err;
    if (nmq_ring_attach(mem, size, &err) != NULL && err == 0) {
        /* uninitialised memory could hold anything; only check the formatted case below */
    }
    if (nmq_ring_init(mem, size, 63, 0) != NMQ_RING_ESIZE) die("non power of two accepted", 0, 0);
    if (nmq_ring_init(mem, size, 64, 0)) die("init", 0, 0);
    nmq_ring *r = nmq_ring_attach(mem, size, &err);
    if (!r) die("attach", err, 0);
    if (nmq_ring_max_record(r) != 24) die("max_record", nmq_ring_max_record(r), 0);
    uint8_t big[32] = {0};
    if (nmq_ring_push(r, big, 25) != NMQ_RING_EMSGSIZE) die("oversize accepted", 0, 0);
    if (nmq_ring_push(r, big, 24) || nmq_ring_push(r, big, 24)) die("two max records", 0, 0);
    if (nmq_ring_push(r, big, 0) != NMQ_RING_EAGAIN) die("full not reported", 0, 0);
    nmq_ring_free(r);
    ((uint32_t *)mem)[2] = 99; /* version */
    if (nmq_ring_attach(mem, size, &err) || err != NMQ_RING_EVERSION) die("version", err, 0);
    memset(mem, 0, 8);
    if (nmq_ring_attach(mem, size, &err) || err != NMQ_RING_EBADMAGIC) die("magic", err, 0);
    free(mem);
    printf("ok: unit checks\n");
}

int main(int argc, char **argv) {
    if (argc > 1) n_per_producer = strtoul(argv[1], NULL, 10);
    unit();
    run(NMQ_RING_SPSC, 1, NMQ_WAIT_SPIN);
    run(NMQ_RING_SPSC, 1, NMQ_WAIT_BLOCK);
    run(NMQ_RING_MPSC, 1, NMQ_WAIT_YIELD);
    run(NMQ_RING_MPSC, NPROD_MPSC, NMQ_WAIT_YIELD);
    run(NMQ_RING_MPSC, NPROD_MPSC, NMQ_WAIT_BLOCK);
    return 0;
}
