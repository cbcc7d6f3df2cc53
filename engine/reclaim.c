/*
 * reclaim.c: giving a removed object's space back in the background.
 *
 * When a snapshot is deleted, the pre-images no snapshot reads any more go
 * with it: often a whole epoch's pre-image object.  Its name is removed at
 * once (durably, before the delete returns), but the space comes back only
 * when the last descriptor of the file is closed, and then the filesystem
 * frees every extent: for a sparse pre-image with tens of thousands of
 * scattered chunks on a filesystem mounted with "discard", that is one
 * discard per extent, measured here at 30-40 s for 16384 chunks.  Nobody
 * should wait for that: not the client that asked for the delete, and not
 * the snapshot creates queued behind it on the volume's admin lock.
 *
 * So the unlinked object's last handle is handed to one thread per pool,
 * which closes handles in the order they came; the kernel does the rest.
 * Nothing can reach the object any more (its name is gone and no epoch
 * holds it), so the order against anything else does not matter; but the
 * drop-snapshot policy, which gives a snapshot up because the store is
 * full, needs the space before it retries, and waits (sv_reclaim_wait).  Pool
 * close waits for the queue, so every space is given back before the pool
 * is, and a process that dies first loses nothing: the kernel closes the
 * descriptors at exit the same way.
 */
#include <stdlib.h>

#include "internal.h"
#include "log.h"
#include "util.h"

struct sv_reclaim_item {
	struct sv_reclaim_item *next;
	struct sv_obj *obj;
};

void
sv_reclaim_init(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	pthread_mutex_init(&rc->lock, NULL);
	pthread_cond_init(&rc->cond, NULL);
	rc->head = rc->tail = NULL;
	rc->started = rc->stop = rc->busy = false;
}

static void *
reclaimer(void *arg)
{
	struct sv_reclaim *rc = arg;
	sv_lock_or_abort(&rc->lock);
	for (;;) {
		while (!rc->head && !rc->stop)
			pthread_cond_wait(&rc->cond, &rc->lock);
		struct sv_reclaim_item *it = rc->head;
		if (!it)
			break; /* stopping, and nothing is left */
		rc->head = it->next;
		if (!rc->head)
			rc->tail = NULL;
		rc->busy = true;
		sv_unlock_or_abort(&rc->lock);
		sv_obj_ops_of(it->obj)->obj_close(it->obj);
		free(it);
		sv_lock_or_abort(&rc->lock);
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
	if (it && !rc->stop && !rc->started) {
		if (pthread_create(&rc->thread, NULL, reclaimer, rc) == 0)
			rc->started = true;
		else
			sv_log_warn("cannot start the space reclaimer; removed objects are "
				    "closed in place");
	}
	if (!it || !rc->started || rc->stop) {
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
sv_reclaim_wait(struct sv_pool *pool)
{
	struct sv_reclaim *rc = &pool->reclaim;
	SV_LOCK_SCOPE(&rc->lock);
	while (rc->head || rc->busy)
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
		pthread_join(rc->thread, NULL);
	rc->started = false;
	pthread_cond_destroy(&rc->cond);
	pthread_mutex_destroy(&rc->lock);
}
