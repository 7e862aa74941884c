/* Multi-threaded test driver of the C ring, meant to run under ThreadSanitizer and ASan/UBSan
 * (`make sanitize`). SPSC and MPSC (3 producers), every API (push, push_batch, claim/commit,
 * claim/abort, pop, pop_batch, peek/release) and every wait strategy; each record carries
 * (producer, seq) and a payload derived from them, so loss, duplication, reordering and torn reads
 * are all detected (an aborted claim must leave no trace). Single-threaded checks first: header
 * validation on attach (every field, and the cached max_producers) and abort.
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
            if (seq % 7 == 1) { /* give this claim up (half written), then claim again for the same seq */
                memset(p, 0xAB, len / 2);
                if (nmq_ring_abort(r)) die("abort", 0, 0);
                if (nmq_ring_abort(r) != NMQ_RING_EINVAL) die("second abort accepted", 0, 0);
                while ((rc = nmq_ring_claim(r, len, &p)) == NMQ_RING_EAGAIN)
                    nmq_ring_wait_writable(r, len, c->strategy, 1000, 1000000);
                if (rc) die("claim after abort", rc, 0);
            }
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

/* Header offsets (struct nmq_ring_hdr): max_producers u32 @32, tail u64 @128, head u64 @256. */
#define OFF_MAX_PRODUCERS 32
#define OFF_TAIL 128
#define OFF_HEAD 256

static void expect_attach(void *mem, size_t size, int want, const char *what) {
    int err = 0;
    nmq_ring *r = nmq_ring_attach(mem, size, &err);
    if (want == 0) {
        if (!r) die(what, err, 0);
        nmq_ring_free(r);
    } else if (r || err != want) {
        die(what, err, want);
    }
}

static void header_checks(void) {
    const uint64_t cap = 1024;
    size_t size = nmq_ring_required_size(cap);
    uint8_t *mem;
    if (posix_memalign((void **)&mem, 128, size)) die("alloc", 0, 0);
    for (uint32_t mode = 0; mode <= 1; mode++) {
        uint32_t good = mode ? NMQ_RING_MAX_PRODUCERS : 1;
        uint32_t bad_mp[] = {0, good + 1, mode ? 1 : 2, 1000, 0xFFFFFFFFu};
        for (size_t i = 0; i < sizeof bad_mp / sizeof *bad_mp; i++) {
            if (nmq_ring_init(mem, size, cap, mode)) die("init", 0, 0);
            memcpy(mem + OFF_MAX_PRODUCERS, &bad_mp[i], 4);
            expect_attach(mem, size, NMQ_RING_EHEADER, "bad max_producers accepted");
        }
        uint64_t bad_pos[][2] = {{0, 3}, {5, 64}, {64, 0}, {0, cap + 8}, {8, 1ull << 63}}; /* head, tail */
        for (size_t i = 0; i < sizeof bad_pos / sizeof *bad_pos; i++) {
            if (nmq_ring_init(mem, size, cap, mode)) die("init", 0, 0);
            memcpy(mem + OFF_HEAD, &bad_pos[i][0], 8);
            memcpy(mem + OFF_TAIL, &bad_pos[i][1], 8);
            expect_attach(mem, size, NMQ_RING_EHEADER, "bad positions accepted");
        }
        uint64_t full[2] = {5 * cap, 6 * cap};
        if (nmq_ring_init(mem, size, cap, mode)) die("init", 0, 0);
        memcpy(mem + OFF_HEAD, &full[0], 8);
        memcpy(mem + OFF_TAIL, &full[1], 8);
        expect_attach(mem, size, 0, "a full ring refused");
        /* The handle keeps the max_producers it validated: a header rewritten after attach does
         * not let register() index past producer_pid[]. */
        if (nmq_ring_init(mem, size, cap, mode)) die("init", 0, 0);
        int err;
        nmq_ring *r = nmq_ring_attach(mem, size, &err);
        if (!r) die("attach", err, 0);
        for (uint32_t s = 0; s < good; s++)
            if (nmq_ring_register(r, 1, 100 + s) != (int)s) die("register", (long)s, 0);
        uint32_t big = 4096;
        memcpy(mem + OFF_MAX_PRODUCERS, &big, 4);
        if (nmq_ring_register(r, 1, 999) != NMQ_RING_EBUSY) die("register past the table", 0, 0);
        if (nmq_ring_max_producers(r) != good) die("max_producers not cached", nmq_ring_max_producers(r), good);
        if (nmq_ring_peer_pid(r, 1, (int)good) != 0) die("peer_pid past the table", 0, 0);
        if (nmq_ring_register_replace(r, 1, (int)good, 100, 5) != NMQ_RING_EINVAL) die("replace past the table", 0, 0);
        nmq_ring_free(r);
    }
    free(mem);
    printf("ok: header validation\n");
}

