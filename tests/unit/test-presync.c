/*
 * test-presync.c: the sync a snapshot create makes before its switch
 * (engine/snapshot.c, "Presync").
 *
 * The sync after the switch makes the snapshot durable, and the first
 * writes after the switch wait for commits that queue behind it; so the
 * create syncs the origin once before the switch, when nobody waits for
 * a commit of the new epoch, and the sync after finds only what was
 * written meanwhile.  What must hold:
 *   - an origin sync happens before the switch (counted by wrapping the
 *     power-loss store's obj_sync, up to the create's "taken" callback);
 *   - not for a quiesced create (a filesystem freeze: nothing writes, and
 *     a sync would only lengthen the freeze window);
 *   - a failed presync fails the create before the switch: no snapshot,
 *     the callback never called, and the volume's next flush reports the
 *     error (the file may have lost acknowledged writes);
 *   - durability is still the sync after the switch's: after a power loss
 *     right after the create returns, the snapshot holds every write
 *     acknowledged before it, including those made during the presync;
 *   - the presync starts the origin's writeback one slice of the address
 *     range at a time (writeback.c, "a snapshot create's presync, in
 *     slices"), before its sync: seen by this program's own
 *     sync_file_range, which the engine's call binds to.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "store-crash.h"
#include "testpool.h"

#define VOL_SIZE (UINT64_C(8) << 20)
#define BLOCK	 4096u
#define NBLOCKS	 (VOL_SIZE / BLOCK)

/* ---- the presync's slices: sync_file_range, counted ---- */

static uint64_t slices;	   /* __atomic: SYNC_FILE_RANGE_WRITE calls of SLICE bytes */
static uint64_t slice_end; /* __atomic: the highest offset + length seen */
#define SLICE_MB 1

int
sync_file_range(int fd, off64_t off, off64_t len, unsigned int flags)
{
	if (flags == SYNC_FILE_RANGE_WRITE && len == (off64_t)SLICE_MB << 20) {
		__atomic_add_fetch(&slices, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&slice_end, (uint64_t)(off + len), __ATOMIC_RELAXED);
	}
	return (int)syscall(SYS_sync_file_range, fd, off, len, flags);
}

/* ---- counting (and failing) obj_sync of the power-loss store ---- */

static struct sv_store_ops counting_ops;
static int (*inner_sync)(struct sv_obj *o);
static uint64_t syncs;	  /* __atomic */
static bool fail_syncs;	  /* __atomic: syncs fail with EIO */
static uint64_t at_taken; /* syncs counted when the switch was made */
static bool taken;

static int
count_sync(struct sv_obj *o)
{
	__atomic_add_fetch(&syncs, 1, __ATOMIC_RELAXED);
	if (__atomic_load_n(&fail_syncs, __ATOMIC_RELAXED)) {
		errno = EIO;
		return -1;
	}
	return inner_sync(o);
}

/* The engine calls a store's ops through the table in its header
 * (store.h), and the crash store's functions never look at that pointer,
 * so swapping it is enough. */
static void
count_syncs(struct sv_store *st)
{
	counting_ops = *sv_store_ops_of(st);
	inner_sync = counting_ops.obj_sync;
	counting_ops.obj_sync = count_sync;
	((struct sv_store_base *)st)->ops = &counting_ops;
}

static void
on_taken(void *arg)
{
	(void)arg;
	at_taken = __atomic_load_n(&syncs, __ATOMIC_RELAXED);
	taken = true;
}

static void
write_blocks(struct sv_view *v, unsigned gen, uint64_t first, uint64_t n)
{
	assert_int_equal(test_write_blocks(v, gen, first, n, BLOCK, NULL), 0);
}

/* Does export name read block b as generation gen[b]? */
static bool
reads_as(struct sv_pool *pool, const char *name, const unsigned *gen)
{
	return test_reads_as(pool, name, gen, NBLOCKS, BLOCK);
}

struct fixture {
	char dir[64];
	struct crash_ctl ctl;
	struct sv_store *st;
	struct sv_pool *pool;
	struct sv_view *v;
};

static void
open_fixture(struct fixture *f, const char *tag)
{
	memset(f, 0, sizeof *f);
	assert_int_equal(test_mkdtemp(f->dir, tag, true), 0);
	assert_int_equal(crash_store_open(f->dir, true, &f->ctl, &f->st), 0);
	count_syncs(f->st);
	assert_int_equal(sv_pool_open_store(f->st, f->dir, &f->pool), 0);
	assert_int_equal(sv_volume_create(f->pool, "ps", VOL_SIZE, 0), 0);
	assert_int_equal(sv_view_open(f->pool, "ps", 2, &f->v), 0);
}

