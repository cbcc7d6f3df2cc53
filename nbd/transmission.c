/*
 * transmission.c: the transmission phase.
 *
 * Workers share a connection in a leader/follower scheme (internal.h has
 * the picture).  The worker holding the reader role parses requests from
 * the connection's input buffer; one recv(2) often brings several
 * pipelined requests, so most cost no system call to read.  A fast request
 * (a small READ or WRITE while such requests have been fast, or anything
 * that fails validation) the reader serves itself, queueing its reply in
 * the batch: a small WRITE is written straight from the input buffer and a
 * small READ is read straight into the batch, and the batch leaves in one
 * sendmsg(2) before the reader next waits in recv(2), or after a few
 * replies so the client can refill its queue.  Anything else (FLUSH, FUA,
 * TRIM, zeroing, CACHE, block status, large requests, or small ones while
 * they have been slow) the reader hands off: it passes the reader role to
 * an idle worker and serves the request in parallel, sending the reply
 * whole under send_lock.  A cache-hot workload thus runs with no thread
 * switches and few system calls; a disk-bound one runs threads_per_conn
 * requests at once, as nbdkit's threads do.
 *
 * READs of a live volume on a backend that reads asynchronously (RADOS:
 * sv_view_pread_async) are neither served inline nor handed off: the
 * reader starts each one and reads on, and the backend's completion
 * thread sends the reply under send_lock.  So the client's whole queue is
 * in flight however few workers there are, and a read costs no thread
 * switch of ours (measured: about a fifth less server CPU per 4 KiB read).
 * Bounded per connection (SV_NBD_ASYNC_MAX_N, _BYTES: past them the reader
 * waits); the connection's end waits for every one.  SNAPVOL_ASYNC_READS=0
 * turns it off.
 *
 * Large READs go out with sendfile(2) from the engine's file when it says
 * the range lives in one file: header, then the file's pages, with no copy
 * through user space.  A structured reply then ends with a separate NONE
 * chunk, since an error could still happen during the sendfile.
 *
 * Writes held by a freeze (DESIGN invariant 6: reads never wait for a
 * freeze; writes that arrive during one are queued, never failed).  WRITE,
 * TRIM and WRITE_ZEROES go to the engine with SV_NOWAIT: at a closed gate
 * they come back at once with EAGAIN, and the request is parked, with a
 * copy of its payload, on the connection's queue.  One extra thread per
 * connection (started on the first park) drains the queue in order, waiting
 * at the gate itself, and replies as each completes; meanwhile the workers
 * go on reading and serving reads, however many writes the client queues.
 * While anything is parked, new writes join the queue behind it, so writes
 * still reach the volume in the order the client sent them.  Parked
 * requests are bounded (SV_NBD_PARK_MAX bytes of payload, SV_NBD_PARK_MAX_N
 * requests, so a client cannot make the server hoard memory): past that a
 * worker waits for room, the one place a freeze can slow reads down.  At
 * the end of the connection the queue is drained first (the spec wants
 * every request answered before a DISC is honoured); a freeze always ends
 * (invariant 7), so this is bounded.
 *
 * Every request is judged by sv_nbd_validate_request() before anything
 * touches the volume.  A WRITE that is refused still has its payload
 * consumed (or, if it is absurdly large, the connection is dropped), so
 * the stream stays in step.  The connection ends at end of stream, at
 * NBD_CMD_DISC (requests already read are finished and answered first), on
 * a protocol violation that loses sync (bad magic), or when a reply cannot
 * be sent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include "internal.h"
#include "log.h"
#include "util.h"

/* READs a connection may have in flight without a thread (asynchronous
 * backends), and their buffers' bytes. */
#define SV_NBD_ASYNC_MAX_N     128u
#define SV_NBD_ASYNC_MAX_BYTES (64u * 1024u * 1024u)

/* Bytes of write payloads a connection may hold parked during a freeze. */
#define SV_NBD_PARK_MAX	  (64u * 1024u * 1024u)
#define SV_NBD_PARK_MAX_N 4096u

/* A write/trim/zero request held at a freeze, with its own payload copy. */
struct parked {
	struct parked *next;
	struct sv_nbd_request r;
	unsigned flags; /* SV_* engine flags */
	uint8_t *payload;
};

/* The connection's queue of parked requests.  lock protects everything
 * here; cond signals a new request, a finished one, and stop. */
struct parking {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct parked *head, *tail;
	unsigned n;	/* parked or being served by the drainer */
	atomic_uint nq; /* a copy of n, read without the lock on the fast path */
	size_t bytes;	/* their payload bytes */
	bool started, stop;
	pthread_t tid;
	struct sv_nbd_conn *c;
};

/* READs in flight without a thread (the backend reads asynchronously:
 * RADOS).  lock protects everything but on; cond signals each one's end
 * (its reply sent), ready the replier.  Bounded, so a client cannot make
 * the server hold unbounded buffers.
 *
 * The backend's completion never sends the reply itself: it runs in the
 * backend's own thread (librados's finisher, shared by every volume and
 * connection), and a client that stops reading its replies would block
 * that send, and with it every other connection's I/O.  It queues the
 * READ for the connection's replier thread instead, which sends every
 * reply queued so far under one hold of send_lock. */
struct inflight {
	pthread_mutex_t lock;
	pthread_cond_t cond, ready;
	unsigned n;
	size_t bytes;
	struct aread *done, **done_tail; /* ended, reply not sent; in order */
	bool stop;			 /* the replier exits once done is empty */
	bool on; /* the view reads asynchronously (set before the workers start) */
	struct sv_nbd_conn *c;
	pthread_t replier;
};

