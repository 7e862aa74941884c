/* cffi declarations of the _log module; the contracts are in src/log.h. */

#define NMQ_LOG_ECLOSED ...
#define NMQ_LOG_EINVAL ...
#define NMQ_LOG_ECORRUPT ...
#define NMQ_LOG_ELOCKED ...
#define NMQ_LOG_EBADREC ...
#define NMQ_LOG_ETOOBIG ...
#define NMQ_SYNC_ALWAYS ...
#define NMQ_SYNC_INTERVAL ...
#define NMQ_SYNC_NEVER ...
#define NMQ_ON_CORRUPT_RAISE ...
#define NMQ_ON_CORRUPT_QUARANTINE ...
#define NMQ_FAULT_WRITE ...
#define NMQ_FAULT_FSYNC ...
#define NMQ_FAULT_FTRUNCATE ...
#define NMQ_FAULT_FALLOCATE ...
#define NMQ_FAULT_KINDS ...
typedef struct nmq_log nmq_log;
typedef struct nmq_seg nmq_seg;
typedef struct {
    uint64_t segment_bytes;   
    int64_t retention_ms;     
    int64_t retention_bytes;  
    uint32_t max_payload;
    uint32_t topic_id;
    uint32_t interval_ms;     
    int sync_policy;          
    int on_corrupt;           
    int verify_all;           
    uint32_t index_interval;  
} nmq_log_config;
typedef struct {
    uint64_t segments;          
    uint64_t records;           
    uint64_t bytes;             
    uint64_t verified_bytes;    
    uint64_t trusted_bytes;     
    uint64_t first_id;
    uint64_t next_id;
    int clean;                  
    int checkpoint_used;        
    uint64_t indexes_loaded;
    uint64_t indexes_rebuilt;
    uint64_t truncated_bytes;   
    uint64_t truncated_segment; 
    uint64_t truncated_offset;
    int corruption;             
    uint64_t corrupt_segment;
    uint64_t corrupt_offset;
    uint64_t corrupt_id;        
    uint64_t quarantined_files;
    uint64_t stray_files;
    uint64_t duration_ns;
    char message[512];
} nmq_recovery_report;
typedef struct {
    uint64_t first_id;
    uint64_t next_id;
    uint64_t durable_id;        
    uint64_t segments;
    uint64_t total_bytes;
    uint64_t last_timestamp_ns;
    int last_sync_errno;        
    uint64_t fdatasyncs;
    int read_only_errno;
    int closed;
} nmq_log_stats;
int nmq_log_open(const char *dir, const nmq_log_config *cfg, nmq_log **out, nmq_recovery_report *rep);
int nmq_log_append(nmq_log *log, const uint8_t *buf, size_t len, uint32_t count, uint64_t ts_ns,
                   uint64_t *first_id, uint64_t *last_id);
int nmq_log_sync(nmq_log *log, uint64_t *durable_id);
int nmq_log_read(nmq_log *log, uint64_t from_id, uint32_t max_records, uint64_t max_bytes,
                 const uint8_t **ptr, uint64_t *len, uint64_t *first_id, nmq_seg **seg);
void nmq_log_unpin(nmq_log *log, nmq_seg *seg);
int nmq_log_find_ts(nmq_log *log, uint64_t ts_ns, uint64_t *id);
int nmq_log_retain(nmq_log *log, uint64_t now_ns, uint64_t *deleted_segments);
int nmq_log_trim(nmq_log *log, uint64_t *trimmed_bytes);
int nmq_log_stats_get(nmq_log *log, nmq_log_stats *st);
int nmq_log_close(nmq_log *log, int clean);
void nmq_log_free(nmq_log *log);
const char *nmq_log_last_error(void);
void nmq_log_fault_set(int kind, uint64_t nth, uint64_t count, int err);
void nmq_log_fault_clear(void);
