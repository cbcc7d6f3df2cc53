/*
 * test-nbd-faults.c: a failing store under the NBD server: the client
 * whose request meets the fault gets an NBD error reply for that request
 * only, and everybody else keeps being served (issue 6, "Faults").
 *
 * One pool over the fault store (store-crash.c) holds two volumes, va
 * and vb; va has a snapshot.  The server runs in-process, one thread per
 * connection (sv_nbd_serve_fd on a socketpair, as test-nbd-protocol.c
 * does), with four clients: a1 and a2 on va, b1 and b2 on vb.  a2, b1
 * and b2 are bystanders: each loops over its own chunks writing, reading
 * back and flushing, and must never see an error.  Meanwhile a fault is
 * armed on one kind of va's store calls (sticky where that cannot touch
 * a bystander: a dead pre-image area, unreadable origin sectors; once for
 * a flush's sync), and a1 sends the request that meets it:
 *
 *   - a first write after the snapshot, whose pre-image write fails with
 *     EIO, then with ENOSPC: NBD_EIO, NBD_ENOSPC (a2 rewrites chunks it
 *     already copied: no pre-image writes, so it goes on);
 *   - a read whose origin read fails: NBD_EIO (a2 only writes then);
 *   - a flush whose origin sync fails: NBD_EIO (a2 does not flush then);
 *   - a write taken behind (acknowledged at once) whose landing fails:
 *     the next FLUSH gets NBD_EIO.
 *
 * The bystanders must have completed requests while the fault was armed.
 * Then the fault clears and a1 sends the same request again on the same
 * connection: it succeeds, and what it wrote reads back; the snapshot
 * still reads as it was taken.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "nbd-server.h"
#include "protocol.h"
#include "store-crash.h"
#include "testpool.h"

#define CHUNK  4096u
#define NCHUNK 64u
#define VSIZE  (NCHUNK * CHUNK)

/* ---- a client connection, spoken by hand ---- */

struct conn {
	int fd, sfd;
	pthread_t thr;
	struct sv_nbd_server *srv;
	uint64_t cookie;
};

static void *
serve_thread(void *arg)
{
	struct conn *c = arg;
	sv_nbd_serve_fd(c->srv, c->sfd);
	return NULL;
}

