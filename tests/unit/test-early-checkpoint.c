/*
 * test-early-checkpoint.c: the pre-image log's early checkpoint
 * (engine/journal.c, "The early checkpoint", session 9).
 *
 * Under sustained first writes the log used to fill, and the checkpoint
 * the committing leader then took inline held every commit while it
 * synced the log's worth of pre-image pages.  Now, once the log passes its
 * mark (5/8 of it by default; half here), a thread of the volume takes a checkpoint
 * that is not urgent: it syncs the pre-image objects without the leader
 * role, then checkpoints, and the log starts again before it is full.
 * What must hold:
 *   - the log past its mark and far from full, a pre-image object is
 *     synced with no snapshot delete, freeze or close asking for it (the
 *     test holds that sync in a wrapped obj_sync and waits for it: without
 *     the early checkpoint no pre-image sync comes until the log is full);
 *   - first writes (copies, commits) complete while that sync is held: it
 *     does not hold the leader role;
 *   - the checkpoint then completes (a new changed.meta), and the log's
 *     restart is durable: after a power loss every snapshot and the volume
 *     read as they did, with more first writes logged after it;
 *   - a failed sync there is handled as a delete's presync's: the
 *     snapshots reading the epoch are recorded invalid, the volume and
 *     the others go on and read right after a power loss;
 *   - when it loses the race (the log fills while its presync runs) the
 *     next one starts a step sooner;
 *   - SNAPVOL_PRELOG_EARLY=0 turns it off: then the first pre-image sync is
 *     the log-full checkpoint's (the same writes fill the log).
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
#include "internal.h"
#include "util.h"
#include "store-crash.h"
#include "testpool.h"
#include "prestore.h"

#define VOL_SIZE (UINT64_C(4) << 20)
#define BLOCK	 4096u
#define NBLOCKS	 (VOL_SIZE / BLOCK)
#define WAIT_S	 60 /* a bound on waiting for what must come; never a timing assertion */

/* Wait (wlock held) until *v reaches want or WAIT_S pass; true if it did. */
static bool
wait_for_locked(const unsigned *v, unsigned want)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_S;
	while (*v < want)
		if (pthread_cond_timedwait(&wcond, &wlock, &dl) == ETIMEDOUT)
			return *v >= want;
	return true;
}

static bool
wait_held(void)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_S;
	SV_LOCK_SCOPE(&wlock);
	while (!pre_sync_held)
		if (pthread_cond_timedwait(&wcond, &wlock, &dl) == ETIMEDOUT)
			return pre_sync_held;
	return true;
}

/* ---- a volume with a 64 KiB log ---- */

struct fixture {
	char dir[64];
	struct crash_ctl ctl;
	struct sv_store *st;
	struct sv_pool *pool;
	struct sv_view *v;
	unsigned live[NBLOCKS];
};

