/* The broker's data plane: see plane.h for the theory of operation.
 *
 * Invariants:
 *  P1 A frame is taken only if the sans-IO codec (nanomq/protocol) would decode it without an
 *     error and the broker would answer it exactly as written here; every other frame, valid or
 *     not, is left whole for Python. So the checks below are those of the codec, in its order,
 *     and a failed check is never an answer: it is a stop.
 *  P2 Answers are written to `out` in the order of the requests, and a stop leaves every later
 *     request unanswered and unconsumed: Python answers them in order after the stop.
 *  P3 Records are appended straight from the caller's buffer (nmq_log_append copies them into
 *     the segment with one pwritev); a delivery is sent straight from the log's mapping with one
 *     sendmsg. No other copy.
 */
#define _GNU_SOURCE
#include "plane.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "record.h"

#define FRAME_HEADER 16u
#define OP_PUBLISH 0x02u
#define OP_PING 0x09u
#define OP_PUBLISH_ACK 0x82u
#define OP_PONG 0x89u
#define OP_DELIVER 0x85u
#define ACK_FRAME 32u   /* PUBLISH_ACK: header + first_id u64, count u32, reserved u32 */
#define PONG_FRAME 24u  /* PONG: header + token u64 */
#define MAX_BATCH_V1 256u

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ------------------------------------------------------------------------------------------ */
/* the topic table: open addressing on the name's bytes, grown at half load                    */

typedef struct {
    uint8_t name[255];
    uint8_t len;      /* 0: empty slot (a name is 1..255 bytes) */
    uint8_t gone;     /* a deleted entry (tombstone): probing goes on past it */
    uint32_t index;
    nmq_log *log;
} topic_slot;

struct nmq_plane {
    nmq_plane_limits lim;
    topic_slot *slots;
    uint32_t cap;      /* a power of two */
    uint32_t used;     /* live entries and tombstones */
};

