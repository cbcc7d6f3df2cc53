/*
 * test-writeback.c: early writeback of the origin (engine/writeback.c).
 *
 * The engine asks the store to start writing a volume's origin back every
 * SNAPVOL_WRITEBACK_MB written (1 MiB here), from a thread of its own, so a
 * snapshot's or a FLUSH's sync finds little left.  What must hold:
 *   - the op is called (counted by wrapping the power-loss store's op), on
 *     the volume's own thread, for writes taken in place and behind alike;
 *   - it makes nothing durable that was not synced, and loses nothing that
 *     was: the power-loss store treats the bytes as still unsynced, and
 *     after a power loss every snapshot reads exactly as when it was taken,
 *     every flushed write is there, and every sector written since is
 *     either its old or its new contents;
 *   - the hard stop: while a pass of the thread is held up, a writer that
 *     gets four thresholds ahead of the last finished pass waits until a
 *     pass ends;
 *   - pacing: on a slow disk (passes that take as long as their bytes at
 *     a set rate), writers past the setpoint are paused a little and
 *     often, no write waits long in one piece, and the backlog stays under
 *     the hard stop;
 *   - on the real file store it is a working sync_file_range.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "store-crash.h"
#include "testpool.h"
#include "util.h"

#define VOL_SIZE (UINT64_C(8) << 20)
#define BLOCK	 4096u
#define NBLOCKS	 (VOL_SIZE / BLOCK)
#define SECTOR	 512u

/* ---- counting obj_writeback calls of the power-loss store ---- */

static struct sv_store_ops counting_ops;
static int (*inner_writeback)(struct sv_obj *o);
static uint64_t writebacks; /* __atomic */
static pthread_t main_thread;
static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cond = PTHREAD_COND_INITIALIZER;
static bool hold_passes;    /* hold_lock: the thread's passes block */
static bool on_main_thread; /* __atomic: a pass ran on the writer's thread */
/* A slow disk: while disk_bps is set, a pass takes as long as the
 * blocks *disk_written counted since the last pass started take at that
 * rate; passes_done counts the passes ended, taken_blocks is *disk_written
 * when the last one ended started (all __atomic). */
static uint64_t disk_bps;
static uint64_t *disk_written;
static uint64_t disk_last_start, taken_blocks, passes_done;

static int
count_writeback(struct sv_obj *o)
{
	if (pthread_equal(pthread_self(), main_thread))
		__atomic_store_n(&on_main_thread, true, __ATOMIC_RELAXED);
	__atomic_add_fetch(&writebacks, 1, __ATOMIC_RELAXED);
	/* a slow disk, as long as the test likes */
	pthread_mutex_lock(&hold_lock);
	while (hold_passes)
		pthread_cond_wait(&hold_cond, &hold_lock);
	pthread_mutex_unlock(&hold_lock);
	uint64_t bps = __atomic_load_n(&disk_bps, __ATOMIC_RELAXED);
	uint64_t *wp = __atomic_load_n(&disk_written, __ATOMIC_RELAXED);
	if (bps && wp) {
		uint64_t start = __atomic_load_n(wp, __ATOMIC_RELAXED);
		uint64_t ns = (start - disk_last_start) * BLOCK * 1000000000 / bps;
		disk_last_start = start; /* only this (the volume's) thread */
		struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
		nanosleep(&ts, NULL);
		__atomic_store_n(&taken_blocks, start, __ATOMIC_RELAXED);
		__atomic_add_fetch(&passes_done, 1, __ATOMIC_RELAXED);
	}
	return inner_writeback(o);
}

/* The crash store's ops with obj_writeback counted.  The engine calls a
 * store's ops through the table in its header (store.h), and the crash
 * store's functions never look at that pointer, so swapping it is enough. */
static void
count_writebacks(struct sv_store *st)
{
	counting_ops = *sv_store_ops_of(st);
	assert_non_null(counting_ops.obj_writeback);
	inner_writeback = counting_ops.obj_writeback;
	counting_ops.obj_writeback = count_writeback;
	((struct sv_store_base *)st)->ops = &counting_ops;
}

/* A crash store in dir with obj_writeback counted (*stp, if asked), a pool
 * on it, volume "wb" and a view of it. */
