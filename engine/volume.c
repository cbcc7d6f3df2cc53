/*
 * volume.c: creating, describing, deleting and opening volumes.
 *
 * A volume is its metadata blob (volume.meta: name, size, chunk size,
 * creation time) and its origin object (the raw image).  It exists once its
 * metadata exists: create makes the namespace and the origin first and
 * writes the metadata last, delete removes the metadata first, so a crash in
 * the middle of either leaves at worst a namespace without metadata, which
 * listing ignores and a later create of the same name cleans up.  Where the
 * store has a trash (the file store's vol_trash), delete instead moves the
 * whole volume there in one step, and the pool's reclaim thread frees it:
 * a crash leaves the volume whole or in the trash.
 *
 * Open volumes are shared by every view on them (multi-conn NBD clients
 * write through one descriptor, so a flush on any covers all) and
 * reference-counted under pool->lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define VOLUME_FORMAT  "snapvol-volume"
#define VOLUME_VERSION 1

static void volume_close(struct sv_volume *v);

/* A volume's claim, on a pool several servers share (a RADOS pool): held
 * while the volume is open here, and around a create or delete, so that
 * only one node writes a volume at a time.  A no-op where the pool's own
 * lock covers every volume (the store has no vol_claim). */
static int
claim_volume(struct sv_pool *pool, const char *name)
{
	return pool->ops->vol_claim ? pool->ops->vol_claim(pool->st, name) : 0;
}

static void
release_volume(struct sv_pool *pool, const char *name)
{
	if (pool->ops->vol_release)
		pool->ops->vol_release(pool->st, name);
}

static int
check_geometry(uint64_t size, uint32_t chunk_size)
{
	char b1[32], b2[32];
	if (size == 0)
		return sv_error(EINVAL, "volume size must be greater than 0");
	if (size % 512)
		return sv_error(EINVAL, "volume size %" PRIu64 " is not a multiple of 512 bytes",
				size);
	if (size > SV_VOLUME_MAX_SIZE)
		return sv_error(EINVAL, "volume size %s is larger than the maximum %s",
				sv_format_size(size, b1, sizeof b1),
				sv_format_size(SV_VOLUME_MAX_SIZE, b2, sizeof b2));
	if (!sv_is_power_of_2(chunk_size) || chunk_size < SV_CHUNK_MIN || chunk_size > SV_CHUNK_MAX)
		return sv_error(EINVAL,
				"chunk size %" PRIu32 " must be a power of 2 from 4 KiB to 1 MiB",
				chunk_size);
	/* Change bitmaps index chunks with 32 bits. */
	if ((size + chunk_size - 1) / chunk_size > (UINT64_C(1) << 32))
		return sv_error(
		    EINVAL,
		    "volume size %s is too large for chunk size %s: at most 2^32 chunks "
		    "(use a larger chunk size)",
		    sv_format_size(size, b1, sizeof b1), sv_format_size(chunk_size, b2, sizeof b2));
	return 0;
}

int
sv_volume_meta_parse(json_t *body, const char *name, struct sv_volume_meta *m)
{
	const char *format = json_string_value(json_object_get(body, "format"));
	json_t *ver = json_object_get(body, "version");
	json_t *jname = json_object_get(body, "name");
	json_t *size = json_object_get(body, "size");
	json_t *chunk = json_object_get(body, "chunk_size");
	json_t *created = json_object_get(body, "created");
	if (!format || strcmp(format, VOLUME_FORMAT) != 0)
		return sv_error(EUCLEAN, "volume %s: metadata is not a volume's", name);
	if (!json_is_integer(ver) || json_integer_value(ver) != VOLUME_VERSION)
		return sv_error(EUCLEAN,
				"volume %s: metadata version %" JSON_INTEGER_FORMAT
				" is not supported by this snapvol (it reads version %d)",
				name, json_integer_value(ver), VOLUME_VERSION);
	if (!json_is_string(jname) || strcmp(json_string_value(jname), name) != 0)
		return sv_error(EUCLEAN, "volume %s: metadata names another volume", name);
	if (!json_is_integer(size) || !json_is_integer(chunk) || !json_is_integer(created) ||
	    json_integer_value(size) <= 0 || json_integer_value(chunk) <= 0 ||
	    json_integer_value(created) < 0)
		return sv_error(EUCLEAN, "volume %s: metadata has a bad size, chunk size or time",
				name);
	m->size = (uint64_t)json_integer_value(size);
	m->chunk_size = (uint32_t)json_integer_value(chunk);
	m->created = (uint64_t)json_integer_value(created);
	if (check_geometry(m->size, m->chunk_size) == -1) {
		sv_error_prefix("volume %s: metadata", name);
		return -1;
	}
	return 0;
}