/* One such READ: the request, its result and its reply's data. */
struct aread {
	struct sv_nbd_conn *c;
	struct inflight *fl;
	struct aread *next; /* fl->done */
	int err;
	struct sv_nbd_request r;
	uint8_t data[];
};

struct worker {
	struct sv_nbd_conn *c;
	struct parking *park;
	struct inflight *fl;
	pthread_t tid;
	uint8_t *buf; /* WRITE payloads, READ data */
	size_t cap;
	struct sv_extent *ext; /* BLOCK_STATUS, allocated on first use */
	uint8_t *desc;
};

/* ---- sending ---- */

/* The connection cannot go on: stop reading, wake whoever is in recv. */
static void
kill_conn(struct sv_nbd_conn *c)
{
	atomic_store(&c->closing, true);
	shutdown(c->fd, SHUT_RDWR);
}

static void
send_locked(struct sv_nbd_conn *c, struct iovec *iov, int n)
{
	if (c->io->sendv(c, iov, n) == -1) {
		if (!atomic_load(&c->closing))
			sv_log_debug("conn %u: sending reply: %m", c->id);
		kill_conn(c);
	}
}

static void
send_reply(struct sv_nbd_conn *c, struct iovec *iov, int n)
{
	sv_lock_or_abort(&c->send_lock);
	send_locked(c, iov, n);
	sv_unlock_or_abort(&c->send_lock);
}

/* Send the batched replies (reader role held). */
static void
flush_batch(struct sv_nbd_conn *c)
{
	if (c->batch_len == 0)
		return;
	struct iovec iov = {c->batch, c->batch_len};
	send_reply(c, &iov, 1);
	c->batch_len = 0;
	c->batch_n = 0;
}

static void
batch_added(struct sv_nbd_conn *c)
{
	c->batch_n++;
	if (c->batch_len >= SV_NBD_BATCH_FLUSH || c->batch_n >= SV_NBD_BATCH_REPLIES)
		flush_batch(c);
}

/* One whole reply: into the batch if inl (reader role held), else sent now
 * under send_lock. */
static void
emit(struct sv_nbd_conn *c, bool inl, struct iovec *iov, int n)
{
	if (!inl) {
		send_reply(c, iov, n);
		return;
	}
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (c->batch_len + total > SV_NBD_BATCH_SIZE)
		flush_batch(c);
	if (total > SV_NBD_BATCH_SIZE) {
		send_reply(c, iov, n);
		return;
	}
	for (int i = 0; i < n; i++) {
		memcpy(c->batch + c->batch_len, iov[i].iov_base, iov[i].iov_len);
		c->batch_len += iov[i].iov_len;
	}
	batch_added(c);
}

static void
send_simple(struct sv_nbd_conn *c, bool inl, uint64_t cookie, uint32_t error)
{
	uint8_t h[NBD_SIMPLE_REPLY_LEN];
	sv_nbd_encode_simple_reply(h, error, cookie);
	struct iovec iov = {h, sizeof h};
	emit(c, inl, &iov, 1);
}

static void
send_error(struct sv_nbd_conn *c, bool inl, const struct sv_nbd_request *r, uint32_t error,
	   const char *msg)
{
	sv_log_debug(
	    "conn %u: %s offset %" PRIu64 " length %" PRIu32 " flags 0x%x: error %" PRIu32 ": %s",
	    c->id, sv_nbd_cmd_name(r->type), r->offset, r->len, r->flags, error, msg ? msg : "");
	if (c->st.structured && (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)) {
		uint8_t b[NBD_STRUCT_REPLY_LEN + 6 + 256];
		size_t n = sv_nbd_encode_error_chunk(b, sizeof b, r->cookie, error, msg);
		struct iovec iov = {b, n};
		emit(c, inl, &iov, 1);
	} else {
		send_simple(c, inl, r->cookie, error);
	}
}

static void
send_engine_error(struct sv_nbd_conn *c, bool inl, const struct sv_nbd_request *r, int err)
{
	char eb[128];
	const char *msg = strerror_r(err, eb, sizeof eb);
	send_error(c, inl, r, sv_nbd_errno_to_nbd(err), msg);
}

/* ---- reading requests (reader role held) ---- */

static size_t
avail(struct sv_nbd_conn *c)
{
	return c->in_end - c->in_start;
}

/* Have at least need (<= SV_NBD_INBUF_SIZE) bytes in the input buffer.
 * Batched replies go out first: the client may be waiting for them before
 * it sends more.  0, or -1: errno 0 for a clean end of stream. */
static int
fill(struct sv_nbd_conn *c, size_t need)
{
	while (avail(c) < need) {
		flush_batch(c);
		if (c->in_start == c->in_end) {
			c->in_start = c->in_end = 0;
		} else if (SV_NBD_INBUF_SIZE - c->in_start < need) {
			memmove(c->inbuf, c->inbuf + c->in_start, avail(c));
			c->in_end -= c->in_start;
			c->in_start = 0;
		}
		ssize_t r = c->io->recv(c, c->inbuf + c->in_end, SV_NBD_INBUF_SIZE - c->in_end);
		if (r == 0) {
			errno = avail(c) ? ECONNRESET : 0;
			return -1;
		}
		if (r < 0)
			return -1;
		c->in_end += (size_t)r;
	}
	return 0;
}

