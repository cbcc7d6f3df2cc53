/*
 * test-freeze.c: block-level freezes (engine/freeze.c) and the NBD layer's
 * parking of writes held by one (nbd/transmission.c).
 *
 * Engine: the bounds (a lease of 0, of a year, a maximum over 1 h, a volume
 * twice) fail with EINVAL and leave nothing frozen; freezes nest (writes
 * flow when the last one ends); a write issued during a freeze waits and
 * completes after the thaw with its data, while reads go on; a lease that
 * is not renewed lapses, one that is renewed lives until the maximum, and
 * a heartbeat after either gets ENOENT saying why; thaw by volume ends
 * every freeze of it; a rollback is refused while frozen; a quiesced
 * snapshot works, also while frozen; pool close thaws; heartbeats that
 * race the reaper at the end of a freeze read nothing it has freed.
 *
 * NBD: a whole session over a socketpair with more writes queued than the
 * connection has workers: the read sent after them is answered while they
 * are held, and they are all answered after the thaw, with their data;
 * more trims than may be parked are all answered after the thaw too.
 * This file runs under TSan in CI (suite unit), which checks the parking
 * queue and the reaper thread for races.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "nbd-server.h"
#include "protocol.h"
#include "util.h"
#include "testwire.h"

#define MiB (1u << 20)

struct fx {
	char dir[64];
	struct sv_pool *pool;
	struct sv_view *v;
};

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	strcpy(f->dir, "/tmp/snapvol-test-freeze-XXXXXX");
	if (!mkdtemp(f->dir) || sv_pool_open(f->dir, SV_POOL_CREATE, &f->pool) == -1 ||
	    sv_volume_create(f->pool, "v", 4 * MiB, 0) == -1 ||
	    sv_volume_create(f->pool, "w", 1 * MiB, 0) == -1 ||
	    sv_view_open(f->pool, "v", 1, &f->v) == -1)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;
	sv_view_close(f->v);
	sv_pool_close(f->pool);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	int r = system(cmd);
	free(f);
	return r == 0 ? 0 : -1;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static size_t
n_freezes(struct sv_pool *pool)
{
	struct sv_freeze_info *fi;
	size_t n;
	assert_int_equal(sv_freeze_list(pool, &fi, &n), 0);
	free(fi);
	return n;
}

/* Does a write get through at once?  (SV_NOWAIT: EAGAIN if held.) */
static bool
writable(struct sv_view *v)
{
	char b[512] = {1};
	int err = 0;
	int r = sv_view_pwrite(v, b, sizeof b, 3 * MiB, SV_NOWAIT, &err);
	if (r == -1)
		assert_int_equal(err, EAGAIN);
	return r == 0;
}

static const char *const V[] = {"v"};

static void
test_bounds(void **state)
{
	struct fx *f = *state;
	uint64_t id;
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 0, 0, &id), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_non_null(strstr(sv_last_error(), "lease of 0 ms is too short"));
	uint64_t year = UINT64_C(365) * 86400 * 1000;
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, year, 0, &id), -1);
	assert_non_null(strstr(sv_last_error(), "longer than the freeze's maximum"));
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 1000, year, &id), -1);
	assert_non_null(strstr(sv_last_error(), "out of range"));
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 99, 1000, &id), -1);
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 2000, 1000, &id), -1);
	const char *twice[] = {"v", "w", "v"};
	assert_int_equal(sv_freeze_begin(f->pool, twice, 3, 1000, 0, &id), -1);
	assert_non_null(strstr(sv_last_error(), "twice"));
	const char *nosuch[] = {"w", "nosuch"};
	assert_int_equal(sv_freeze_begin(f->pool, nosuch, 2, 1000, 0, &id), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	const char *bad[] = {"../x"};
	assert_int_equal(sv_freeze_begin(f->pool, bad, 1, 1000, 0, &id), -1);
	assert_int_equal(sv_freeze_begin(f->pool, V, 0, 1000, 0, &id), -1);
	assert_int_equal(sv_freeze_set_default_max(f->pool, year), -1);
	assert_int_equal(sv_freeze_set_default_max(f->pool, 50), -1);
	/* nothing frozen by any of it */
	assert_int_equal(n_freezes(f->pool), 0);
	assert_true(writable(f->v));
	assert_int_equal(sv_freeze_renew(f->pool, 12345), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_int_equal(sv_freeze_end(f->pool, 12345), -1);
	assert_int_equal(sv_freeze_thaw_volume(f->pool, "v", NULL), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_non_null(strstr(sv_last_error(), "not frozen"));
	/* the maximum at exactly the lease, and a default maximum */
	assert_int_equal(sv_freeze_set_default_max(f->pool, 5000), 0);
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 6000, 0, &id), -1);
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 5000, 0, &id), 0);
	assert_int_equal(sv_freeze_end(f->pool, id), 0);
}