static int
load_meta(struct sv_pool *pool, const char *name, struct sv_volume_meta *m)
{
	json_t *body;
	if (sv_meta_load(pool, name, SV_META_VOLUME, &body) == -1) {
		if (sv_last_errno() == ENOENT)
			return sv_error(ENOENT, "volume %s does not exist", name);
		return -1;
	}
	int r = sv_volume_meta_parse(body, name, m);
	json_decref(body);
	return r;
}

static int
create_claimed_locked(struct sv_pool *pool, const char *name, uint64_t size, uint32_t chunk_size)
{
	const struct sv_store_ops *ops = pool->ops;
	if (ops->vol_create(pool->st, name) == -1) {
		if (errno != EEXIST)
			return sv_error_errno("volume %s: cannot create", name);
		/* A namespace without metadata is the leftover of a crashed create
		 * or delete: clean it up.  With metadata, the volume exists. */
		json_t *body;
		if (sv_meta_load(pool, name, SV_META_VOLUME, &body) == 0) {
			json_decref(body);
			return sv_error(EEXIST, "volume %s already exists", name);
		}
		if (sv_last_errno() != ENOENT)
			return sv_error(EEXIST, "volume %s already exists (%s)", name,
					sv_last_error());
		sv_log_warn("volume %s: removing the leftovers of an unfinished create or delete",
			    name);
		/* Into the trash where there is one: an older snapvol's
		 * interrupted delete may have left a whole origin. */
		int r = ops->vol_trash ? ops->vol_trash(pool->st, name)
				       : ops->vol_remove(pool->st, name);
		if (r == -1 || ops->vol_create(pool->st, name) == -1)
			return sv_error_errno("volume %s: cannot create", name);
		if (ops->vol_trash)
			sv_reclaim_trashed(pool);
	}
	struct sv_obj *origin;
	if (ops->obj_open(pool->st, name, SV_OBJ_ORIGIN, size, SV_OBJ_CREATE | SV_OBJ_EXCL,
			  &origin) == -1) {
		sv_error_errno("volume %s: cannot create its data", name);
		goto undo;
	}
	ops->obj_close(origin);

	json_t *body =
	    json_pack("{s:s, s:i, s:s, s:I, s:I, s:I}", "format", VOLUME_FORMAT, "version",
		      VOLUME_VERSION, "name", name, "size", (json_int_t)size, "chunk_size",
		      (json_int_t)chunk_size, "created", (json_int_t)sv_realtime_s());
	if (!body) {
		sv_error(ENOMEM, "out of memory");
		goto undo;
	}
	int r = sv_meta_store(pool, name, SV_META_VOLUME, body);
	json_decref(body);
	if (r == -1)
		goto undo;
	return 0;
undo:;
	int e = sv_last_errno();
	char msg[1024];
	strncpy(msg, sv_last_error(), sizeof msg - 1);
	msg[sizeof msg - 1] = '\0';
	ops->vol_remove(pool->st, name);
	return sv_error(e, "%s", msg);
}

int
sv_volume_create(struct sv_pool *pool, const char *name, uint64_t size, uint32_t chunk_size)
{
	if (chunk_size == 0)
		chunk_size = SV_CHUNK_DEFAULT;
	if (sv_check_name(name, "volume") == -1 || check_geometry(size, chunk_size) == -1)
		return -1;
	SV_LOCK_SCOPE(&pool->lock);
	if (claim_volume(pool, name) == -1)
		return -1;
	int r = create_claimed_locked(pool, name, size, chunk_size);
	release_volume(pool, name);
	return r;
}

static struct sv_volume *
find_open_locked(struct sv_pool *pool, const char *name)
{
	for (struct sv_volume *v = pool->open; v; v = v->next)
		if (!strcmp(v->name, name))
			return v;
	return NULL;
}