/* Copy len bytes of payload into dst. */
static int
take(struct sv_nbd_conn *c, uint8_t *dst, size_t len)
{
	size_t n = avail(c) < len ? avail(c) : len;
	memcpy(dst, c->inbuf + c->in_start, n);
	c->in_start += n;
	dst += n;
	len -= n;
	if (len == 0)
		return 0;
	if (len > SV_NBD_DIRECT_READ) { /* big: straight from the socket */
		flush_batch(c);
		return sv_nbd_recv_full(c, dst, len);
	}
	if (fill(c, len) == -1) {
		if (errno == 0)
			errno = ECONNRESET;
		return -1;
	}
	memcpy(dst, c->inbuf + c->in_start, len);
	c->in_start += len;
	return 0;
}

/* Throw away len bytes of payload. */
static int
skip(struct sv_nbd_conn *c, uint64_t len)
{
	while (len > 0) {
		if (avail(c) == 0 && fill(c, 1) == -1) {
			if (errno == 0)
				errno = ECONNRESET;
			return -1;
		}
		size_t n = avail(c) < len ? avail(c) : (size_t)len;
		c->in_start += n;
		len -= n;
	}
	return 0;
}

static int
ensure_buf(struct worker *w, size_t len)
{
	if (w->cap >= len)
		return 0;
	free(w->buf);
	w->cap = 0;
	w->buf = malloc(len);
	if (!w->buf)
		return -1;
	w->cap = len;
	return 0;
}

enum { REQ_END = 0, REQ_OK = 1, REQ_DISC = 2 };

/* Parse one request header and judge it.  *verdict is the NBD error it is
 * to get (NBD_SUCCESS to serve it).  Returns REQ_OK, REQ_DISC, or REQ_END
 * (stop reading: end of stream, error, or a violation that loses sync). */
static int
read_header(struct sv_nbd_conn *c, struct sv_nbd_request *r, uint32_t *verdict, const char **why)
{
	if (fill(c, NBD_REQUEST_LEN) == -1) {
		if (errno == 0)
			sv_log_debug("conn %u: end of stream", c->id);
		else if (!atomic_load(&c->closing))
			sv_log_debug("conn %u: reading request: %m", c->id);
		return REQ_END;
	}
	if (sv_nbd_decode_request(c->inbuf + c->in_start, r) == -1) {
		sv_log_warn("conn %u: bad request magic 0x%08" PRIx32 ", closing", c->id,
			    sv_get32(c->inbuf + c->in_start));
		return REQ_END;
	}
	c->in_start += NBD_REQUEST_LEN;
	*why = NULL;
	*verdict = sv_nbd_validate_request(r, &c->st, why);
	return r->type == NBD_CMD_DISC ? REQ_DISC : REQ_OK;
}

/* Get the request's payload: *payload points into the input buffer (inl,
 * and all of it is there already) or into the worker's buffer.  A refused
 * write's payload is skipped. */
static int
read_payload(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r,
	     uint32_t *verdict, const char **why, bool inl, const uint8_t **payload)
{
	uint32_t n = sv_nbd_request_payload(r);
	*payload = NULL;
	if (n == 0)
		return REQ_OK;
	if (*verdict == NBD_SUCCESS && inl && avail(c) >= n) {
		*payload = c->inbuf + c->in_start; /* stays put until the next fill */
		c->in_start += n;
		return REQ_OK;
	}
	if (*verdict == NBD_SUCCESS && ensure_buf(w, n) == -1) {
		*verdict = NBD_ENOMEM;
		*why = "out of memory for the write payload";
	}
	if (*verdict == NBD_SUCCESS) {
		if (take(c, w->buf, n) == -1) {
			sv_log_debug("conn %u: reading write payload: %m", c->id);
			return REQ_END;
		}
		*payload = w->buf;
		return REQ_OK;
	}
	/* Refused: consume the payload to stay in step, unless it is too big
	 * to be worth reading (the spec allows a hard disconnect then). */
	uint64_t bound = 2 * (uint64_t)c->srv->cfg.max_request;
	if (bound < (UINT64_C(64) << 20))
		bound = UINT64_C(64) << 20;
	if (n > bound) {
		sv_log_warn("conn %u: write of %" PRIu32 " bytes refused (%s), closing", c->id, n,
			    *why ? *why : "error");
		return REQ_END;
	}
	if (skip(c, n) == -1) {
		sv_log_debug("conn %u: skipping write payload: %m", c->id);
		return REQ_END;
	}
	return REQ_OK;
}

/* Is this a request the reader serves itself? */
static bool
is_fast(struct sv_nbd_conn *c, const struct sv_nbd_request *r, uint32_t verdict)
{
	if (verdict != NBD_SUCCESS)
		return true; /* an error reply, at once */
	if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->len <= SV_NBD_INLINE_MAX &&
	    !(r->flags & NBD_CMD_FLAG_FUA))
		return atomic_load_explicit(&c->slow_score, memory_order_relaxed) <=
		       SV_NBD_SLOW_LIMIT;
	return false;
}

/* Record how long a small request took in the engine. */
static void
account(struct sv_nbd_conn *c, uint64_t ns)
{
	unsigned s = atomic_load_explicit(&c->slow_score, memory_order_relaxed);
	s = s - s / 16 + (ns > SV_NBD_SLOW_NS ? 32 : 0);
	atomic_store_explicit(&c->slow_score, s, memory_order_relaxed);
}

/* ---- commands ---- */

static const uint8_t zeros[4096];

