/*
 * log.c: one line per message, written with a single write(2) so that lines
 * from concurrent threads never interleave, and errno preserved so that
 * "%m" in the caller's format still means the caller's error.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int sv_verbose;

static void
emit(const char *level, const char *fmt, va_list ap)
{
	int saved = errno;
	char line[2048];
	int n = snprintf(line, sizeof line, "snapvol: %s: ", level);
	if (n < 0)
		n = 0;
	errno = saved;
	int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	ssize_t r = write(STDERR_FILENO, line, len);
	(void)r;
	errno = saved;
}

#define DEFINE_LEVEL(fn, level)                                                                    \
	void fn(const char *fmt, ...)                                                              \
	{                                                                                          \
		va_list ap;                                                                        \
		va_start(ap, fmt);                                                                 \
		emit(level, fmt, ap);                                                              \
		va_end(ap);                                                                        \
	}

DEFINE_LEVEL(sv_log_error, "error")
DEFINE_LEVEL(sv_log_warn, "warning")
DEFINE_LEVEL(sv_log_info, "info")
DEFINE_LEVEL(sv_log_debug_, "debug")