static int delete_claimed_locked(struct sv_pool *pool, const char *name, struct sv_volume *v);

int
sv_volume_delete(struct sv_pool *pool, const char *name)
{
	if (sv_check_name(name, "volume") == -1)
		return -1;
	SV_LOCK_SCOPE(&pool->lock);
	struct sv_volume *v = find_open_locked(pool, name);
	if (v && v->refs)
		return sv_error(EBUSY, "volume %s is in use by %u connection%s", name, v->refs,
				v->refs == 1 ? "" : "s");
	if (claim_volume(pool, name) == -1)
		return -1;
	int r = delete_claimed_locked(pool, name, v);
	release_volume(pool, name);
	return r;
}

static int
delete_claimed_locked(struct sv_pool *pool, const char *name, struct sv_volume *v)
{
	struct sv_volume_meta m;
	if (load_meta(pool, name, &m) == -1)
		return -1;
	if (v) {
		for (struct sv_volume **pp = &pool->open; *pp; pp = &(*pp)->next) {
			if (*pp == v) {
				*pp = v->next;
				break;
			}
		}
		volume_close(v);
	}
	if (pool->ops->vol_trash) {
		/* The whole volume into the pool's trash at once, freed in the
		 * background (reclaim.c): a large origin or pre-image takes
		 * seconds to minutes to free, which nobody waits for. */
		if (pool->ops->vol_trash(pool->st, name) == -1)
			return sv_error_errno("volume %s: cannot delete", name);
		sv_reclaim_trashed(pool);
		return 0;
	}
	if (pool->ops->meta_remove(pool->st, name, SV_META_VOLUME) == -1)
		return sv_error_errno("volume %s: cannot delete", name);
	if (pool->ops->vol_remove(pool->st, name) == -1)
		sv_log_warn("volume %s: deleted, but some of its files remain: %m", name);
	return 0;
}

static int
fill_info_locked(struct sv_pool *pool, const char *name, struct sv_volume_info *info)
{
	struct sv_volume_meta m;
	if (load_meta(pool, name, &m) == -1)
		return -1;
	memset(info, 0, sizeof *info);
	snprintf(info->name, sizeof info->name, "%s", name);
	info->size = m.size;
	info->chunk_size = m.chunk_size;
	info->created = m.created;
	struct sv_volume *v = find_open_locked(pool, name);
	info->open_views = v ? v->refs : 0;
	info->held = v != NULL;
	struct sv_obj *o = v ? v->origin : NULL;
	bool opened = false;
	if (!o) {
		if (pool->ops->obj_open(pool->st, name, SV_OBJ_ORIGIN, m.size, SV_OBJ_RDONLY, &o) ==
		    -1)
			return sv_error_errno("volume %s: cannot open its data", name);
		opened = true;
	}
	int r = pool->ops->obj_allocated(o, &info->allocated);
	if (opened)
		pool->ops->obj_close(o);
	if (r == -1)
		return sv_error_errno("volume %s: cannot measure its data", name);
	if (pool->ops->obj_locate(pool->st, name, SV_OBJ_ORIGIN, info->origin_path,
				  sizeof info->origin_path) == -1)
		info->origin_path[0] = '\0';
	/* Snapshot figures come from the metadata, without opening (and so
	 * loading) the volume; its pre-image objects are measured directly. */
	json_t *body;
	snprintf(info->full_policy, sizeof info->full_policy, "fail-writes");
	if (sv_meta_load(pool, name, SV_META_VOLUME, &body) == 0) {
		const char *fp = json_string_value(json_object_get(body, "full_policy"));
		if (fp)
			snprintf(info->full_policy, sizeof info->full_policy, "%s", fp);
		size_t i;
		json_t *js;
		json_array_foreach(json_object_get(body, "snapshots"), i,
				   js) if (!json_is_true(json_object_get(js, "invalid")))
		    info->snapshots++;
		json_decref(body);
	}
	info->snapshot_space = 0;
	if (v) {
		/* Epoch structs outlive their use (the graveyard), so the
		 * pointers copied here stay valid. */
		sv_lock_or_abort(&v->cow_lock);
		size_t ne = v->n_epochs;
		struct sv_epoch **eps = malloc((ne ? ne : 1) * sizeof *eps);
		if (eps)
			memcpy(eps, v->epochs, ne * sizeof *eps);
		/* Native pre-images are the cluster's clones, which the store
		 * does not measure: count the chunks the epochs hold. */
		for (size_t i = 0; v->native_pre && i < ne; i++)
			info->snapshot_space +=
			    roaring_bitmap_get_cardinality(v->epochs[i]->changed) << v->chunk_shift;
		if (v->native_pre)
			ne = 0;
		sv_unlock_or_abort(&v->cow_lock);
		for (size_t i = 0; eps && i < ne; i++) {
			uint64_t b;
			sv_lock_or_abort(&v->pre_lock);
			if (eps[i]->pre && v->ops->obj_allocated(eps[i]->pre, &b) == 0)
				info->snapshot_space += b;
			sv_unlock_or_abort(&v->pre_lock);
		}
		free(eps);
	}
	return 0;
}

