/* Batch operations on records: one C call per batch, never per record (a cffi call costs
 * ~65 ns and moving bytes out ~250 ns, so per-record calls would cap Python near 1-3 M/s). */
#include "record.h"
#include "crc32c.h"

#include <string.h>

static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static const uint8_t zero4[4] = {0, 0, 0, 0};

uint32_t nmq_record_crc(const uint8_t *rec, uint32_t size) {
    uint32_t c = nmq_crc32c(0, rec, 24);
    c = nmq_crc32c(c, zero4, 4);
    return nmq_crc32c(c, rec + 28, NMQ_HEADER_SIZE - 28 + (size_t)size);
}

int nmq_records_scan(const uint8_t *buf, size_t len, uint32_t count, uint32_t max_payload,
                     int check_crc, uint32_t *out_offsets, uint32_t *err_index) {
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        *err_index = i;
        if (len - off < NMQ_HEADER_SIZE) return NMQ_REC_TRUNCATED;
        const uint8_t *r = buf + off;
        uint32_t size = ld32(r + 20);
        if (size > max_payload) return NMQ_REC_TOO_LARGE;
        size_t span = nmq_record_span(size);
        if (len - off < span) return NMQ_REC_TRUNCATED;
        if ((ld32(r + 28) & ~NMQ_FLAGS_KNOWN) != 0) return NMQ_REC_RESERVED;
        if (ld32(r + 52) != 0 || ld64(r + 56) != 0) return NMQ_REC_RESERVED;
        /* raw_size is only meaningful for a compressed payload */
        if (!(ld32(r + 28) & NMQ_FLAG_LZ4) && ld32(r + 48) != 0) return NMQ_REC_RESERVED;
        /* a compressed payload must not expand past the limit either (spec NMQ-5.3-2) */
        if (ld32(r + 48) > max_payload) return NMQ_REC_RAW_TOO_LARGE;
        for (size_t p = NMQ_HEADER_SIZE + (size_t)size; p < span; p++)
            if (r[p] != 0) return NMQ_REC_PADDING;
        if (check_crc && nmq_record_crc(r, size) != ld32(r + 24)) return NMQ_REC_BAD_CRC;
        out_offsets[i] = (uint32_t)off;
        off += span;
    }
    *err_index = count;
    return off == len ? 0 : NMQ_REC_TRAILING;
}

uint64_t nmq_records_size(const uint32_t *lengths, uint32_t count) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++) total += nmq_record_span(lengths[i]);
    return total;
}

int64_t nmq_records_encode(uint8_t *out, size_t out_cap, const uint8_t *payloads,
                           const uint32_t *lengths, const uint32_t *flags, const uint32_t *raw_sizes,
                           uint32_t count, uint64_t first_id, uint64_t timestamp_ns,
                           uint32_t topic_id, uint64_t producer_id, uint64_t first_seq,
                           uint32_t *out_offsets) {
    if (nmq_records_size(lengths, count) > out_cap) return NMQ_REC_NO_SPACE;
    size_t off = 0;
    const uint8_t *src = payloads;
    for (uint32_t i = 0; i < count; i++) {
        uint8_t *r = out + off;
        uint32_t size = lengths[i];
        size_t span = nmq_record_span(size);
        st64(r + 0, first_id ? first_id + i : 0);
        st64(r + 8, timestamp_ns);
        st32(r + 16, topic_id);
        st32(r + 20, size);
        st32(r + 24, 0);
        st32(r + 28, flags ? flags[i] : 0);
        st64(r + 32, producer_id);
        st64(r + 40, producer_id ? first_seq + i : 0);
        st32(r + 48, raw_sizes ? raw_sizes[i] : 0);
        memset(r + 52, 0, 12);
        memcpy(r + NMQ_HEADER_SIZE, src, size);
        memset(r + NMQ_HEADER_SIZE + size, 0, span - NMQ_HEADER_SIZE - size);
        st32(r + 24, nmq_record_crc(r, size));
        if (out_offsets) out_offsets[i] = (uint32_t)off;
        src += size;
        off += span;
    }
    return (int64_t)off;
}

#include <malloc.h>
int nmq_malloc_top_pad(size_t bytes) {
#if defined(M_TOP_PAD) && defined(M_MMAP_THRESHOLD)
    if (bytes == 0) return 0;
    /* Setting any malloc parameter turns off glibc's dynamic mmap threshold, after which every
     * block over 128 KiB is a fresh mmap (page faults again): raise the threshold with it. */
    int big = bytes > (32u << 20) ? (int)bytes : (32 << 20);
    return mallopt(M_MMAP_THRESHOLD, big) && mallopt(M_TOP_PAD, (int)bytes);
#else
    (void)bytes;
    return 0;
#endif
}

uint32_t nmq_records_summary(const uint8_t *buf, size_t len, uint32_t count) {
    uint32_t out = 0;
    size_t off = 0;
    for (uint32_t i = 0; i < count && len - off >= NMQ_HEADER_SIZE; i++) {
        const uint8_t *r = buf + off;
        out |= ld32(r + 28) & NMQ_FLAGS_KNOWN;
        if (ld64(r + 32) != 0) out |= NMQ_SUMMARY_PRODUCER;
        off += nmq_record_span(ld32(r + 20));
        if (off > len) break;
    }
    return out;
}