static struct sv_pool *
open_counted(const char *dir, struct crash_ctl *ctl, struct sv_store **stp, struct sv_view **v)
{
	struct sv_store *st;
	struct sv_pool *pool;
	assert_int_equal(crash_store_open(dir, true, ctl, &st), 0);
	count_writebacks(st);
	assert_int_equal(sv_pool_open_store(st, dir, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "wb", VOL_SIZE, 0), 0);
	assert_int_equal(sv_view_open(pool, "wb", 2, v), 0);
	if (stp)
		*stp = st;
	return pool;
}

/* Hold (or let go) the thread's writeback passes. */
static void
hold(bool on)
{
	pthread_mutex_lock(&hold_lock);
	hold_passes = on;
	pthread_cond_broadcast(&hold_cond);
	pthread_mutex_unlock(&hold_lock);
}

/* Wait (up to 10 s) until more than n calls were made. */
static bool
writebacks_above(uint64_t n)
{
	for (int i = 0; i < 1000; i++) {
		if (__atomic_load_n(&writebacks, __ATOMIC_RELAXED) > n)
			return true;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return false;
}

/* ---- data: generation g of block b, sector by sector ---- */

static void
write_blocks(struct sv_view *v, unsigned gen, uint64_t first, uint64_t n, unsigned *model)
{
	assert_int_equal(test_write_blocks(v, gen, first, n, BLOCK, model), 0);
}

/* Does the export read as model (gen per block); with alt, may each sector
 * of a block also be generation alt[b]'s (a write not flushed before the
 * power loss: dropped, applied or torn), or the garbage the power loss put
 * in that sector of the origin (ctl)? */
static bool
export_is(struct sv_pool *pool, const char *name, const unsigned *model, const unsigned *alt,
	  const struct crash_ctl *ctl)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1) {
		print_error("cannot open %s: %s\n", name, sv_last_error());
		return false;
	}
	bool ok = true;
	unsigned char got[BLOCK], want[BLOCK], other[BLOCK];
	for (uint64_t b = 0; b < NBLOCKS && ok; b++) {
		int err = 0;
		if (sv_view_pread(v, got, BLOCK, b * BLOCK, &err) == -1) {
			print_error("%s: read of block %" PRIu64 " failed: %s\n", name, b,
				    strerror(err));
			ok = false;
			break;
		}
		if (model[b])
			test_fill_block(want, BLOCK, model[b], b);
		else
			memset(want, 0, BLOCK);
		if (alt && alt[b])
			test_fill_block(other, BLOCK, alt[b], b);
		for (unsigned s = 0; s < BLOCK / SECTOR; s++) {
			size_t o = (size_t)s * SECTOR;
			if (!memcmp(got + o, want + o, SECTOR))
				continue;
			if (alt && alt[b] &&
			    (!memcmp(got + o, other + o, SECTOR) ||
			     crash_ctl_garbage(ctl, "wb", "origin", b * BLOCK + o)))
				continue;
			print_error("%s: block %" PRIu64 " sector %u is neither generation %u%s\n",
				    name, b, s, model[b],
				    alt && alt[b] ? " nor the unflushed one" : "");
			ok = false;
			break;
		}
	}
	sv_view_close(v);
	return ok;
}

