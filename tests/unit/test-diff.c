/*
 * test-diff.c: change tracking (engine/diff.c) against a model.
 *
 * The model keeps, for every live snapshot, the set of chunks written since
 * it was taken and its contents (a full copy, with released chunks zeroed).
 * Random writes, trims, zero-writes, snapshot creates and deletes, releases
 * (trims on a snapshot's export) and clean re-opens of the pool run against
 * the engine; after each step sv_volume_diff of random snapshot pairs (and
 * to the live volume) must report exactly the chunks the model says were
 * written between them, the NBD dirty-bitmap view of the same pairs must
 * agree, and every snapshot must still read as the model says: a changed
 * bit recorded without a pre-image (a write to a released chunk) must never
 * make a snapshot read zeros where it should read older data.
 *
 * Also: a power-loss test (tests/unit/store-crash.c): after a crash at a
 * random store call during writes, every chunk whose contents differ from
 * the snapshot's as it was taken, and every chunk of a write acknowledged
 * and flushed before the crash, is in the diff since the snapshot (DESIGN
 * invariant 8), also where every snapshot had released the chunk;
 * and deterministic tests of errors and of the released-chunk case.
 *
 * SNAPVOL_SEED=N replays a run; SNAPVOL_STEPS=N sets the model's length.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "store-crash.h"

#define CHUNK	  4096u
#define NCHUNKS	  256u
#define VOL_SIZE  (NCHUNKS * CHUNK)
#define MAX_SNAPS 8

struct fixture {
	char dir[64];
	struct sv_pool *pool;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	strcpy(f->dir, access("/dev/shm", W_OK) == 0 ? "/dev/shm/snapvol-test-diff-XXXXXX"
						     : "/tmp/snapvol-test-diff-XXXXXX");
	if (!mkdtemp(f->dir) || sv_pool_open(f->dir, SV_POOL_CREATE, &f->pool) == -1) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	if (f->pool)
		sv_pool_close(f->pool);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	int r = system(cmd);
	free(f);
	return r == 0 ? 0 : -1;
}

static struct sv_view *
open_view(struct sv_pool *pool, const char *name)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1)
		fail_msg("open %s: %s", name, sv_last_error());
	return v;
}

/* A diff as a chunk set. */
struct chunkset {
	bool c[NCHUNKS];
	bool bad; /* a run not on chunk boundaries, or out of order */
	uint64_t last_end;
};

static int
collect(void *opaque, uint64_t off, uint64_t len)
{
	struct chunkset *s = opaque;
	if (len == 0 || off < s->last_end || (s->last_end && off == s->last_end))
		s->bad = true; /* empty, out of order, or not maximal */
	s->last_end = off + len;
	for (uint64_t c = off / CHUNK; c < (off + len + CHUNK - 1) / CHUNK && c < NCHUNKS; c++)
		s->c[c] = true;
	return 0;
}

static void
get_diff(struct sv_pool *pool, const char *from, const char *to, struct chunkset *out)
{
	memset(out, 0, sizeof *out);
	if (sv_volume_diff(pool, "v", from, to, 0, VOL_SIZE, collect, out) == -1)
		fail_msg("diff v@%s -> %s: %s", from, to ? to : "live", sv_last_error());
	assert_false(out->bad);
}

/* The same pair through the dirty-bitmap view: ext must cover the range in
 * order, merged, and mark exactly the chunks of want. */
