/*
 * internal.h: what the NBD server's files share and nobody else sees.
 *
 *   server.c        listeners, the accept thread, the connection registry,
 *                   start/stop, sv_nbd_serve_fd, connection listing
 *   io.c            the per-connection byte stream (recv/send ops: plain
 *                   sockets)
 *   tls.c           the same ops over GnuTLS, after NBD_OPT_STARTTLS
 *   handshake.c     fixed-newstyle option haggling
 *   transmission.c  worker threads: read requests, call the engine, reply
 *   protocol.c      pure encoders/decoders/validation (protocol.h)
 *
 * Threads of one connection: threads_per_conn workers share the connection
 * in a leader/follower scheme.  One worker at a time holds the reader role
 * (and with it the input buffer and the batch of replies): it parses the
 * next request from the input buffer (one recv(2) often brings several).
 * A fast request (a small READ or WRITE, or one that fails validation) it
 * serves itself, queueing the reply in the batch, which goes out in one
 * sendmsg(2) before it next has to wait in recv(2) (or when the batch is
 * full).  Before anything slow (FLUSH, FUA, TRIM, zeroing, block status,
 * large requests, or small ones while they have been taking long: a cold
 * cache, a busy disk) it hands the reader role to an idle worker and
 * serves the request in parallel, replying under send_lock.  So a
 * cache-hot workload costs no thread switches at all, and a disk-bound one
 * runs threads_per_conn requests at once, as nbdkit's threads do.
 *
 * Lock order: srv->lock -> (nothing); conn->role_lock and conn->send_lock
 * are never held together, and neither is held while taking srv->lock.
 */
#ifndef SV_NBD_INTERNAL_H
#define SV_NBD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <gnutls/gnutls.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "engine.h"
#include "nbd-server.h"
#include "protocol.h"

/* Input buffer per connection; payloads larger than SV_NBD_DIRECT_READ go
 * straight from the socket into the request buffer. */
#define SV_NBD_INBUF_SIZE  (128u * 1024u)
#define SV_NBD_DIRECT_READ (64u * 1024u)
/* Replies batched by the reader before one sendmsg: at most this many
 * bytes or replies (flushing early lets the client refill its queue). */
#define SV_NBD_BATCH_SIZE    (128u * 1024u)
#define SV_NBD_BATCH_FLUSH   (32u * 1024u)
#define SV_NBD_BATCH_REPLIES 8u
/* READ/WRITE up to this size may be served by the reader itself. */
#define SV_NBD_INLINE_MAX (64u * 1024u)
/* A request served slower than this counts as slow (see slow_score). */
#define SV_NBD_SLOW_NS (150u * 1000u)
/* Per-thread buffers above this are freed after use. */
#define SV_NBD_KEEP_BUFFER (4u * 1024u * 1024u)
/* READs this large or larger use sendfile(2) when the engine allows. */
#define SV_NBD_SENDFILE_MIN (64u * 1024u)
#define SV_NBD_SLOW_LIMIT   48u /* two slow in a row, or ~10% of requests */
/* Most extents one BLOCK_STATUS reply carries. */
#define SV_NBD_MAX_EXTENTS 4096u
/* Most options one handshake may send. */
#define SV_NBD_MAX_OPTIONS 1024u

struct sv_nbd_conn;

/* The byte stream under a connection.  recv returns bytes read (> 0), 0 at
 * end of stream, -1 with errno; it may return fewer bytes than asked.
 * sendv sends every byte of the iovec or fails (-1 with errno).  A TLS
 * session replaces both; sendfile is then not used. */
struct sv_nbd_io_ops {
	ssize_t (*recv)(struct sv_nbd_conn *c, void *buf, size_t len);
	int (*sendv)(struct sv_nbd_conn *c, struct iovec *iov, int iovcnt);
	bool can_sendfile;
};

struct sv_nbd_tls_creds;

struct sv_nbd_server {
	struct sv_pool *pool;
	struct sv_nbd_config cfg;
	struct sv_nbd_tls_creds *tls; /* NULL: no TLS configured */

	/* Listening sockets; set up before start, read-only afterwards. */
	int *lfds;
	bool *lfd_unix;
	char **unix_paths; /* per lfd, NULL for TCP */
	unsigned nlfds;

	int wake[2]; /* pipe: written by stop to wake the accept thread */
	pthread_t accept_thread;
	bool started;

	/* lock protects: conns, nconns, next_id, stopping.  cond is signalled
	 * whenever a connection leaves the registry. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct sv_nbd_conn *conns; /* registry: every live connection */
	unsigned nconns;
	unsigned next_id;
	bool stopping;
	struct sv_nbd_rt *rt; /* freeze windows (server.c), made by the first; lock */
};

