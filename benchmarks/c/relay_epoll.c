/* A relay the way an event-driven broker with its loop in C would be one: epoll on two sockets,
 * each 64-byte message read from the publisher, optionally appended to a preallocated file
 * (pwrite, as the log does), acked to the publisher and delivered to the subscriber.
 *
 * What it is for: benchmarks/bench_relay_c.py measures its CPU per record next to the Python
 * relay of nanomq.bench.calibrate and to the broker, so the cost of the broker's Python event loop
 * (and the bound a C loop could reach) is a figure of the same run, not a guess.
 *
 *   relay_epoll PUB_FD SUB_FD COUNT WARM [APPEND_PATH]
 *
 * The sockets are inherited, already accepted. Prints one line of JSON: records relayed after the
 * warm-up and the process CPU (user + system ns, getrusage) they took.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#define MSG 64

static uint64_t cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static int send_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue; /* 64 B into an empty buffer: rare */
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: relay_epoll PUB_FD SUB_FD COUNT WARM [APPEND_PATH]\n");
        return 2;
    }
    int pub = atoi(argv[1]), sub = atoi(argv[2]);
    long total = atol(argv[3]), warm = atol(argv[4]);
    int log = -1;
    off_t at = 0;
    if (argc > 5) {
        log = open(argv[5], O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (log < 0 || posix_fallocate(log, 0, (off_t)(total + 16) * MSG)) {
            perror("append file");
            return 1;
        }
    }
    fcntl(pub, F_SETFL, fcntl(pub, F_GETFL) | O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pub};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, pub, &ev)) {
        perror("epoll");
        return 1;
    }
    uint8_t buf[MSG * 64];
    size_t have = 0;
    long done = 0;
    uint64_t c0 = 0;
    while (done < total) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, 10000);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        ssize_t r = read(pub, buf + have, sizeof buf - have);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) break;
        have += (size_t)r;
        size_t off = 0;
        while (have - off >= MSG && done < total) {
            if (done == warm) c0 = cpu_ns();
            if (log >= 0 && pwrite(log, buf + off, MSG, at) != MSG) {
                perror("pwrite");
                return 1;
            }
            at += MSG;
            if (send_all(pub, buf + off, MSG) || send_all(sub, buf + off, MSG)) {
                perror("send");
                return 1;
            }
            off += MSG;
            done++;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    uint64_t c1 = cpu_ns();
    if (log >= 0) {
        close(log);
        unlink(argv[5]);
    }
    printf("{\"records\": %ld, \"cpu_ns\": %llu}\n", done > warm ? done - warm : 0,
           (unsigned long long)(c1 - c0));
    return 0;
}