static void
check_dirty_view(struct sv_pool *pool, const char *from, const char *to, const bool *want,
		 unsigned seed, int step)
{
	char name[80];
	snprintf(name, sizeof name, to ? "v@%s" : "v", to);
	struct sv_view *v = open_view(pool, name);
	assert_int_equal(sv_view_dirty_check(v, from, strlen(from)), 0);
	struct sv_extent ext[NCHUNKS + 1];
	/* a sub-range that starts and ends mid-chunk, then the whole volume */
	uint64_t offs[2] = {CHUNK + 100, 0}, lens[2] = {VOL_SIZE - 2 * CHUNK - 300, VOL_SIZE};
	for (int t = 0; t < 2; t++) {
		size_t n;
		int err;
		assert_int_equal(sv_view_dirty_extents(v, from, (uint32_t)lens[t], offs[t], ext,
						       NCHUNKS + 1, &n, &err),
				 0);
		uint64_t pos = offs[t];
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(ext[i].offset, pos);
			assert_true(ext[i].length > 0);
			if (i > 0)
				assert_true(ext[i].hole != ext[i - 1].hole);
			for (uint64_t b = pos; b < pos + ext[i].length; b += CHUNK - (b % CHUNK))
				if (want[b / CHUNK] != !ext[i].hole)
					fail_msg("seed %u step %d: dirty view %s since %s: chunk "
						 "%" PRIu64 " is %s",
						 seed, step, name, from, b / CHUNK,
						 ext[i].hole ? "clean" : "dirty");
			pos += ext[i].length;
		}
		assert_int_equal(pos, offs[t] + lens[t]);
	}
	sv_view_close(v);
}

/* The model's history: wrote[e * NCHUNKS + c] says chunk c was written in
 * model epoch e (a snapshot starts a new one).  The diff from snapshot i to
 * j is exactly the chunks written in the epochs [i.epoch, j.epoch). */
struct msnap {
	char name[16];
	size_t epoch;
	unsigned char *data; /* its contents (released chunks zeroed) */
};

static void
model_diff(const bool *wrote, size_t from, size_t to, bool *out)
{
	memset(out, 0, NCHUNKS * sizeof *out);
	for (size_t e = from; e < to; e++)
		for (unsigned c = 0; c < NCHUNKS; c++)
			out[c] |= wrote[e * NCHUNKS + c];
}

static void
fill(unsigned char *p, size_t n, unsigned *rng)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)rand_r(rng);
}

