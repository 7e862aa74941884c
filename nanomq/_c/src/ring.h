/* NanoMQ ring: variable-length records in caller-provided memory (heap or a shared mapping).
 *
 * Memory layout (layout version 1), all integers little-endian host order:
 *
 *   [0, NMQ_RING_HDR_SIZE)   header: magic, version, mode, capacity (immutable after init),
 *                            then tail, head, wake-up words and peer table, each group on its own
 *                            128-byte block (two cache lines: x86 prefetches lines in pairs, so a
 *                            single 64-byte line of distance still false-shares).
 *   [HDR, HDR + capacity)    data: frames of  { uint32 size; uint32 len; payload; pad to 8 }.
 *
 * A frame's `size` is its whole footprint (8 + len rounded up to 8), never 0. A frame whose `len`
 * is NMQ_RING_PAD_LEN is a padding frame that fills the end of the data area when the next record
 * does not fit contiguously; records are therefore always contiguous (zero-copy peek works).
 *
 * Positions (head, tail) are 64-bit byte counters that only grow; the offset is pos & (cap - 1).
 * Free space = cap - (tail - head). Empty: head == tail (SPSC) or the frame at head not committed.
 *
 * Two modes, fixed at init:
 *  - SPSC: one producer, one consumer. The producer writes frames then publishes them all with one
 *    release store of `tail`; the consumer acquire-loads `tail` (only when its cached copy is used
 *    up), reads, and releases `head` (the producer acquire-loads it only when its cached copy says
 *    the ring is full). No read-modify-write instructions on the hot path.
 *  - MPSC (Aeron ManyToOneRingBuffer style): producers claim space with a CAS on `tail`, write the
 *    frame, and publish it by a release store of the frame's `size` word; the consumer acquire-loads
 *    `size` at `head` (0 = not committed yet), reads, zeroes the frame (so any future frame header
 *    that lands inside it reads 0 until committed), then releases `head`.
 *
 * All functions are non-blocking except nmq_ring_wait_*, which wait at most `timeout_ns` (callers
 * slice long waits so signals and deadlines are honoured).
 */
#ifndef NMQ_RING_H
#define NMQ_RING_H

#include <stddef.h>
#include <stdint.h>

/* cffi-begin: the public API, declared to cffi by nanomq/_c/_builder.py (up to cffi-end) */
#define NMQ_RING_MAGIC 0x474E49525143514EULL /* "NQCQRING" */
#define NMQ_RING_VERSION 1u
#define NMQ_RING_HDR_SIZE 4096u /* data starts page-aligned */
#define NMQ_RING_MIN_CAPACITY 64u
#define NMQ_RING_MAX_PRODUCERS 16u
#define NMQ_RING_PAD_LEN 0xFFFFFFFFu
#define NMQ_RING_MAX_BATCH 256u

/* mode flags */
#define NMQ_RING_SPSC 0u
#define NMQ_RING_MPSC 1u

/* wait strategies */
#define NMQ_WAIT_SPIN 0
#define NMQ_WAIT_YIELD 1
#define NMQ_WAIT_BLOCK 2

/* error codes (negative returns) */
#define NMQ_RING_EAGAIN (-1)   /* full (producer) / empty (consumer) */
#define NMQ_RING_EMSGSIZE (-2) /* record larger than max_record */
#define NMQ_RING_EINVAL (-3)   /* bad argument / bad state (e.g. commit without claim) */
#define NMQ_RING_EBADMAGIC (-4)
#define NMQ_RING_EVERSION (-5)
#define NMQ_RING_ESIZE (-6)    /* memory too small / capacity not a power of two */
#define NMQ_RING_EBUSY (-7)    /* role already taken by a registered peer */
#define NMQ_RING_ENOMEM (-8)
#define NMQ_RING_EBUFSIZE (-9) /* caller's output buffer too small for the next record */
#define NMQ_RING_EHEADER (-10) /* header fields inconsistent (max_producers, head/tail positions) */

typedef struct nmq_ring nmq_ring;

/* Bytes of memory needed for a ring of `capacity` data bytes (header included). */
size_t nmq_ring_required_size(uint64_t capacity);
/* Format `mem` as an empty ring. `mem` must be 8-byte aligned (128 recommended) and zeroed or not:
 * the header is written fully and the magic last (release), so an opener never sees half a header.
 * The data area must be zero for MPSC (it is cleared here). */
int nmq_ring_init(void *mem, size_t mem_len, uint64_t capacity, uint32_t mode);
/* Validate `mem` as a ring and return a process-local handle (NULL and *err on failure).
 * Every header field is checked: magic (EBADMAGIC), version (EVERSION), capacity, header size,
 * mode, max_record and the memory size (ESIZE), max_producers (1 for SPSC, 16 for MPSC) and the
 * positions (head and tail multiples of 8, head <= tail <= head + capacity) (EHEADER). The
 * immutable fields are cached in the handle and never read from shared memory again, so a header
 * rewritten later (a buggy or hostile peer) cannot make the handle index outside the header. */
