/*
 * error.c: per-thread last error (see error.h for why).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

static _Thread_local char last_msg[1024];
static _Thread_local int last_errno;

int
sv_error(int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_msg, sizeof last_msg, fmt, ap);
	va_end(ap);
	last_errno = errnum ? errnum : EIO;
	errno = last_errno;
	return -1;
}

int
sv_error_errno(const char *fmt, ...)
{
	int saved = errno ? errno : EIO;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(last_msg, sizeof last_msg, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof last_msg)
		snprintf(last_msg + n, sizeof last_msg - (size_t)n, ": %s", strerror(saved));
	last_errno = saved;
	errno = saved;
	return -1;
}

void
sv_error_prefix(const char *fmt, ...)
{
	char prefix[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	size_t pl = strlen(prefix), ml = strlen(last_msg);
	/* "prefix: message", cut at the buffer's end */
	if (pl + 2 >= sizeof last_msg)
		pl = sizeof last_msg - 3;
	if (pl + 2 + ml >= sizeof last_msg)
		ml = sizeof last_msg - pl - 3;
	memmove(last_msg + pl + 2, last_msg, ml);
	memcpy(last_msg, prefix, pl);
	last_msg[pl] = ':';
	last_msg[pl + 1] = ' ';
	last_msg[pl + 2 + ml] = '\0';
}

const char *
sv_last_error(void)
{
	return last_msg[0] ? last_msg : "unknown error";
}

int
sv_last_errno(void)
{
	return last_errno ? last_errno : EIO;
}

void
sv_clear_error(void)
{
	last_msg[0] = '\0';
	last_errno = 0;
}
