/*
 * test-prelog-sync.c: the pre-image objects' syncs that run without the
 * journal's leader role (engine/journal.c, session 8).
 *
 * In pre-image log mode the pre-image objects are synced only at
 * checkpoints, and a commit waits for a checkpoint the leader takes.  So
 * the work is moved out of the leader role, and what must hold is:
 *   - a checkpoint that is not urgent (here a snapshot delete's) syncs the
 *     pre-image objects first without the leader role: a first write's
 *     commit completes while that sync is held up (the test holds it in a
 *     wrapped obj_sync), and the delete then completes and is durable;
 *   - a failed early sync is handled as the checkpoint's own: the
 *     snapshots reading that epoch are invalidated, the others and the
 *     volume read right;
 *   - many create/write/delete rounds, each delete presyncing, then
 *     retiring epochs (sv_epoch_retire, behind the guard, journal.c),
 *     while the 64 KiB log also fills and checkpoints inline, under
 *     ASan/TSan in CI (the 'concurrency' suite): every snapshot reads
 *     right after a power loss.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "util.h"
#include "store-crash.h"
#include "testpool.h"
#include "prestore.h"

#define VOL_SIZE (UINT64_C(4) << 20)
#define BLOCK	 4096u
#define NBLOCKS	 (VOL_SIZE / BLOCK)

/* ---- a volume and a model of what each export reads ---- */

struct fixture {
	char dir[64];
	struct crash_ctl ctl;
	struct sv_store *st;
	struct sv_pool *pool;
	struct sv_view *v;
	unsigned live[NBLOCKS]; /* generation of each block of the volume (0: zeros) */
};

static void
open_fixture(struct fixture *f, const char *tag)
{
	memset(f, 0, sizeof *f);
	assert_int_equal(test_mkdtemp(f->dir, tag, true), 0);
	assert_int_equal(crash_store_open(f->dir, true, &f->ctl, &f->st), 0);
	wrap_store(f->st);
	setenv("SNAPVOL_PRELOG_KB", "64", 1); /* read when the volume opens */
	assert_int_equal(sv_pool_open_store(f->st, f->dir, &f->pool), 0);
	assert_int_equal(sv_volume_create(f->pool, "pl", VOL_SIZE, 4096), 0);
	assert_int_equal(sv_view_open(f->pool, "pl", 2, &f->v), 0);
	unsetenv("SNAPVOL_PRELOG_KB");
}

static void
close_fixture(struct fixture *f)
{
	if (f->v)
		sv_view_close(f->v);
	sv_pool_close(f->pool);
	free(f->ctl.garbage);
	assert_int_equal(test_rmtree(f->dir), 0);
}

static void
write_blocks(struct fixture *f, unsigned gen, uint64_t first, uint64_t n)
{
	assert_int_equal(test_write_blocks(f->v, gen, first, n, BLOCK, f->live), 0);
}

static void
flush(struct fixture *f)
{
	int err = 0;
	assert_int_equal(sv_view_flush(f->v, &err), 0);
}

/* Does export name read block b as generation gen[b]? */
static bool
reads_as(struct sv_pool *pool, const char *name, const unsigned *gen)
{
	return test_reads_as(pool, name, gen, NBLOCKS, BLOCK);
}

static void
snap(struct fixture *f, const char *name)
{
	char spec[64];
	snprintf(spec, sizeof spec, "pl@%s", name);
	const char *specs[] = {spec};
	assert_int_equal(sv_snapshot_create(f->pool, specs, 1, NULL), 0);
}

/* ---- a delete's checkpoint syncs the pre-images outside the leader role ---- */

struct deleter {
	struct sv_pool *pool;
	const char *snap;
	int rc;
};

static void *
delete_thread(void *arg)
{
	struct deleter *d = arg;
	d->rc = sv_snapshot_delete(d->pool, "pl", d->snap);
	return NULL;
}