nmq_ring *nmq_ring_attach(void *mem, size_t mem_len, int *err);
void nmq_ring_free(nmq_ring *r);
/* Reload the handle's cached copies of head and tail from shared memory and forget any claim or
 * peek in progress (after taking over a role): two acquire loads, no I/O. */
void nmq_ring_reload(nmq_ring *r);

uint64_t nmq_ring_capacity(const nmq_ring *r);
uint32_t nmq_ring_max_record(const nmq_ring *r);
uint32_t nmq_ring_mode(const nmq_ring *r);
uint64_t nmq_ring_used(const nmq_ring *r); /* bytes between head and tail (approximate snapshot) */
uint64_t nmq_ring_head(const nmq_ring *r);
uint64_t nmq_ring_tail(const nmq_ring *r);

/* Producer, zero-copy: claim `len` bytes, write them at *out, then commit or abort. One claim at a
 * time per handle (push/claim while claiming is EINVAL). Abort gives the claim up: SPSC publishes
 * nothing (the space is reused by the next record); MPSC cannot hand the space back (other
 * producers may have claimed past it), so it publishes it as a padding frame that the consumer
 * skips, and the records claimed after it are delivered. commit/abort without a claim: EINVAL. */
int nmq_ring_claim(nmq_ring *r, uint32_t len, uint8_t **out);
int nmq_ring_commit(nmq_ring *r);
int nmq_ring_abort(nmq_ring *r);
/* Producer, copying: 0 on success, NMQ_RING_EAGAIN when full. */
int nmq_ring_push(nmq_ring *r, const uint8_t *data, uint32_t len);
/* Push up to n (<= 256) records stored back to back in `data` with lengths `lens`. Returns how many
 * were pushed (a prefix; 0 when even the first does not fit) or a negative error. One publication. */
int nmq_ring_push_batch(nmq_ring *r, const uint8_t *data, const uint32_t *lens, uint32_t n);

/* Consumer, zero-copy: 1 with the next record in *out and *len, 0 when empty. Then release it. */
int nmq_ring_peek(nmq_ring *r, uint8_t **out, uint32_t *len);
int nmq_ring_release(nmq_ring *r);
/* Consumer, copying: 1 with the record copied to out (length in *len), 0 when empty, NMQ_RING_EBUFSIZE when the
 * next record is larger than cap (*len tells its size; nothing consumed). */
int nmq_ring_pop(nmq_ring *r, uint8_t *out, uint32_t cap, uint32_t *len);
/* Pop up to max_n (<= 256) records back to back into out (no padding), lengths into lens. Returns
 * the count (0 when empty). Stops early when `out` cannot hold the next record. One head release. */
int nmq_ring_pop_batch(nmq_ring *r, uint8_t *out, size_t cap, uint32_t *lens, uint32_t max_n);

/* Waits: 1 when the condition holds, 0 when timeout_ns passed. spin_ns bounds the spinning phase of
 * the YIELD and BLOCK strategies. Blocking uses a futex on a word in the shared header; the other
 * side issues FUTEX_WAKE only when a waiter announced itself. */
int nmq_ring_wait_readable(nmq_ring *r, int strategy, uint64_t spin_ns, uint64_t timeout_ns);
int nmq_ring_wait_writable(nmq_ring *r, uint32_t len, int strategy, uint64_t spin_ns,
                           uint64_t timeout_ns);
/* Non-blocking probes. */
int nmq_ring_readable(nmq_ring *r);
int nmq_ring_writable(nmq_ring *r, uint32_t len);

/* Peer table (for liveness checks by the caller). role 0 = consumer, 1 = producer.
 * register returns the slot index (>= 0) or NMQ_RING_EBUSY; a slot whose pid the caller judged
 * dead can be taken over with nmq_ring_register_replace. */
int nmq_ring_register(nmq_ring *r, int role, uint32_t pid);
int nmq_ring_register_replace(nmq_ring *r, int role, int slot, uint32_t old_pid, uint32_t pid);
void nmq_ring_unregister(nmq_ring *r, int role, int slot, uint32_t pid);
/* pid registered in a slot (0 = free). Consumer: slot 0 only. */
uint32_t nmq_ring_peer_pid(const nmq_ring *r, int role, int slot);
/* Counters: how many producers ever registered / closed cleanly; consumer closed flag. */
uint32_t nmq_ring_peer_count(const nmq_ring *r, int role, int which);
uint32_t nmq_ring_max_producers(const nmq_ring *r);
/* cffi-end */

#endif