int
sv_volume_info(struct sv_pool *pool, const char *name, struct sv_volume_info *info)
{
	if (sv_check_name(name, "volume") == -1)
		return -1;
	SV_LOCK_SCOPE(&pool->lock);
	return fill_info_locked(pool, name, info);
}

static int
cmp_info(const void *a, const void *b)
{
	return strcmp(((const struct sv_volume_info *)a)->name,
		      ((const struct sv_volume_info *)b)->name);
}

int
sv_volume_list(struct sv_pool *pool, struct sv_volume_info **infos, size_t *n)
{
	SV_LOCK_SCOPE(&pool->lock);
	char **names;
	size_t cnt;
	if (pool->ops->vol_list(pool->st, &names, &cnt) == -1)
		return sv_error_errno("pool %s: cannot list volumes", sv_pool_describe(pool));
	struct sv_volume_info *out = calloc(cnt ? cnt : 1, sizeof *out);
	size_t k = 0;
	int rc = out ? 0 : sv_error(ENOMEM, "out of memory");
	for (size_t i = 0; i < cnt; i++) {
		if (rc == 0) {
			sv_clear_error();
			if (sv_check_name(names[i], "volume") == -1) {
				/* not ours: ignore */
			} else if (fill_info_locked(pool, names[i], &out[k]) == 0) {
				k++;
			} else if (sv_last_errno() != ENOENT) {
				/* damaged: say so, but list the others */
				sv_log_warn("%s", sv_last_error());
			}
		}
		free(names[i]);
	}
	free(names);
	if (rc == -1)
		return -1;
	qsort(out, k, sizeof *out, cmp_info);
	*infos = out;
	*n = k;
	return 0;
}

/* Tear down an open volume: checkpoint its bitmaps (so the next open
 * replays nothing), close everything.  No views may be open. */
static void
volume_close(struct sv_volume *v)
{
	if (v->landing)
		sv_wb_drain(v);
	sv_writeback_stop(v);
	if (v->journal.obj && sv_journal_checkpoint(v) == -1)
		sv_log_warn("%s", sv_last_error()); /* it names the volume */
	if (v->ops->obj_sync(v->origin) == -1)
		sv_log_error("volume %s: sync at close: %m", v->name);
	sv_journal_close(v);
	sv_snap_state_free(v);
	v->ops->obj_close(v->origin);
	release_volume(v->pool, v->name);
	sv_volume_fini_struct(v);
	free(v);
}

/* Load a volume's snapshot state: volume.meta's snapshots, the last
 * checkpoint of the bitmaps and the journal after it; drop what no
 * snapshot needs; start a new journal generation; finish a rollback. */