static void
test_sync_before_switch(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "presync");
	static unsigned model[NBLOCKS];
	memset(model, 0, sizeof model);
	write_blocks(f.v, 1, 0, 64); /* not flushed: the create makes them durable */
	for (uint64_t b = 0; b < 64; b++)
		model[b] = 1;
	const char *spec[] = {"ps@a"};
	uint64_t before = __atomic_load_n(&syncs, __ATOMIC_RELAXED);
	taken = false;
	assert_int_equal(sv_snapshot_create_cb(f.pool, spec, 1, NULL, 0, on_taken, NULL), 0);
	assert_true(taken);
	assert_true(at_taken > before); /* the presync */
	/* A quiesced create (what a filesystem freeze makes) has none. */
	write_blocks(f.v, 2, 64, 8);
	for (uint64_t b = 64; b < 72; b++)
		model[b] = 2;
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), 0); /* their commits, not counted below */
	const char *spec2[] = {"ps@q"};
	before = __atomic_load_n(&syncs, __ATOMIC_RELAXED);
	taken = false;
	assert_int_equal(
	    sv_snapshot_create_cb(f.pool, spec2, 1, NULL, SV_SNAP_QUIESCE, on_taken, NULL), 0);
	assert_true(taken);
	assert_int_equal(at_taken, before);
	assert_true(__atomic_load_n(&syncs, __ATOMIC_RELAXED) > before); /* the one after */
	/* Durable once created: the power goes at once. */
	crash_store_powerloss(f.st);
	sv_view_close(f.v);
	sv_pool_close(f.pool);
	assert_int_equal(sv_pool_open(f.dir, 0, &f.pool), 0);
	static unsigned snap_a[NBLOCKS];
	memcpy(snap_a, model, sizeof snap_a);
	for (uint64_t b = 64; b < 72; b++)
		snap_a[b] = 0;
	assert_true(reads_as(f.pool, "ps@a", snap_a));
	assert_true(reads_as(f.pool, "ps@q", model));
	assert_true(reads_as(f.pool, "ps", model));
	sv_pool_close(f.pool);
	free(f.ctl.garbage);
	assert_int_equal(test_rmtree(f.dir), 0);
}

static uint64_t slices_at_taken;

static void
on_taken_slices(void *arg)
{
	(void)arg;
	slices_at_taken = __atomic_load_n(&slices, __ATOMIC_RELAXED);
}

/* On a file pool (the power-loss store has no file descriptors). */
static void
test_presync_slices(void **state)
{
	(void)state;
	char dir[64];
	struct sv_pool *pool;
	struct sv_view *v;
	assert_int_equal(test_mkdtemp(dir, "presyncsl", false), 0);
	assert_int_equal(sv_pool_open(dir, SV_POOL_CREATE, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "ps", VOL_SIZE, 0), 0);
	assert_int_equal(sv_view_open(pool, "ps", 2, &v), 0);
	write_blocks(v, 1, 0, NBLOCKS);
	const char *spec[] = {"ps@s"};
	__atomic_store_n(&slices, 0, __ATOMIC_RELAXED);
	slices_at_taken = 0;
	assert_int_equal(sv_snapshot_create_cb(pool, spec, 1, NULL, 0, on_taken_slices, NULL), 0);
	/* every slice of the 8 MiB origin, before the switch */
	assert_int_equal(slices_at_taken, VOL_SIZE >> 20);
	assert_true(__atomic_load_n(&slice_end, __ATOMIC_RELAXED) == VOL_SIZE);
	/* and none for a quiesced create (no presync) */
	const char *spec2[] = {"ps@q"};
	__atomic_store_n(&slices, 0, __ATOMIC_RELAXED);
	assert_int_equal(sv_snapshot_create_cb(pool, spec2, 1, NULL, SV_SNAP_QUIESCE, NULL, NULL),
			 0);
	assert_int_equal(__atomic_load_n(&slices, __ATOMIC_RELAXED), 0);
	static unsigned model[NBLOCKS];
	for (uint64_t b = 0; b < NBLOCKS; b++)
		model[b] = 1;
	assert_true(reads_as(pool, "ps@s", model));
	sv_view_close(v);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

static void
test_failed_presync(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "presyncerr");
	write_blocks(f.v, 1, 0, 16);
	const char *spec[] = {"ps@e"};
	taken = false;
	__atomic_store_n(&fail_syncs, true, __ATOMIC_RELAXED);
	assert_int_equal(sv_snapshot_create_cb(f.pool, spec, 1, NULL, 0, on_taken, NULL), -1);
	__atomic_store_n(&fail_syncs, false, __ATOMIC_RELAXED);
	assert_false(taken); /* failed before the switch */
	struct sv_snapshot_info *snaps;
	size_t n = 99;
	assert_int_equal(sv_snapshot_list(f.pool, "ps", &snaps, &n), 0);
	assert_int_equal(n, 0);
	free(snaps);
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), -1);
	assert_int_equal(err, EIO);
	assert_int_equal(sv_view_flush(f.v, &err), 0); /* told once */
	/* And the same name can be taken now. */
	assert_int_equal(sv_snapshot_create(f.pool, spec, 1, NULL), 0);
	sv_view_close(f.v);
	sv_pool_close(f.pool);
	free(f.ctl.garbage);
	assert_int_equal(test_rmtree(f.dir), 0);
}

int
main(void)
{
	setenv("SNAPVOL_PRESYNC_SLICE_MB", "1", 1); /* SLICE_MB: read at the first create */
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sync_before_switch),
	    cmocka_unit_test(test_failed_presync),
	    cmocka_unit_test(test_presync_slices),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
