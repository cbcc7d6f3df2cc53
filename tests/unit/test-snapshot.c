/*
 * test-snapshot.c: the copy-on-write engine against a reference model.
 *
 * The model is as simple as it can be: the volume is a byte array and every
 * snapshot a full copy of it, taken when the snapshot is.  Random sequences
 * of writes, trims, zero-writes, flushes, snapshot create, delete and
 * rollback, and clean re-opens of the pool, run against the engine through
 * its views; after every step the live volume and every snapshot are read
 * back in full and compared with the model.  The seed is printed, and
 * SNAPVOL_SEED=N replays a run; SNAPVOL_STEPS=N sets its length.
 * SNAPVOL_TEST_POOL=SPEC (e.g. rados:blk, with CEPH_CONF naming the
 * cluster) runs the model test on that pool instead of a temporary
 * directory, and skips the tests below, which look at local files
 * (tests/integration/test-rados-suite.sh does this on a real cluster).
 *
 * Also here: deterministic tests of the properties the design promises
 * (one copy serves every snapshot, holes are never copied, rewrites copy
 * nothing, space is given back on delete, a snapshot export is read-only).
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "testpool.h"
#include "error.h"

#define VOL_SIZE  (1u << 20) /* 256 chunks of 4 KiB */
#define MAX_SNAPS 12

/* The pool spec of SNAPVOL_TEST_POOL, or NULL: a temporary directory. */
static const char *
env_pool(void)
{
	const char *p = getenv("SNAPVOL_TEST_POOL");
	return p && *p ? p : NULL;
}

static int
setup(void **state)
{
	if (env_pool()) {
		*state = NULL; /* skipped: these tests look at local files */
		return 0;
	}
	return test_pool_setup(state, "snap", true);
}

static int
teardown(void **state)
{
	return *state ? test_pool_teardown(state) : 0;
}

/* The model test's fixture: a temporary directory, or the pool named by
 * SNAPVOL_TEST_POOL, where the test's volume "m" must not exist yet (a
 * leftover of an interrupted run is deleted first); f->dir holds the spec
 * either way, so the test's clean re-opens work on both. */
static int
setup_model(void **state)
{
	const char *spec = env_pool();
	if (!spec)
		return test_pool_setup(state, "snap", true);
	struct test_pool *f = calloc(1, sizeof *f);
	if (!f || strlen(spec) >= sizeof f->dir) {
		free(f);
		return -1;
	}
	strcpy(f->dir, spec);
	if (sv_pool_open(f->dir, SV_POOL_CREATE, &f->pool) == -1) {
		fprintf(stderr, "open %s: %s\n", spec, sv_last_error());
		free(f);
		return -1;
	}
	(void)sv_volume_delete(f->pool, "m");
	printf("test_model: on pool %s\n", spec);
	*state = f;
	return 0;
}

static int
teardown_model(void **state)
{
	struct test_pool *f = *state;
	if (!env_pool())
		return test_pool_teardown(state);
	int r = sv_volume_delete(f->pool, "m");
	if (r == -1)
		fprintf(stderr, "delete m on %s: %s\n", f->dir, sv_last_error());
	sv_pool_close(f->pool);
	free(f);
	return r;
}

static struct sv_view *
open_view(struct sv_pool *pool, const char *name)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1)
		fail_msg("open %s: %s", name, sv_last_error());
	return v;
}

static void
read_all(struct sv_pool *pool, const char *name, unsigned char *buf)
{
	struct sv_view *v = open_view(pool, name);
	int err = 0;
	if (sv_view_pread(v, buf, VOL_SIZE, 0, &err) == -1)
		fail_msg("read %s: %s", name, strerror(err));
	sv_view_close(v);
}

static void
check_equal(const unsigned char *got, const unsigned char *want, const char *what, unsigned seed,
	    int step)
{
	if (memcmp(got, want, VOL_SIZE) == 0)
		return;
	size_t i = 0;
	while (got[i] == want[i])
		i++;
	fail_msg("seed %u step %d: %s differs at byte %zu (chunk %zu): got 0x%02x want 0x%02x",
		 seed, step, what, i, i / 4096, got[i], want[i]);
}

static void
fill(unsigned char *p, size_t len, unsigned *rng)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)rand_r(rng);
}

struct model_snap {
	char name[16];
	unsigned char *data;
};