static int
volume_load(struct sv_volume *v, json_t *body)
{
	if (sv_snap_state_load(v, body) == -1 || sv_snap_released_load(v) == -1 ||
	    sv_journal_open(v) == -1 || sv_journal_load(v, body) == -1)
		return -1;
	struct sv_epoch **dropped;
	size_t nd;
	sv_lock_or_abort(&v->cow_lock);
	sv_snap_refresh_current_locked(v);
	sv_snap_gc_locked(v, true, &dropped, &nd);
	sv_unlock_or_abort(&v->cow_lock);
	for (size_t i = 0; i < nd; i++)
		sv_epoch_retire(v, dropped[i]);
	free(dropped);
	if (sv_journal_checkpoint(v) == -1) {
		/* A full store must not make the volume and its snapshots
		 * unreadable, nor block the deletes that would free space: go on
		 * with the journal as replayed, and take the checkpoint before
		 * the first new record (journal.c), so no record is ever written
		 * into an old generation. */
		int e = sv_last_errno();
		if (e != ENOSPC && e != EDQUOT)
			return -1;
		sv_log_warn("%s; the checkpoint waits for the next copy", sv_last_error());
		v->journal.must_checkpoint = true;
	}
	if (v->rollback_to[0] && sv_snap_finish_rollback(v) == -1)
		return -1;
	return 0;
}

/* The fields every volume struct starts with (an open volume's, and a
 * follower's: follow.c), from its volume.meta. */
void
sv_volume_init_struct(struct sv_volume *v, struct sv_pool *pool, const char *name,
		      const struct sv_volume_meta *m)
{
	v->pool = pool;
	v->ops = pool->ops;
	snprintf(v->name, sizeof v->name, "%s", name);
	v->size = m->size;
	v->chunk_size = m->chunk_size;
	v->chunk_shift = (unsigned)__builtin_ctz(m->chunk_size);
	v->nchunks = (m->size + m->chunk_size - 1) >> v->chunk_shift;
	v->created = m->created;
	pthread_mutex_init(&v->admin_lock, NULL);
	pthread_mutex_init(&v->pre_lock, NULL);
	pthread_mutex_init(&v->meta_lock, NULL);
	pthread_mutex_init(&v->cow_lock, NULL);
	pthread_cond_init(&v->cow_cond, NULL);
	v->inflight = roaring_bitmap_create();
	v->landing = roaring_bitmap_create();
}

/* Undo sv_volume_init_struct (and free the landing table, cow.c). */
void
sv_volume_fini_struct(struct sv_volume *v)
{
	if (v->inflight)
		roaring_bitmap_free(v->inflight);
	if (v->landing)
		roaring_bitmap_free(v->landing);
	free(v->lcount);
	pthread_mutex_destroy(&v->admin_lock);
	pthread_mutex_destroy(&v->pre_lock);
	pthread_mutex_destroy(&v->meta_lock);
	pthread_mutex_destroy(&v->cow_lock);
	pthread_cond_destroy(&v->cow_cond);
}

int
sv_volume_get_locked(struct sv_pool *pool, const char *name, struct sv_volume **out)
{
	struct sv_volume *v = find_open_locked(pool, name);
	if (v) {
		v->refs++;
		*out = v;
		return 0;
	}
	/* The claim first, so the metadata read is the last holder's final word. */
	if (claim_volume(pool, name) == -1)
		return -1;
	json_t *body;
	if (sv_meta_load(pool, name, SV_META_VOLUME, &body) == -1) {
		release_volume(pool, name);
		if (sv_last_errno() == ENOENT)
			return sv_error(ENOENT, "volume %s does not exist", name);
		return -1;
	}
	struct sv_volume_meta m;
	if (sv_volume_meta_parse(body, name, &m) == -1) {
		release_volume(pool, name);
		json_decref(body);
		return -1;
	}
	v = calloc(1, sizeof *v);
	if (!v) {
		release_volume(pool, name);
		json_decref(body);
		return sv_error(ENOMEM, "out of memory");
	}
	if (pool->ops->obj_open(pool->st, name, SV_OBJ_ORIGIN, m.size, 0, &v->origin) == -1) {
		sv_error_errno("volume %s: cannot open its data", name);
		release_volume(pool, name);
		free(v);
		json_decref(body);
		return -1;
	}
	sv_volume_init_struct(v, pool, name, &m);
	v->native_pre = sv_store_native_pre(pool->ops, pool->st, name);
	sv_writeback_init(v);
	int r = volume_load(v, body);
	json_decref(body);
	if (r == 0 && v->native_pre) {
		/* Opening the origin preserved into every pre-image object the
		 * volume has (store.h, obj_preserve): the last life's calls hold. */
		SV_LOCK_SCOPE(&v->cow_lock);
		for (size_t i = 0; i < v->n_epochs; i++)
			v->epochs[i]->preserved = true;
	}
	if (r == -1) {
		int e = sv_last_errno();
		char msg[1024];
		snprintf(msg, sizeof msg, "%s", sv_last_error());
		if (v->journal.obj) { /* close without a checkpoint of half a state */
			v->ops->obj_close(v->journal.obj);
			v->journal.obj = NULL;
		}
		volume_close(v);
		return sv_error(e, "%s", msg);
	}
	v->refs = 1;
	v->next = pool->open;
	pool->open = v;
	*out = v;
	return 0;
}