static void
test_nesting(void **state)
{
	struct fx *f = *state;
	uint64_t a, b;
	const char *vw[] = {"w", "v"};
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 5000, 0, &a), 0);
	assert_false(writable(f->v));
	assert_int_equal(sv_freeze_begin(f->pool, vw, 2, 5000, 0, &b), 0);
	struct sv_freeze_info fi;
	assert_int_equal(sv_freeze_get(f->pool, b, &fi), 0);
	assert_int_equal(fi.holds, 2);
	assert_int_equal(fi.n_volumes, 2);
	assert_string_equal(fi.volumes[0], "v"); /* sorted */
	assert_string_equal(fi.volumes[1], "w");
	assert_true(fi.expires_in_ms > 4000 && fi.expires_in_ms <= 5000);
	assert_true(fi.max_in_ms > 50000 && fi.max_in_ms <= 60000);
	assert_int_equal(sv_freeze_set_holder(f->pool, b, "pid 1 (test)"), 0);
	assert_int_equal(sv_freeze_end(f->pool, a), 0);
	assert_false(writable(f->v)); /* b still holds it */
	assert_int_equal(sv_freeze_end(f->pool, a), -1);
	assert_non_null(strstr(sv_last_error(), "has ended (thawed)"));
	struct sv_freeze_info *all;
	size_t n;
	assert_int_equal(sv_freeze_list(f->pool, &all, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(all[0].holder, "pid 1 (test)");
	assert_int_equal(all[0].holds, 1);
	free(all);
	assert_int_equal(sv_freeze_end(f->pool, b), 0);
	assert_true(writable(f->v));
}

struct writer {
	struct sv_view *v;
	uint64_t off;
	char byte;
	atomic_bool done;
	int ret;
};

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	char b[8192];
	memset(b, w->byte, sizeof b);
	int err = 0;
	w->ret = sv_view_pwrite(w->v, b, sizeof b, w->off, 0, &err);
	atomic_store(&w->done, true);
	return NULL;
}

static void
test_writes_held_reads_not(void **state)
{
	struct fx *f = *state;
	char b[8192], r[8192];
	int err;
	memset(b, 'o', sizeof b);
	assert_int_equal(sv_view_pwrite(f->v, b, sizeof b, MiB, 0, &err), 0);
	uint64_t id;
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 5000, 0, &id), 0);
	struct writer w[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct writer){.v = f->v, .off = MiB + (uint64_t)i * 8192, .byte = 'a' + i};
		assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
	}
	sleep_ms(150);
	for (int i = 0; i < 4; i++)
		assert_false(atomic_load(&w[i].done));
	/* reads are not held, and see the volume as it was frozen */
	assert_int_equal(sv_view_pread(f->v, r, sizeof r, MiB, &err), 0);
	assert_memory_equal(r, b, sizeof r);
	/* zero and trim are held too */
	assert_int_equal(sv_view_zero(f->v, 4096, 0, SV_NOWAIT, &err), -1);
	assert_int_equal(err, EAGAIN);
	assert_int_equal(sv_view_trim(f->v, 4096, 0, SV_NOWAIT, &err), -1);
	assert_int_equal(err, EAGAIN);
	assert_int_equal(sv_freeze_end(f->pool, id), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].ret, 0);
	}
	/* each landed, with its data */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(sv_view_pread(f->v, r, sizeof r, MiB + (uint64_t)i * 8192, &err),
				 0);
		memset(b, 'a' + i, sizeof b);
		assert_memory_equal(r, b, sizeof r);
	}
}