/* READ with sendfile(2) from the engine's file (send_lock taken here). */
static void
read_sendfile(struct sv_nbd_conn *c, const struct sv_nbd_request *r, int fd, uint64_t fd_off)
{
	uint8_t h[NBD_STRUCT_REPLY_LEN + 8];
	size_t hl;
	if (c->st.structured) {
		sv_nbd_encode_structured_hdr(h, 0, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
					     8 + r->len);
		sv_put64(h + NBD_STRUCT_REPLY_LEN, r->offset);
		hl = NBD_STRUCT_REPLY_LEN + 8;
	} else {
		sv_nbd_encode_simple_reply(h, 0, r->cookie);
		hl = NBD_SIMPLE_REPLY_LEN;
	}
	sv_lock_or_abort(&c->send_lock);
	struct iovec iov = {h, hl};
	if (c->io->sendv(c, &iov, 1) == -1) {
		kill_conn(c);
		goto out;
	}
	off_t o = (off_t)fd_off;
	size_t left = r->len;
	int err = 0;
	while (left > 0) {
		ssize_t n = sendfile(c->fd, fd, &o, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : EIO;
			break;
		}
		left -= (size_t)n;
	}
	if (err == 0) {
		if (c->st.structured) {
			uint8_t done[NBD_STRUCT_REPLY_LEN];
			sv_nbd_encode_structured_hdr(done, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
						     r->cookie, 0);
			struct iovec d = {done, sizeof done};
			send_locked(c, &d, 1);
		}
		atomic_fetch_add(&c->bytes_read, r->len);
		goto out;
	}
	if (err == EPIPE || err == ECONNRESET || !c->st.structured) {
		/* The header promised data that cannot come: only a hard
		 * disconnect keeps the client from misreading the stream. */
		if (err != EPIPE && err != ECONNRESET)
			sv_log_error("conn %u: sendfile: %s", c->id, strerror(err));
		kill_conn(c);
		goto out;
	}
	/* Structured: pad the chunk it promised, then say it failed. */
	sv_log_error("conn %u: sendfile: %s", c->id, strerror(err));
	while (left > 0 && !atomic_load(&c->closing)) {
		struct iovec z = {(void *)zeros, left < sizeof zeros ? left : sizeof zeros};
		left -= z.iov_len;
		send_locked(c, &z, 1);
	}
	uint8_t b[NBD_STRUCT_REPLY_LEN + 6 + 128];
	size_t bl = sv_nbd_encode_error_chunk(b, sizeof b, r->cookie, sv_nbd_errno_to_nbd(err),
					      "read error");
	struct iovec e = {b, bl};
	send_locked(c, &e, 1);
out:
	sv_unlock_or_abort(&c->send_lock);
}

/* READ header (simple, or one OFFSET_DATA chunk that is also the last: the
 * data is in hand, no error can follow) in h; returns its length. */
static size_t
read_header_reply(struct sv_nbd_conn *c, const struct sv_nbd_request *r, uint8_t *h)
{
	if (c->st.structured) {
		sv_nbd_encode_structured_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
					     r->cookie, 8 + r->len);
		sv_put64(h + NBD_STRUCT_REPLY_LEN, r->offset);
		return NBD_STRUCT_REPLY_LEN + 8;
	}
	sv_nbd_encode_simple_reply(h, 0, r->cookie);
	return NBD_SIMPLE_REPLY_LEN;
}

static void
do_read(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r, bool inl)
{
	int fd, err;
	uint64_t fd_off;
	size_t hl = c->st.structured ? NBD_STRUCT_REPLY_LEN + 8 : NBD_SIMPLE_REPLY_LEN;
	if (inl) {
		/* Straight into the batch, after room for the header. */
		if (c->batch_len + hl + r->len > SV_NBD_BATCH_SIZE)
			flush_batch(c);
		uint8_t *p = c->batch + c->batch_len;
		uint64_t t0 = sv_now_ns();
		if (sv_view_pread(c->view, p + hl, r->len, r->offset, &err) == -1) {
			send_engine_error(c, inl, r, err);
			return;
		}
		account(c, sv_now_ns() - t0);
		read_header_reply(c, r, p);
		c->batch_len += hl + r->len;
		atomic_fetch_add(&c->bytes_read, r->len);
		batch_added(c);
		return;
	}
	if (c->srv->cfg.use_sendfile && c->io->can_sendfile && r->len >= SV_NBD_SENDFILE_MIN &&
	    sv_view_read_fd(c->view, r->len, r->offset, &fd, &fd_off) == 0) {
		read_sendfile(c, r, fd, fd_off);
		return;
	}
	if (ensure_buf(w, r->len) == -1) {
		send_error(c, inl, r, NBD_ENOMEM, "out of memory for the read buffer");
		return;
	}
	uint64_t t0 = sv_now_ns();
	if (sv_view_pread(c->view, w->buf, r->len, r->offset, &err) == -1) {
		send_engine_error(c, inl, r, err);
		return;
	}
	if (r->len <= SV_NBD_INLINE_MAX)
		account(c, sv_now_ns() - t0);
	uint8_t h[NBD_STRUCT_REPLY_LEN + 8];
	struct iovec iov[2] = {{h, read_header_reply(c, r, h)}, {w->buf, r->len}};
	send_reply(c, iov, 2);
	atomic_fetch_add(&c->bytes_read, r->len);
}

/* An asynchronous READ has ended (in the backend's thread): hand it to
 * the connection's replier.  The connection outlives this: its end waits
 * for every READ in flight (end_async_reads). */
static void
async_read_done(void *arg, int err)
{
	struct aread *a = arg;
	struct inflight *fl = a->fl;
	a->err = err;
	a->next = NULL;
	sv_lock_or_abort(&fl->lock);
	*fl->done_tail = a;
	fl->done_tail = &a->next;
	pthread_cond_signal(&fl->ready);
	sv_unlock_or_abort(&fl->lock);
}

/* Replies the replier gathers into one sendmsg. */
#define REPLIER_GATHER 32