/* Whole transfers; -1 on a short or failed one (callable from any thread). */
static int
put(int fd, const void *buf, size_t len)
{
	return send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static int
get(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = recv(fd, p, len, 0);
		if (r <= 0)
			return -1;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

/* Connect a client to export name and finish the handshake (NBD_OPT_GO,
 * simple replies). */
static void
conn_open(struct conn *c, struct sv_nbd_server *srv, const char *name)
{
	memset(c, 0, sizeof *c);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct timeval tv = {20, 0};
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	c->fd = sv[0];
	c->sfd = sv[1];
	c->srv = srv;
	assert_int_equal(pthread_create(&c->thr, NULL, serve_thread, c), 0);
	uint8_t g[18];
	assert_int_equal(get(c->fd, g, 18), 0);
	assert_memory_equal(g, "NBDMAGICIHAVEOPT\x00\x03", 18);
	uint8_t f[4];
	sv_put32(f, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	assert_int_equal(put(c->fd, f, 4), 0);
	size_t nl = strlen(name);
	uint8_t o[16 + 4 + 64 + 2];
	sv_put64(o, NBD_IHAVEOPT);
	sv_put32(o + 8, NBD_OPT_GO);
	sv_put32(o + 12, (uint32_t)(6 + nl));
	sv_put32(o + 16, (uint32_t)nl);
	memcpy(o + 20, name, nl);
	sv_put16(o + 20 + nl, 0);
	assert_int_equal(put(c->fd, o, 22 + nl), 0);
	for (;;) {
		uint8_t h[20], p[4200];
		assert_int_equal(get(c->fd, h, 20), 0);
		assert_int_equal(sv_get32(h + 8), NBD_OPT_GO);
		uint32_t type = sv_get32(h + 12), n = sv_get32(h + 16);
		assert_true(n <= sizeof p);
		assert_int_equal(get(c->fd, p, n), 0);
		if (type == NBD_REP_ACK)
			break;
		assert_int_equal(type, NBD_REP_INFO);
	}
}

static void
conn_close(struct conn *c)
{
	uint8_t b[NBD_REQUEST_LEN];
	struct sv_nbd_request r = {0, NBD_CMD_DISC, ++c->cookie, 0, 0};
	sv_nbd_encode_request(b, &r);
	(void)put(c->fd, b, sizeof b);
	close(c->fd);
	pthread_join(c->thr, NULL);
}

/* One request and its simple reply: 0 with the NBD error in *nbd_err (and
 * a read's data in rbuf), or -1 if the stream broke. */
static int
request(struct conn *c, uint16_t type, uint64_t off, uint32_t len, const void *wbuf, void *rbuf,
	uint32_t *nbd_err)
{
	uint64_t cookie = ++c->cookie;
	bool flush = type == NBD_CMD_FLUSH; /* offset and length 0 */
	struct sv_nbd_request r = {0, type, cookie, flush ? 0 : off, flush ? 0 : len};
	uint8_t b[NBD_REQUEST_LEN], h[16];
	sv_nbd_encode_request(b, &r);
	if (put(c->fd, b, sizeof b) == -1 || (wbuf && put(c->fd, wbuf, len) == -1) ||
	    get(c->fd, h, 16) == -1 || sv_get32(h) != NBD_SIMPLE_REPLY_MAGIC ||
	    sv_get64(h + 8) != cookie)
		return -1;
	*nbd_err = sv_get32(h + 4);
	if (type == NBD_CMD_READ && *nbd_err == 0 && get(c->fd, rbuf, len) == -1)
		return -1;
	return 0;
}

/* Chunk c's contents in generation gen. */
static void
pattern(unsigned char *p, unsigned c, unsigned gen)
{
	uint64_t x = test_mix(((uint64_t)gen << 32) | c) | 1;
	for (size_t i = 0; i < CHUNK; i += 8) {
		x = test_mix(x);
		memcpy(p + i, &x, 8);
	}
}

/* ---- bystanders ---- */

struct bystander {
	struct conn *c;
	unsigned first, n; /* its chunks */
	bool reads, flushes;
	unsigned gen;
	pthread_t t;
	/* shared with the test thread (atomics) */
	bool stop;
	unsigned ops;
	char failure[160]; /* written once, before ops stop counting */
	bool failed;
};

static void *
bystander_main(void *arg)
{
	struct bystander *b = arg;
	unsigned char w[CHUNK], r[CHUNK];
	for (unsigned i = 0; !__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE); i++) {
		unsigned c = b->first + i % b->n;
		uint32_t e = 0;
		pattern(w, c, ++b->gen);
		const char *what = "write";
		if (request(b->c, NBD_CMD_WRITE, (uint64_t)c * CHUNK, CHUNK, w, NULL, &e) || e)
			goto fail;
		what = "read";
		if (b->reads &&
		    (request(b->c, NBD_CMD_READ, (uint64_t)c * CHUNK, CHUNK, NULL, r, &e) || e ||
		     memcmp(w, r, CHUNK)))
			goto fail;
		what = "flush";
		if (b->flushes && i % 4 == 3 &&
		    (request(b->c, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e) || e))
			goto fail;
		__atomic_add_fetch(&b->ops, 1, __ATOMIC_RELEASE);
		continue;
	fail:
		snprintf(b->failure, sizeof b->failure, "%s of chunk %u: NBD error %u%s", what, c,
			 e, e ? "" : " (or a broken stream, or other data)");
		__atomic_store_n(&b->failed, true, __ATOMIC_RELEASE);
		break;
	}
	return NULL;
}

static void
bystander_start(struct bystander *b, struct conn *c, unsigned first, unsigned n, bool reads,
		bool flushes)
{
	*b = (struct bystander){.c = c, .first = first, .n = n, .reads = reads, .flushes = flushes};
	assert_int_equal(pthread_create(&b->t, NULL, bystander_main, b), 0);
}

/* Wait (bounded) until every bystander did `more` requests more, or one
 * failed. */
static void
bystanders_progress(struct bystander *bs, size_t n, unsigned more)
{
	unsigned base[8];
	for (size_t i = 0; i < n; i++)
		base[i] = __atomic_load_n(&bs[i].ops, __ATOMIC_ACQUIRE);
	for (unsigned tries = 0; tries < 20000; tries++) {
		bool all = true;
		for (size_t i = 0; i < n; i++) {
			if (__atomic_load_n(&bs[i].failed, __ATOMIC_ACQUIRE))
				fail_msg("bystander %zu: %s", i, bs[i].failure);
			all &= __atomic_load_n(&bs[i].ops, __ATOMIC_ACQUIRE) >= base[i] + more;
		}
		if (all)
			return;
		usleep(1000);
	}
	fail_msg("the bystanders made no progress");
}

static void
bystanders_stop(struct bystander *bs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		__atomic_store_n(&bs[i].stop, true, __ATOMIC_RELEASE);
	for (size_t i = 0; i < n; i++) {
		pthread_join(bs[i].t, NULL);
		if (bs[i].failed)
			fail_msg("bystander %zu: %s", i, bs[i].failure);
	}
}

/* ---- the scenarios ---- */

enum victim_op { V_WRITE, V_READ, V_FLUSH, V_WB_FLUSH };

struct scenario {
	const char *name;
	struct crash_fault fault;
	enum victim_op op;
	uint32_t nbd_err; /* what a1 must get */
	bool a2_reads;	  /* a2 may read (the fault does not touch its reads) */
	bool a2_flushes;  /* ... flush */
};
/* V_WB_FLUSH: a1's write is taken behind (write-behind on, the
 * drop-snapshot policy) and acknowledged; its landing meets the fault,
 * and a1's next FLUSH reports it.  a2 does not flush while the fault is
 * there; afterwards its first FLUSH reports the error too, once (its
 * writes may have been lost with a1's: every connection of the volume
 * hears of it, as every open file does of a writeback error in Linux). */

static void
run_scenario(const struct scenario *sc)
{
	char dir[64];
	struct crash_ctl ctl = {0};
	struct sv_store *st;
	struct sv_pool *pool;
	struct sv_nbd_server *srv;
	/* errors reach the request, but for the write-behind scenario */
	setenv("SNAPVOL_WRITE_BEHIND_MB", sc->op == V_WB_FLUSH ? "16" : "0", 1);
	assert_int_equal(test_mkdtemp(dir, "nbdfaults", true), 0);
	assert_int_equal(crash_store_open(dir, true, &ctl, &st), 0);
	assert_int_equal(sv_pool_open_store(st, dir, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "va", VSIZE, CHUNK), 0);
	assert_int_equal(sv_volume_create(pool, "vb", VSIZE, CHUNK), 0);
	if (sc->op == V_WB_FLUSH) /* the fault store has no fd to measure free space */
		assert_int_equal(sv_volume_set_policy(pool, "va", "drop-snapshot"), 0);
	assert_int_equal(sv_nbd_server_new(pool, NULL, &srv), 0);
	struct conn a1, a2, b1, b2;
	conn_open(&a1, srv, "va");
	conn_open(&a2, srv, "va");
	conn_open(&b1, srv, "vb");
	conn_open(&b2, srv, "vb");

	/* va: every chunk holds generation 1; snapshot va@s; a2's chunks
	 * 32-47 are then copied once (so a2's rewrites copy nothing) */
	unsigned char buf[CHUNK], got[CHUNK];
	uint32_t e;
	for (unsigned c = 0; c < NCHUNK; c++) {
		pattern(buf, c, 1);
		assert_int_equal(
		    request(&a1, NBD_CMD_WRITE, (uint64_t)c * CHUNK, CHUNK, buf, NULL, &e), 0);
		assert_int_equal(e, 0);
	}
	assert_int_equal(request(&a1, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e), 0);
	assert_int_equal(e, 0);
	const char *specs[] = {"va@s"};
	assert_int_equal(sv_snapshot_create(pool, specs, 1, NULL), 0);
	for (unsigned c = 32; c < 48; c++) {
		pattern(buf, c, 2);
		assert_int_equal(
		    request(&a2, NBD_CMD_WRITE, (uint64_t)c * CHUNK, CHUNK, buf, NULL, &e), 0);
		assert_int_equal(e, 0);
	}

	struct bystander bs[3];
	bystander_start(&bs[0], &a2, 32, 16, sc->a2_reads, sc->a2_flushes);
	bystander_start(&bs[1], &b1, 0, 32, true, true);
	bystander_start(&bs[2], &b2, 32, 32, true, true);
	bystanders_progress(bs, 3, 10);

	/* The fault, and a1's request that meets it. */
	assert_int_equal(crash_store_arm(st, &sc->fault), 0);
	const unsigned vc = 5; /* a1's chunk: a first write after the snapshot */
	pattern(buf, vc, 7);
	uint16_t type = sc->op == V_WRITE  ? NBD_CMD_WRITE
			: sc->op == V_READ ? NBD_CMD_READ
					   : NBD_CMD_FLUSH;
	if (sc->op == V_FLUSH || sc->op == V_WB_FLUSH) { /* something to flush */
		assert_int_equal(
		    request(&a1, NBD_CMD_WRITE, (uint64_t)vc * CHUNK, CHUNK, buf, NULL, &e), 0);
		assert_int_equal(e, 0);
	}
	assert_int_equal(request(&a1, type, (uint64_t)vc * CHUNK, CHUNK,
				 sc->op == V_WRITE ? buf : NULL, got, &e),
			 0);
	if (e != sc->nbd_err)
		fail_msg("%s: a1 got NBD error %u, expected %u", sc->name, e, sc->nbd_err);
	assert_true(crash_store_fired(st, NULL) > 0);
	/* everybody else goes on while the fault is there */
	bystanders_progress(bs, 3, 10);
	crash_store_disarm(st);

	/* The fault cleared: a1's connection works, the same request too. */
	assert_int_equal(request(&a1, type, (uint64_t)vc * CHUNK, CHUNK,
				 sc->op == V_WRITE ? buf : NULL, got, &e),
			 0);
	if (e)
		fail_msg("%s: a1's request again, the fault cleared: NBD error %u", sc->name, e);
	assert_int_equal(request(&a1, NBD_CMD_READ, (uint64_t)vc * CHUNK, CHUNK, NULL, got, &e), 0);
	assert_int_equal(e, 0);
	unsigned char want[CHUNK];
	if (sc->op == V_WB_FLUSH) { /* the write that was lost, again */
		assert_int_equal(
		    request(&a1, NBD_CMD_WRITE, (uint64_t)vc * CHUNK, CHUNK, buf, NULL, &e), 0);
		assert_int_equal(e, 0);
		assert_int_equal(
		    request(&a1, NBD_CMD_READ, (uint64_t)vc * CHUNK, CHUNK, NULL, got, &e), 0);
	}
	pattern(want, vc, sc->op == V_READ ? 1 : 7);
	assert_memory_equal(got, want, CHUNK);
	assert_int_equal(request(&a1, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e), 0);
	assert_int_equal(e, 0);
	bystanders_progress(bs, 3, 5);
	bystanders_stop(bs, 3);
	if (sc->op == V_FLUSH || sc->op == V_WB_FLUSH) {
		assert_int_equal(request(&a2, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e), 0);
		if (e != sc->nbd_err)
			fail_msg("%s: a2's first flush since the fault: NBD error %u, expected %u",
				 sc->name, e, sc->nbd_err);
		assert_int_equal(request(&a2, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e), 0);
		assert_int_equal(e, 0);
		assert_int_equal(request(&b1, NBD_CMD_FLUSH, 0, 0, NULL, NULL, &e), 0);
		assert_int_equal(e, 0); /* another volume never hears of it */
	}

	/* The snapshot reads as it was taken. */
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "va@s", 4, &v), 0);
	for (unsigned c = 0; c < NCHUNK; c++) {
		int err = 0;
		assert_int_equal(sv_view_pread(v, got, CHUNK, (uint64_t)c * CHUNK, &err), 0);
		pattern(want, c, 1);
		assert_memory_equal(got, want, CHUNK);
	}
	sv_view_close(v);
	conn_close(&a1);
	conn_close(&a2);
	conn_close(&b1);
	conn_close(&b2);
	sv_nbd_server_free(srv);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
	printf("%-26s a1 got NBD error %u; the bystanders were served throughout\n", sc->name,
	       sc->nbd_err);
}

