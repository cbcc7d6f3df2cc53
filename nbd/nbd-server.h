/*
 * nbd-server.h: the NBD protocol server, as the rest of snapvol sees it.
 *
 * It listens on unix and TCP sockets, runs the fixed-newstyle handshake and
 * the transmission phase for each connection, and calls the engine's view
 * API (engine/engine.h) for every request.  It knows nothing of snapshots
 * or copy-on-write.
 */
#ifndef SV_NBD_SERVER_H
#define SV_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

struct sv_pool;
struct sv_nbd_server;

/* Limits and knobs.  sv_nbd_config_defaults() fills the defaults. */
struct sv_nbd_config {
	uint32_t min_block_size;      /* advertised minimum; requests not aligned to it get
					EINVAL.  Default 1 (any alignment works). */
	uint32_t max_request;	      /* largest READ/WRITE payload: 32 MiB */
	uint32_t max_option_len;      /* largest option payload in the handshake: 64 KiB */
	unsigned threads_per_conn;    /* requests served in parallel per connection: 8 */
	unsigned max_connections;     /* in total: 1024 */
	unsigned handshake_timeout_s; /* a client that does not finish the handshake in this
					time is dropped: 30 */
	bool use_sendfile;	      /* zero-copy reads where the engine allows: true */
};

void sv_nbd_config_defaults(struct sv_nbd_config *cfg);

int sv_nbd_server_new(struct sv_pool *pool, const struct sv_nbd_config *cfg,
		      struct sv_nbd_server **out);
/* Listen on a unix socket (mode 0600; a stale socket file is replaced, a live
 * one is an error) or on TCP "HOST:PORT" ("[::1]:10809" for IPv6).  Sets the
 * last error on failure. */
int sv_nbd_listen_unix(struct sv_nbd_server *srv, const char *path);
int sv_nbd_listen_tcp(struct sv_nbd_server *srv, const char *hostport);
/* Start accepting, in background threads. */
int sv_nbd_start(struct sv_nbd_server *srv);
/* Stop accepting, close every connection (requests in flight finish and are
 * answered), join all threads, remove unix socket files. */
void sv_nbd_stop(struct sv_nbd_server *srv);
void sv_nbd_server_free(struct sv_nbd_server *srv);

/* Serve one already-connected client on fd in the calling thread, until it
 * disconnects (the fuzzer and unit tests use this).  Closes fd. */
void sv_nbd_serve_fd(struct sv_nbd_server *srv, int fd);

/* A snapshot of the server's connections, for "snapvol status". */
struct sv_nbd_conn_info {
	unsigned id;
	char peer[64]; /* "unix" or "127.0.0.1:5555" */
	char export_name[80];
	uint64_t requests; /* requests served */
	uint64_t bytes_read, bytes_written;
	uint64_t started; /* seconds since the Unix epoch */
};
/* *conns is malloc'd. */
int sv_nbd_list_connections(struct sv_nbd_server *srv, struct sv_nbd_conn_info **conns,
			    unsigned *n);

#endif