/* The replier: sends the replies of ended READs, as many as have queued
 * under one hold of send_lock, up to REPLIER_GATHER of them per sendmsg
 * (one system call and one wake-up of the client for a burst of
 * completions, rather than one each), then counts them out. */
static void *
replier_main(void *arg)
{
	struct inflight *fl = arg;
	sv_nbd_thread_serving(fl->c, true);
	sv_lock_or_abort(&fl->lock);
	for (;;) {
		while (!fl->done && !fl->stop)
			pthread_cond_wait(&fl->ready, &fl->lock);
		if (!fl->done)
			break;
		struct aread *a = fl->done;
		fl->done = NULL;
		fl->done_tail = &fl->done;
		sv_unlock_or_abort(&fl->lock);
		struct sv_nbd_conn *c = a->c;
		unsigned n = 0;
		size_t bytes = 0;
		uint8_t h[REPLIER_GATHER][NBD_STRUCT_REPLY_LEN + 8];
		struct iovec iov[2 * REPLIER_GATHER];
		struct aread *sent[REPLIER_GATHER];
		int k = 0;
		sv_lock_or_abort(&c->send_lock);
		while (a || k) {
			if (k && (!a || a->err || k == REPLIER_GATHER)) {
				send_locked(c, iov, 2 * k);
				for (int i = 0; i < k; i++) {
					atomic_fetch_add(&c->bytes_read, sent[i]->r.len);
					free(sent[i]);
				}
				k = 0;
				continue;
			}
			struct aread *next = a->next;
			uint32_t len = a->r.len;
			n++;
			bytes += len;
			if (a->err) { /* rare: the usual path, which takes send_lock */
				sv_unlock_or_abort(&c->send_lock);
				send_engine_error(c, false, &a->r, a->err);
				sv_lock_or_abort(&c->send_lock);
				free(a);
			} else {
				size_t hl = read_header_reply(c, &a->r, h[k]);
				iov[2 * k] = (struct iovec){h[k], hl};
				iov[2 * k + 1] = (struct iovec){a->data, len};
				sent[k++] = a;
			}
			a = next;
		}
		sv_unlock_or_abort(&c->send_lock);
		sv_lock_or_abort(&fl->lock);
		fl->n -= n;
		fl->bytes -= bytes;
		pthread_cond_broadcast(&fl->cond);
	}
	sv_unlock_or_abort(&fl->lock);
	sv_nbd_thread_serving(fl->c, false);
	return NULL;
}

/* Start a READ that ends without a thread waiting for it, where the
 * engine can (a RADOS volume): the reader goes on reading requests, and
 * the backend's completion replies.  So a connection has as many READs in
 * flight as the client sends (up to the bounds), however few workers it
 * has, and a read costs no thread switch of ours.  false: serve it the
 * usual way.  Reader role held. */
static bool
start_async_read(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r)
{
	struct inflight *fl = w->fl;
	if (!fl->on)
		return false;
	sv_lock_or_abort(&fl->lock);
	while (fl->n > 0 &&
	       (fl->n >= SV_NBD_ASYNC_MAX_N || fl->bytes + r->len > SV_NBD_ASYNC_MAX_BYTES)) {
		if (c->batch_len) {
			/* The client may wait for these before it reads more. */
			sv_unlock_or_abort(&fl->lock);
			flush_batch(c);
			sv_lock_or_abort(&fl->lock);
			continue;
		}
		pthread_cond_wait(&fl->cond, &fl->lock);
	}
	fl->n++;
	fl->bytes += r->len;
	sv_unlock_or_abort(&fl->lock);
	struct aread *a = malloc(sizeof *a + r->len);
	if (a) {
		*a = (struct aread){.c = c, .fl = fl, .r = *r};
		if (sv_view_pread_async(c->view, a->data, r->len, r->offset, async_read_done, a)) {
			atomic_fetch_add(&c->requests, 1);
			return true;
		}
		free(a);
	}
	sv_lock_or_abort(&fl->lock);
	fl->n--;
	fl->bytes -= r->len;
	pthread_cond_broadcast(&fl->cond);
	sv_unlock_or_abort(&fl->lock);
	return false;
}

/* Wait until every asynchronous READ has replied, and stop the replier. */
static void
end_async_reads(struct inflight *fl)
{
	if (!fl->on)
		return;
	sv_lock_or_abort(&fl->lock);
	while (fl->n > 0)
		pthread_cond_wait(&fl->cond, &fl->lock);
	fl->stop = true;
	pthread_cond_signal(&fl->ready);
	sv_unlock_or_abort(&fl->lock);
	pthread_join(fl->replier, NULL);
}

/* Block status: one reply chunk per selected context (base:allocation,
 * qemu:dirty-bitmap:SNAP), all computed before any is sent so a failure is
 * one error chunk.  w->desc holds two descriptor lists. */
#define DESC_BYTES (4 + 8 * (size_t)SV_NBD_MAX_EXTENTS)