static void
test_model(void **state)
{
	struct fixture *f = *state;
	unsigned seed =
	    getenv("SNAPVOL_SEED") ? (unsigned)atoi(getenv("SNAPVOL_SEED")) : (unsigned)time(NULL);
	int steps = getenv("SNAPVOL_STEPS") ? atoi(getenv("SNAPVOL_STEPS")) : 1500;
	printf("test_model: seed %u, %d steps (SNAPVOL_SEED=%u to replay)\n", seed, steps, seed);
	unsigned rng = seed;
	assert_int_equal(sv_volume_create(f->pool, "v", VOL_SIZE, CHUNK), 0);
	unsigned char *live = calloc(1, VOL_SIZE), *buf = malloc(VOL_SIZE);
	struct msnap snaps[MAX_SNAPS];
	size_t ns = 0, epoch = 0;
	bool *wrote = calloc((size_t)steps + 2, NCHUNKS * sizeof *wrote);
	bool want[NCHUNKS];
	assert_non_null(wrote);
	unsigned next_id = 0;
	struct sv_view *v = open_view(f->pool, "v");
	assert_non_null(live);
	assert_non_null(buf);

	for (int step = 0; step < steps; step++) {
		int op = rand_r(&rng) % 100;
		uint64_t off = (uint64_t)(rand_r(&rng) % NCHUNKS) * CHUNK;
		if (rand_r(&rng) % 3 == 0)
			off += (uint64_t)(rand_r(&rng) % CHUNK);
		uint64_t maxlen = VOL_SIZE - off;
		uint64_t len =
		    1 + (uint64_t)rand_r(&rng) % (rand_r(&rng) % 4 ? 3 * CHUNK : 24 * CHUNK);
		if (len > maxlen)
			len = maxlen;
		int err;
		if (op < 45 || (op < 60 && ns == 0)) { /* write, trim, zero */
			int kind = op % 3;
			if (kind == 0) {
				fill(buf, len, &rng);
				assert_int_equal(
				    sv_view_pwrite(v, buf, (uint32_t)len, off, 0, &err), 0);
				memcpy(live + off, buf, len);
			} else if (kind == 1) {
				assert_int_equal(sv_view_trim(v, (uint32_t)len, off, 0, &err), 0);
				memset(live + off, 0, len);
			} else {
				assert_int_equal(sv_view_zero(v, (uint32_t)len, off, 0, &err), 0);
				memset(live + off, 0, len);
			}
			for (uint64_t c = off / CHUNK; c <= (off + len - 1) / CHUNK; c++)
				wrote[epoch * NCHUNKS + c] = true;
		} else if (op < 60) { /* release a range of a snapshot */
			struct msnap *s = &snaps[rand_r(&rng) % ns];
			char name[40];
			snprintf(name, sizeof name, "v@%.15s", s->name);
			struct sv_view *sv = open_view(f->pool, name);
			assert_int_equal(sv_view_trim(sv, (uint32_t)len, off, 0, &err), 0);
			sv_view_close(sv);
			/* whole chunks only; the last one counts when the range
			 * reaches the end */
			uint64_t a = (off + CHUNK - 1) / CHUNK;
			uint64_t z = off + len == VOL_SIZE ? NCHUNKS : (off + len) / CHUNK;
			for (uint64_t c = a; c < z; c++)
				memset(s->data + c * CHUNK, 0, CHUNK);
		} else if (op < 72 && ns < MAX_SNAPS) { /* snapshot */
			struct msnap *s = &snaps[ns];
			snprintf(s->name, sizeof s->name, "s%u", next_id++);
			char spec[40];
			snprintf(spec, sizeof spec, "v@%s", s->name);
			const char *specs[] = {spec};
			if (sv_snapshot_create(f->pool, specs, 1, NULL) == -1)
				fail_msg("seed %u step %d: %s", seed, step, sv_last_error());
			s->epoch = ++epoch;
			s->data = malloc(VOL_SIZE);
			assert_non_null(s->data);
			memcpy(s->data, live, VOL_SIZE);
			ns++;
		} else if (op < 80 && ns > 0) { /* delete */
			size_t i = (size_t)rand_r(&rng) % ns;
			assert_int_equal(sv_snapshot_delete(f->pool, "v", snaps[i].name), 0);
			free(snaps[i].data);
			memmove(&snaps[i], &snaps[i + 1], (ns - i - 1) * sizeof *snaps);
			ns--;
		} else if (op < 83) { /* clean re-open: checkpoint and replay */
			sv_view_close(v);
			sv_pool_close(f->pool);
			f->pool = NULL;
			assert_int_equal(sv_pool_open(f->dir, 0, &f->pool), 0);
			v = open_view(f->pool, "v");
		}

		/* Diffs: every pair (i, j > i) and to the live volume, exactly
		 * the chunks written between them: nothing missed, nothing
		 * reported that was not written. */
		for (size_t i = 0; i < ns; i++) {
			for (size_t j = i + 1; j <= ns; j++) {
				const char *to = j < ns ? snaps[j].name : NULL;
				struct chunkset d;
				get_diff(f->pool, snaps[i].name, to, &d);
				model_diff(wrote, snaps[i].epoch,
					   j < ns ? snaps[j].epoch : epoch + 1, want);
				for (unsigned c = 0; c < NCHUNKS; c++)
					if (d.c[c] != want[c])
						fail_msg(
						    "seed %u step %d: diff %s -> %s: chunk %u %s",
						    seed, step, snaps[i].name, to ? to : "live", c,
						    d.c[c] ? "reported, never written" : "MISSED");
			}
		}
		if (step % 20 == 0 && ns > 0) {
			size_t i = (size_t)rand_r(&rng) % ns,
			       j = i + 1 + (size_t)rand_r(&rng) % (ns - i);
			model_diff(wrote, snaps[i].epoch, j < ns ? snaps[j].epoch : epoch + 1,
				   want);
			check_dirty_view(f->pool, snaps[i].name, j < ns ? snaps[j].name : NULL,
					 want, seed, step);
		}
		/* Every snapshot reads as the model says. */
		if (step % 5 == 0) {
			for (size_t i = 0; i < ns; i++) {
				char name[40];
				snprintf(name, sizeof name, "v@%.15s", snaps[i].name);
				struct sv_view *sv = open_view(f->pool, name);
				assert_int_equal(sv_view_pread(sv, buf, VOL_SIZE, 0, &err), 0);
				sv_view_close(sv);
				for (size_t b = 0; b < VOL_SIZE; b++)
					if (buf[b] != snaps[i].data[b])
						fail_msg("seed %u step %d: %s differs at chunk %zu",
							 seed, step, name, b / CHUNK);
			}
		}
	}
	sv_view_close(v);
	for (size_t i = 0; i < ns; i++)
		free(snaps[i].data);
	free(wrote);
	free(live);
	free(buf);
}