static void
test_model(void **state)
{
	struct test_pool *f = *state;
	unsigned seed =
	    getenv("SNAPVOL_SEED") ? (unsigned)atoi(getenv("SNAPVOL_SEED")) : (unsigned)time(NULL);
	int steps = getenv("SNAPVOL_STEPS") ? atoi(getenv("SNAPVOL_STEPS")) : 3000;
	printf("test_model: seed %u, %d steps (SNAPVOL_SEED=%u to replay)\n", seed, steps, seed);
	unsigned rng = seed;
	assert_int_equal(sv_volume_create(f->pool, "m", VOL_SIZE, 4096), 0);

	unsigned char *model = calloc(1, VOL_SIZE), *buf = malloc(VOL_SIZE);
	struct model_snap snaps[MAX_SNAPS];
	int nsnaps = 0, counter = 0;
	struct sv_view *v = open_view(f->pool, "m");
	int err;
	for (int step = 0; step < steps; step++) {
		int op = rand_r(&rng) % 100;
		uint32_t off = (uint32_t)(rand_r(&rng) % VOL_SIZE);
		uint32_t len = 1 + (uint32_t)(rand_r(&rng) % (rand_r(&rng) % 4 ? 8192 : 65536));
		if (rand_r(&rng) % 2) { /* aligned requests are the common case */
			off &= ~4095u;
			len = (len + 4095) & ~4095u;
		}
		if (off + len > VOL_SIZE)
			len = VOL_SIZE - off;
		if (op < 45) {
			fill(buf, len, &rng);
			assert_int_equal(
			    sv_view_pwrite(v, buf, len, off, rand_r(&rng) % 8 ? 0 : SV_FUA, &err),
			    0);
			memcpy(model + off, buf, len);
		} else if (op < 52) {
			assert_int_equal(sv_view_trim(v, len, off, 0, &err), 0);
			memset(model + off, 0, len);
		} else if (op < 58) {
			unsigned fl = rand_r(&rng) % 2 ? SV_NO_HOLE : 0;
			assert_int_equal(sv_view_zero(v, len, off, fl, &err), 0);
			memset(model + off, 0, len);
		} else if (op < 62) {
			assert_int_equal(sv_view_flush(v, &err), 0);
		} else if (op < 72 && nsnaps < MAX_SNAPS) {
			struct model_snap *s = &snaps[nsnaps];
			snprintf(s->name, sizeof s->name, "s%d", counter++);
			char spec[64];
			snprintf(spec, sizeof spec, "m@%.15s", s->name);
			const char *specs[] = {spec};
			if (sv_snapshot_create(f->pool, specs, 1, NULL) == -1)
				fail_msg("seed %u step %d: snapshot: %s", seed, step,
					 sv_last_error());
			s->data = malloc(VOL_SIZE);
			memcpy(s->data, model, VOL_SIZE);
			nsnaps++;
		} else if (op < 80 && nsnaps > 0) {
			int i = rand_r(&rng) % nsnaps;
			if (sv_snapshot_delete(f->pool, "m", snaps[i].name) == -1)
				fail_msg("seed %u step %d: delete %s: %s", seed, step,
					 snaps[i].name, sv_last_error());
			free(snaps[i].data);
			snaps[i] = snaps[--nsnaps];
		} else if (op < 84 && nsnaps > 0) {
			int i = rand_r(&rng) % nsnaps;
			if (sv_snapshot_rollback(f->pool, "m", snaps[i].name) == -1)
				fail_msg("seed %u step %d: rollback %s: %s", seed, step,
					 snaps[i].name, sv_last_error());
			memcpy(model, snaps[i].data, VOL_SIZE);
		} else if (op < 86 && nsnaps > 0) {
			/* a backup reader releases a range of a snapshot: its whole
			 * chunks read as zeros from then on */
			int i = rand_r(&rng) % nsnaps;
			char spec[64];
			snprintf(spec, sizeof spec, "m@%.15s", snaps[i].name);
			struct sv_view *sv = open_view(f->pool, spec);
			if (sv_view_trim(sv, len, off, 0, &err) == -1)
				fail_msg("seed %u step %d: release: %s", seed, step, strerror(err));
			sv_view_close(sv);
			uint64_t a = (off + 4095) / 4096, z = (off + len) / 4096;
			if (off + len == VOL_SIZE)
				z = VOL_SIZE / 4096;
			for (uint64_t c = a; c < z; c++)
				memset(snaps[i].data + c * 4096, 0, 4096);
		} else if (op < 89) {
			/* clean restart: every bit of state comes back from disk */
			sv_view_close(v);
			sv_pool_close(f->pool);
			assert_int_equal(sv_pool_open(f->dir, 0, &f->pool), 0);
			v = open_view(f->pool, "m");
		} else {
			continue;
		}
		read_all(f->pool, "m", buf);
		check_equal(buf, model, "volume", seed, step);
		for (int i = 0; i < nsnaps; i++) {
			char spec[64];
			snprintf(spec, sizeof spec, "m@%.15s", snaps[i].name);
			read_all(f->pool, spec, buf);
			check_equal(buf, snaps[i].data, spec, seed, step);
		}
	}
	sv_view_close(v);
	struct sv_snapshot_info *infos;
	size_t n;
	assert_int_equal(sv_snapshot_list(f->pool, "m", &infos, &n), 0);
	assert_int_equal(n, (size_t)nsnaps);
	free(infos);
	for (int i = 0; i < nsnaps; i++)
		free(snaps[i].data);
	free(model);
	free(buf);
}