static void
open_fixture(struct fixture *f, const char *tag, const char *early)
{
	memset(f, 0, sizeof *f);
	assert_int_equal(test_mkdtemp(f->dir, tag, true), 0);
	assert_int_equal(crash_store_open(f->dir, true, &f->ctl, &f->st), 0);
	wrap_store(f->st);
	setenv("SNAPVOL_PRELOG_KB", "64", 1); /* read when the volume opens */
	if (early)
		setenv("SNAPVOL_PRELOG_EARLY", early, 1);
	assert_int_equal(sv_pool_open_store(f->st, f->dir, &f->pool), 0);
	assert_int_equal(sv_volume_create(f->pool, "ec", VOL_SIZE, 4096), 0);
	assert_int_equal(sv_view_open(f->pool, "ec", 2, &f->v), 0);
	unsetenv("SNAPVOL_PRELOG_KB");
	unsetenv("SNAPVOL_PRELOG_EARLY");
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

/* One first write of one block, landed: one commit, one log block of a
 * 4 KiB header and the 4 KiB pre-image (8 KiB of the 64 KiB log). */
static void
first_write(struct fixture *f, unsigned gen, uint64_t block)
{
	assert_int_equal(test_write_blocks(f->v, gen, block, 1, BLOCK, f->live), 0);
	int err = 0;
	assert_int_equal(sv_view_flush(f->v, &err), 0);
}

static void
snap(struct fixture *f, const char *name)
{
	char spec[64];
	snprintf(spec, sizeof spec, "ec@%s", name);
	const char *specs[] = {spec};
	assert_int_equal(sv_snapshot_create(f->pool, specs, 1, NULL), 0);
}

static bool
reads_as(struct sv_pool *pool, const char *name, const unsigned *gen)
{
	return test_reads_as(pool, name, gen, NBLOCKS, BLOCK);
}

/* ---- the log past its mark: a checkpoint with no one asking ---- */

static void
test_early_checkpoint(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "earlyckpt", "50");
	assert_int_equal(test_write_blocks(f.v, 1, 0, 64, BLOCK, f.live), 0);
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), 0);
	static unsigned s1[NBLOCKS];
	snap(&f, "s1");
	memcpy(s1, f.live, sizeof s1);
	sv_lock_or_abort(&wlock);
	hold_pre_sync = true;
	unsigned ckpts = changed_writes;
	sv_unlock_or_abort(&wlock);

	/* 5 blocks: 40 KiB, past the 32 KiB mark, 24 KiB short of full. */
	for (unsigned i = 0; i < 5; i++)
		first_write(&f, 2, i);
	assert_true(wait_held()); /* the early checkpoint's presync */

	/* Commits go on while it is held: 48 KiB, still not full. */
	first_write(&f, 3, 10);
	sv_lock_or_abort(&wlock);
	assert_true(pre_sync_held);
	assert_int_equal(changed_writes, ckpts); /* no checkpoint yet */
	pre_sync_held = false;
	pthread_cond_broadcast(&wcond);
	/* Then the checkpoint: a new changed.meta, the log restarted. */
	assert_true(wait_for_locked(&changed_writes, ckpts + 1));
	sv_unlock_or_abort(&wlock);
	assert_true(reads_as(f.pool, "ec@s1", s1));

	/* More first writes into the restarted log, a second snapshot's
	 * among them, then the power goes. */
	static unsigned s2[NBLOCKS];
	snap(&f, "s2");
	memcpy(s2, f.live, sizeof s2);
	for (unsigned i = 0; i < 3; i++)
		first_write(&f, 4, 20 + i);
	first_write(&f, 5, 0); /* s2's pre-image of a block s1 has too */
	assert_true(reads_as(f.pool, "ec@s1", s1));
	assert_true(reads_as(f.pool, "ec@s2", s2));
	crash_store_powerloss(f.st);
	sv_view_close(f.v);
	f.v = NULL;
	sv_pool_close(f.pool);
	assert_int_equal(sv_pool_open(f.dir, 0, &f.pool), 0);
	assert_true(reads_as(f.pool, "ec@s1", s1));
	assert_true(reads_as(f.pool, "ec@s2", s2));
	assert_true(reads_as(f.pool, "ec", f.live));
	close_fixture(&f);
}

/* ---- a failed sync in the early checkpoint: as a delete's presync ---- */

static bool
snap_invalid(struct sv_pool *pool, const char *name)
{
	struct sv_snapshot_info *info;
	size_t n;
	assert_int_equal(sv_snapshot_list(pool, "ec", &info, &n), 0);
	bool inv = false;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(info[i].name, name))
			inv = info[i].invalid;
	free(info);
	return inv;
}

static void
test_early_failed_sync(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "earlyfail", "50");
	assert_int_equal(test_write_blocks(f.v, 1, 0, 64, BLOCK, f.live), 0);
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), 0);
	snap(&f, "s1");
	sv_lock_or_abort(&wlock);
	fail_pre_sync = true;
	unsigned vw = volume_writes;
	sv_unlock_or_abort(&wlock);
	for (unsigned i = 0; i < 5; i++) /* past the mark */
		first_write(&f, 2, i);
	/* The early presync fails: s1, which reads those pre-images, is
	 * recorded invalid (volume.meta), and the volume goes on. */
	sv_lock_or_abort(&wlock);
	assert_true(wait_for_locked(&volume_writes, vw + 1));
	assert_false(fail_pre_sync);
	sv_unlock_or_abort(&wlock);
	assert_true(snap_invalid(f.pool, "s1"));
	static unsigned s2[NBLOCKS];
	snap(&f, "s2");
	memcpy(s2, f.live, sizeof s2);
	for (unsigned i = 0; i < 12; i++) /* fills the log at least once */
		first_write(&f, 3, 30 + i);
	assert_true(reads_as(f.pool, "ec@s2", s2));
	assert_true(reads_as(f.pool, "ec", f.live));
	crash_store_powerloss(f.st);
	sv_view_close(f.v);
	f.v = NULL;
	sv_pool_close(f.pool);
	assert_int_equal(sv_pool_open(f.dir, 0, &f.pool), 0);
	assert_true(snap_invalid(f.pool, "s1"));
	assert_true(reads_as(f.pool, "ec@s2", s2));
	assert_true(reads_as(f.pool, "ec", f.live));
	close_fixture(&f);
}

/* ---- a lost race lowers the mark ---- */

/* view.c's struct sv_view starts with its volume (test only). */
static struct sv_journal *
journal_of(struct sv_view *v)
{
	return &(*(struct sv_volume **)v)->journal;
}