/* The "written" sets between two snapshots, exactly: diff(i, j) against a
 * model that records history, for pairs the loop above only bounds. */
static void
test_pairs_exact(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "v", VOL_SIZE, CHUNK), 0);
	struct sv_view *v = open_view(f->pool, "v");
	char buf[CHUNK];
	int err;
	memset(buf, 'a', sizeof buf);
	const char *a[] = {"v@a"}, *b[] = {"v@b"}, *c[] = {"v@c"};
	assert_int_equal(sv_snapshot_create(f->pool, a, 1, NULL), 0);
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 3 * CHUNK, 0, &err), 0);
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 4 * CHUNK, 0, &err), 0);
	assert_int_equal(sv_snapshot_create(f->pool, b, 1, NULL), 0);
	assert_int_equal(sv_view_pwrite(v, buf, 10, 4 * CHUNK + 5, 0, &err), 0);
	assert_int_equal(sv_view_zero(v, 2 * CHUNK, 100 * CHUNK, 0, &err), 0);
	assert_int_equal(sv_snapshot_create(f->pool, c, 1, NULL), 0);
	assert_int_equal(sv_view_trim(v, CHUNK, (NCHUNKS - 1) * CHUNK, 0, &err), 0);
	struct chunkset d;
	get_diff(f->pool, "a", "b", &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == 3 || k == 4);
	get_diff(f->pool, "b", "c", &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == 4 || k == 100 || k == 101);
	get_diff(f->pool, "a", "c", &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == 3 || k == 4 || k == 100 || k == 101);
	get_diff(f->pool, "c", "", &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == NCHUNKS - 1);
	/* Deleting the middle snapshot keeps a -> c the same. */
	assert_int_equal(sv_snapshot_delete(f->pool, "v", "b"), 0);
	get_diff(f->pool, "a", "c", &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == 3 || k == 4 || k == 100 || k == 101);
	/* Deleting the newest: writes after it still show since a. */
	assert_int_equal(sv_snapshot_delete(f->pool, "v", "c"), 0);
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 4 * CHUNK, 0, &err), 0);
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 7 * CHUNK, 0, &err), 0);
	get_diff(f->pool, "a", NULL, &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k == 3 || k == 4 || k == 7 || k == 100 || k == 101 ||
					     k == NCHUNKS - 1);
	/* Ranges are clipped, in bytes. */
	struct chunkset r = {0};
	assert_int_equal(sv_volume_diff(f->pool, "v", "a", NULL, 3 * CHUNK + 7, CHUNK, collect, &r),
			 0);
	assert_int_equal(r.last_end, 4 * CHUNK + 7);
	sv_view_close(v);
}

/* A write to a chunk every snapshot released copies nothing, yet shows in
 * the diff; the snapshots still read what they should. */
