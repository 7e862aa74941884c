/* The NanoMQ topic log: a write-ahead log of records in preallocated, mmap'ed segments.
 * Normative contract: spec/storage.md (rule IDs [NMQ-S*]). Theory of operation:
 *
 *   <dir>/lock                        flock'ed by the one process that owns the log
 *   <dir>/<first_id:020>.log          segment: records back to back, zero after the tail
 *   <dir>/<first_id:020>.idx          sparse index (id, timestamp, offset) of a sealed segment
 *   <dir>/checkpoint                  last verified+durable position, and the clean-shutdown flag
 *
 * Appends stamp id/timestamp/topic/CRC into a staging copy of each header and write the run into the
 * segment file with one pwritev (headers from the staging array, payloads straight from the caller's
 * buffer), the first record's id word written as zero. They then publish the run by storing that
 * id word (u64 @0) into the mapping, with release ordering: a reader of the same mapping (any
 * process) that loads a non-zero id with acquire ordering sees the whole run.
 *
 * Threads: one appender at a time (appends are serialised by the log mutex anyway), any number of
 * readers, and sync() from any thread concurrently with appends. The fdatasync in sync() runs
 * without the log mutex (a separate sync mutex orders syncs), so appends for the next group
 * proceed while the current group commits. Callers from Python release the GIL (cffi does).
 *
 * Return values: 0 or a positive count on success; a negative errno (-ENOSPC, -EIO, ...) for a
 * system error; or one of the NMQ_LOG_E* codes below (all <= -1000).
 */
#ifndef NMQ_LOG_H
#define NMQ_LOG_H
#include <stddef.h>
#include <stdint.h>

/* cffi-begin: the public API, declared to cffi by nanomq/_c/_builder.py (up to cffi-end) */
#define NMQ_LOG_ECLOSED (-1001)   /* the log is closed */
#define NMQ_LOG_EINVAL (-1002)    /* bad argument (message in nmq_log_last_error) */
#define NMQ_LOG_ECORRUPT (-1003)  /* corruption found on open with on_corrupt = raise */
#define NMQ_LOG_ELOCKED (-1004)   /* another process holds the directory lock */
#define NMQ_LOG_EBADREC (-1005)   /* the buffer handed to append is not `count` valid records */
#define NMQ_LOG_ETOOBIG (-1006)   /* a batch larger than NMQ_LOG_MAX_BATCH_BYTES */
/* The largest batch one append takes: a batch larger than the segment size gets a segment of its
 * own (NMQ-S3-6); this bounds that segment (a frame's size is a u32 anyway). */
#define NMQ_LOG_MAX_BATCH_BYTES (1ull << 32)

#define NMQ_SYNC_ALWAYS 0
#define NMQ_SYNC_INTERVAL 1
#define NMQ_SYNC_NEVER 2

#define NMQ_ON_CORRUPT_RAISE 0
#define NMQ_ON_CORRUPT_QUARANTINE 1

#define NMQ_FAULT_WRITE 1      /* an append's pwritev, or a write() of idx/checkpoint */
#define NMQ_FAULT_FSYNC 2      /* fdatasync/fsync */
#define NMQ_FAULT_FTRUNCATE 3
#define NMQ_FAULT_FALLOCATE 4
#define NMQ_FAULT_SLOW_FSYNC 5 /* fdatasync/fsync first sleep `err` microseconds (a slow disk); they succeed */
#define NMQ_FAULT_KINDS 6

typedef struct nmq_log nmq_log;
typedef struct nmq_seg nmq_seg;

typedef struct {
    uint64_t segment_bytes;   /* rotation size; also the preallocation size */
    int64_t retention_ms;     /* <= 0: none */
    int64_t retention_bytes;  /* <= 0: none */
    uint32_t max_payload;
    uint32_t topic_id;
    uint32_t interval_ms;     /* for NMQ_SYNC_INTERVAL */
    int sync_policy;          /* NMQ_SYNC_* */
    int on_corrupt;           /* NMQ_ON_CORRUPT_* */
    int verify_all;           /* 1: verify every CRC on open, not only after the checkpoint */
    uint32_t index_interval;  /* bytes of log between sparse index entries (0: 4096) */
} nmq_log_config;