static void
do_block_status(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r, bool inl)
{
	if (!w->ext) {
		w->ext = malloc(SV_NBD_MAX_EXTENTS * sizeof *w->ext);
		w->desc = malloc(2 * DESC_BYTES);
		if (!w->ext || !w->desc) {
			free(w->ext);
			free(w->desc);
			w->ext = NULL;
			w->desc = NULL;
			send_error(c, inl, r, NBD_ENOMEM, "out of memory");
			return;
		}
	}
	bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
	/* With REQ_ONE and an alignment to honour, a few extents let a short
	 * first one be merged with its neighbours rather than reported as 0. */
	size_t max = one ? (c->st.min_block > 1 ? 16 : 1) : SV_NBD_MAX_EXTENTS;
	size_t n = 0, nchunks = 0, klen[2];
	uint8_t *chunk[2];
	int err;
	if (c->st.contexts & SV_NBD_CTX_BASE_ALLOCATION) {
		uint8_t *d = w->desc + nchunks * DESC_BYTES;
		if (sv_view_extents(c->view, r->len, r->offset, w->ext, max, &n, &err) == -1) {
			send_engine_error(c, inl, r, err);
			return;
		}
		size_t k = sv_nbd_encode_extents(w->ext, n, r->offset, r->len, c->st.min_block, one,
						 d + 4, SV_NBD_MAX_EXTENTS);
		sv_put32(d, SV_NBD_CTX_BASE_ALLOCATION_ID);
		chunk[nchunks] = d;
		klen[nchunks++] = k;
	}
	if (c->st.contexts & SV_NBD_CTX_DIRTY_BITMAP) {
		uint8_t *d = w->desc + nchunks * DESC_BYTES;
		if (sv_view_dirty_extents(c->view, c->dirty_snap, r->len, r->offset, w->ext, max,
					  &n, &err) == -1) {
			send_engine_error(c, inl, r, err);
			return;
		}
		/* Clean runs come as holes: encode as base:allocation would, then
		 * turn "hole" into "clean" and anything else (a mixed block at
		 * the alignment, or no answer) into "dirty", which is never
		 * wrong for a backup. */
		size_t k = sv_nbd_encode_extents(w->ext, n, r->offset, r->len, c->st.min_block, one,
						 d + 4, SV_NBD_MAX_EXTENTS);
		for (size_t i = 0; i < k; i++) {
			uint32_t f = sv_get32(d + 4 + 8 * i + 4);
			sv_put32(d + 4 + 8 * i + 4, (f & NBD_STATE_HOLE) ? 0 : NBD_STATE_DIRTY);
		}
		sv_put32(d, SV_NBD_CTX_DIRTY_BITMAP_ID);
		chunk[nchunks] = d;
		klen[nchunks++] = k;
	}
	if (nchunks == 0) { /* validation lets no such request through */
		send_error(c, inl, r, NBD_EINVAL, "no metadata context selected");
		return;
	}
	for (size_t i = 0; i < nchunks; i++) {
		uint8_t h[NBD_STRUCT_REPLY_LEN];
		sv_nbd_encode_structured_hdr(h, i + 1 == nchunks ? NBD_REPLY_FLAG_DONE : 0,
					     NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie,
					     (uint32_t)(4 + 8 * klen[i]));
		struct iovec iov[2] = {{h, sizeof h}, {chunk[i], 4 + 8 * klen[i]}};
		emit(c, inl, iov, 2);
	}
}

/* ---- writes, trims, zeroings, and parking them during a freeze ---- */

/* The engine call of a WRITE, TRIM or WRITE_ZEROES; fl: SV_* flags. */
static int
modify(struct sv_nbd_conn *c, const struct sv_nbd_request *r, const uint8_t *payload, unsigned fl,
       int *err)
{
	switch (r->type) {
	case NBD_CMD_WRITE: {
		uint64_t t0 = sv_now_ns();
		int ret = sv_view_pwrite(c->view, payload, r->len, r->offset, fl, err);
		if (ret == 0) {
			if (r->len <= SV_NBD_INLINE_MAX && !(fl & SV_FUA))
				account(c, sv_now_ns() - t0);
			atomic_fetch_add(&c->bytes_written, r->len);
		}
		return ret;
	}
	case NBD_CMD_TRIM:
		return sv_view_trim(c->view, r->len, r->offset, fl, err);
	default:
		if (r->flags & NBD_CMD_FLAG_NO_HOLE)
			fl |= SV_NO_HOLE;
		if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
			fl |= SV_FAST_ZERO;
		return sv_view_zero(c->view, r->len, r->offset, fl, err);
	}
}

static void
reply_modify(struct sv_nbd_conn *c, bool inl, const struct sv_nbd_request *r, int ret, int err)
{
	if (ret == -1)
		send_engine_error(c, inl, r, err);
	else
		send_simple(c, inl, r->cookie, NBD_SUCCESS);
}

/* The drainer: serves parked requests in order, waiting at the gate. */
static void *
drainer_main(void *arg)
{
	struct parking *pk = arg;
	struct sv_nbd_conn *c = pk->c;
	sv_lock_or_abort(&pk->lock);
	for (;;) {
		while (!pk->head && !pk->stop)
			pthread_cond_wait(&pk->cond, &pk->lock);
		struct parked *p = pk->head;
		if (!p)
			break;
		pk->head = p->next;
		if (!pk->head)
			pk->tail = NULL;
		sv_unlock_or_abort(&pk->lock);

		int err = 0;
		int ret = modify(c, &p->r, p->payload, p->flags, &err);
		reply_modify(c, false, &p->r, ret, err);

		sv_lock_or_abort(&pk->lock);
		pk->n--;
		atomic_store_explicit(&pk->nq, pk->n, memory_order_relaxed);
		pk->bytes -= sv_nbd_request_payload(&p->r);
		pthread_cond_broadcast(&pk->cond);
		free(p->payload);
		free(p);
	}
	sv_unlock_or_abort(&pk->lock);
	return NULL;
}

/* No room for a request with n bytes of payload (parking lock held). */
static bool
park_full_locked(const struct parking *pk, uint32_t n)
{
	return pk->bytes + n > SV_NBD_PARK_MAX || pk->n >= SV_NBD_PARK_MAX_N;
}