static void abort_checks(void) {
    const uint64_t cap = 256;
    size_t size = nmq_ring_required_size(cap);
    uint8_t *mem;
    if (posix_memalign((void **)&mem, 128, size)) die("alloc", 0, 0);
    for (uint32_t mode = 0; mode <= 1; mode++) {
        if (nmq_ring_init(mem, size, cap, mode)) die("init", 0, 0);
        int err;
        nmq_ring *a = nmq_ring_attach(mem, size, &err), *b = nmq_ring_attach(mem, size, &err),
                 *c = nmq_ring_attach(mem, size, &err);
        if (!a || !b || !c) die("attach", err, 0);
        uint8_t *p, out[256];
        uint32_t len;
        if (nmq_ring_abort(a) != NMQ_RING_EINVAL) die("abort without claim", 0, 0);
        for (int round = 0; round < 40; round++) { /* goes round the ring many times, padding included */
            if (nmq_ring_claim(a, 40, &p)) die("claim", round, 0);
            memset(p, 0xEE, 40);
            if (mode == NMQ_RING_MPSC && nmq_ring_push(b, (const uint8_t *)"later", 5)) die("push past a claim", round, 0);
            if (nmq_ring_push(a, (const uint8_t *)"x", 1) != NMQ_RING_EINVAL) die("push while claiming", 0, 0);
            if (nmq_ring_abort(a)) die("abort", round, 0);
            if (nmq_ring_push(a, (const uint8_t *)"mine", 4)) die("push after abort", round, 0);
            if (mode == NMQ_RING_MPSC) {
                if (nmq_ring_pop(c, out, sizeof out, &len) != 1 || len != 5 || memcmp(out, "later", 5))
                    die("record after an aborted claim", round, (long)len);
            }
            if (nmq_ring_pop(c, out, sizeof out, &len) != 1 || len != 4 || memcmp(out, "mine", 4))
                die("record after abort", round, (long)len);
            if (nmq_ring_pop(c, out, sizeof out, &len) != 0) die("aborted record delivered", round, 0);
            if (nmq_ring_used(c) != 0) die("used after abort", (long)nmq_ring_used(c), round);
        }
        nmq_ring_free(a);
        nmq_ring_free(b);
        nmq_ring_free(c);
    }
    free(mem);
    printf("ok: abort\n");
}

int main(int argc, char **argv) {
    if (argc > 1) n_per_producer = strtoul(argv[1], NULL, 10);
    unit();
    header_checks();
    abort_checks();
    run(NMQ_RING_SPSC, 1, NMQ_WAIT_SPIN);
    run(NMQ_RING_SPSC, 1, NMQ_WAIT_BLOCK);
    run(NMQ_RING_MPSC, 1, NMQ_WAIT_YIELD);
    run(NMQ_RING_MPSC, NPROD_MPSC, NMQ_WAIT_YIELD);
    run(NMQ_RING_MPSC, NPROD_MPSC, NMQ_WAIT_BLOCK);
    return 0;
}