struct sv_nbd_conn {
	struct sv_nbd_server *srv;
	unsigned id;
	int fd;
	const struct sv_nbd_io_ops *io;
	uint64_t deadline_ns; /* handshake deadline (CLOCK_MONOTONIC), 0 = none */
	char peer[64];
	char client[64]; /* who counts against max_conns_per_client: "uid 0", "127.0.0.1" */
	enum sv_nbd_tls tls_mode; /* of the listener it came from */
	gnutls_session_t tls;	  /* set by sv_nbd_tls_start, NULL before */
	/* Set once the TLS handshake succeeded, after tls_desc is written:
	 * "snapvol status" reads tls_desc from another thread when it is set. */
	atomic_bool encrypted;
	char tls_desc[128];
	int tls_pull_errno; /* the socket's last errno under GnuTLS: reader side */
	int tls_push_errno; /* and sender side (send_lock) */
	uint64_t started;

	/* Registry (srv->lock). */
	struct sv_nbd_conn *next, *prev;
	bool own_thread;      /* runs in a thread the accept loop created */
	pthread_t thread;     /* valid if own_thread */
	bool finished;	      /* own_thread: done, waiting to be joined */
	bool fd_closed;	      /* fd has been closed: never shutdown() it again */
	char export_name[80]; /* for listings; written before transmission */

	/* Negotiated in the handshake; read-only in transmission. */
	bool no_zeroes;
	bool structured;
	unsigned contexts;		  /* SV_NBD_CTX_* selected by SET_META_CONTEXT */
	char dirty_snap[SV_NAME_MAX + 1]; /* SNAP of qemu:dirty-bitmap:SNAP, if selected */
	char *meta_export;		  /* the export name they were selected for */
	uint32_t meta_export_len;
	struct sv_view *view;
	struct sv_nbd_export_state st;
	uint16_t tflags;

	/* role_lock protects reader_busy and idle; role_cv wakes idle workers.
	 * The worker that set reader_busy owns the read side of the stream,
	 * inbuf and batch until it clears it. */
	pthread_mutex_t role_lock;
	pthread_cond_t role_cv;
	bool reader_busy;
	unsigned idle;
	uint8_t *inbuf;
	size_t in_start, in_end;
	uint8_t *batch; /* replies not yet sent */
	size_t batch_len;
	unsigned batch_n;

	/* Recent share of slow small requests, fixed point (512 = all):
	 * above SV_NBD_SLOW_LIMIT, small requests are served in parallel too.
	 * Updated without a lock (a lost update only delays a mode switch). */
	atomic_uint slow_score;

	/* send_lock protects the write side of the stream. */
	pthread_mutex_t send_lock;

	/* Set when no more requests are to be read: end of stream, DISC, a
	 * protocol violation, a failed send, or the server stopping. */
	atomic_bool closing;

	/* Statistics, updated without a lock. */
	atomic_uint_fast64_t requests, bytes_read, bytes_written;

	/* The threads serving requests (srv->lock), for freeze windows. */
	pid_t *tids;
	unsigned ntids, cap_tids;
};

/* io.c */
extern const struct sv_nbd_io_ops sv_nbd_plain_io;
/* Read exactly len bytes (honouring the handshake deadline).  0, or -1 with
 * errno (ECONNRESET at end of stream, ETIMEDOUT past the deadline). */
int sv_nbd_recv_full(struct sv_nbd_conn *c, void *buf, size_t len);
int sv_nbd_send_full(struct sv_nbd_conn *c, const void *buf, size_t len);

/* tls.c.  creds_new sets *out to NULL when cfg configures no TLS. */
int sv_nbd_tls_creds_new(const struct sv_nbd_config *cfg, struct sv_nbd_tls_creds **out);
void sv_nbd_tls_creds_free(struct sv_nbd_tls_creds *t);
/* Which credentials t holds (t may be NULL: none). */
void sv_nbd_tls_creds_kinds(const struct sv_nbd_tls_creds *t, bool *psk, bool *x509);
/* Run the TLS handshake (after STARTTLS was acknowledged) and switch
 * c->io to TLS: 0, or -1 (logged; close the connection). */
int sv_nbd_tls_start(struct sv_nbd_conn *c);
/* Send close_notify (best effort) and free the session; no-op without. */
void sv_nbd_tls_end(struct sv_nbd_conn *c);

/* handshake.c: 0 = enter transmission (c->view set), -1 = close. */
int sv_nbd_handshake(struct sv_nbd_conn *c);

/* transmission.c: serve requests until the connection ends. */
void sv_nbd_transmission(struct sv_nbd_conn *c);

/* server.c: the calling thread starts (on) or stops serving c's requests:
 * a freeze window raises the threads registered (sv_nbd_window_begin). */
void sv_nbd_thread_serving(struct sv_nbd_conn *c, bool on);

#endif