static void
test_released_write(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "v", VOL_SIZE, CHUNK), 0);
	struct sv_view *v = open_view(f->pool, "v");
	char buf[4 * CHUNK], got[4 * CHUNK];
	int err;
	memset(buf, 'o', sizeof buf);
	assert_int_equal(sv_view_pwrite(v, buf, sizeof buf, 0, 0, &err), 0);
	const char *a[] = {"v@a"}, *b[] = {"v@b"};
	assert_int_equal(sv_snapshot_create(f->pool, a, 1, NULL), 0);
	assert_int_equal(sv_snapshot_create(f->pool, b, 1, NULL), 0);
	/* b releases chunks 0-1, a releases chunks 0 and 2. */
	struct sv_view *vb = open_view(f->pool, "v@b"), *va = open_view(f->pool, "v@a");
	assert_int_equal(sv_view_trim(vb, 2 * CHUNK, 0, 0, &err), 0);
	assert_int_equal(sv_view_trim(va, CHUNK, 0, 0, &err), 0);
	assert_int_equal(sv_view_trim(va, CHUNK, 2 * CHUNK, 0, &err), 0);
	struct sv_cow_stats st0, st1;
	assert_int_equal(sv_volume_cow_stats(f->pool, "v", &st0), 0);
	memset(buf, 'n', sizeof buf);
	assert_int_equal(sv_view_pwrite(v, buf, 4 * CHUNK, 0, 0, &err), 0);
	/* the copies of an acknowledged write are done by the flush at the
	 * latest (writebehind.c) */
	assert_int_equal(sv_view_flush(v, &err), 0);
	assert_int_equal(sv_volume_cow_stats(f->pool, "v", &st1), 0);
	/* only chunks 1 (a needs it), 2 (b needs it) and 3 were copied */
	assert_int_equal(st1.copied_bytes - st0.copied_bytes, 3 * CHUNK);
	struct chunkset d;
	get_diff(f->pool, "b", NULL, &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k < 4);
	get_diff(f->pool, "a", NULL, &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k < 4);
	/* a: chunk 0 released (zeros), 1 old, 2 released, 3 old */
	assert_int_equal(sv_view_pread(va, got, sizeof got, 0, &err), 0);
	for (unsigned k = 0; k < 4; k++)
		for (unsigned i = 0; i < CHUNK; i++)
			assert_int_equal(got[k * CHUNK + i], (k == 0 || k == 2) ? 0 : 'o');
	/* b: 0-1 released, 2-3 old */
	assert_int_equal(sv_view_pread(vb, got, sizeof got, 0, &err), 0);
	for (unsigned k = 0; k < 4; k++)
		for (unsigned i = 0; i < CHUNK; i++)
			assert_int_equal(got[k * CHUNK + i], k < 2 ? 0 : 'o');
	sv_view_close(va);
	sv_view_close(vb);
	/* After a re-open (the bits replayed from the journal) still there. */
	sv_view_close(v);
	sv_pool_close(f->pool);
	assert_int_equal(sv_pool_open(f->dir, 0, &f->pool), 0);
	get_diff(f->pool, "b", NULL, &d);
	for (unsigned k = 0; k < NCHUNKS; k++)
		assert_int_equal(d.c[k], k < 4);
	/* A later snapshot reads the new data, and is not disturbed by the
	 * bit-only records of the epoch before it. */
	const char *c[] = {"v@c"};
	assert_int_equal(sv_snapshot_create(f->pool, c, 1, NULL), 0);
	struct sv_view *vc = open_view(f->pool, "v@c");
	assert_int_equal(sv_view_pread(vc, got, sizeof got, 0, &err), 0);
	for (unsigned i = 0; i < sizeof got; i++)
		assert_int_equal(got[i], 'n');
	sv_view_close(vc);
}

static int
stop(void *o, uint64_t off, uint64_t len)
{
	(void)off, (void)len;
	++*(int *)o;
	return 7;
}