static void
test_kicks_survive_powerloss(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "wback", true), 0);
	/* The power loss's choices: SNAPVOL_SEED=N replays a run. */
	const char *env = getenv("SNAPVOL_SEED");
	struct crash_ctl ctl = {.seed =
				    env ? (unsigned)strtoul(env, NULL, 0) : (unsigned)time(NULL)};
	print_message("seed %u (SNAPVOL_SEED=%u replays it)\n", ctl.seed, ctl.seed);
	struct sv_view *v;
	struct sv_store *st;
	struct sv_pool *pool = open_counted(dir, &ctl, &st, &v);

	static unsigned vol[NBLOCKS], snap[NBLOCKS], unflushed[NBLOCKS];
	/* 8 MiB in place (no snapshot yet), flushed: several kicks. */
	uint64_t k0 = __atomic_load_n(&writebacks, __ATOMIC_RELAXED);
	write_blocks(v, 1, 0, NBLOCKS, vol);
	assert_true(writebacks_above(k0));
	int err = 0;
	assert_int_equal(sv_view_flush(v, &err), 0);

	/* 4 MiB more, not flushed, then a snapshot: it must hold them. */
	write_blocks(v, 2, 0, NBLOCKS / 2, vol);
	const char *spec[] = {"wb@s"};
	assert_int_equal(sv_snapshot_create(pool, spec, 1, NULL), 0);
	memcpy(snap, vol, sizeof snap);

	/* First writes after the snapshot (taken behind, copied), 2 MiB, not
	 * flushed: a kick comes while their copies and origin writes are
	 * unsynced. */
	uint64_t k1 = __atomic_load_n(&writebacks, __ATOMIC_RELAXED);
	write_blocks(v, 3, NBLOCKS / 4, NBLOCKS / 4, unflushed);
	assert_true(writebacks_above(k1));
	assert_false(__atomic_load_n(&on_main_thread, __ATOMIC_RELAXED));

	crash_store_powerloss(st);
	sv_view_close(v);
	sv_pool_close(pool);

	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	assert_true(export_is(pool, "wb@s", snap, NULL, &ctl));
	assert_true(export_is(pool, "wb", vol, unflushed, &ctl));
	free(ctl.garbage);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

/* The hard stop: the thread's first pass is held (a disk that does not
 * keep up, and no finished pass to pace by); a writer gets four
 * thresholds (1 MiB here) ahead of it, no more, and goes on once the pass
 * ends. */
struct bp_writer {
	struct sv_view *v;
	uint64_t written; /* blocks; __atomic */
};

static void *
bp_write(void *arg)
{
	struct bp_writer *w = arg;
	unsigned char buf[BLOCK];
	for (uint64_t b = 0; b < NBLOCKS; b++) {
		test_fill_block(buf, BLOCK, 3, b);
		int err = 0;
		if (sv_view_pwrite(w->v, buf, BLOCK, b * BLOCK, 0, &err) != 0)
			break;
		__atomic_store_n(&w->written, b + 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void
test_backpressure(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "wbbp", true), 0);
	struct crash_ctl ctl = {0};
	struct bp_writer w = {0};
	struct sv_pool *pool = open_counted(dir, &ctl, NULL, &w.v);
	hold(true);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, bp_write, &w), 0);
	/* Wait until the writer stops getting on (or is done: the failure). */
	uint64_t last = UINT64_MAX, now;
	for (int still = 0; still < 20;) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		now = __atomic_load_n(&w.written, __ATOMIC_RELAXED);
		still = now == last ? still + 1 : 0;
		last = now;
	}
	uint64_t per_mb = (UINT64_C(1) << 20) / BLOCK;
	assert_true(now < NBLOCKS);	/* held... */
	assert_true(now >= 2 * per_mb); /* ...not before it was a threshold behind */
	/* ...and no later than four thresholds */
	assert_true(now <= 4 * per_mb);
	hold(false);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(__atomic_load_n(&w.written, __ATOMIC_RELAXED), NBLOCKS);
	sv_view_close(w.v);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

/* Pacing: a disk that takes DISK_MBPS; one writer writes 12 MiB as fast
 * as it can.  Until the first pass ends there is no rate to pace by (the
 * hard stop holds the writer), and the second pass is that burst's.  After
 * them, every write past the setpoint is paused a little: most writes wait
 * 0.2 ms or more, none waits PACE_BOUND_MS in one piece (without pacing the
 * writer waited at the hard stop for whole passes: 0.5-1.5 s here), and the
 * backlog stays under the hard stop. */
#define DISK_MBPS     2
#define PACE_BOUND_MS 250
#define PACE_BLOCKS   (NBLOCKS * 3 / 2)

struct pace_writer {
	struct sv_view *v;
	uint64_t written; /* blocks; __atomic */
	uint64_t after, slow, longest_ns, backlog_max;
};