/* Queue a request behind the freeze (parking lock held).  false if it
 * could not be (out of memory), and the caller answers it. */
static bool
park_locked(struct parking *pk, const struct sv_nbd_request *r, const uint8_t *payload, unsigned fl)
{
	uint32_t n = sv_nbd_request_payload(r);
	struct parked *p = calloc(1, sizeof *p);
	if (!p)
		return false;
	if (n && !(p->payload = malloc(n))) {
		free(p);
		return false;
	}
	if (n)
		memcpy(p->payload, payload, n);
	if (!pk->started) {
		int e = pthread_create(&pk->tid, NULL, drainer_main, pk);
		if (e) {
			sv_log_error("conn %u: cannot start a thread for held writes: %s",
				     pk->c->id, strerror(e));
			free(p->payload);
			free(p);
			return false;
		}
		pk->started = true;
	}
	p->r = *r;
	p->flags = fl;
	if (pk->tail)
		pk->tail->next = p;
	else
		pk->head = p;
	pk->tail = p;
	pk->n++;
	atomic_store_explicit(&pk->nq, pk->n, memory_order_relaxed);
	pk->bytes += n;
	pthread_cond_broadcast(&pk->cond);
	return true;
}

/* WRITE, TRIM, WRITE_ZEROES: try without waiting at the gate; if writes
 * are held (or others are parked already), park it. */
static void
serve_modify(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r,
	     const uint8_t *payload, unsigned fl, bool inl)
{
	struct parking *pk = w->park;
	uint32_t n = sv_nbd_request_payload(r);
	int err = 0, ret;
	/* A stale answer only reorders requests that were in flight at once,
	 * which NBD leaves unordered anyway. */
	if (atomic_load_explicit(&pk->nq, memory_order_relaxed) == 0) {
		ret = modify(c, r, payload, fl | SV_NOWAIT, &err);
		if (ret == 0 || err != EAGAIN) {
			reply_modify(c, inl, r, ret, err);
			return;
		}
	}
	sv_lock_or_abort(&pk->lock);
	while (pk->n > 0 && park_full_locked(pk, n))
		pthread_cond_wait(&pk->cond, &pk->lock);
	bool ok = park_locked(pk, r, payload, fl);
	sv_unlock_or_abort(&pk->lock);
	if (!ok) {
		/* No memory to hold it: serve it here, waiting at the gate. */
		ret = modify(c, r, payload, fl, &err);
		reply_modify(c, inl, r, ret, err);
	}
}

/* Reader role held: while writes are parked, a new WRITE, TRIM or
 * WRITE_ZEROES joins the queue here, so the queue keeps the order of the
 * wire.  true if it was parked (the drainer will answer it). */
static bool
park_behind(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r,
	    uint32_t verdict, const uint8_t *payload)
{
	if (verdict != NBD_SUCCESS || (r->type != NBD_CMD_WRITE && r->type != NBD_CMD_TRIM &&
				       r->type != NBD_CMD_WRITE_ZEROES))
		return false;
	struct parking *pk = w->park;
	if (atomic_load_explicit(&pk->nq, memory_order_relaxed) == 0)
		return false; /* the fast path: nothing parked */
	SV_LOCK_SCOPE(&pk->lock);
	if (pk->n == 0)
		return false;
	uint32_t n = sv_nbd_request_payload(r);
	if (park_full_locked(pk, n)) {
		/* About to wait for room: let the replies batched so far go. */
		sv_unlock_or_abort(&pk->lock);
		flush_batch(c);
		sv_lock_or_abort(&pk->lock);
	}
	while (pk->n > 0 && park_full_locked(pk, n))
		pthread_cond_wait(&pk->cond, &pk->lock);
	if (!park_locked(pk, r, payload, (r->flags & NBD_CMD_FLAG_FUA) ? SV_FUA : 0))
		return false;
	atomic_fetch_add(&c->requests, 1);
	return true;
}

/* Serve one request; inl: by the reader, replying into the batch. */
static void
serve(struct sv_nbd_conn *c, struct worker *w, const struct sv_nbd_request *r, uint32_t verdict,
      const char *why, const uint8_t *payload, bool inl)
{
	atomic_fetch_add(&c->requests, 1);
	if (verdict != NBD_SUCCESS) {
		send_error(c, inl, r, verdict, why);
		return;
	}
	if (sv_verbose)
		sv_log_debug("conn %u: %s offset %" PRIu64 " length %" PRIu32 " flags 0x%x%s",
			     c->id, sv_nbd_cmd_name(r->type), r->offset, r->len, r->flags,
			     inl ? " (inline)" : "");
	unsigned fl = (r->flags & NBD_CMD_FLAG_FUA) ? SV_FUA : 0;
	int err = 0, ret = 0;
	switch (r->type) {
	case NBD_CMD_READ:
		do_read(c, w, r, inl);
		return;
	case NBD_CMD_BLOCK_STATUS:
		do_block_status(c, w, r, inl);
		return;
	case NBD_CMD_WRITE:
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		serve_modify(c, w, r, payload, fl, inl);
		return;
	case NBD_CMD_FLUSH:
		ret = sv_view_flush(c->view, &err);
		break;
	case NBD_CMD_CACHE:
		ret = sv_view_cache(c->view, r->len, r->offset, &err);
		break;
	default: /* validate_request let through only known commands */
		send_error(c, inl, r, NBD_EINVAL, "unknown command");
		return;
	}
	if (ret == -1)
		send_engine_error(c, inl, r, err);
	else
		send_simple(c, inl, r->cookie, NBD_SUCCESS);
}

/* ---- the reader role ---- */