static void
test_errors(void **state)
{
	struct fixture *f = *state;
	struct chunkset d = {0};
	assert_int_equal(sv_volume_diff(f->pool, "nope", "a", NULL, 0, 1, collect, &d), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	/* the control command's paging geometry (sv_volume_geometry) */
	uint64_t size = 1;
	uint32_t chunk = 1;
	assert_int_equal(sv_volume_geometry(f->pool, "nope", &size, &chunk), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_int_equal(sv_volume_geometry(f->pool, "../v", &size, &chunk), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_volume_create(f->pool, "v", VOL_SIZE, CHUNK), 0);
	assert_int_equal(sv_volume_geometry(f->pool, "v", &size, &chunk), 0);
	assert_int_equal(size, VOL_SIZE);
	assert_int_equal(chunk, CHUNK);
	assert_int_equal(sv_volume_diff(f->pool, "v", "a", NULL, 0, VOL_SIZE, collect, &d), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	const char *a[] = {"v@a"}, *b[] = {"v@b"};
	assert_int_equal(sv_snapshot_create(f->pool, a, 1, NULL), 0);
	assert_int_equal(sv_snapshot_create(f->pool, b, 1, NULL), 0);
	assert_int_equal(sv_volume_diff(f->pool, "v", "b", "a", 0, VOL_SIZE, collect, &d), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_volume_diff(f->pool, "v", "a", "a", 0, VOL_SIZE, collect, &d), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_volume_diff(f->pool, "v", "a", "zz", 0, VOL_SIZE, collect, &d), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_int_equal(sv_volume_diff(f->pool, "v", NULL, NULL, 0, VOL_SIZE, collect, &d), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	/* fn's nonzero return stops the walk and is returned */
	struct sv_view *v = open_view(f->pool, "v");
	char buf[CHUNK] = {1};
	int err;
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 0, 0, &err), 0);
	assert_int_equal(sv_view_pwrite(v, buf, CHUNK, 9 * CHUNK, 0, &err), 0);
	int calls = 0;
	assert_int_equal(sv_volume_diff(f->pool, "v", "a", NULL, 0, VOL_SIZE, stop, &calls), 7);
	assert_int_equal(calls, 1);
	/* dirty-bitmap names: the live view has both, v@b only a */
	assert_int_equal(sv_view_dirty_check(v, "a", 1), 0);
	assert_int_equal(sv_view_dirty_check(v, "zz", 2), -1);
	assert_int_equal(sv_view_dirty_check(v, "a\0b", 3), -1);
	struct sv_view *vb = open_view(f->pool, "v@b");
	assert_int_equal(sv_view_dirty_check(vb, "a", 1), 0);
	assert_int_equal(sv_view_dirty_check(vb, "b", 1), -1);
	sv_view_close(vb);
	sv_view_close(v);
}

/* Power loss during writes after a snapshot: the diff since it covers
 * every chunk that differs from the snapshot, and every chunk of a write
 * acknowledged and flushed before the crash. */
static void
test_powerloss(void **state)
{
	struct fixture *f = *state;
	sv_pool_close(f->pool);
	f->pool = NULL;
	unsigned seed =
	    getenv("SNAPVOL_SEED") ? (unsigned)atoi(getenv("SNAPVOL_SEED")) : (unsigned)time(NULL);
	printf("test_powerloss: seed %u\n", seed);
	unsigned rng = seed;
	unsigned char *buf = malloc(VOL_SIZE), *snap = malloc(VOL_SIZE), *live = malloc(VOL_SIZE);
	assert_non_null(buf);
	for (int life = 0; life < 30; life++) {
		struct crash_ctl ctl = {.seed = seed + (unsigned)life};
		struct sv_store *st;
		struct sv_pool *pool;
		assert_int_equal(crash_store_open(f->dir, life == 0, &ctl, &st), 0);
		assert_int_equal(sv_pool_open_store(st, f->dir, &pool), 0);
		if (life == 0)
			assert_int_equal(sv_volume_create(pool, "v", VOL_SIZE, CHUNK), 0);
		char sname[16], spec[24];
		snprintf(sname, sizeof sname, "s%d", life);
		snprintf(spec, sizeof spec, "v@%s", sname);
		const char *specs[] = {spec};
		assert_int_equal(sv_snapshot_create(pool, specs, 1, NULL), 0);
		/* The snapshot as taken, before any release. */
		int err;
		struct sv_view *sv = open_view(pool, spec);
		assert_int_equal(sv_view_pread(sv, snap, VOL_SIZE, 0, &err), 0);
		sv_view_close(sv);
		/* Every other life, every live snapshot releases one range: writes
		 * to it then record bits without copies (bit-only records). */
		if (life % 2) {
			uint64_t a = (uint64_t)(rand_r(&rng) % (NCHUNKS / 2)) * CHUNK;
			uint64_t n = (1 + (uint64_t)(rand_r(&rng) % (NCHUNKS / 2))) * CHUNK;
			for (int k = life - 2 > 0 ? life - 2 : 0; k <= life; k++) {
				char rs[24];
				snprintf(rs, sizeof rs, "v@s%d", k);
				sv = open_view(pool, rs);
				assert_int_equal(sv_view_trim(sv, (uint32_t)n, a, 0, &err), 0);
				sv_view_close(sv);
			}
		}
		struct sv_view *v = open_view(pool, "v");
		bool flushed[NCHUNKS] = {false}, acked[NCHUNKS] = {false};
		ctl.crash_at = ctl.calls + 1 + (uint64_t)rand_r(&rng) % 120;
		while (!crash_ctl_crashed(&ctl)) {
			uint64_t off = (uint64_t)(rand_r(&rng) % NCHUNKS) * CHUNK +
				       (rand_r(&rng) % 2 ? (uint64_t)(rand_r(&rng) % CHUNK) : 0);
			uint64_t len = 1 + (uint64_t)rand_r(&rng) % (3 * CHUNK);
			if (len > VOL_SIZE - off)
				len = VOL_SIZE - off;
			int r;
			int kind = rand_r(&rng) % 8;
			if (kind == 0) {
				r = sv_view_trim(v, (uint32_t)len, off, 0, &err);
			} else if (kind == 1) {
				r = sv_view_flush(v, &err);
				if (r == 0)
					for (unsigned c = 0; c < NCHUNKS; c++)
						flushed[c] |= acked[c];
				continue;
			} else {
				fill(buf, len, &rng);
				r = sv_view_pwrite(v, buf, (uint32_t)len, off, 0, &err);
			}
			if (r == 0)
				for (uint64_t c = off / CHUNK; c <= (off + len - 1) / CHUNK; c++)
					acked[c] = true;
			if (r == -1 && !crash_ctl_crashed(&ctl))
				fail_msg("seed %u life %d: a write failed without a crash", seed,
					 life);
		}
		sv_view_close(v);
		sv_pool_close(pool);

		/* Recover with the plain store and check. */
		assert_int_equal(sv_pool_open(f->dir, 0, &pool), 0);
		struct chunkset d;
		get_diff(pool, sname, NULL, &d);
		v = open_view(pool, "v");
		assert_int_equal(sv_view_pread(v, live, VOL_SIZE, 0, &err), 0);
		sv_view_close(v);
		for (unsigned c = 0; c < NCHUNKS; c++) {
			if (memcmp(live + c * CHUNK, snap + c * CHUNK, CHUNK) && !d.c[c])
				fail_msg("seed %u life %d: chunk %u changed but the diff misses it",
					 seed, life, c);
			if (flushed[c] && !d.c[c])
				fail_msg("seed %u life %d: chunk %u written and flushed, missed",
					 seed, life, c);
		}
		/* Keep at most a few snapshots. */
		if (life >= 3) {
			char old[16];
			snprintf(old, sizeof old, "s%d", life - 3);
			assert_int_equal(sv_snapshot_delete(pool, "v", old), 0);
		}
		sv_pool_close(pool);
		free(ctl.garbage);
	}
	free(buf);
	free(snap);
	free(live);
	assert_int_equal(sv_pool_open(f->dir, 0, &f->pool), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pairs_exact, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_released_write, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_model, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_powerloss, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
