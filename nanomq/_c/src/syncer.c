/* Group commit in C threads: see syncer.h.
 *
 * Invariants (all under `mu`):
 *  Y1 A log index is in one state: IDLE, QUEUED (in `queue`, once), RUNNING (a worker syncs it),
 *     or AGAIN (running, and a request came meanwhile: queue it once more when it finishes).
 *  Y2 An index with an untaken result (`has_done`) is in `doneq` once; a newer result replaces the
 *     older (the highest durable id, the latest code): the loop learns where the log stands.
 *  Y3 Both rings hold each index at most once, so their capacity is the slot count: they grow with
 *     the slots, in nmq_syncer_request, and a worker never allocates.
 *  Y4 notify_fd gets one write per finished sync; the loop may take several results per wake-up.
 */
#define _GNU_SOURCE
#include "syncer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { IDLE = 0, QUEUED, RUNNING, AGAIN };

typedef struct {
    nmq_log *log;
    uint8_t state;
    uint8_t has_done;
    int rc;
    uint64_t durable;
} slot;

typedef struct {
    uint32_t *v;
    uint32_t head, len;
} ring;

struct nmq_syncer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int notify_fd;
    int stop;
    slot *slots;            /* by index */
    uint32_t nslots;        /* also the capacity of both rings (Y3) */
    ring queue;             /* QUEUED indexes, in request order */
    ring doneq;             /* indexes with a result not yet taken, in finishing order */
    int nthreads;
    pthread_t threads[64];
};

static void ring_push(ring *r, uint32_t cap, uint32_t x) { r->v[(r->head + r->len++) % cap] = x; }

static uint32_t ring_pop(ring *r, uint32_t cap) {
    uint32_t x = r->v[r->head];
    r->head = (r->head + 1) % cap;
    r->len--;
    return x;
}

/* Copy a ring into a new buffer of `cap` entries, from position 0. */
static int ring_regrow(ring *r, uint32_t old_cap, uint32_t cap) {
    uint32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return -ENOMEM;
    for (uint32_t i = 0; i < r->len; i++) v[i] = r->v[(r->head + i) % old_cap];
    free(r->v);
    r->v = v;
    r->head = 0;
    return 0;
}

static int grow(nmq_syncer *s, uint32_t need) {
    if (need <= s->nslots) return 0;
    uint32_t n = s->nslots ? s->nslots : 64;
    while (n < need) n *= 2;
    slot *p = realloc(s->slots, (size_t)n * sizeof *p);
    if (!p) return -ENOMEM;
    memset(p + s->nslots, 0, (size_t)(n - s->nslots) * sizeof *p);
    s->slots = p;
    if (ring_regrow(&s->queue, s->nslots, n) || ring_regrow(&s->doneq, s->nslots, n)) return -ENOMEM;
    s->nslots = n;
    return 0;
}

static void *worker(void *arg) {
    nmq_syncer *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->queue.len == 0) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stop) break;
        uint32_t index = ring_pop(&s->queue, s->nslots);
        s->slots[index].state = RUNNING;
        nmq_log *log = s->slots[index].log;
        pthread_mutex_unlock(&s->mu);
        uint64_t durable = 0;
        int rc = nmq_log_sync(log, &durable); /* the fdatasync, with no lock of ours held */
        pthread_mutex_lock(&s->mu);
        slot *sl = &s->slots[index]; /* slots may have moved while unlocked */
        if (!sl->has_done) {
            sl->has_done = 1;
            sl->durable = durable;
            ring_push(&s->doneq, s->nslots, index);
        } else if (durable > sl->durable) {
            sl->durable = durable;
        }
        sl->rc = rc;
        if (sl->state == AGAIN) {
            sl->state = QUEUED;
            ring_push(&s->queue, s->nslots, index);
            pthread_cond_signal(&s->cv);
        } else {
            sl->state = IDLE;
        }
        uint64_t one = 1;
        ssize_t w;
        do {
            w = write(s->notify_fd, &one, sizeof one);
        } while (w < 0 && errno == EINTR);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

nmq_syncer *nmq_syncer_new(int notify_fd, int threads) {
    if (notify_fd < 0 || threads < 1 || threads > 64) return NULL;
    nmq_syncer *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->notify_fd = notify_fd;
    if (grow(s, 64)) {
        nmq_syncer_free(s);
        return NULL;
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&s->threads[i], NULL, worker, s) != 0) {
            nmq_syncer_free(s);
            return NULL;
        }
        s->nthreads = i + 1;
    }
    return s;
}

void nmq_syncer_free(nmq_syncer *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->nthreads; i++) pthread_join(s->threads[i], NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->slots);
    free(s->queue.v);
    free(s->doneq.v);
    free(s);
}

int nmq_syncer_request(nmq_syncer *s, nmq_log *log, uint32_t index) {
    if (!s || !log || index == UINT32_MAX) return NMQ_LOG_EINVAL;
    pthread_mutex_lock(&s->mu);
    int rc = grow(s, index + 1);
    if (!rc) {
        slot *sl = &s->slots[index];
        if (sl->state == IDLE) {
            sl->log = log;
            sl->state = QUEUED;
            ring_push(&s->queue, s->nslots, index);
            pthread_cond_signal(&s->cv);
        } else if (sl->state == RUNNING) {
            sl->state = AGAIN; /* the running sync may have started before these records (syncer.h) */
        } /* QUEUED or AGAIN: the sync to come covers this request */
    }
    pthread_mutex_unlock(&s->mu);
    return rc; /* 0 or -ENOMEM */
}

uint32_t nmq_syncer_take(nmq_syncer *s, nmq_sync_done *out, uint32_t cap) {
    pthread_mutex_lock(&s->mu);
    uint32_t n = 0;
    while (n < cap && s->doneq.len) {
        uint32_t index = ring_pop(&s->doneq, s->nslots);
        slot *sl = &s->slots[index];
        out[n++] = (nmq_sync_done){index, sl->rc, sl->durable};
        sl->has_done = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

int nmq_syncer_busy(nmq_syncer *s, uint32_t index) {
    pthread_mutex_lock(&s->mu);
    int busy = index < s->nslots && s->slots[index].state != IDLE;
    pthread_mutex_unlock(&s->mu);
    return busy;
}