static uint64_t name_hash(const uint8_t *s, uint32_t n) { /* FNV-1a */
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

/* The slot holding `name`, or (with `insert`) the first free slot on its probe path; NULL if
 * absent (without `insert`). */
static topic_slot *find_slot(nmq_plane *p, const uint8_t *name, uint32_t n, int insert) {
    uint32_t mask = p->cap - 1, i = (uint32_t)name_hash(name, n) & mask;
    topic_slot *free_slot = NULL;
    for (uint32_t probes = 0; probes < p->cap; probes++, i = (i + 1) & mask) {
        topic_slot *s = &p->slots[i];
        if (s->len == 0 && !s->gone) return insert ? (free_slot ? free_slot : s) : NULL;
        if (s->gone) {
            if (!free_slot) free_slot = s;
        } else if (s->len == n && memcmp(s->name, name, n) == 0) {
            return s;
        }
    }
    return insert ? free_slot : NULL;
}

static int grow(nmq_plane *p) {
    uint32_t old_cap = p->cap;
    topic_slot *old = p->slots;
    topic_slot *fresh = calloc((size_t)old_cap * 2, sizeof *fresh);
    if (!fresh) return NMQ_LOG_EINVAL;
    p->slots = fresh;
    p->cap = old_cap * 2;
    p->used = 0;
    for (uint32_t i = 0; i < old_cap; i++) {
        if (old[i].len && !old[i].gone) {
            topic_slot *s = find_slot(p, old[i].name, old[i].len, 1);
            *s = old[i];
            p->used++;
        }
    }
    free(old);
    return 0;
}

nmq_plane *nmq_plane_new(const nmq_plane_limits *limits) {
    if (!limits || limits->max_batch == 0 || limits->max_batch > MAX_BATCH_V1 || limits->max_frame < FRAME_HEADER)
        return NULL;
    nmq_plane *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->lim = *limits;
    p->cap = 64;
    p->slots = calloc(p->cap, sizeof *p->slots);
    if (!p->slots) {
        free(p);
        return NULL;
    }
    return p;
}

void nmq_plane_free(nmq_plane *p) {
    if (!p) return;
    free(p->slots);
    free(p);
}

/* A topic or group name: 1..255 bytes of A-Z a-z 0-9 . _ -, not "." or ".." ([NMQ-4.3-1]). */
static int valid_name(const uint8_t *s, uint32_t n) {
    if (n == 0 || n > 255) return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    if (s[0] == '.' && (n == 1 || (n == 2 && s[1] == '.'))) return 0;
    return 1;
}

int nmq_plane_topic(nmq_plane *p, const uint8_t *name, uint32_t len, nmq_log *log, uint32_t index) {
    if (!p || !log || !valid_name(name, len)) return NMQ_LOG_EINVAL;
    if ((p->used + 1) * 2 > p->cap && grow(p)) return NMQ_LOG_EINVAL;
    topic_slot *s = find_slot(p, name, len, 1);
    if (!s) return NMQ_LOG_EINVAL;
    if (s->len == 0 || s->gone) { /* a new entry (reusing a tombstone counts as used already) */
        if (!s->gone) p->used++;
        memcpy(s->name, name, len);
        s->len = (uint8_t)len;
        s->gone = 0;
    }
    s->log = log;
    s->index = index;
    return 0;
}

int nmq_plane_untopic(nmq_plane *p, const uint8_t *name, uint32_t len) {
    if (!p || !valid_name(name, len)) return NMQ_LOG_EINVAL;
    topic_slot *s = find_slot(p, name, len, 0);
    if (!s) return 0;
    s->gone = 1;
    s->len = 0;
    s->log = NULL;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* feed                                                                                         */

/* Write buf[0:len] to fd until done or it would block; returns the bytes written and sets *err
 * to a real error (EAGAIN is not one: the rest waits for the transport). */
static uint64_t send_all(int fd, const uint8_t *buf, uint64_t len, int *err) {
    uint64_t done = 0;
    while (done < len) {
        ssize_t w = send(fd, buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
            break;
        }
        done += (uint64_t)w;
    }
    return done;
}

static void put_header(uint8_t *h, uint32_t size, uint8_t opcode, uint64_t request_id) {
    st32(h, size);
    h[4] = opcode;
    h[5] = 0;
    st16(h + 6, 0);
    st64(h + 8, request_id);
}

/* Account `bytes` appended to topic `index` (consecutive appends to one topic share an entry;
 * any earlier entry for it is found too, so a topic is reported once per call). Returns 0, or -1
 * when the arrays are full. */
static int note_append(uint32_t *idx, uint64_t *bytes, uint32_t cap, uint32_t *n, uint32_t index, uint64_t len) {
    for (uint32_t i = *n; i-- > 0;) {
        if (idx[i] == index) {
            bytes[i] += len;
            return 0;
        }
    }
    if (*n == cap) return -1;
    idx[*n] = index;
    bytes[*n] = len;
    (*n)++;
    return 0;
}

/* Whether topic `index` already has an entry (so accounting one more append cannot overflow). */
static int noted(const uint32_t *idx, uint32_t n, uint32_t index) {
    for (uint32_t i = 0; i < n; i++)
        if (idx[i] == index) return 1;
    return 0;
}

int nmq_plane_feed(nmq_plane *p, const uint8_t *buf, uint64_t len, uint8_t *out, uint64_t out_cap, int fd,
                   uint32_t *appended_index, uint64_t *appended_bytes, uint32_t appended_cap,
                   nmq_feed_result *res) {
    memset(res, 0, sizeof *res);
    if (!p || (!buf && len) || (!out && out_cap)) return NMQ_LOG_EINVAL;
    uint32_t offsets[MAX_BATCH_V1];
    uint64_t off = 0;
    int stop = NMQ_PLANE_STOP_END;
    for (;;) {
        if (len - off < FRAME_HEADER) break; /* a partial header (or nothing): the codec buffers it */
        const uint8_t *f = buf + off;
        uint32_t size = ld32(f);
        /* Header checks of the codec (size, flags, reserved): a failure is fatal there. */
        if (size < FRAME_HEADER || size > p->lim.max_frame || f[5] != 0 || ld16(f + 6) != 0) {
            stop = NMQ_PLANE_STOP_FRAME;
            break;
        }
        if (len - off < size) break; /* the frame has not arrived whole yet */
        uint8_t opcode = f[4];
        uint64_t rid = ld64(f + 8);
        const uint8_t *b = f + FRAME_HEADER;
        uint32_t blen = size - FRAME_HEADER;
        if (opcode == OP_PING) {
            if (blen != 8) { stop = NMQ_PLANE_STOP_FRAME; break; }           /* MALFORMED */
            if (out_cap - res->out_len < PONG_FRAME) { stop = NMQ_PLANE_STOP_OUT; break; }
            uint8_t *o = out + res->out_len;
            put_header(o, PONG_FRAME, OP_PONG, rid);
            memcpy(o + FRAME_HEADER, b, 8); /* the same token [NMQ-4.10-1] */
            res->out_len += PONG_FRAME;
        } else if (opcode == OP_PUBLISH) {
            if (blen < 8) { stop = NMQ_PLANE_STOP_FRAME; break; }            /* MALFORMED */
            uint8_t ack = b[0];
            uint16_t tlen = ld16(b + 2), count = ld16(b + 4);
            /* the codec's order: reserved, topic length, ack mode, name, count, records */
            if (b[1] != 0 || ld16(b + 6) != 0 || (uint32_t)8 + tlen > blen || ack > 2 ||
                !valid_name(b + 8, tlen) || count == 0 || count > p->lim.max_batch) {
                stop = NMQ_PLANE_STOP_FRAME;
                break;
            }
            const uint8_t *recs = b + 8 + tlen;
            uint64_t rlen = blen - 8u - tlen;
            uint32_t err_index = 0;
            if (nmq_records_scan(recs, rlen, count, p->lim.max_payload, 1, offsets, &err_index) != 0) {
                stop = NMQ_PLANE_STOP_FRAME;
                break;
            }
            uint32_t summary = nmq_records_summary(recs, rlen, count);
            if (((summary & NMQ_FLAG_LZ4) && !(p->lim.caps & NMQ_PLANE_CAP_LZ4)) ||
                ((summary & NMQ_SUMMARY_PRODUCER) && !(p->lim.caps & NMQ_PLANE_CAP_IDEMPOTENT))) {
                stop = NMQ_PLANE_STOP_FRAME; /* NOT_SUPPORTED, from Python */
                break;
            }
            topic_slot *t = find_slot(p, b + 8, tlen, 0);
            if (!t) { stop = NMQ_PLANE_STOP_FRAME; break; }                  /* Python creates it */
            if (ack == 1 && out_cap - res->out_len < ACK_FRAME) { stop = NMQ_PLANE_STOP_OUT; break; }
            if (!noted(appended_index, res->appended, t->index) && res->appended == appended_cap) {
                stop = NMQ_PLANE_STOP_TOPICS;
                break;
            }
            uint64_t first = 0, last = 0;
            if (nmq_log_append(t->log, recs, rlen, count, 0, &first, &last) != 0) {
                stop = NMQ_PLANE_STOP_FRAME; /* nothing appended (NMQ-S6-4): Python answers the error */
                break;
            }
            note_append(appended_index, appended_bytes, appended_cap, &res->appended, t->index, rlen);
            if (ack == 2) {
                /* Durable: stored, and its ack waits for a sync (Python's group commit). Every
                 * answer after it must wait behind that ack [NMQ-3.3-2], so stop here. */
                res->durable_rid = rid;
                res->durable_first = first;
                res->durable_count = count;
                res->durable_index = t->index;
                off += size;
                res->frames++;
                stop = NMQ_PLANE_STOP_DURABLE;
                break;
            }
            if (ack == 1) {
                uint8_t *o = out + res->out_len;
                put_header(o, ACK_FRAME, OP_PUBLISH_ACK, rid);
                st64(o + 16, first);
                st32(o + 24, count);
                st32(o + 28, 0);
                res->out_len += ACK_FRAME, res->acks++; /* one line: mutant ids below are by line number */
            }
        } else {
            stop = NMQ_PLANE_STOP_FRAME;
            break;
        }
        off += size;
        res->frames++;
    }
    res->consumed = off;
    res->stop = stop;
    if (fd >= 0 && res->out_len) res->out_sent = send_all(fd, out, res->out_len, &res->send_errno);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* deliver                                                                                      */

int nmq_plane_deliver(nmq_log *log, int fd, uint32_t sub_id, uint64_t from_id, uint32_t credit,
                      uint64_t max_bytes, uint8_t *hdr, const uint8_t **recs, nmq_seg **pinned,
                      nmq_deliver_result *res) {
    memset(res, 0, sizeof *res);
    *recs = NULL;
    *pinned = NULL;
    if (!log || credit == 0) return 0;
    if (credit > MAX_BATCH_V1) credit = MAX_BATCH_V1;
    const uint8_t *ptr = NULL;
    uint64_t rlen = 0, first = 0;
    nmq_seg *seg = NULL;
    int n = nmq_log_read(log, from_id, credit, max_bytes, &ptr, &rlen, &first, &seg);
    res->first_id = first;
    if (n <= 0) return n; /* 0: nothing (first_id says where the next record goes); < 0: damage */
    uint64_t frame = 24 + rlen;
    /* DELIVER: header (request_id 0), then sub_id u32, count u16, reserved u16 [NMQ-4.6-3] */
    put_header(hdr, (uint32_t)frame, OP_DELIVER, 0);
    st32(hdr + 16, sub_id);
    st16(hdr + 20, (uint16_t)n);
    st16(hdr + 22, 0);
    res->count = (uint32_t)n;
    res->frame_len = frame;
    if (fd >= 0) {
        struct iovec iov[2] = {{hdr, 24}, {(void *)ptr, rlen}};
        int vi = 0;
        while (res->sent < frame) {
            /* sendmsg, not writev: MSG_DONTWAIT never blocks the loop (even on a blocking socket)
             * and MSG_NOSIGNAL turns a peer that went away into EPIPE, not a SIGPIPE */
            struct msghdr msg = {.msg_iov = iov + vi, .msg_iovlen = (size_t)(2 - vi)};
            ssize_t w = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) res->send_errno = errno;
                break;
            }
            res->sent += (uint64_t)w;
            while (vi < 2 && (size_t)w >= iov[vi].iov_len) { /* drop the iovecs fully written */
                w -= (ssize_t)iov[vi].iov_len;
                vi++;
            }
            if (vi < 2 && w) {
                iov[vi].iov_base = (uint8_t *)iov[vi].iov_base + w;
                iov[vi].iov_len -= (size_t)w;
            }
        }
    }
    if (res->sent == frame) {
        nmq_log_unpin(log, seg);
        return 0;
    }
    *recs = ptr;
    *pinned = seg;
    return 0;
}
