/* Driver of the data plane (plane.c) for the sanitizers (make sanitize): streams of valid PUBLISH
 * and PING frames, randomly damaged, cut and concatenated, fed to nmq_plane_feed over a real log,
 * then everything appended delivered to a socket pair with a tiny send buffer (partial writes).
 * It checks what the plane promises without a codec at hand: consumed never passes the input,
 * answers are whole frames, appended records come back by delivery, and nothing reads or writes
 * out of bounds (ASan/UBSan). The codec-level differential is tests/test_plane.py and fuzz_plane.
 *
 *   test_plane ITERATIONS
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "plane.h"
#include "record.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A PUBLISH of `count` records of up to 200 bytes to `topic` with `ack`; returns its length. */
static size_t publish(uint8_t *out, const char *topic, uint8_t ack, uint32_t count) {
    size_t tlen = strlen(topic), off = 16 + 8 + tlen;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t size = (uint32_t)(next() % 200);
        uint8_t *r = out + off;
        memset(r, 0, 64 + size + 8);
        st32(r + 20, size);
        for (uint32_t k = 0; k < size; k++) r[64 + k] = (uint8_t)next();
        st32(r + 24, nmq_record_crc(r, size));
        off += (64 + size + 7) & ~7u;
    }
    st32(out, (uint32_t)off);
    out[4] = 0x02;
    out[5] = 0;
    st16(out + 6, 0);
    st64(out + 8, next());
    uint8_t *b = out + 16;
    b[0] = ack;
    b[1] = 0;
    st16(b + 2, (uint16_t)tlen);
    st16(b + 4, (uint16_t)count);
    st16(b + 6, 0);
    memcpy(b + 8, topic, tlen);
    return off;
}

static size_t ping(uint8_t *out) {
    st32(out, 24);
    out[4] = 0x09;
    out[5] = 0;
    st16(out + 6, 0);
    st64(out + 8, next());
    st64(out + 16, next());
    return 24;
}

int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 2000;
    char dir[] = "/tmp/nanomq-test-plane-XXXXXX";
    CHECK(mkdtemp(dir));
    nmq_log_config cfg = {.segment_bytes = 1 << 20, .max_payload = 4096, .topic_id = 5,
                          .sync_policy = NMQ_SYNC_NEVER, .on_corrupt = NMQ_ON_CORRUPT_QUARANTINE};
    nmq_log *log = NULL;
    nmq_recovery_report rep;
    CHECK(nmq_log_open(dir, &cfg, &log, &rep) == 0);
    nmq_plane_limits lim = {.max_frame = 1 << 20, .max_payload = 4096, .max_batch = 256, .caps = NMQ_PLANE_CAP_LZ4};
    nmq_plane *p = nmq_plane_new(&lim);
    CHECK(p && nmq_plane_topic(p, (const uint8_t *)"t", 1, log, 0) == 0);
    for (int i = 0; i < 100; i++) { /* the table grows, and forgets */
        char name[16];
        int n = snprintf(name, sizeof name, "x%d", i);
        CHECK(nmq_plane_topic(p, (const uint8_t *)name, (uint32_t)n, log, 1) == 0);
        if (i % 3 == 0) CHECK(nmq_plane_untopic(p, (const uint8_t *)name, (uint32_t)n) == 0);
    }
    CHECK(nmq_plane_topic(p, (const uint8_t *)"..", 2, log, 2) != 0);
    size_t cap = 1 << 20;
    uint8_t *in = malloc(cap), *out = malloc(4096);
    uint32_t idx[4];
    uint64_t bytes[4];
    uint64_t taken = 0, answered = 0;
    for (int it = 0; it < iters; it++) {
        size_t len = 0;
        int frames = 1 + (int)(next() % 6);
        for (int f = 0; f < frames && len < cap - 70000; f++) {
            uint64_t k = next() % 5;
            if (k == 0) len += ping(in + len);
            else len += publish(in + len, k == 1 ? "x1" : "t", (uint8_t)(next() % 3), 1 + (uint32_t)(next() % 20));
        }
        if (next() % 3 == 0 && len) in[next() % len] ^= (uint8_t)(1u << (next() % 8)); /* damage a bit */
        size_t cut = next() % 4 == 0 ? (size_t)(next() % (len + 1)) : len;      /* a partial tail */
        nmq_feed_result r;
        CHECK(nmq_plane_feed(p, in, cut, out, 4096, -1, idx, bytes, 4, &r) == 0);
        CHECK(r.consumed <= cut && r.out_len <= 4096 && r.appended <= 4 && r.out_sent == 0);
        for (uint64_t o = 0; o < r.out_len;) { /* answers are whole frames, back to back */
            uint32_t size;
            memcpy(&size, out + o, 4);
            CHECK(size == 24 || size == 32);
            CHECK(out[o + 4] == 0x89 || out[o + 4] == 0x82);
            o += size;
            answered++;
        }
        taken += r.frames;
    }
    /* deliver everything appended through a socket that takes little at a time */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    nmq_log_stats st;
    CHECK(nmq_log_stats_get(log, &st) == 0);
    uint64_t id = 1, delivered = 0;
    uint8_t hdr[24], *sink = malloc(1 << 20);
    while (id < st.next_id) {
        const uint8_t *recs;
        nmq_seg *pin;
        nmq_deliver_result d;
        CHECK(nmq_plane_deliver(log, sv[0], 3, id, 256, 64 * 1024, hdr, &recs, &pin, &d) == 0);
        CHECK(d.count > 0 && d.first_id == id && d.sent <= d.frame_len);
        if (pin) { /* the socket did not take it all: the caller's part */
            CHECK(d.sent < d.frame_len && recs != NULL);
            volatile uint8_t x = recs[d.frame_len - 25]; /* the pinned records stay readable */
            (void)x;
            nmq_log_unpin(log, pin);
        }
        while (recv(sv[1], sink, 1 << 20, MSG_DONTWAIT) > 0) {
        }
        id += d.count;
        delivered += d.count;
    }
    CHECK(delivered == st.next_id - 1);
    nmq_deliver_result none;
    const uint8_t *recs;
    nmq_seg *pin;
    CHECK(nmq_plane_deliver(log, -1, 3, id, 10, 1 << 20, hdr, &recs, &pin, &none) == 0 && none.count == 0);
    printf("ok: %d streams, %llu frames taken, %llu answers, %llu records delivered\n", iters,
           (unsigned long long)taken, (unsigned long long)answered, (unsigned long long)delivered);
    close(sv[0]);
    close(sv[1]);
    nmq_plane_free(p);
    nmq_log_close(log, 1);
    nmq_log_free(log);
    free(in);
    free(out);
    free(sink);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return 0;
}