static void
test_lease_lapse_and_max(void **state)
{
	struct fx *f = *state;
	uint64_t id;
	/* not renewed: lapses */
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 150, 0, &id), 0);
	assert_false(writable(f->v));
	uint64_t t0 = sv_now_ns();
	while (!writable(f->v) && sv_now_ns() - t0 < UINT64_C(5000000000))
		sleep_ms(10);
	uint64_t ms = (sv_now_ns() - t0) / 1000000;
	assert_true(ms >= 100 && ms < 2000);
	assert_int_equal(sv_freeze_renew(f->pool, id), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_non_null(strstr(sv_last_error(), "lease lapsed"));
	assert_int_equal(n_freezes(f->pool), 0);

	/* renewed: lives past its lease, until the maximum.  A renewal that
	 * comes late (a loaded machine can oversleep 10 ms by more than the
	 * lease) rightly lets it lapse: then try again, a few times. */
	bool reached_max = false;
	for (int attempt = 0; attempt < 4 && !reached_max; attempt++) {
		assert_int_equal(sv_freeze_begin(f->pool, V, 1, 300, 900, &id), 0);
		t0 = sv_now_ns();
		while (sv_freeze_renew(f->pool, id) == 0) {
			assert_false(writable(f->v));
			sleep_ms(10);
			assert_true(sv_now_ns() - t0 < UINT64_C(5000000000));
		}
		ms = (sv_now_ns() - t0) / 1000000;
		reached_max = strstr(sv_last_error(), "maximum") != NULL;
		if (reached_max)
			assert_true(ms >= 800 && ms < 3000);
		else
			fprintf(stderr, "the lease lapsed between two renewals (the machine is "
					"slow): again\n");
		while (!writable(f->v) && sv_now_ns() - t0 < UINT64_C(5000000000))
			sleep_ms(10);
	}
	assert_true(reached_max);
	assert_true(writable(f->v));
}

/* Heartbeats that race the reaper at the moment a freeze ends.  A renewal
 * that finds its freeze lapsed but not yet reaped wakes the reaper, which
 * ends and frees the freeze at once: the renewal must have read everything
 * it reports before it lets go of the freezer's lock.  (It used to read the
 * freeze's deadlines for its message after: a heap use after free that ASan
 * and TSan both reported in every run of this test before the fix.)  The
 * lease is the maximum, so spinning renewals never push the end later. */
struct renewer {
	struct sv_pool *pool;
	uint64_t id;
	atomic_bool go;
	unsigned ok, lapsed;
};

static void *
renewer_main(void *arg)
{
	struct renewer *r = arg;
	while (!atomic_load(&r->go))
		;
	while (sv_freeze_renew(r->pool, r->id) == 0)
		r->ok++;
	/* cmocka's asserts belong to the main thread: counted, checked there */
	if (sv_last_errno() == ENOENT && strstr(sv_last_error(), "its maximum was reached"))
		r->lapsed++;
	return NULL;
}

static void
test_renew_races_reaper(void **state)
{
	struct fx *f = *state;
	unsigned lapsed = 0;
	for (int round = 0; round < 20; round++) {
		uint64_t id;
		assert_int_equal(sv_freeze_begin(f->pool, V, 1, 100, 100, &id), 0);
		struct renewer r[2];
		pthread_t t[2];
		for (int i = 0; i < 2; i++) {
			r[i] = (struct renewer){.pool = f->pool, .id = id};
			assert_int_equal(pthread_create(&t[i], NULL, renewer_main, &r[i]), 0);
		}
		for (int i = 0; i < 2; i++)
			atomic_store(&r[i].go, true);
		for (int i = 0; i < 2; i++) {
			pthread_join(t[i], NULL);
			lapsed += r[i].lapsed;
		}
		/* A renewal may have seen it lapse before the reaper ended it
		 * (off the list first, then the gate opens). */
		for (int i = 0; i < 500 && (n_freezes(f->pool) || !writable(f->v)); i++)
			sleep_ms(10);
		assert_int_equal(n_freezes(f->pool), 0);
		assert_true(writable(f->v));
	}
	/* Every renewal that failed said why: the maximum. */
	assert_int_equal(lapsed, 40);
}

static void
test_thaw_volume(void **state)
{
	struct fx *f = *state;
	uint64_t a, b, c;
	const char *W[] = {"w"}, *VW[] = {"v", "w"};
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 5000, 0, &a), 0);
	assert_int_equal(sv_freeze_begin(f->pool, VW, 2, 5000, 0, &b), 0);
	assert_int_equal(sv_freeze_begin(f->pool, W, 1, 5000, 0, &c), 0);
	unsigned k = 0;
	assert_int_equal(sv_freeze_thaw_volume(f->pool, "v", &k), 0);
	assert_int_equal(k, 2); /* a, and the group b whole */
	assert_true(writable(f->v));
	assert_int_equal(n_freezes(f->pool), 1);
	assert_int_equal(sv_freeze_renew(f->pool, c), 0);
	assert_int_equal(sv_freeze_thaw_volume(f->pool, "w", &k), 0);
	assert_int_equal(k, 1);
	assert_int_equal(sv_freeze_thaw_volume(f->pool, "w", &k), -1);
}

