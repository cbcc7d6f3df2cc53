/*
 * util.h: small helpers every layer uses: whole-buffer I/O, number and size
 * parsing that rejects what it does not understand, clocks, cleanup macros.
 */
#ifndef SV_UTIL_H
#define SV_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

/* Read or write all of a buffer, retrying on EINTR and short transfers.
 * Return 0, or -1 with errno set.  sv_full_pread fills whatever lies past
 * end of file with zeros, as a raw image reads there. */
int sv_full_pread(int fd, void *buf, size_t len, uint64_t off);
int sv_full_pwrite(int fd, const void *buf, size_t len, uint64_t off);
/* Streams (sockets): 0 on success, -1 with errno (ECONNRESET on EOF). */
int sv_full_read(int fd, void *buf, size_t len);
int sv_full_write(int fd, const void *buf, size_t len);

/* "20G", "4K", "4KiB", "512", "1.5M" is refused (whole numbers only).
 * Suffixes are binary (K = 1024).  Returns 0 or -1 with sv_error set. */
int sv_parse_size(const char *s, uint64_t *out);
/* "5s", "500ms", "2m", "1h", "1d", "1y" (365 d); a bare number is seconds.
 * Nanoseconds out. */
int sv_parse_duration(const char *s, uint64_t *ns_out);
/* "20 GiB", "4 KiB", "123 B" into buf. */
const char *sv_format_size(uint64_t bytes, char *buf, size_t len);

uint64_t sv_now_ns(void);     /* CLOCK_MONOTONIC */
uint64_t sv_realtime_s(void); /* seconds since the epoch */

static inline bool
sv_is_power_of_2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Cleanup helpers, in the manner of nbdkit's cleanup.h. */
static inline void
sv_cleanup_free(void *ptr)
{
	free(*(void **)ptr);
}
#define SV_CLEANUP_FREE __attribute__((cleanup(sv_cleanup_free)))

static inline void
sv_cleanup_unlock(pthread_mutex_t **ptr)
{
	if (*ptr)
		pthread_mutex_unlock(*ptr);
}
/* Hold m until the end of the enclosing scope.  pthread failures abort:
 * a lock that cannot be taken means memory is corrupt. */
#define SV_LOCK_SCOPE(m)                                                                           \
	__attribute__((cleanup(sv_cleanup_unlock), unused)) pthread_mutex_t *SV_UNIQUE(_lk) =      \
	    sv_lock_or_abort(m)
#define SV_UNIQUE(x)	 SV_UNIQUE2(x, __COUNTER__)
#define SV_UNIQUE2(x, n) SV_UNIQUE3(x, n)
#define SV_UNIQUE3(x, n) x##n

pthread_mutex_t *sv_lock_or_abort(pthread_mutex_t *m);
void sv_unlock_or_abort(pthread_mutex_t *m);

#endif
