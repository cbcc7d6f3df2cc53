/*
 * io.c: the byte stream under a connection.
 *
 * Everything the protocol code reads or writes goes through c->io->recv
 * and c->io->sendv, so that TLS (GnuTLS's record layer, tls.c) replaces
 * the plain socket calls here without touching handshake.c or
 * transmission.c; GnuTLS in turn moves its records with the plain calls.
 * During the handshake the connection has a deadline: reads and writes
 * poll(2) for the time left, so a client that stalls, or trickles a byte
 * at a time, is dropped when cfg->handshake_timeout_s runs out.  In
 * transmission the socket blocks; sv_nbd_stop() wakes readers with
 * shutdown(2).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"
#include "util.h"

/* Wait for the fd to become ready before the deadline: 0, or -1 with errno
 * ETIMEDOUT. */
static int
wait_ready(struct sv_nbd_conn *c, short events)
{
	if (!c->deadline_ns)
		return 0;
	for (;;) {
		uint64_t now = sv_now_ns();
		if (now >= c->deadline_ns) {
			errno = ETIMEDOUT;
			return -1;
		}
		uint64_t ms = (c->deadline_ns - now + 999999) / 1000000;
		struct pollfd p = {.fd = c->fd, .events = events};
		int r = poll(&p, 1, ms > 60000 ? 60000 : (int)ms);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

static ssize_t
plain_recv(struct sv_nbd_conn *c, void *buf, size_t len)
{
	for (;;) {
		if (wait_ready(c, POLLIN) == -1)
			return -1;
		ssize_t r = recv(c->fd, buf, len, c->deadline_ns ? MSG_DONTWAIT : 0);
		if (r >= 0)
			return r;
		if (errno == EINTR || (c->deadline_ns && (errno == EAGAIN || errno == EWOULDBLOCK)))
			continue;
		return -1;
	}
}

static int
plain_sendv(struct sv_nbd_conn *c, struct iovec *iov, int iovcnt)
{
	int flags = MSG_NOSIGNAL | (c->deadline_ns ? MSG_DONTWAIT : 0);
	while (iovcnt > 0) {
		if (iov->iov_len == 0) {
			iov++;
			iovcnt--;
			continue;
		}
		if (wait_ready(c, POLLOUT) == -1)
			return -1;
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
		ssize_t r = sendmsg(c->fd, &m, flags);
		if (r < 0) {
			if (errno == EINTR ||
			    (c->deadline_ns && (errno == EAGAIN || errno == EWOULDBLOCK)))
				continue;
			return -1;
		}
		size_t n = (size_t)r;
		while (iovcnt > 0 && n >= iov->iov_len) {
			n -= iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= n;
		}
	}
	return 0;
}

const struct sv_nbd_io_ops sv_nbd_plain_io = {
    .recv = plain_recv,
    .sendv = plain_sendv,
    .can_sendfile = true,
};

int
sv_nbd_recv_full(struct sv_nbd_conn *c, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = c->io->recv(c, p, len);
		if (r < 0)
			return -1;
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
sv_nbd_send_full(struct sv_nbd_conn *c, const void *buf, size_t len)
{
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	return c->io->sendv(c, &iov, 1);
}