struct writer {
	struct fixture *f;
	unsigned gen;
	uint64_t block;
};

static void *
writer_thread(void *arg)
{
	struct writer *w = arg;
	first_write(w->f, w->gen, w->block);
	return NULL;
}

/* The early presync is held while the log fills and a commit takes the
 * log-full checkpoint: the early checkpoint lost the race, so the next one
 * starts a step sooner (an eighth of the log: here after 3 blocks, where
 * the mark of half the log needs 4).  Without it no presync comes at 3. */
static void
test_early_mark_lowered(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "earlylost", "50");
	assert_int_equal(test_write_blocks(f.v, 1, 0, 64, BLOCK, f.live), 0);
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), 0);
	static unsigned s1[NBLOCKS];
	snap(&f, "s1");
	memcpy(s1, f.live, sizeof s1);
	sv_lock_or_abort(&wlock);
	hold_pre_sync = true;
	sv_unlock_or_abort(&wlock);
	for (unsigned i = 0; i < 5; i++) /* 40 KiB: past the mark */
		first_write(&f, 2, i);
	assert_true(wait_held());
	for (unsigned i = 5; i < 8; i++) /* 64 KiB: full, with no checkpoint */
		first_write(&f, 2, i);
	/* The next block needs the log-full checkpoint; its commit takes the
	 * leader role (then waits for the held presync's sync lock). */
	struct writer w = {.f = &f, .gen = 2, .block = 8};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, writer_thread, &w), 0);
	struct sv_journal *j = journal_of(f.v);
	bool leader = false;
	for (unsigned k = 0; k < WAIT_S * 1000 && !leader; k++) {
		sv_lock_or_abort(&j->lock);
		leader = j->leader;
		sv_unlock_or_abort(&j->lock);
		if (!leader)
			nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	}
	assert_true(leader);
	sv_lock_or_abort(&wlock);
	pre_sync_held = false;
	pthread_cond_broadcast(&wcond);
	sv_unlock_or_abort(&wlock);
	assert_int_equal(pthread_join(t, NULL), 0);
	/* Wait until the early thread is done with the lost one. */
	for (unsigned k = 0; k < WAIT_S * 1000; k++) {
		sv_lock_or_abort(&j->lock);
		bool due = j->early_due;
		sv_unlock_or_abort(&j->lock);
		if (!due)
			break;
		nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	}
	/* The log holds block 8's 8 KiB; two more reach 24 KiB, past the
	 * lowered mark (32 KiB - 8 KiB), short of the first one. */
	sv_lock_or_abort(&wlock);
	hold_pre_sync = true;
	sv_unlock_or_abort(&wlock);
	first_write(&f, 3, 9);
	first_write(&f, 3, 10);
	assert_true(wait_held());
	sv_lock_or_abort(&wlock);
	pre_sync_held = false;
	pthread_cond_broadcast(&wcond);
	sv_unlock_or_abort(&wlock);
	assert_true(reads_as(f.pool, "ec@s1", s1));
	assert_true(reads_as(f.pool, "ec", f.live));
	close_fixture(&f);
}

/* ---- off: the same writes sync no pre-image until the log is full ---- */

static void
test_early_off(void **state)
{
	(void)state;
	struct fixture f;
	open_fixture(&f, "earlyoff", "0");
	assert_int_equal(test_write_blocks(f.v, 1, 0, 64, BLOCK, f.live), 0);
	int err = 0;
	assert_int_equal(sv_view_flush(f.v, &err), 0);
	static unsigned s1[NBLOCKS];
	snap(&f, "s1");
	memcpy(s1, f.live, sizeof s1);
	sv_lock_or_abort(&wlock);
	unsigned syncs = pre_syncs;
	sv_unlock_or_abort(&wlock);
	for (unsigned i = 0; i < 7; i++) /* 56 KiB: not full */
		first_write(&f, 2, i);
	sv_lock_or_abort(&wlock);
	assert_int_equal(pre_syncs, syncs);
	sv_unlock_or_abort(&wlock);
	first_write(&f, 2, 7); /* 64 KiB: full at the next block */
	first_write(&f, 2, 8); /* the leader's checkpoint, inline */
	sv_lock_or_abort(&wlock);
	assert_true(pre_syncs > syncs);
	sv_unlock_or_abort(&wlock);
	assert_true(reads_as(f.pool, "ec@s1", s1));
	assert_true(reads_as(f.pool, "ec", f.live));
	close_fixture(&f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_early_checkpoint),
	    cmocka_unit_test(test_early_failed_sync),
	    cmocka_unit_test(test_early_mark_lowered),
	    cmocka_unit_test(test_early_off),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
