/*
 * log.h: messages on stderr, in the form "snapvol: [ctx: ]level: message".
 *
 * The server runs in the foreground under a service manager, so stderr is
 * the log.  Debug output is off unless --verbose, and is cheap to test for
 * on the data path (sv_verbose is a plain int read without a lock).
 */
#ifndef SV_LOG_H
#define SV_LOG_H

#include <stdarg.h>

extern int sv_verbose;

void sv_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sv_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sv_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sv_log_debug_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define sv_log_debug(...)                                                                          \
	do {                                                                                       \
		if (sv_verbose)                                                                    \
			sv_log_debug_(__VA_ARGS__);                                                \
	} while (0)

#endif
