/* cffi declarations of the _core module (crc32c + record batches); see src/*.h for the contracts. */
uint32_t nmq_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t nmq_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t nmq_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int nmq_crc32c_hw_available(void);
int nmq_crc32c_select(int which);

uint32_t nmq_record_crc(const uint8_t *rec, uint32_t size);
int nmq_records_scan(const uint8_t *buf, size_t len, uint32_t count, uint32_t max_payload,
                     int check_crc, uint32_t *out_offsets, uint32_t *err_index);
int64_t nmq_records_encode(uint8_t *out, size_t out_cap, const uint8_t *payloads,
                           const uint32_t *lengths, const uint32_t *flags, const uint32_t *raw_sizes,
                           uint32_t count, uint64_t first_id, uint64_t timestamp_ns,
                           uint32_t topic_id, uint64_t producer_id, uint64_t first_seq,
                           uint32_t *out_offsets);
uint64_t nmq_records_size(const uint32_t *lengths, uint32_t count);
int nmq_malloc_top_pad(size_t bytes);
uint32_t nmq_records_summary(const uint8_t *buf, size_t len, uint32_t count);
