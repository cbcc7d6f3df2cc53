/*
 * fuzz-client.h: the phony client the socket-level fuzz targets share.
 *
 * fuzz_pump() writes one input to a connected socket as fast as the server
 * takes it, reads and discards everything the server sends (so the server
 * never blocks on a full socket), then shuts down its write side and
 * drains until the server closes.  Nothing can hang: every server read
 * ends at that end of stream.  Header-only: each target is one program.
 */
#ifndef SV_FUZZ_CLIENT_H
#define SV_FUZZ_CLIENT_H

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

static inline void
fuzz_pump(int fd, const uint8_t *data, size_t size)
{
	size_t done = 0;
	bool wr_open = true;
	char sink[65536];
	for (;;) {
		if (wr_open && done == size) {
			shutdown(fd, SHUT_WR);
			wr_open = false;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN | (wr_open ? POLLOUT : 0)};
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				break; /* the server has closed */
		}
		if (wr_open && (p.revents & POLLOUT)) {
			ssize_t r = send(fd, data + done, size - done, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (r > 0)
				done += (size_t)r;
			else if (r < 0 && errno != EAGAIN && errno != EINTR)
				wr_open = false; /* the server stopped reading */
		}
	}
}

#endif
