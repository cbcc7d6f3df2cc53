/*
 * pool.c: opening and closing a pool.
 *
 * Opening a pool takes its exclusive lock: one process (a server, or the
 * CLI working without one) owns a pool at a time, so two servers can never
 * write the same volume.  The lock is the store's (flock on a local pool).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

int
sv_pool_open(const char *spec, unsigned flags, struct sv_pool **out)
{
	struct sv_store *st;
	if (sv_store_open(spec, (flags & SV_POOL_CREATE) != 0, &st) == -1)
		return -1;
	return sv_pool_open_store(st, spec, out);
}

int
sv_pool_open_store(struct sv_store *st, const char *spec, struct sv_pool **out)
{
	const struct sv_store_ops *ops = sv_store_ops_of(st);
	if (ops->struct_size < sizeof(struct sv_store_ops)) {
		ops->close(st);
		return sv_error(ENOTSUP, "store backend %s is too old for this snapvol", ops->name);
	}
	sv_clear_error();
	if (ops->lock(st) == -1) {
		int e = errno;
		ops->close(st);
		if (e == EWOULDBLOCK && sv_last_errno() == EWOULDBLOCK)
			return -1; /* the store named the holder (a RADOS claim) */
		if (e == EWOULDBLOCK)
			return sv_error(
			    EWOULDBLOCK,
			    "pool %s is in use by another snapvol process (a server, or "
			    "another command working on it)",
			    spec);
		errno = e;
		return sv_error_errno("pool %s: cannot lock", spec);
	}
	struct sv_pool *pool = calloc(1, sizeof *pool);
	if (!pool) {
		ops->close(st);
		return sv_error(ENOMEM, "out of memory");
	}
	pool->st = st;
	pool->ops = ops;
	pthread_mutex_init(&pool->lock, NULL);
	if (sv_freezer_init(pool) == -1) {
		pthread_mutex_destroy(&pool->lock);
		free(pool);
		ops->close(st);
		return -1;
	}
	sv_wb_init(pool);
	sv_reclaim_init(pool);
	*out = pool;
	return 0;
}

void
sv_pool_close(struct sv_pool *pool)
{
	if (!pool)
		return;
	sv_freezer_shutdown(pool); /* thaws what is still frozen */
	sv_wb_shutdown(pool);	   /* then every acknowledged write lands */
	sv_lock_or_abort(&pool->lock);
	sv_volume_close_all_locked(pool);
	sv_unlock_or_abort(&pool->lock);
	sv_reclaim_shutdown(pool); /* stops between two steps; the trash stays */
	sv_wb_free(pool);
	pthread_mutex_destroy(&pool->lock);
	pool->ops->close(pool->st);
	free(pool);
}

const char *
sv_pool_describe(struct sv_pool *pool)
{
	return pool->ops->describe(pool->st);
}
