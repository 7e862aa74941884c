/* cffi declarations of the _ring module; see src/ring.h for the contracts. */
#define NMQ_RING_HDR_SIZE 4096
#define NMQ_RING_MAX_PRODUCERS 16
#define NMQ_RING_MAX_BATCH 256
#define NMQ_RING_SPSC 0
#define NMQ_RING_MPSC 1
#define NMQ_WAIT_SPIN 0
#define NMQ_WAIT_YIELD 1
#define NMQ_WAIT_BLOCK 2
#define NMQ_RING_EAGAIN -1
#define NMQ_RING_EMSGSIZE -2
#define NMQ_RING_EINVAL -3
#define NMQ_RING_EBADMAGIC -4
#define NMQ_RING_EVERSION -5
#define NMQ_RING_ESIZE -6
#define NMQ_RING_EBUSY -7
#define NMQ_RING_ENOMEM -8
#define NMQ_RING_EBUFSIZE -9
#define NMQ_RING_EHEADER -10

typedef struct nmq_ring nmq_ring;

size_t nmq_ring_required_size(uint64_t capacity);
int nmq_ring_init(void *mem, size_t mem_len, uint64_t capacity, uint32_t mode);
nmq_ring *nmq_ring_attach(void *mem, size_t mem_len, int *err);
void nmq_ring_free(nmq_ring *r);
void nmq_ring_reload(nmq_ring *r);

uint64_t nmq_ring_capacity(const nmq_ring *r);
uint32_t nmq_ring_max_record(const nmq_ring *r);
uint32_t nmq_ring_mode(const nmq_ring *r);
uint64_t nmq_ring_used(const nmq_ring *r);
uint64_t nmq_ring_head(const nmq_ring *r);
uint64_t nmq_ring_tail(const nmq_ring *r);

int nmq_ring_claim(nmq_ring *r, uint32_t len, uint8_t **out);
int nmq_ring_commit(nmq_ring *r);
int nmq_ring_abort(nmq_ring *r);
int nmq_ring_push(nmq_ring *r, const uint8_t *data, uint32_t len);
int nmq_ring_push_batch(nmq_ring *r, const uint8_t *data, const uint32_t *lens, uint32_t n);

int nmq_ring_peek(nmq_ring *r, uint8_t **out, uint32_t *len);
int nmq_ring_release(nmq_ring *r);
int nmq_ring_pop(nmq_ring *r, uint8_t *out, uint32_t cap, uint32_t *len);
int nmq_ring_pop_batch(nmq_ring *r, uint8_t *out, size_t cap, uint32_t *lens, uint32_t max_n);

int nmq_ring_wait_readable(nmq_ring *r, int strategy, uint64_t spin_ns, uint64_t timeout_ns);
int nmq_ring_wait_writable(nmq_ring *r, uint32_t len, int strategy, uint64_t spin_ns, uint64_t timeout_ns);
int nmq_ring_readable(nmq_ring *r);
int nmq_ring_writable(nmq_ring *r, uint32_t len);

int nmq_ring_register(nmq_ring *r, int role, uint32_t pid);
int nmq_ring_register_replace(nmq_ring *r, int role, int slot, uint32_t old_pid, uint32_t pid);
void nmq_ring_unregister(nmq_ring *r, int role, int slot, uint32_t pid);
uint32_t nmq_ring_peer_pid(const nmq_ring *r, int role, int slot);
uint32_t nmq_ring_peer_count(const nmq_ring *r, int role, int which);
uint32_t nmq_ring_max_producers(const nmq_ring *r);