static void
write_pattern(struct sv_view *v, uint64_t off, uint32_t len, unsigned char byte)
{
	unsigned char *b = malloc(len);
	memset(b, byte, len);
	int err;
	assert_int_equal(sv_view_pwrite(v, b, len, off, 0, &err), 0);
	free(b);
}

static void
snap(struct sv_pool *pool, const char *spec)
{
	const char *specs[] = {spec};
	if (sv_snapshot_create(pool, specs, 1, NULL) == -1)
		fail_msg("snapshot %s: %s", spec, sv_last_error());
}

/* The counters once every acknowledged write has landed (writes after a
 * snapshot are acknowledged before their copies: writebehind.c). */
static void
stats(struct sv_pool *pool, struct sv_view *v, struct sv_cow_stats *st)
{
	int err;
	if (sv_view_flush(v, &err) == -1)
		fail_msg("flush: %s", strerror(err));
	if (sv_volume_cow_stats(pool, "p", st) == -1)
		fail_msg("stats: %s", sv_last_error());
}

static void
test_properties(void **state)
{
	if (!*state)
		skip(); /* SNAPVOL_TEST_POOL: the model test only */
	struct test_pool *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "p", VOL_SIZE, 4096), 0);
	struct sv_view *v = open_view(f->pool, "p");
	struct sv_cow_stats st;
	write_pattern(v, 0, 65536, 0x11);

	/* no snapshot: writes copy nothing */
	write_pattern(v, 0, 4096, 0x12);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, 0);

	/* ten snapshots, then one write: one copy serves them all */
	for (int i = 0; i < 10; i++) {
		char spec[16];
		snprintf(spec, sizeof spec, "p@s%d", i);
		snap(f->pool, spec);
	}
	write_pattern(v, 0, 4096, 0x13);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, 4096);
	/* rewrite in the same epoch: nothing more */
	write_pattern(v, 0, 4096, 0x14);
	write_pattern(v, 100, 200, 0x15);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, 4096);
	/* a hole is never copied */
	write_pattern(v, 512 * 1024, 8192, 0x16);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, 4096);
	/* a multi-chunk write copies its chunks as one run */
	uint64_t copies = st.copies;
	write_pattern(v, 8192, 32768, 0x17);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, 4096 + 32768);
	assert_int_equal(st.copies, copies + 1);

	unsigned char buf[4096];
	struct sv_view *s0 = open_view(f->pool, "p@s0");
	assert_true(sv_view_readonly(s0));
	int err;
	assert_int_equal(sv_view_pread(s0, buf, 4096, 0, &err), 0);
	assert_int_equal(buf[0], 0x12);
	assert_int_equal(sv_view_pread(s0, buf, 4096, 512 * 1024, &err), 0);
	assert_int_equal(buf[0], 0);
	/* a snapshot's extents: the never-written chunk is a hole there */
	struct sv_extent ext[8];
	size_t n;
	assert_int_equal(sv_view_extents(s0, 8192, 512 * 1024, ext, 8, &n, &err), 0);
	assert_true(ext[0].hole);
	/* exported snapshots cannot be deleted */
	assert_int_equal(sv_snapshot_delete(f->pool, "p", "s0"), -1);
	assert_int_equal(sv_last_errno(), EBUSY);
	sv_view_close(s0);

	/* names */
	const char *bad[] = {"p@s0", "p@a/b", "nope@x", "p", "p@", NULL};
	int expect[] = {EEXIST, EINVAL, ENOENT, EINVAL, EINVAL};
	for (int i = 0; bad[i]; i++) {
		const char *specs[] = {bad[i]};
		assert_int_equal(sv_snapshot_create(f->pool, specs, 1, NULL), -1);
		if (sv_last_errno() != expect[i])
			fail_msg("%s: %s (errno %d)", bad[i], sv_last_error(), sv_last_errno());
	}
	assert_int_equal(sv_snapshot_delete(f->pool, "p", "nope"), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	struct sv_view *nv;
	assert_int_equal(sv_view_open(f->pool, "p@nope", 6, &nv), -1);
	assert_int_equal(sv_last_errno(), ENOENT);

	/* a reader releases what it has read of the newest snapshot: its
	 * pre-images go, and rewriting those chunks copies nothing */
	struct sv_view *s9 = open_view(f->pool, "p@s9");
	assert_int_equal(sv_view_trim(s9, 65536, 0, 0, &err), 0);
	assert_int_equal(sv_view_pread(s9, buf, 4096, 0, &err), 0);
	assert_int_equal(buf[0], 0);
	stats(f->pool, v, &st);
	uint64_t copied = st.copied_bytes;
	write_pattern(v, 0, 65536, 0x19); /* chunks 0..15: s0..s8 still need some */
	stats(f->pool, v, &st);
	/* chunks 0 and 2..9 were copied already; 1 and 10..15 are still
	 * needed by s0..s8 (not released there), so they are copied */
	assert_int_equal(st.copied_bytes, copied + 7 * 4096);
	sv_view_close(s9);
	/* released from every snapshot: no copy at all */
	for (int i = 0; i < 10; i++) {
		char spec[16];
		snprintf(spec, sizeof spec, "p@s%d", i);
		struct sv_view *sv = open_view(f->pool, spec);
		assert_int_equal(sv_view_trim(sv, 65536, 65536, 0, &err), 0);
		sv_view_close(sv);
	}
	stats(f->pool, v, &st);
	copied = st.copied_bytes;
	write_pattern(v, 65536, 65536, 0x1a);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, copied);

	/* deleting every snapshot gives all the space back */
	for (int i = 0; i < 10; i++) {
		char name[16];
		snprintf(name, sizeof name, "s%d", i);
		assert_int_equal(sv_snapshot_delete(f->pool, "p", name), 0);
	}
	char path[128];
	snprintf(path, sizeof path, "%s/volumes/p", f->dir);
	char cmd[256];
	snprintf(cmd, sizeof cmd, "test -z \"$(ls %s | grep '^pre-')\"", path);
	assert_int_equal(system(cmd), 0);
	/* and writes copy nothing again */
	stats(f->pool, v, &st);
	uint64_t before = st.copied_bytes;
	write_pattern(v, 65536 * 2, 4096, 0x18);
	stats(f->pool, v, &st);
	assert_int_equal(st.copied_bytes, before);
	sv_view_close(v);
}

