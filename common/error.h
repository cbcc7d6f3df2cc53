/*
 * error.h: the control path's "last error", kept per thread (as libnbd does).
 *
 * Control-path functions (create a volume, open an export, parse a command)
 * return -1 and leave an errno value and a sentence for the user here; the
 * caller that talks to a human or to a control client fetches both.  The data
 * path does not use this: it returns -1 and fills an int *err, which the NBD
 * layer maps to the protocol's error codes.
 */
#ifndef SV_ERROR_H
#define SV_ERROR_H

/* Record errnum and a message; returns -1 so callers can "return sv_error(...)". */
int sv_error(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like sv_error but with errno as the code and ": strerror(errno)" appended. */
int sv_error_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current message with "ctx: " (to add context on the way up). */
void sv_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

const char *sv_last_error(void);
int sv_last_errno(void);
void sv_clear_error(void);

#endif
