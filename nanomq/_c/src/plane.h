/* The broker's data plane in C: the per-message work of the two hot requests, so that a publish
 * or a delivery costs one C call instead of a dozen Python ones.
 *
 * Theory of operation
 * -------------------
 * The broker's event loop stays in Python and so does every decision that is not per message
 * (HELLO, SUBSCRIBE, SEEK, COMMIT, METADATA, errors, flow control, group commit). Two things move
 * here:
 *
 * - nmq_plane_feed() takes the bytes a connection has received and handles the frames at their
 *   start that are *fully valid* PUBLISHes (any ack mode; see durable below), to a topic registered with
 *   nmq_plane_topic(), and PINGs: it validates them exactly as the protocol says (spec/protocol.md;
 *   the sans-IO codec in nanomq/protocol is the reference), appends the records to the topic's log
 *   (nmq_log_append: one pwritev, no copy of ours) and writes the PUBLISH_ACKs and PONGs, in
 *   order, into `out`. A valid PUBLISH with ack durable is appended too, and then it stops
 *   (NMQ_PLANE_STOP_DURABLE) with what the ack will say (`durable_*`): the ack waits for a sync,
 *   which Python's group commit arranges, and every answer after it waits behind it. It stops at
 *   the first frame it does not handle completely (any other
 *   opcode, anything invalid, an unknown topic, an append that fails) and leaves
 *   that frame, untouched, to the Python decoder, which answers it with the exact error or does
 *   the slow work. So nothing is ever rejected here: an error always comes from the one codec,
 *   and a frame this file takes is one the codec would have taken the same way.
 * - nmq_plane_deliver() reads a run of records from a log (the mapping, zero-copy), puts the
 *   DELIVER frame header in front and sends both with one sendmsg to the subscriber's socket. What
 *   the socket does not take is returned to Python for the transport to buffer, so asyncio's flow
 *   control (pause/resume writing) still bounds memory.
 *
 * Writing to the socket directly is only correct while the transport has nothing buffered (or
 * bytes would leave out of order): the caller passes fd = -1 otherwise, and for TLS connections.
 *
 * Threading: the plane and its topic table belong to the event-loop thread (no lock). The logs it
 * appends to are the broker's; their own locks make sync() in worker threads safe alongside.
 */
#ifndef NMQ_PLANE_H
#define NMQ_PLANE_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"

/* cffi-begin: the public API, declared to cffi by nanomq/_c/_builder.py (up to cffi-end) */
#define NMQ_PLANE_CAP_LZ4 1u        /* records with flags bit 0 may be appended */
#define NMQ_PLANE_CAP_IDEMPOTENT 8u /* records with a producer_id may be appended (never, today) */

#define NMQ_PLANE_STOP_END 0        /* every complete frame at the start of the buffer was handled */
#define NMQ_PLANE_STOP_FRAME 1      /* the frame at `consumed` is for Python (complete or not yet) */
#define NMQ_PLANE_STOP_OUT 2        /* `out` is full: write it, then call again */
#define NMQ_PLANE_STOP_TOPICS 3     /* `appended` is full: notify, then call again */
#define NMQ_PLANE_STOP_DURABLE 4    /* the last frame handled is a durable PUBLISH (durable_*): its
                                       ack waits for a sync, so nothing after it is handled here */

typedef struct nmq_plane nmq_plane;

typedef struct {
    uint32_t max_frame;
    uint32_t max_payload;
    uint32_t max_batch;
    uint32_t caps;                  /* NMQ_PLANE_CAP_* announced by the broker */
} nmq_plane_limits;

typedef struct {
    uint64_t consumed;              /* bytes at the start of buf that were handled */
    uint64_t out_len;               /* bytes of answers in out (PUBLISH_ACK, PONG), in request order */
    uint64_t out_sent;              /* of those, bytes already written to fd */
    uint32_t frames;                /* frames handled */
    uint32_t appended;              /* entries filled in the appended arrays */
    uint32_t acks;                  /* of the frames, PUBLISHes with ack written (their acks are in out) */
    int stop;                       /* NMQ_PLANE_STOP_* */
    int send_errno;                 /* errno of a failed send to fd (0: none; EAGAIN is not an error) */
    uint64_t durable_rid;           /* STOP_DURABLE: the PUBLISH's request id, */
    uint64_t durable_first;         /* the id of its first record, */
    uint32_t durable_count;         /* its record count, */
    uint32_t durable_index;         /* and its topic's number (nmq_plane_topic) */
} nmq_feed_result;

typedef struct {
    uint32_t count;                 /* records in the DELIVER (0: nothing to deliver) */
    uint64_t first_id;              /* id of its first record (> from_id when ids below were retained away or lost) */
    uint64_t frame_len;             /* bytes of the whole DELIVER frame */
    uint64_t sent;                  /* bytes of it written to fd */
    int send_errno;                 /* errno of a failed sendmsg (0: none; EAGAIN is not an error) */
} nmq_deliver_result;

nmq_plane *nmq_plane_new(const nmq_plane_limits *limits);
void nmq_plane_free(nmq_plane *p);
/* Register `name` (1..255 valid name bytes) as topic number `index` appending to `log`; a name
 * registered again is updated. The log must stay open while registered (unregister it first). */
int nmq_plane_topic(nmq_plane *p, const uint8_t *name, uint32_t len, nmq_log *log, uint32_t index);
int nmq_plane_untopic(nmq_plane *p, const uint8_t *name, uint32_t len);
/* Handle the hot frames at the start of buf[0:len] (see above). Appended records are reported per
 * topic, in order: appended_index[i] (the number given to nmq_plane_topic) and appended_bytes[i]
 * (bytes of records), up to appended_cap entries. fd >= 0: write `out` to it before returning. */
int nmq_plane_feed(nmq_plane *p, const uint8_t *buf, uint64_t len, uint8_t *out, uint64_t out_cap, int fd,
                   uint32_t *appended_index, uint64_t *appended_bytes, uint32_t appended_cap,
                   nmq_feed_result *res);
/* Build one DELIVER for subscription sub_id of up to `credit` (1..max_batch) records from id
 * from_id (at most max_bytes, but one record whatever its size) and write it to fd with one sendmsg
 * (fd < 0: write nothing). The frame is hdr[0:24] (filled here) followed by the records. When fd
 * took all of it, nothing stays pinned (*pinned = NULL). Otherwise the records stay pinned at
 * *recs for the caller, who hands the unsent part (res->sent counts header bytes first) to its
 * transport and then calls nmq_log_unpin(log, *pinned). Returns 0 (res->count = 0: nothing to
 * deliver), or a negative NMQ_LOG_* code of the read (damaged stored bytes: nothing is sent). */
int nmq_plane_deliver(nmq_log *log, int fd, uint32_t sub_id, uint64_t from_id, uint32_t credit,
                      uint64_t max_bytes, uint8_t *hdr, const uint8_t **recs, nmq_seg **pinned,
                      nmq_deliver_result *res);
/* cffi-end */

#endif
