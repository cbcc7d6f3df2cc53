/*
 * testwire.h: whole sends and receives on a test's end of a socketpair,
 * failing the test (cmocka) on a short or failed transfer.  For unit tests
 * that speak NBD to the server byte by byte.  Include after <cmocka.h>.
 */
#ifndef SV_TESTWIRE_H
#define SV_TESTWIRE_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

static inline void
xsend(int fd, const void *buf, size_t len)
{
	assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

static inline void
xrecv(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = recv(fd, p, len, 0);
		assert_true(r > 0);
		p += r;
		len -= (size_t)r;
	}
}

#endif