static void
test_presync_holds_no_commit(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "prelogsync");
	write_blocks(&f, 1, 0, 16);
	static unsigned s1[NBLOCKS], s2[NBLOCKS];
	snap(&f, "s1");
	memcpy(s1, f.live, sizeof s1);
	write_blocks(&f, 2, 0, 2); /* copies into the pre-images s1 reads */
	snap(&f, "s2");
	memcpy(s2, f.live, sizeof s2);
	write_blocks(&f, 3, 2, 2); /* and into those s2 reads */
	flush(&f);

	/* The delete's early sync of a pre-image object is held up ... */
	sv_lock_or_abort(&wlock);
	hold_pre_sync = true;
	sv_unlock_or_abort(&wlock);
	struct deleter d = {.pool = f.pool, .snap = "s1", .rc = -2};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, delete_thread, &d), 0);
	sv_lock_or_abort(&wlock);
	while (!pre_sync_held)
		pthread_cond_wait(&wcond, &wlock);
	sv_unlock_or_abort(&wlock);
	/* ... and a first write (a copy, a commit) and a flush complete
	 * meanwhile: with the leader role held they would wait for it. */
	write_blocks(&f, 4, 8, 1);
	flush(&f);
	sv_lock_or_abort(&wlock);
	assert_true(pre_sync_held); /* still held: the write did not need it */
	pre_sync_held = false;
	pthread_cond_broadcast(&wcond);
	sv_unlock_or_abort(&wlock);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(d.rc, 0);
	assert_true(reads_as(f.pool, "pl@s2", s2));
	assert_true(reads_as(f.pool, "pl", f.live));

	/* Durable: the power goes, the pool is opened again. */
	crash_store_powerloss(f.st);
	sv_view_close(f.v);
	f.v = NULL;
	sv_pool_close(f.pool);
	assert_int_equal(sv_pool_open(f.dir, 0, &f.pool), 0);
	assert_false(reads_as(f.pool, "pl@s1", s1)); /* gone */
	assert_true(reads_as(f.pool, "pl@s2", s2));
	assert_true(reads_as(f.pool, "pl", f.live));
	close_fixture(&f);
}

/* ---- a failed early sync: as a failed checkpoint sync ---- */

static void
test_failed_presync(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "prelogfail");
	write_blocks(&f, 1, 0, 16);
	static unsigned s2[NBLOCKS];
	snap(&f, "s1");
	write_blocks(&f, 2, 0, 2); /* pre-images of epoch 1: s1 reads them */
	snap(&f, "s2");
	snap(&f, "s3");
	memcpy(s2, f.live, sizeof s2);
	write_blocks(&f, 3, 4, 2); /* pre-images of epoch 3: s2 and s3 read them */
	flush(&f);
	/* Deleting s3 checkpoints; its early sync of the first pre-image
	 * object (epoch 1's) fails: s1 can no longer be trusted. */
	sv_lock_or_abort(&wlock);
	fail_pre_sync = true;
	sv_unlock_or_abort(&wlock);
	assert_int_equal(sv_snapshot_delete(f.pool, "pl", "s3"), 0);
	sv_lock_or_abort(&wlock);
	assert_false(fail_pre_sync); /* it was tried */
	sv_unlock_or_abort(&wlock);
	struct sv_snapshot_info *info;
	size_t n;
	assert_int_equal(sv_snapshot_list(f.pool, "pl", &info, &n), 0);
	bool s1_invalid = false, s2_valid = false;
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(info[i].name, "s1"))
			s1_invalid = info[i].invalid;
		if (!strcmp(info[i].name, "s2"))
			s2_valid = !info[i].invalid;
	}
	free(info);
	assert_true(s1_invalid);
	assert_true(s2_valid);
	assert_true(reads_as(f.pool, "pl@s2", s2));
	assert_true(reads_as(f.pool, "pl", f.live));
	close_fixture(&f);
}

/* ---- rounds of create, copies and delete, then a power loss ---- */

static void
test_rounds_powerloss(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "prelogrounds");
	write_blocks(&f, 1, 0, 64);
	flush(&f);
	snap(&f, "a");
	static unsigned sa[NBLOCKS];
	memcpy(sa, f.live, sizeof sa);
	unsigned gen = 2;
	/* Each round: a create, copies (the log fills and checkpoints
	 * inline), and a delete that presyncs and retires epochs. */
	static unsigned model[8][NBLOCKS];
	for (unsigned r = 0; r < 24; r++) {
		char name[16];
		snprintf(name, sizeof name, "r%u", r);
		snap(&f, name);
		memcpy(model[r % 8], f.live, sizeof model[0]);
		for (uint64_t k = 0; k < 6; k++)
			write_blocks(&f, gen, (r * 7 + k * 13) % NBLOCKS, 1);
		gen++;
		if (r >= 2) {
			snprintf(name, sizeof name, "r%u", r - 2);
			assert_int_equal(sv_snapshot_delete(f.pool, "pl", name), 0);
		}
	}
	flush(&f);
	crash_store_powerloss(f.st);
	sv_view_close(f.v);
	f.v = NULL;
	sv_pool_close(f.pool);
	assert_int_equal(sv_pool_open(f.dir, 0, &f.pool), 0);
	assert_true(reads_as(f.pool, "pl@a", sa));
	assert_true(reads_as(f.pool, "pl@r22", model[22 % 8]));
	assert_true(reads_as(f.pool, "pl@r23", model[23 % 8]));
	assert_true(reads_as(f.pool, "pl", f.live));
	close_fixture(&f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_presync_holds_no_commit),
	    cmocka_unit_test(test_failed_presync),
	    cmocka_unit_test(test_rounds_powerloss),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