static void
test_group(void **state)
{
	if (!*state)
		skip(); /* SNAPVOL_TEST_POOL: the model test only */
	struct test_pool *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "a", VOL_SIZE, 0), 0);
	assert_int_equal(sv_volume_create(f->pool, "b", VOL_SIZE, 0), 0);
	struct sv_view *va = open_view(f->pool, "a"), *vb = open_view(f->pool, "b");
	write_pattern(va, 0, 4096, 1);
	write_pattern(vb, 0, 4096, 2);
	const char *specs[] = {"b@g", "a@g"};
	assert_int_equal(sv_snapshot_create(f->pool, specs, 2, NULL), 0);
	write_pattern(va, 0, 4096, 3);
	write_pattern(vb, 0, 4096, 4);
	unsigned char buf[4096];
	int err;
	struct sv_view *s = open_view(f->pool, "a@g");
	assert_int_equal(sv_view_pread(s, buf, 4096, 0, &err), 0);
	assert_int_equal(buf[0], 1);
	sv_view_close(s);
	s = open_view(f->pool, "b@g");
	assert_int_equal(sv_view_pread(s, buf, 4096, 0, &err), 0);
	assert_int_equal(buf[0], 2);
	sv_view_close(s);
	/* all or nothing: one bad member, no snapshot at all */
	const char *bad[] = {"a@h", "b@g"};
	assert_int_equal(sv_snapshot_create(f->pool, bad, 2, NULL), -1);
	assert_int_equal(sv_last_errno(), EEXIST);
	struct sv_snapshot_info *infos;
	size_t n;
	assert_int_equal(sv_snapshot_list(f->pool, "a", &infos, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(infos[0].name, "g");
	assert_string_equal(infos[0].consistency, "crash");
	free(infos);
	const char *twice[] = {"a@x", "a@y"};
	assert_int_equal(sv_snapshot_create(f->pool, twice, 2, NULL), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	sv_view_close(va);
	sv_view_close(vb);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_properties, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_group, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_model, setup_model, teardown_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
