/*
 * reclaim.c: giving a removed object's space back in the background.
 *
 * When a snapshot is deleted, the pre-images no snapshot reads any more go
 * with it: often a whole epoch's pre-image object.  Its name is removed at
 * once (durably, before the delete returns), but the space comes back only
 * when the filesystem frees every extent of the file, and for a sparse
 * pre-image with tens of thousands of scattered chunks on a filesystem
 * mounted with "discard" that is one synchronous discard per extent:
 * measured here at 30-40 s for 16384 chunks.  Nobody should wait for that:
 * not the client that asked for the delete, not the snapshot creates queued
 * behind it on the volume's admin lock, and not a stop of the server.
 *
 * A store with a trash (obj_trash, trash_step: the file backend) moves the
 * object there (sv_epoch_retire), or a deleted volume whole (vol_trash,
 * sv_volume_delete: its origin is as slow to free), and one thread per
 * pool empties it a bounded step at a time (trash_step: at most 64 runs or
 * 1 MiB punched, then the empty file is unlinked), sleeping while it is
 * empty and woken by sv_reclaim_trashed.  The trash is durable: pool
 * close stops the thread between two steps and leaves the rest where it
 * is, so a stop waits for one step at most, no process is left behind,
 * and the next process to open the pool (a server, or a CLI command) goes
 * on where this one stopped; so does one after a crash.
 *
 * A store without one (RADOS, where removal is quick) hands the removed
 * object's last handle here instead; the thread closes handles in the
 * order they came, and pool close closes the rest in place.
 *
 * Nothing can reach a removed object any more (its name is gone and no
 * epoch holds it), so the order against anything else does not matter;
 * but the drop-snapshot policy, which gives a snapshot up because the
 * store is full, needs the space before it retries, and waits
 * (sv_reclaim_wait) until the handles are closed and the trash is empty.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"
#include "log.h"
#include "util.h"

struct sv_reclaim_item {
	struct sv_reclaim_item *next;
	struct sv_obj *obj;
};

static void *reclaimer(void *arg);

/* Start the thread if it is not running; under rc->lock.  False if it
 * cannot run (stopping, or no thread). */
static bool
start_locked(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	if (rc->stop)
		return false;
	if (!rc->started) {
		if (pthread_create(&rc->thread, NULL, reclaimer, pool) == 0)
			rc->started = true;
		else
			sv_log_warn("cannot start the space reclaimer; removed objects are "
				    "closed in place");
	}
	return rc->started;
}

void
sv_reclaim_init(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	pthread_mutex_init(&rc->lock, NULL);
	pthread_cond_init(&rc->cond, NULL);
	rc->head = rc->tail = NULL;
	rc->started = rc->stop = rc->busy = rc->trash = false;
	rc->trash_gen = 0;
	/* An earlier run's trash (a stop, a crash): go on freeing it. */
	uint64_t bytes = 0;
	if (pool->ops->trash_step && pool->ops->trash_step(pool->st, false, &bytes) == 1) {
		sv_log_debug("pool %s: %.1f MiB of removed objects left in the trash; freeing "
			     "them in the background",
			     sv_pool_describe(pool), (double)bytes / (1024.0 * 1024.0));
		SV_LOCK_SCOPE(&rc->lock);
		rc->trash = true;
		start_locked(pool);
	}
}

static void *
reclaimer(void *arg)
{
	struct sv_pool *pool = arg;
	struct sv_reclaim *rc = &pool->reclaim;
	bool warned = false;
	sv_lock_or_abort(&rc->lock);
	for (;;) {
		while (!rc->head && !rc->trash && !rc->stop)
			pthread_cond_wait(&rc->cond, &rc->lock);
		if (rc->stop)
			break; /* between two steps: the rest is for sv_reclaim_shutdown */
		rc->busy = true;
		struct sv_reclaim_item *it = rc->head;
		if (it) {
			rc->head = it->next;
			if (!rc->head)
				rc->tail = NULL;
			sv_unlock_or_abort(&rc->lock);
			sv_obj_ops_of(it->obj)->obj_close(it->obj);
			free(it);
			sv_lock_or_abort(&rc->lock);
		} else {
			unsigned gen = rc->trash_gen;
			sv_unlock_or_abort(&rc->lock);
			int r = pool->ops->trash_step(pool->st, true, NULL);
			int e = errno;
			sv_lock_or_abort(&rc->lock);
			if (r == -1 && !warned) {
				errno = e;
				sv_log_warn("pool %s: cannot free the trash: %m; trying again at "
					    "the next removal",
					    sv_pool_describe(pool));
				warned = true;
			}
			if (r == 1)
				warned = false;
			/* Empty (or failing): sleep, unless something came in
			 * since the step looked. */
			if (r != 1 && gen == rc->trash_gen)
				rc->trash = false;
		}
		rc->busy = false;
		pthread_cond_broadcast(&rc->cond); /* sv_reclaim_wait */
	}
	sv_unlock_or_abort(&rc->lock);
	return NULL;
}

void
sv_reclaim_close(struct sv_pool *pool, struct sv_obj *obj)
{
	struct sv_reclaim *rc = &pool->reclaim;
	struct sv_reclaim_item *it = malloc(sizeof *it);
	sv_lock_or_abort(&rc->lock);
	if (!it || !start_locked(pool)) {
		sv_unlock_or_abort(&rc->lock);
		free(it);
		sv_obj_ops_of(obj)->obj_close(obj); /* in place, slow but right */
		return;
	}
	it->obj = obj;
	it->next = NULL;
	*(rc->tail ? &rc->tail->next : &rc->head) = it;
	rc->tail = it;
	pthread_cond_broadcast(&rc->cond); /* one cond: work and idle */
	sv_unlock_or_abort(&rc->lock);
}

void
sv_reclaim_trashed(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	SV_LOCK_SCOPE(&rc->lock);
	rc->trash_gen++;
	rc->trash = true;
	/* Without a thread the trash waits for the next pool open. */
	if (start_locked(pool))
		pthread_cond_broadcast(&rc->cond);
}

void
sv_reclaim_wait(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	SV_LOCK_SCOPE(&rc->lock);
	while ((rc->head || rc->busy || rc->trash) && rc->started && !rc->stop)
		pthread_cond_wait(&rc->cond, &rc->lock);
}

void
sv_reclaim_shutdown(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	sv_lock_or_abort(&rc->lock);
	rc->stop = true;
	bool started = rc->started;
	pthread_cond_broadcast(&rc->cond);
	sv_unlock_or_abort(&rc->lock);
	if (started)
		pthread_join(rc->thread, NULL); /* at most one step */
	rc->started = false;
	while (rc->head) { /* handles: quick where a store has no trash */
		struct sv_reclaim_item *it = rc->head;
		rc->head = it->next;
		sv_obj_ops_of(it->obj)->obj_close(it->obj);
		free(it);
	}
	rc->tail = NULL;
	pthread_cond_destroy(&rc->cond);
	pthread_mutex_destroy(&rc->lock);
}