typedef struct {
    uint64_t segments;          /* segments in the log after recovery */
    uint64_t records;           /* records in the log after recovery */
    uint64_t bytes;             /* bytes of records in the log after recovery */
    uint64_t verified_bytes;    /* bytes whose CRCs were checked */
    uint64_t trusted_bytes;     /* bytes accepted from an index or the checkpoint without a CRC check */
    uint64_t first_id;
    uint64_t next_id;
    int clean;                  /* a valid clean-shutdown checkpoint was found */
    int checkpoint_used;        /* a valid checkpoint bounded the scan */
    uint64_t indexes_loaded;
    uint64_t indexes_rebuilt;
    uint64_t truncated_bytes;   /* non-zero bytes cut from the tail (torn tail or corruption) */
    uint64_t truncated_segment; /* first id of the segment that was cut (0: none) */
    uint64_t truncated_offset;
    int corruption;             /* 0 none, 1 bad record before the tail, 2 id gap, 3 unreadable segment */
    uint64_t corrupt_segment;
    uint64_t corrupt_offset;
    uint64_t corrupt_id;        /* the id expected at corrupt_offset */
    uint64_t quarantined_files;
    uint64_t stray_files;       /* files named like segments that were not the log's, set aside (NMQ-S9-9) */
    uint64_t duration_ns;
    char message[512];
} nmq_recovery_report;

typedef struct {
    uint64_t first_id;
    uint64_t next_id;
    uint64_t durable_id;        /* every id <= durable_id is on stable storage */
    uint64_t segments;
    uint64_t total_bytes;
    uint64_t last_timestamp_ns;
    int last_sync_errno;        /* errno of the last failed background sync (0: none) */
    uint64_t fdatasyncs;         /* group commits performed by sync() */
    int read_only_errno;         /* non-zero: recovery could not finish for lack of space (ENOSPC,
                                  * EDQUOT): reads work, appends fail until a retry succeeds */
    int closed;
} nmq_log_stats;

int nmq_log_open(const char *dir, const nmq_log_config *cfg, nmq_log **out, nmq_recovery_report *rep);
/* Append `count` records packed in buf[0:len]. ts_ns = 0 means "now". Ids are assigned
 * contiguously; *first_id and *last_id receive the range. Nothing is published on error. */
int nmq_log_append(nmq_log *log, const uint8_t *buf, size_t len, uint32_t count, uint64_t ts_ns,
                   uint64_t *first_id, uint64_t *last_id);
/* Make every record appended before the call durable; *durable_id receives the durable id. */
int nmq_log_sync(nmq_log *log, uint64_t *durable_id);
/* Locate a run of whole records starting at from_id (clamped up to first_id): at most max_records,
 * at most max_bytes (but always one record if any is available), within one segment. Pins the
 * segment: the caller must nmq_log_unpin(log, *seg) when done with *ptr. Returns the record count
 * (0 when from_id >= next_id; *seg is then NULL). */
int nmq_log_read(nmq_log *log, uint64_t from_id, uint32_t max_records, uint64_t max_bytes,
                 const uint8_t **ptr, uint64_t *len, uint64_t *first_id, nmq_seg **seg);
void nmq_log_unpin(nmq_log *log, nmq_seg *seg);
/* First id whose timestamp >= ts_ns, or next_id when there is none. */
int nmq_log_find_ts(nmq_log *log, uint64_t ts_ns, uint64_t *id);
/* Delete whole segments beyond retention (never the active one). now_ns = 0 means "now". */
int nmq_log_retain(nmq_log *log, uint64_t now_ns, uint64_t *deleted_segments);
/* Change retention_ms / retention_bytes (<= 0: none) of an open log; the next retain applies them. */
int nmq_log_set_retention(nmq_log *log, int64_t retention_ms, int64_t retention_bytes);
/* Drop the log's mapped pages from this process's resident set (they stay in the page cache;
 * reads map them again). Safe at any time, views included. */
int nmq_log_trim(nmq_log *log, uint64_t *trimmed_bytes);
int nmq_log_stats_get(nmq_log *log, nmq_log_stats *st);
/* Close: with clean = 1 sync, write the active index and a clean-shutdown checkpoint. Idempotent. */
int nmq_log_close(nmq_log *log, int clean);
/* Segments rotated out by appends and not sealed yet. Rotation (inside an append) does no I/O
 * beyond creating the next segment file; the next sync() seals the old one (fdatasync, index,
 * truncation, directory fsync, checkpoint) before it syncs the active segment, so durable_id
 * never passes an unsealed segment. An appender that sees this non-zero should have sync() run
 * soon, off its own thread. */
uint64_t nmq_log_unsealed(nmq_log *log);
/* Release the handle (closing uncleanly first if still open); memory goes when the last pin goes. */
void nmq_log_free(nmq_log *log);
const char *nmq_log_last_error(void);

/* Fault injection (process-wide, for tests): make the nth next call of `kind` (1 = the next one)
 * and the following count-1 calls (count 0 = every call until cleared) fail with errno err. */
void nmq_log_fault_set(int kind, uint64_t nth, uint64_t count, int err);
void nmq_log_fault_clear(void);
/* cffi-end */
#endif
