/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every NanoMQ record.
 *
 * Convention: `crc` is the running value of a previous call (0 to start), so
 * nmq_crc32c(nmq_crc32c(0, a, n), b, m) == nmq_crc32c(0, a||b, n+m). The pre/post inversion is
 * done inside. Check value: nmq_crc32c(0, "123456789", 9) == 0xE3069283.
 */
#ifndef NMQ_CRC32C_H
#define NMQ_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* cffi-begin: the public API, declared to cffi by nanomq/_c/_builder.py (up to cffi-end) */
/* Dispatching entry point: the SSE4.2 path when the CPU has it (decided once), else the table. */
uint32_t nmq_crc32c(uint32_t crc, const void *buf, size_t len);
/* Portable slicing-by-8 implementation; always available. */
uint32_t nmq_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* Hardware path; calling it when nmq_crc32c_hw_available() is 0 is undefined (SIGILL). */
uint32_t nmq_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int nmq_crc32c_hw_available(void);
/* Force a path for tests and benchmarks: 0 = automatic, 1 = software, 2 = hardware (if available).
 * Returns the path now in use (1 or 2). */
int nmq_crc32c_select(int which);
/* cffi-end */
#endif
