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
#include <stddef.h>
#include <stdint.h>

struct sv_pool;
struct sv_nbd_server;

/* TLS on a listener: refuse STARTTLS, offer it, or require it (every
 * option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD before it). */
enum sv_nbd_tls {
	SV_NBD_TLS_OFF,
	SV_NBD_TLS_ON,
	SV_NBD_TLS_REQUIRE,
};

/* Limits and knobs.  sv_nbd_config_defaults() fills the defaults. */
struct sv_nbd_config {
	uint32_t min_block_size;       /* advertised minimum; requests not aligned to it get
					EINVAL.  Default 1 (any alignment works). */
	uint32_t max_request;	       /* largest READ/WRITE payload: 32 MiB */
	uint32_t max_option_len;       /* largest option payload in the handshake: 64 KiB */
	unsigned threads_per_conn;     /* requests served in parallel per connection: 8 */
	unsigned max_connections;      /* in total: 1024 */
	unsigned handshake_timeout_s;  /* a client that does not finish the handshake in this
					time is dropped: 30 */
	bool use_sendfile;	       /* zero-copy reads where the engine allows: true */
	unsigned max_conns_per_client; /* per uid (unix sockets, SO_PEERCRED) or per address
					 (TCP): 256 */
	uint32_t max_name_len;	       /* longest export name in an option: 4096 */
	/* TLS.  Credentials are loaded by sv_nbd_server_new.  A TCP listener
	 * with tls_tcp != OFF needs credentials (sv_nbd_listen_tcp fails
	 * without); tls_tcp = OFF is the caller's explicit opt-out. */
	const char *tls_psk_file;  /* psktool format, "username:hexkey" lines; NULL */
	const char *tls_certs_dir; /* ca-cert.pem, server-cert.pem, server-key.pem; NULL */
	bool tls_verify_peer;	   /* require and verify client certificates: false */
	enum sv_nbd_tls tls_unix;  /* unix sockets: OFF */
	enum sv_nbd_tls tls_tcp;   /* TCP: REQUIRE */
};

void sv_nbd_config_defaults(struct sv_nbd_config *cfg);

int sv_nbd_server_new(struct sv_pool *pool, const struct sv_nbd_config *cfg,
		      struct sv_nbd_server **out);
/* Listen on a unix socket (mode 0600; a stale socket file is replaced, a live
 * one is an error) or on TCP "HOST:PORT" ("[::1]:10809" for IPv6; refused
 * when cfg->tls_tcp wants TLS and no credentials are configured).  Sets the
 * last error on failure. */
int sv_nbd_listen_unix(struct sv_nbd_server *srv, const char *path);
int sv_nbd_listen_tcp(struct sv_nbd_server *srv, const char *hostport);
/* Start accepting, in background threads. */
int sv_nbd_start(struct sv_nbd_server *srv);
/* Stop accepting, close every connection (requests in flight finish and are
 * answered), join all threads, remove unix socket files. */
void sv_nbd_stop(struct sv_nbd_server *srv);
void sv_nbd_server_free(struct sv_nbd_server *srv);
/* How the server does TLS (for "snapvol status"). */
struct sv_nbd_tls_info {
	enum sv_nbd_tls unix_mode, tcp_mode;
	bool psk, x509; /* credentials loaded */
	bool verify_peer;
};
void sv_nbd_server_tls_info(const struct sv_nbd_server *srv, struct sv_nbd_tls_info *out);

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
	char tls[128];	  /* the TLS session, "(TLS1.3)-(ECDHE-...)"; "" when plain */
};
/* *conns is malloc'd. */
int sv_nbd_list_connections(struct sv_nbd_server *srv, struct sv_nbd_conn_info **conns,
			    unsigned *n);

/* A freeze window (snapshot create --fsfreeze, FIFREEZE to FITHAW): the
 * threads serving requests on the connections whose export is one of vols
 * (the volumes themselves, not their snapshots) run SCHED_FIFO
 * SV_NBD_WINDOW_PRIO | SCHED_RESET_ON_FORK until it ends, so the FLUSHes the
 * freeze sends wait for no CPU-bound process.  Only threads in the normal
 * class are raised, and only with the privilege: otherwise *raised is 0
 * and it is no error.  Threads that start serving later are not raised.
 * The window ends, and each thread gets its previous policy back, at
 * sv_nbd_window_end, max_ns after it began, when holder_fd's peer closes
 * (holder_fd, if >= 0, is dup'd), when a raised thread stops serving (that
 * thread only), and at sv_nbd_stop.  0, or -1 with the error set. */
#define SV_NBD_WINDOW_PRIO 5 /* below the freeze watchdog's 10 (SV_AGENT_RT_PRIO) */
int sv_nbd_window_begin(struct sv_nbd_server *srv, const char *const *vols, size_t nvols,
			int holder_fd, uint64_t max_ns, uint64_t *id, unsigned *raised);
/* ENOENT if it has ended already.  *restored: the threads put back. */
int sv_nbd_window_end(struct sv_nbd_server *srv, uint64_t id, unsigned *restored);

#endif