static void
test_snapshots_and_rollback(void **state)
{
	struct fx *f = *state;
	uint64_t id;
	const char *s1[] = {"v@s1"}, *s2[] = {"v@s2"}, *s3[] = {"v@s3"};
	assert_int_equal(sv_snapshot_create_ex(f->pool, s1, 1, NULL, SV_SNAP_QUIESCE), 0);
	assert_true(writable(f->v)); /* the quiesce let go */
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 5000, 0, &id), 0);
	/* a snapshot of a frozen volume, quiesced or not: writes stay held */
	assert_int_equal(sv_snapshot_create_ex(f->pool, s2, 1, "frozen", SV_SNAP_QUIESCE), 0);
	assert_false(writable(f->v));
	assert_int_equal(sv_snapshot_create(f->pool, s3, 1, NULL), 0);
	assert_false(writable(f->v));
	assert_int_equal(sv_snapshot_rollback(f->pool, "v", "s1"), -1);
	assert_int_equal(sv_last_errno(), EBUSY);
	assert_non_null(strstr(sv_last_error(), "frozen"));
	assert_int_equal(sv_freeze_end(f->pool, id), 0);
	assert_int_equal(sv_snapshot_rollback(f->pool, "v", "s1"), 0);
	assert_true(writable(f->v));
	assert_int_equal(sv_snapshot_create_ex(f->pool, s1, 1, NULL, 0x80), -1);
	/* consistency, persisted by the next listing's source: volume.meta */
	assert_int_equal(sv_snapshot_set_consistency(f->pool, "v", "s1", "frozen"), 0);
	assert_int_equal(sv_snapshot_set_consistency(f->pool, "v", "s1", "solid"), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_snapshot_set_consistency(f->pool, "v", "nope", "crash"), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	struct sv_snapshot_info *si;
	size_t n;
	assert_int_equal(sv_snapshot_list(f->pool, "v", &si, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(si[0].consistency, "frozen");
	assert_string_equal(si[1].consistency, "frozen");
	assert_string_equal(si[2].consistency, "crash");
	free(si);
}

static void
test_pool_close_thaws(void **state)
{
	(void)state;
	char dir[] = "/tmp/snapvol-test-freeze2-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(dir, SV_POOL_CREATE, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "v", MiB, 0), 0);
	uint64_t id;
	assert_int_equal(sv_freeze_begin(pool, V, 1, 5000, 0, &id), 0);
	sv_pool_close(pool); /* thaws, stops the reaper, closes the volume */
	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	assert_int_equal(n_freezes(pool), 0);
	sv_pool_close(pool);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

/* ---- NBD: writes parked, reads served ---- */

struct nbd_session {
	struct sv_nbd_server *srv;
	int sfd;
};

static void *
serve_thread(void *arg)
{
	struct nbd_session *s = arg;
	sv_nbd_serve_fd(s->srv, s->sfd);
	return NULL;
}

static void
send_req(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len, const void *data)
{
	uint8_t h[NBD_REQUEST_LEN];
	sv_put32(h, NBD_REQUEST_MAGIC);
	sv_put16(h + 4, 0);
	sv_put16(h + 6, type);
	sv_put64(h + 8, cookie);
	sv_put64(h + 16, off);
	sv_put32(h + 24, len);
	xsend(fd, h, sizeof h);
	if (type == NBD_CMD_WRITE)
		xsend(fd, data, len);
}

/* The next simple reply: its cookie; error must be 0. */
static uint64_t
get_reply(int fd)
{
	uint8_t h[NBD_SIMPLE_REPLY_LEN];
	xrecv(fd, h, sizeof h);
	assert_true(sv_get32(h) == NBD_SIMPLE_REPLY_MAGIC);
	assert_int_equal(sv_get32(h + 4), 0);
	return sv_get64(h + 8);
}

/* A server on a socketpair, in a thread, past the handshake on "v". */
static int
nbd_open(struct fx *f, struct nbd_session *s, pthread_t *thr)
{
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	cfg.threads_per_conn = 4;
	assert_int_equal(sv_nbd_server_new(f->pool, &cfg, &s->srv), 0);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct timeval tv = {20, 0};
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	int fd = sv[0];
	s->sfd = sv[1];
	assert_int_equal(pthread_create(thr, NULL, serve_thread, s), 0);

	/* handshake: fixed newstyle, no zeroes, EXPORT_NAME "v" */
	uint8_t g[18];
	xrecv(fd, g, sizeof g);
	uint8_t cf[4];
	sv_put32(cf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	xsend(fd, cf, 4);
	uint8_t o[17];
	sv_put64(o, NBD_IHAVEOPT);
	sv_put32(o + 8, NBD_OPT_EXPORT_NAME);
	sv_put32(o + 12, 1);
	o[16] = 'v';
	xsend(fd, o, sizeof o);
	uint8_t e[10];
	xrecv(fd, e, sizeof e);
	return fd;
}

static void
test_nbd_parks_writes(void **state)
{
	struct fx *f = *state;
	struct nbd_session s;
	pthread_t thr;
	int fd = nbd_open(f, &s, &thr);

	char *block = malloc(65536);
	assert_non_null(block);
	memset(block, 'R', 65536);
	int err;
	assert_int_equal(sv_view_pwrite(f->v, block, 65536, 2 * MiB, 0, &err), 0);

	uint64_t id;
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 10000, 0, &id), 0);
	/* 40 writes, small (served inline) and large (handed off), then a
	 * zero-write of the last one's range, then a read */
	enum { NW = 40 };
	for (int i = 0; i < NW; i++) {
		uint32_t len = i % 2 ? 4096 : 65536;
		memset(block, 'a' + i % 26, len);
		send_req(fd, NBD_CMD_WRITE, 100 + (uint64_t)i, (uint64_t)i * 65536, len, block);
	}
	send_req(fd, NBD_CMD_WRITE_ZEROES, 99, (uint64_t)(NW - 1) * 65536, 4096, NULL);
	send_req(fd, NBD_CMD_READ, 1, 2 * MiB, 65536, NULL);
	/* the read's reply comes first: the writes are held */
	assert_int_equal(get_reply(fd), 1);
	char *rd = malloc(65536);
	assert_non_null(rd);
	xrecv(fd, rd, 65536);
	memset(block, 'R', 65536);
	assert_memory_equal(rd, block, 65536);
	free(rd);

	assert_int_equal(sv_freeze_end(f->pool, id), 0);
	bool seen[NW + 1] = {false};
	for (int i = 0; i < NW + 1; i++) {
		uint64_t c = get_reply(fd);
		if (c == 99) {
			assert_false(seen[NW]);
			seen[NW] = true;
			continue;
		}
		assert_true(c >= 100 && c < 100 + NW && !seen[c - 100]);
		seen[c - 100] = true;
	}
	for (int i = 0; i < NW; i++) {
		uint32_t len = i % 2 ? 4096 : 65536;
		char *got = malloc(len);
		assert_non_null(got);
		assert_int_equal(sv_view_pread(f->v, got, len, (uint64_t)i * 65536, &err), 0);
		/* the zero-write came after the last write on the wire */
		memset(block, i == NW - 1 ? 0 : 'a' + i % 26, len);
		assert_memory_equal(got, block, len);
		free(got);
	}
	free(block);
	close(fd);
	pthread_join(thr, NULL);
	sv_nbd_server_free(s.srv);
}

/* More trims than may be parked: the server stops reading until there is
 * room (no unbounded memory), and every one is answered after the thaw. */
static void
test_nbd_park_limit(void **state)
{
	struct fx *f = *state;
	struct nbd_session s;
	pthread_t thr;
	int fd = nbd_open(f, &s, &thr);
	uint64_t id;
	assert_int_equal(sv_freeze_begin(f->pool, V, 1, 10000, 0, &id), 0);
	enum { NT = 4096 + 100 };
	for (int i = 0; i < NT; i++)
		send_req(fd, NBD_CMD_TRIM, (uint64_t)i + 1, (uint64_t)(i % 64) * 4096, 4096, NULL);
	sleep_ms(100);
	assert_int_equal(sv_freeze_end(f->pool, id), 0);
	char *seen = calloc(NT + 1, 1);
	assert_non_null(seen);
	for (int i = 0; i < NT; i++) {
		uint64_t c = get_reply(fd);
		assert_true(c >= 1 && c <= NT && !seen[c]);
		seen[c] = 1;
	}
	free(seen);
	close(fd);
	pthread_join(thr, NULL);
	sv_nbd_server_free(s.srv);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nesting, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_writes_held_reads_not, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lease_lapse_and_max, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_renew_races_reaper, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_thaw_volume, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_snapshots_and_rollback, setup, teardown),
	    cmocka_unit_test(test_pool_close_thaws),
	    cmocka_unit_test_setup_teardown(test_nbd_parks_writes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nbd_park_limit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
