/*
 * prestore.h: the crash store with its pre-image objects told apart, for
 * the tests of pre-image syncs outside the leader role (test-prelog-sync,
 * test-early-checkpoint).  The next pre-image sync can be held (until the
 * test lets it go) or failed; pre-image syncs and metadata writes are
 * counted, with wcond broadcast at each.  Everything under wlock.
 *
 * Header-only, like testpool.h: each unit test is one program.
 */
#ifndef SV_PRESTORE_H
#define SV_PRESTORE_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "store.h"
#include "util.h"

#define MAX_PRE 64

static struct sv_store_ops wrap_ops;
static const struct sv_store_ops *inner;
static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wcond = PTHREAD_COND_INITIALIZER;
static struct sv_obj *pre_objs[MAX_PRE]; /* open pre-image objects; wlock */
static bool hold_pre_sync;		 /* the next pre-image sync waits; wlock */
static bool pre_sync_held;		 /* one is waiting now; wlock */
static bool fail_pre_sync;		 /* the next pre-image sync fails (EIO); wlock */
static unsigned pre_syncs;		 /* pre-image syncs begun; wlock */
static unsigned changed_writes;		 /* changed.meta written (checkpoints); wlock */
static unsigned volume_writes;		 /* volume.meta written; wlock */

static bool
is_pre_locked(struct sv_obj *o)
{
	for (size_t i = 0; i < MAX_PRE; i++)
		if (pre_objs[i] == o)
			return true;
	return false;
}

static int
w_open(struct sv_store *st, const char *vol, const char *obj, uint64_t size, unsigned flags,
       struct sv_obj **out)
{
	int r = inner->obj_open(st, vol, obj, size, flags, out);
	if (r == 0 && !strncmp(obj, "pre-", 4)) {
		SV_LOCK_SCOPE(&wlock);
		for (size_t i = 0; i < MAX_PRE; i++)
			if (!pre_objs[i]) {
				pre_objs[i] = *out;
				break;
			}
	}
	return r;
}

static void
w_close(struct sv_obj *o)
{
	sv_lock_or_abort(&wlock);
	for (size_t i = 0; i < MAX_PRE; i++)
		if (pre_objs[i] == o)
			pre_objs[i] = NULL;
	sv_unlock_or_abort(&wlock);
	inner->obj_close(o);
}

static int
w_sync(struct sv_obj *o)
{
	sv_lock_or_abort(&wlock);
	bool pre = is_pre_locked(o);
	if (pre) {
		pre_syncs++;
		pthread_cond_broadcast(&wcond);
	}
	if (pre && fail_pre_sync) {
		fail_pre_sync = false;
		sv_unlock_or_abort(&wlock);
		errno = EIO;
		return -1;
	}
	if (pre && hold_pre_sync) {
		hold_pre_sync = false;
		pre_sync_held = true;
		pthread_cond_broadcast(&wcond);
		while (pre_sync_held)
			pthread_cond_wait(&wcond, &wlock);
	}
	sv_unlock_or_abort(&wlock);
	return inner->obj_sync(o);
}

static int
w_meta_write(struct sv_store *st, const char *vol, const char *key, const void *buf, size_t len)
{
	int r = inner->meta_write(st, vol, key, buf, len);
	if (r == 0) {
		SV_LOCK_SCOPE(&wlock);
		if (!strcmp(key, "changed.meta"))
			changed_writes++;
		if (!strcmp(key, "volume.meta"))
			volume_writes++;
		pthread_cond_broadcast(&wcond);
	}
	return r;
}

/* Forget the last test's state and swap the crash store's table for the
 * wrapping one (its functions never look at that pointer, as
 * test-presync.c does). */
static void
wrap_store(struct sv_store *st)
{
	memset(pre_objs, 0, sizeof pre_objs);
	hold_pre_sync = pre_sync_held = fail_pre_sync = false;
	pre_syncs = changed_writes = volume_writes = 0;
	inner = sv_store_ops_of(st);
	wrap_ops = *inner;
	wrap_ops.obj_open = w_open;
	wrap_ops.obj_close = w_close;
	wrap_ops.obj_sync = w_sync;
	wrap_ops.meta_write = w_meta_write;
	((struct sv_store_base *)st)->ops = &wrap_ops;
}

#endif