static void *
pace_write(void *arg)
{
	struct pace_writer *w = arg;
	unsigned char buf[BLOCK];
	for (uint64_t i = 0; i < PACE_BLOCKS; i++) {
		uint64_t b = i % NBLOCKS;
		test_fill_block(buf, BLOCK, 4, b);
		bool paced = __atomic_load_n(&passes_done, __ATOMIC_RELAXED) > 1;
		uint64_t t0 = sv_now_ns();
		int err = 0;
		if (sv_view_pwrite(w->v, buf, BLOCK, b * BLOCK, 0, &err) != 0)
			break;
		uint64_t ns = sv_now_ns() - t0;
		__atomic_store_n(&w->written, i + 1, __ATOMIC_RELAXED);
		if (!paced)
			continue;
		uint64_t backlog = i + 1 - __atomic_load_n(&taken_blocks, __ATOMIC_RELAXED);
		if (backlog > w->backlog_max)
			w->backlog_max = backlog;
		w->after++;
		if (ns >= 200 * 1000)
			w->slow++;
		if (ns > w->longest_ns)
			w->longest_ns = ns;
	}
	return NULL;
}

static void
test_pacing(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "wbpace", true), 0);
	struct crash_ctl ctl = {0};
	struct pace_writer w = {0};
	struct sv_pool *pool = open_counted(dir, &ctl, NULL, &w.v);
	disk_last_start = 0;
	__atomic_store_n(&taken_blocks, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&passes_done, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&disk_written, &w.written, __ATOMIC_RELAXED);
	__atomic_store_n(&disk_bps, (uint64_t)DISK_MBPS << 20, __ATOMIC_RELAXED);
	uint64_t t0 = sv_now_ns();
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, pace_write, &w), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	uint64_t ms = (sv_now_ns() - t0) / 1000000;
	sv_view_close(w.v); /* the last pass ends before the disk goes */
	__atomic_store_n(&disk_bps, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&disk_written, NULL, __ATOMIC_RELAXED);
	uint64_t per_mb = (UINT64_C(1) << 20) / BLOCK;
	print_message("%" PRIu64 " ms for 12 MiB; after the second pass %" PRIu64
		      " writes, %" PRIu64 " of them 0.2 ms or more, the longest %" PRIu64
		      " us; backlog at most %" PRIu64 " KiB\n",
		      ms, w.after, w.slow, w.longest_ns / 1000, w.backlog_max * BLOCK / 1024);
	assert_int_equal(__atomic_load_n(&w.written, __ATOMIC_RELAXED), PACE_BLOCKS);
	assert_true(w.after >= 2 * per_mb); /* the second pass ended by 10 MiB */
	assert_true(w.longest_ns < (uint64_t)PACE_BOUND_MS * 1000000); /* never long... */
	assert_true(w.slow >= w.after / 4);			       /* ...but often a little */
	assert_true(w.backlog_max <= 4 * per_mb); /* bounded (the counts may lag a block) */
	/* At the disk's pace: the 8 MiB after the first 4 took about 4 s. */
	assert_true(ms >= 8 * 1000 / DISK_MBPS / 2);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

/* On the real file store: a working call, and the data still reads back. */
static void
test_file_store_op(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "wbfile", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st;
	assert_int_equal(ops->open(dir, true, &st), 0);
	assert_int_equal(ops->vol_create(st, "v"), 0);
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, "v", "origin", VOL_SIZE, SV_OBJ_CREATE, &o), 0);
	unsigned char buf[BLOCK], got[BLOCK];
	for (uint64_t b = 0; b < 64; b++) {
		test_fill_block(buf, BLOCK, 7, b * 16);
		assert_int_equal(ops->obj_pwrite(o, buf, BLOCK, b * 16 * BLOCK, 0), 0);
	}
	assert_int_equal(ops->obj_writeback(o), 0);
	assert_int_equal(ops->obj_sync(o), 0);
	for (uint64_t b = 0; b < 64; b++) {
		test_fill_block(buf, BLOCK, 7, b * 16);
		assert_int_equal(ops->obj_pread(o, got, BLOCK, b * 16 * BLOCK), 0);
		assert_memory_equal(got, buf, BLOCK);
	}
	ops->obj_close(o);
	ops->close(st);
	assert_int_equal(test_rmtree(dir), 0);
}

int
main(void)
{
	/* Read once per process by the engine: before any volume opens. */
	setenv("SNAPVOL_WRITEBACK_MB", "1", 1);
	main_thread = pthread_self();
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_kicks_survive_powerloss),
	    cmocka_unit_test(test_backpressure),
	    cmocka_unit_test(test_pacing),
	    cmocka_unit_test(test_file_store_op),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
