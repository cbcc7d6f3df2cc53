/*
 * util.c: see util.h.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "util.h"

int
sv_full_pread(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = pread(fd, p, len, (off_t)off);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) {
			memset(p, 0, len);
			return 0;
		}
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int
sv_full_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t r = pwrite(fd, p, len, (off_t)off);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) {
			errno = EIO; /* no progress: never loop forever */
			return -1;
		}
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int
sv_full_read(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = read(fd, p, len);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) {
			errno = ECONNRESET;
			return -1;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int
sv_full_write(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t r = write(fd, p, len);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int
sv_parse_size(const char *s, uint64_t *out)
{
	const char *p = s;
	uint64_t v = 0;
	if (*p < '0' || *p > '9')
		return sv_error(EINVAL,
				"'%s' is not a size (expected a number like 512, 4K or 20G)", s);
	while (*p >= '0' && *p <= '9') {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return sv_error(ERANGE, "size '%s' is too large", s);
		v = v * 10 + d;
		p++;
	}
	unsigned shift = 0;
	static const char units[] = "KMGTPE"; /* 2^10, 2^20, ... */
	const char *u = *p ? strchr(units, toupper((unsigned char)*p)) : NULL;
	if (u) {
		shift = 10 * (unsigned)(u - units + 1);
		p++;
	} else if (*p == 'b' || *p == 'B') {
		p++;
	} else if (*p != '\0') {
		return sv_error(
		    EINVAL, "'%s' is not a size: unknown suffix '%s' (use K, M, G, T, P)", s, p);
	}
	if (shift && (*p == 'i') && p[1] == 'B')
		p += 2;
	else if (shift && (*p == 'B' || *p == 'b'))
		p++;
	if (*p != '\0')
		return sv_error(EINVAL, "'%s' is not a size: trailing '%s'", s, p);
	if (shift && v > (UINT64_MAX >> shift))
		return sv_error(ERANGE, "size '%s' is too large", s);
	*out = v << shift;
	return 0;
}

int
sv_parse_duration(const char *s, uint64_t *ns_out)
{
	const char *p = s;
	uint64_t v = 0;
	if (*p < '0' || *p > '9')
		return sv_error(EINVAL, "'%s' is not a duration (expected e.g. 500ms, 5s, 2m)", s);
	while (*p >= '0' && *p <= '9') {
		if (v > UINT64_MAX / 10 - 10)
			return sv_error(ERANGE, "duration '%s' is too large", s);
		v = v * 10 + (uint64_t)(*p - '0');
		p++;
	}
	uint64_t mult;
	if (*p == '\0' || !strcmp(p, "s"))
		mult = 1000000000ull;
	else if (!strcmp(p, "ms"))
		mult = 1000000ull;
	else if (!strcmp(p, "us"))
		mult = 1000ull;
	else if (!strcmp(p, "m") || !strcmp(p, "min"))
		mult = 60000000000ull;
	else if (!strcmp(p, "h"))
		mult = 3600000000000ull;
	else if (!strcmp(p, "d"))
		mult = 86400000000000ull;
	else if (!strcmp(p, "y")) /* 365 days: so "a lease of 1y" is refused as too long */
		mult = 365 * 86400000000000ull;
	else
		return sv_error(EINVAL,
				"'%s' is not a duration: unknown unit '%s' (use ms, s, m, h, d, y)",
				s, p);
	if (v > UINT64_MAX / mult)
		return sv_error(ERANGE, "duration '%s' is too large", s);
	*ns_out = v * mult;
	return 0;
}

const char *
sv_format_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	unsigned u = 0;
	double v = (double)bytes;
	while (v >= 1024 && u < 6) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else if (v == (double)(uint64_t)v)
		snprintf(buf, len, "%.0f %s", v, units[u]);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

uint64_t
sv_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t
sv_realtime_s(void)
{
	return (uint64_t)time(NULL);
}

pthread_mutex_t *
sv_lock_or_abort(pthread_mutex_t *m)
{
	int r = pthread_mutex_lock(m);
	if (r != 0)
		abort();
	return m;
}

void
sv_unlock_or_abort(pthread_mutex_t *m)
{
	if (pthread_mutex_unlock(m) != 0)
		abort();
}
