/* Group commit without the interpreter: a few C threads that sync logs on request and say so
 * through a file descriptor the event loop watches.
 *
 * Why: a durable ack waits for an fdatasync (~50-80 µs on this VM's disk). Run through a Python
 * executor, each sync also costs a thread wake-up, two handoffs of the GIL and a self-pipe write
 * back to the loop — measured at several hundred µs per durable publish. Here the request is one
 * C call from the loop (no GIL taken by the worker at all), the worker runs nmq_log_sync, queues
 * the result, and writes to `notify_fd` (an eventfd) once; the loop then takes every result with
 * one call.
 *
 * Requests are per log (a number the caller chose, `index`) and coalesce: a log already queued
 * is not queued twice, and a request that arrives while its log is being synced makes it sync
 * once more after (the running sync may have started before the request's records were
 * appended). So each sync covers everything appended before it starts (nmq_log_sync's contract),
 * and N requests cost at most two syncs. One log is synced by one thread at a time; different
 * logs in parallel, up to `threads`.
 *
 * Lifetime: a log must stay open while a request for it is queued or running (nmq_syncer_busy);
 * nmq_syncer_free stops the threads after the running syncs finish.
 */
#ifndef NMQ_SYNCER_H
#define NMQ_SYNCER_H

#include <stdint.h>

#include "log.h"

/* cffi-begin */
typedef struct nmq_syncer nmq_syncer;

typedef struct {
    uint32_t index;       /* the log's number, as given to nmq_syncer_request */
    int rc;               /* 0, or the negative code nmq_log_sync returned */
    uint64_t durable_id;  /* the log's durable id after the sync */
} nmq_sync_done;

/* `threads` workers (1..64); every finished sync writes an 8-byte 1 to notify_fd (an eventfd). */
nmq_syncer *nmq_syncer_new(int notify_fd, int threads);
/* Stop: wait for the running syncs, drop the queued ones, join the threads, free. */
void nmq_syncer_free(nmq_syncer *s);
/* Ask for a sync of `log` covering everything appended to it before this call. Returns 0,
 * NMQ_LOG_EINVAL (no syncer or log, or index UINT32_MAX) or -ENOMEM (the tables cannot grow). */
int nmq_syncer_request(nmq_syncer *s, nmq_log *log, uint32_t index);
/* Move up to `cap` finished syncs into out (oldest first); returns how many. */
uint32_t nmq_syncer_take(nmq_syncer *s, nmq_sync_done *out, uint32_t cap);
/* Whether a sync of log `index` is queued or running. */
int nmq_syncer_busy(nmq_syncer *s, uint32_t index);
/* cffi-end */

#endif