void
sv_volume_put_locked(struct sv_volume *vol)
{
	/* The volume stays open (its state loaded) until the pool is closed
	 * or the volume deleted: connections come and go often. */
	vol->refs--;
}

void
sv_volume_close_all_locked(struct sv_pool *pool)
{
	struct sv_volume *v = pool->open;
	while (v) {
		struct sv_volume *next = v->next;
		if (v->refs)
			sv_log_warn("volume %s: closing with %u views still open", v->name,
				    v->refs);
		volume_close(v);
		v = next;
	}
	pool->open = NULL;
}

int
sv_volume_save_meta(struct sv_volume *vol)
{
	json_t *body = json_pack("{s:s, s:i, s:s, s:I, s:I, s:I}", "format", VOLUME_FORMAT,
				 "version", VOLUME_VERSION, "name", vol->name, "size",
				 (json_int_t)vol->size, "chunk_size", (json_int_t)vol->chunk_size,
				 "created", (json_int_t)vol->created);
	if (!body)
		return sv_error(ENOMEM, "out of memory");
	SV_LOCK_SCOPE(&vol->meta_lock);
	sv_lock_or_abort(&vol->cow_lock);
	json_t *st = sv_snap_state_json_locked(vol);
	sv_unlock_or_abort(&vol->cow_lock);
	json_object_update(body, st);
	json_decref(st);
	int r = sv_meta_store(vol->pool, vol->name, SV_META_VOLUME, body);
	json_decref(body);
	return r;
}

int
sv_volume_cow_stats(struct sv_pool *pool, const char *name, struct sv_cow_stats *st)
{
	if (sv_check_name(name, "volume") == -1)
		return -1;
	struct sv_volume *v;
	SV_LOCK_SCOPE(&pool->lock);
	if (sv_volume_get_locked(pool, name, &v) == -1)
		return -1;
	sv_lock_or_abort(&v->cow_lock);
	st->epoch = sv_current_epoch_locked(v)->id;
	st->snapshots = v->n_snaps;
	st->copies = v->stat_copies;
	st->copied_bytes = v->stat_copied_bytes;
	sv_unlock_or_abort(&v->cow_lock);
	sv_lock_or_abort(&v->journal.lock);
	st->journal_commits = v->journal.syncs;
	sv_unlock_or_abort(&v->journal.lock);
	sv_volume_put_locked(v);
	return 0;
}

int
sv_volume_set_policy(struct sv_pool *pool, const char *name, const char *policy)
{
	if (strcmp(policy, "fail-writes") && strcmp(policy, "drop-snapshot"))
		return sv_error(EINVAL,
				"full policy must be 'fail-writes' or 'drop-snapshot', not '%s'",
				policy);
	if (sv_check_name(name, "volume") == -1)
		return -1;
	struct sv_volume *v;
	sv_lock_or_abort(&pool->lock);
	int r = sv_volume_get_locked(pool, name, &v);
	sv_unlock_or_abort(&pool->lock);
	if (r == -1)
		return -1;
	sv_lock_or_abort(&v->admin_lock);
	sv_lock_or_abort(&v->cow_lock);
	bool old = v->drop_when_full;
	v->drop_when_full = !strcmp(policy, "drop-snapshot");
	sv_unlock_or_abort(&v->cow_lock);
	r = sv_volume_save_meta(v);
	if (r == -1) {
		sv_lock_or_abort(&v->cow_lock);
		v->drop_when_full = old;
		sv_unlock_or_abort(&v->cow_lock);
	}
	sv_unlock_or_abort(&v->admin_lock);
	sv_lock_or_abort(&pool->lock);
	sv_volume_put_locked(v);
	sv_unlock_or_abort(&pool->lock);
	return r;
}
