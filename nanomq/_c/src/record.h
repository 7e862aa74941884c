/* The NanoMQ record: identical bytes on the wire and on disk (spec/protocol.md §5).
 *
 *   off size field                off size field
 *    0   8   id                    32   8   producer_id
 *    8   8   timestamp_ns          40   8   sequence
 *   16   4   topic_id              48   4   raw_size (payload size before compression, else 0)
 *   20   4   size (payload bytes)  52  12   reserved, zero
 *   24   4   crc (CRC-32C)
 *   28   4   flags
 *
 * All little-endian. The CRC covers the 64 header bytes with the crc field taken as zero, then the
 * payload. A record occupies align8(64 + size) bytes; the padding is zero and not covered by the CRC.
 */
#ifndef NMQ_RECORD_H
#define NMQ_RECORD_H
#include <stddef.h>
#include <stdint.h>

/* cffi-begin: the public API, declared to cffi by nanomq/_c/_builder.py (up to cffi-end) */
#define NMQ_HEADER_SIZE 64u
#define NMQ_FLAG_LZ4 1u
#define NMQ_FLAGS_KNOWN NMQ_FLAG_LZ4

/* Error codes of the record functions (negative returns). */
#define NMQ_REC_TRUNCATED (-1)      /* a header or payload runs past the buffer */
#define NMQ_REC_TOO_LARGE (-2)      /* size > max_payload */
#define NMQ_REC_BAD_CRC (-3)
#define NMQ_REC_RESERVED (-4)       /* reserved header bytes or unknown flag bits set */
#define NMQ_REC_TRAILING (-5)       /* bytes left after `count` records */
#define NMQ_REC_PADDING (-6)        /* non-zero padding */
#define NMQ_REC_NO_SPACE (-7)       /* output buffer too small */
#define NMQ_REC_RAW_TOO_LARGE (-8)  /* raw_size (uncompressed size) > max_payload */
/* cffi-end */

/* (Inline, so not in the cffi API: Python has nanomq.protocol.record_span.) */
static inline size_t nmq_record_span(uint32_t size) { return ((size_t)NMQ_HEADER_SIZE + size + 7u) & ~(size_t)7u; }

/* cffi-begin */
/* CRC of one record laid out at `rec` (header followed by `size` payload bytes). */
uint32_t nmq_record_crc(const uint8_t *rec, uint32_t size);

/* Validate `count` records packed back to back in buf[0:len] and write each record's offset to
 * out_offsets[i]. On error returns a NMQ_REC_* code and stores the failing record index in
 * *err_index; on success returns 0. If check_crc is 0 the CRCs are not verified (the broker never
 * does this; it exists for benchmarks of the framing alone). */
int nmq_records_scan(const uint8_t *buf, size_t len, uint32_t count, uint32_t max_payload,
                     int check_crc, uint32_t *out_offsets, uint32_t *err_index);

/* Encode `count` records from concatenated payloads (lengths[i] bytes each) into out. Per-record
 * flags and raw_sizes may be NULL (meaning 0). Ids are first_id, first_id+1, ... (0 stays 0 for
 * records a publisher sends), sequences first_seq, first_seq+1, ... when producer_id != 0.
 * out_offsets (may be NULL) receives each record's offset in out.
 * Returns the number of bytes written, or NMQ_REC_NO_SPACE. */
int64_t nmq_records_encode(uint8_t *out, size_t out_cap, const uint8_t *payloads,
                           const uint32_t *lengths, const uint32_t *flags, const uint32_t *raw_sizes,
                           uint32_t count, uint64_t first_id, uint64_t timestamp_ns,
                           uint32_t topic_id, uint64_t producer_id, uint64_t first_seq,
                           uint32_t *out_offsets);

/* OR of the flags of `count` validated records, plus NMQ_SUMMARY_PRODUCER if any has a
 * producer_id: lets a server refuse features it did not announce with one call per batch. */
#define NMQ_SUMMARY_PRODUCER 0x80000000u
uint32_t nmq_records_summary(const uint8_t *buf, size_t len, uint32_t count);

/* Total encoded size of `count` records with the given payload lengths. */
uint64_t nmq_records_size(const uint32_t *lengths, uint32_t count);


/* glibc returns freed memory at the top of the heap to the kernel at once, so every new
 * multi-hundred-KiB batch buffer pays ~1 µs of page fault per 4 KiB page (4-5x the cost of
 * encoding the batch). Keeping `bytes` of padding at the heap top avoids that. Returns mallopt's
 * result (1 = done, 0 = not available). */
int nmq_malloc_top_pad(size_t bytes);
/* cffi-end */
#endif
