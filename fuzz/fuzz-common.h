/*
 * fuzz-common.h: what the fuzz targets share: a scratch directory for
 * their pools, and the phony client of the socket-level targets.
 *
 * fuzz_pump() writes one input to a connected socket as fast as the server
 * takes it, reads and discards everything the server sends (so the server
 * never blocks on a full socket), then shuts down its write side and
 * drains until the server closes.  Nothing can hang: every server read
 * ends at that end of stream.  Header-only: each target is one program.
 */
#ifndef SV_FUZZ_COMMON_H
#define SV_FUZZ_COMMON_H

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static inline int
fuzz_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb, (void)type, (void)ftw;
	return remove(path);
}

/* rm -rf dir (no shell: inputs run thousands of times a second). */
static inline int
fuzz_rmtree(const char *dir)
{
	return nftw(dir, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char fuzz_dir[64];

static inline void
fuzz_remove_scratch(void)
{
	if (fuzz_rmtree(fuzz_dir) == -1)
		fprintf(stderr, "fuzz: could not remove %s\n", fuzz_dir);
}

/* A new directory under $TMPDIR (or /tmp), removed at exit after every
 * exit handler registered later (a target's own clean-up, which closes its
 * pool, runs first).  Aborts if it cannot be made. */
static inline const char *
fuzz_scratch_dir(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(fuzz_dir, sizeof fuzz_dir, "%s/snapvol-fuzz-XXXXXX",
		 tmp && strlen(tmp) < 32 ? tmp : "/tmp");
	if (!mkdtemp(fuzz_dir)) {
		fprintf(stderr, "fuzz: cannot make a directory in %s\n", fuzz_dir);
		abort();
	}
	atexit(fuzz_remove_scratch);
	return fuzz_dir;
}

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

#ifdef SV_NBD_SERVER_H
struct fuzz_input {
	int fd;
	const uint8_t *data;
	size_t size;
};

static inline void *
fuzz_pump_thread(void *arg)
{
	const struct fuzz_input *in = arg;
	fuzz_pump(in->fd, in->data, in->size);
	return NULL;
}

/* One NBD session of the input against srv: the server runs on this
 * thread (sv_nbd_serve_fd, the path a real connection takes), the phony
 * client on another.  For the targets that include nbd-server.h first. */
static inline void
fuzz_nbd_session(struct sv_nbd_server *srv, const uint8_t *data, size_t size)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
		abort();
	struct fuzz_input in = {.fd = sv[0], .data = data, .size = size};
	pthread_t t;
	if (pthread_create(&t, NULL, fuzz_pump_thread, &in) != 0)
		abort();
	sv_nbd_serve_fd(srv, sv[1]); /* closes sv[1] */
	pthread_join(t, NULL);
	close(sv[0]);
}
#endif

#endif