/* Wait until this worker may read; false once the connection is closing. */
static bool
take_role(struct sv_nbd_conn *c)
{
	SV_LOCK_SCOPE(&c->role_lock);
	while (c->reader_busy && !atomic_load(&c->closing)) {
		c->idle++;
		pthread_cond_wait(&c->role_cv, &c->role_lock);
		c->idle--;
	}
	if (atomic_load(&c->closing)) {
		/* Pass it on: every idle worker must see it and exit, or the
		 * connection thread waits for them forever. */
		pthread_cond_broadcast(&c->role_cv);
		return false;
	}
	c->reader_busy = true;
	return true;
}

static void
release_role(struct sv_nbd_conn *c, bool all)
{
	SV_LOCK_SCOPE(&c->role_lock);
	c->reader_busy = false;
	if (all)
		pthread_cond_broadcast(&c->role_cv);
	else if (c->idle)
		pthread_cond_signal(&c->role_cv);
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct sv_nbd_conn *c = w->c;
	while (take_role(c)) {
		for (;;) {
			struct sv_nbd_request r;
			uint32_t verdict = NBD_SUCCESS;
			const char *why = NULL;
			const uint8_t *payload = NULL;
			int k =
			    atomic_load(&c->closing) ? REQ_END : read_header(c, &r, &verdict, &why);
			bool inl = k == REQ_OK && is_fast(c, &r, verdict);
			if (k == REQ_OK)
				k = read_payload(c, w, &r, &verdict, &why, inl, &payload);
			if (k != REQ_OK) {
				if (k == REQ_DISC)
					sv_log_debug("conn %u: client sent DISC", c->id);
				flush_batch(c);
				atomic_store(&c->closing, true);
				release_role(c, true);
				return NULL;
			}
			if (park_behind(c, w, &r, verdict, payload))
				continue;
			if (r.type == NBD_CMD_READ && verdict == NBD_SUCCESS &&
			    start_async_read(c, w, &r))
				continue;
			if (inl) {
				serve(c, w, &r, verdict, why, payload, true);
				continue;
			}
			/* Slow: let another worker read on while this one serves. */
			flush_batch(c);
			release_role(c, false);
			serve(c, w, &r, verdict, why, payload, false);
			break;
		}
		if (w->cap > SV_NBD_KEEP_BUFFER) {
			free(w->buf);
			w->buf = NULL;
			w->cap = 0;
		}
	}
	return NULL;
}

/* A worker, registered while it serves (a freeze window raises it). */
static void *
worker_thread(void *arg)
{
	struct worker *w = arg;
	sv_nbd_thread_serving(w->c, true);
	worker_main(w);
	sv_nbd_thread_serving(w->c, false);
	return NULL;
}

void
sv_nbd_transmission(struct sv_nbd_conn *c)
{
	unsigned n = c->srv->cfg.threads_per_conn ? c->srv->cfg.threads_per_conn : 1;
	struct worker *ws = calloc(n, sizeof *ws);
	c->inbuf = malloc(SV_NBD_INBUF_SIZE);
	c->batch = malloc(SV_NBD_BATCH_SIZE);
	if (!ws || !c->inbuf || !c->batch) {
		sv_log_error("conn %u: out of memory", c->id);
		free(ws);
		return;
	}
	c->in_start = c->in_end = 0;
	c->batch_len = 0;
	c->batch_n = 0;
	unsigned started = 1;
	struct parking pk = {.c = c};
	pthread_mutex_init(&pk.lock, NULL);
	pthread_cond_init(&pk.cond, NULL);
	/* SNAPVOL_ASYNC_READS=0: every READ through the workers (to compare). */
	const char *env = getenv("SNAPVOL_ASYNC_READS");
	struct inflight fl = {.on = sv_view_reads_async(c->view) && !(env && !strcmp(env, "0"))};
	fl.done_tail = &fl.done;
	fl.c = c;
	pthread_mutex_init(&fl.lock, NULL);
	pthread_cond_init(&fl.cond, NULL);
	pthread_cond_init(&fl.ready, NULL);
	if (fl.on && pthread_create(&fl.replier, NULL, replier_main, &fl) != 0)
		fl.on = false;
	for (unsigned i = 0; i < n; i++) {
		ws[i].c = c;
		ws[i].park = &pk;
		ws[i].fl = &fl;
	}
	for (unsigned i = 1; i < n; i++) {
		int e = pthread_create(&ws[i].tid, NULL, worker_thread, &ws[i]);
		if (e) {
			sv_log_warn("conn %u: starting worker %u: %s; going on with %u", c->id, i,
				    strerror(e), started);
			break;
		}
		started++;
	}
	worker_thread(&ws[0]);
	for (unsigned i = 1; i < started; i++)
		pthread_join(ws[i].tid, NULL);
	end_async_reads(&fl);
	pthread_cond_destroy(&fl.ready);
	pthread_cond_destroy(&fl.cond);
	pthread_mutex_destroy(&fl.lock);
	/* Parked writes are finished and answered before the connection ends
	 * (bounded: every freeze ends). */
	sv_lock_or_abort(&pk.lock);
	pk.stop = true;
	pthread_cond_broadcast(&pk.cond);
	bool drainer = pk.started;
	sv_unlock_or_abort(&pk.lock);
	if (drainer)
		pthread_join(pk.tid, NULL);
	pthread_cond_destroy(&pk.cond);
	pthread_mutex_destroy(&pk.lock);
	for (unsigned i = 0; i < n; i++) {
		free(ws[i].buf);
		free(ws[i].ext);
		free(ws[i].desc);
	}
	free(ws);
}