static const struct scenario scenarios[] = {
    {"pre-image write EIO",
     {.op = CRASH_OP_WRITE,
      .nth = 1,
      .err = EIO,
      .flags = CRASH_STICKY,
      .obj = "pre-",
      .vol = "va"},
     V_WRITE,
     NBD_EIO,
     true,
     true},
    {"pre-image write ENOSPC",
     {.op = CRASH_OP_WRITE,
      .nth = 1,
      .err = ENOSPC,
      .flags = CRASH_STICKY,
      .obj = "pre-",
      .vol = "va"},
     V_WRITE,
     NBD_ENOSPC,
     true,
     true},
    {"origin read EIO",
     {.op = CRASH_OP_READ,
      .nth = 1,
      .err = EIO,
      .flags = CRASH_STICKY,
      .obj = "origin",
      .vol = "va"},
     V_READ,
     NBD_EIO,
     false,
     true},
    {"origin sync (flush) EIO",
     /* the dirty pages stay (the usual Linux case): a2's writes read back */
     {.op = CRASH_OP_SYNC,
      .nth = 1,
      .err = EIO,
      .flags = CRASH_KEEP_DIRTY,
      .obj = "origin",
      .vol = "va"},
     V_FLUSH,
     NBD_EIO,
     true,
     false},
    {"write-behind landing EIO",
     {.op = CRASH_OP_WRITE,
      .nth = 1,
      .err = EIO,
      .flags = CRASH_STICKY,
      .obj = "pre-",
      .vol = "va"},
     V_WB_FLUSH,
     NBD_EIO,
     true,
     false},
};

static void
test_nbd_faults(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof scenarios / sizeof *scenarios; i++)
		run_scenario(&scenarios[i]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_nbd_faults),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
