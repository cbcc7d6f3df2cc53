/*
 * check.c: verifying a pool offline ("snapvol check [--repair]").
 *
 * Opening a volume already repairs what a crash leaves behind (the journal
 * is replayed and checkpointed, epochs no snapshot needs are dropped, an
 * interrupted rollback is finished), so a check is about what that does not
 * see or must not touch silently: damaged metadata (a checksum that does
 * not match, JSON that does not parse, bitmaps naming chunks past the end),
 * an origin of the wrong size, pre-image space that no record names
 * (copies a crash cut short before their record was durable: harmless but
 * wasted), pre-image objects of epochs no metadata knows, work a crash
 * left pending, and snapshots recorded invalid (their pre-images could not
 * be kept: a failed sync of them, or dropped when the store was full):
 * those are warnings (the record is right, and the snapshot cannot be
 * read; deleting it is the user's call), never repaired.
 *
 * Without repair nothing is written: the volume's state is loaded into a
 * private struct with the same functions the real open uses (so the check
 * and the server can never disagree about what is valid), minus the
 * checkpoint and the clean-up.  With repair, the wasted space is punched,
 * unknown pre-image objects are removed (into the pool's trash, where the
 * store has one: freed in the background, and like every file there not
 * an object of any volume), and then the volume is opened
 * the ordinary way, which replays, checkpoints and finishes what is
 * pending.  Damaged metadata is reported, never "repaired" by guessing:
 * a wrong guess would make a snapshot read wrong data silently.  A volume
 * directory without metadata (an interrupted create) is a warning; repair
 * moves it to the trash.
 *
 * The pool must not be served meanwhile: the caller holds the pool's lock
 * (a server holds it while it runs), so nothing changes under the check.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

struct checker {
	struct sv_pool *pool;
	bool repair;
	sv_check_fn *fn;
	void *opaque;
	unsigned errors; /* not repaired */
};

static void __attribute__((format(printf, 5, 6)))
report(struct checker *ck, const char *vol, const char *severity, bool repaired, const char *fmt,
       ...)
{
	struct sv_check_finding f = {.severity = severity, .repaired = repaired};
	snprintf(f.volume, sizeof f.volume, "%s", vol);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f.what, sizeof f.what, fmt, ap);
	va_end(ap);
	if (!strcmp(severity, "error") && !repaired)
		ck->errors++;
	ck->fn(ck->opaque, &f);
}

/* A volume's state, loaded as the real open would, without writing. */
static int
load_private(struct sv_pool *pool, const char *name, json_t *body, const struct sv_volume_meta *m,
	     struct sv_volume *v)
{
	memset(v, 0, sizeof *v);
	sv_volume_init_struct(v, pool, name, m);
	/* First, so that free_private can always close it. */
	if (sv_journal_open_readonly(v) == -1 || sv_snap_state_load(v, body) == -1 ||
	    sv_snap_released_load(v) == -1)
		return -1;
	return sv_journal_load(v, body);
}

static void
free_private(struct sv_volume *v)
{
	sv_journal_close(v);
	sv_snap_state_free(v);
	sv_volume_fini_struct(v);
}

/* Pre-image space of epoch ep that no record names; punched with repair. */
static void
check_pre_space(struct checker *ck, struct sv_volume *v, struct sv_epoch *ep)
{
	char name[32];
	sv_epoch_pre_name(ep, name, sizeof name);
	struct sv_obj *o;
	unsigned flags = ck->repair ? 0 : SV_OBJ_RDONLY;
	if (v->ops->obj_open(v->pool->st, v->name, name, v->size, flags, &o) == -1) {
		if (errno != ENOENT)
			report(ck, v->name, "error", false, "%s: cannot open it: %s", name,
			       strerror(errno));
		return;
	}
	uint64_t stray = 0, punched = 0;
	bool failed = false;
	for (uint64_t off = 0; off < v->size;) {
		struct sv_extent e;
		if (v->ops->obj_extent(o, off, v->size - off, &e) == -1) {
			report(ck, v->name, "error", false, "%s: cannot map it: %s", name,
			       strerror(errno));
			break;
		}
		if (!e.hole) {
			/* chunk by chunk within the data run, merging stray runs */
			uint64_t c = off >> v->chunk_shift;
			uint64_t last = (off + e.length - 1) >> v->chunk_shift;
			while (c <= last) {
				if (roaring_bitmap_contains(ep->changed, (uint32_t)c)) {
					c++;
					continue;
				}
				uint64_t a = c;
				while (c <= last &&
				       !roaring_bitmap_contains(ep->changed, (uint32_t)c))
					c++;
				uint64_t ra = a << v->chunk_shift, rz = c << v->chunk_shift;
				if (ra < off)
					ra = off;
				if (rz > off + e.length)
					rz = off + e.length;
				stray += rz - ra;
				if (ck->repair) {
					if (v->ops->obj_punch(o, ra, rz - ra) == 0)
						punched += rz - ra;
					else
						failed = true;
				}
			}
		}
		off += e.length;
	}
	v->ops->obj_close(o);
	if (stray)
		report(ck, v->name, "warning", ck->repair && !failed && punched == stray,
		       "%s holds %" PRIu64 " bytes of copies no record names (a copy a crash "
		       "cut short: wasted space, never read)%s",
		       name, stray,
		       ck->repair ? (failed ? "; punching it failed" : "; punched") : "");
}

/* Remove a stray object: into the pool's trash where the store has one
 * (freed in the background: a large sparse file takes seconds), else in
 * place. */
static int
remove_stray(struct sv_volume *v, const char *obj)
{
	if (!v->ops->obj_trash)
		return v->ops->obj_remove(v->pool->st, v->name, obj);
	if (v->ops->obj_trash(v->pool->st, v->name, obj) == -1)
		return -1;
	sv_reclaim_trashed(v->pool);
	return 0;
}

/* Objects of the volume that nothing names. */
static void
check_objects(struct checker *ck, struct sv_volume *v)
{
	if (!v->ops->obj_list)
		return;
	char **names;
	size_t n;
	if (v->ops->obj_list(v->pool->st, v->name, &names, &n) == -1) {
		report(ck, v->name, "error", false, "cannot list its objects: %s", strerror(errno));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t id;
		char tail;
		if (!strcmp(names[i], SV_OBJ_ORIGIN) || !strcmp(names[i], SV_OBJ_JOURNAL) ||
		    !strcmp(names[i], SV_OBJ_LOG)) {
			/* known */
		} else if (sscanf(names[i], "pre-%" SCNu64 "%c", &id, &tail) == 1) {
			if (!sv_epoch_find_locked(v, id)) {
				bool ok = ck->repair && remove_stray(v, names[i]) == 0;
				report(ck, v->name, "warning", ok,
				       "%s belongs to no epoch the metadata knows (left by a crash "
				       "or an interrupted delete)%s",
				       names[i],
				       ok	    ? "; removed"
				       : ck->repair ? "; cannot remove"
						    : "");
			}
		} else {
			report(ck, v->name, "warning", false,
			       "unknown object %s (not snapvol's; left alone)", names[i]);
		}
		free(names[i]);
	}
	free(names);
}

/* A volume's namespace without its metadata: what a crash in the middle
 * of a create leaves (or of a delete, by a snapvol from before deletes went
 * to the trash).  Listing ignores it; its objects are no volume's.  Repair
 * moves it to the pool's trash where the store has one (the pool's lock is
 * ours, so nobody is creating it meanwhile); elsewhere the next create of
 * the name removes it.  The trash itself is outside every volume: nothing
 * in it is a stray. */
static void
check_leftover(struct checker *ck, const char *name)
{
	const struct sv_store_ops *ops = ck->pool->ops;
	bool ok = ck->repair && ops->vol_trash && ops->vol_trash(ck->pool->st, name) == 0;
	if (ok)
		sv_reclaim_trashed(ck->pool);
	report(ck, name, "warning", ok,
	       "no volume metadata: the leftover of an unfinished create or delete%s",
	       ok		? "; moved to the trash"
	       : !ck->repair	? ""
	       : ops->vol_trash ? "; cannot move it to the trash"
				: "; the next create of the name removes it");
}

/* listed: name is one of the store's volume namespaces (vol_list). */
static void
check_volume(struct checker *ck, const char *name, bool listed)
{
	json_t *body;
	if (sv_meta_load(ck->pool, name, SV_META_VOLUME, &body) == -1) {
		if (sv_last_errno() == ENOENT && listed)
			check_leftover(ck, name);
		else
			report(ck, name, "error", false, "%s", sv_last_error());
		return;
	}
	struct sv_volume_meta m;
	if (sv_volume_meta_parse(body, name, &m) == -1) {
		report(ck, name, "error", false, "%s", sv_last_error());
		json_decref(body);
		return;
	}
	struct sv_obj *origin;
	if (ck->pool->ops->obj_open(ck->pool->st, name, SV_OBJ_ORIGIN, m.size, SV_OBJ_RDONLY,
				    &origin) == -1) {
		if (errno == EUCLEAN)
			report(ck, name, "error", false,
			       "the origin's size is not the volume's %" PRIu64 " bytes", m.size);
		else
			report(ck, name, "error", false, "the origin: %s", strerror(errno));
		json_decref(body);
		return;
	}
	ck->pool->ops->obj_close(origin);

	struct sv_volume *v = calloc(1, sizeof *v);
	if (!v) {
		report(ck, name, "error", false, "out of memory");
		json_decref(body);
		return;
	}
	bool loaded = load_private(ck->pool, name, body, &m, v) == 0;
	json_decref(body);
	if (!loaded) {
		report(ck, name, "error", false, "%s", sv_last_error());
	} else {
		if (v->journal.replayed)
			report(ck, name, "info", ck->repair,
			       "the journal holds %" PRIu64 " records not yet in the checkpoint, "
			       "with %" PRIu64 " bytes of pre-images (normal after an unclean "
			       "stop)%s",
			       v->journal.replayed, v->journal.replayed_bytes,
			       ck->repair ? "; checkpointed" : "; the next open replays them");
		if (v->rollback_to[0])
			report(ck, name, "info", ck->repair,
			       "a rollback to snapshot %s was interrupted%s", v->rollback_to,
			       ck->repair ? "; finished" : "; the next open finishes it");
		for (size_t i = 0; i < v->n_dead; i++)
			report(ck, name, "warning", false,
			       "snapshot %s@%s is invalid: its pre-images could not be kept (a "
			       "failed sync of them, or the store was full under the drop-snapshot "
			       "policy); it cannot be read; delete it",
			       name, v->dead[i]->name);
		/* Native pre-images are the store's (the cluster's clones):
		 * there are no copies of ours to find stray. */
		bool native = sv_store_native_pre(v->ops, ck->pool->st, name);
		for (size_t i = 0; !native && i < v->n_epochs; i++)
			check_pre_space(ck, v, v->epochs[i]);
		check_objects(ck, v);
	}
	free_private(v);
	free(v);
	if (!loaded || !ck->repair)
		return;
	/* The ordinary open: replay, checkpoint, drop unneeded epochs, finish
	 * a rollback; the close checkpoints again. */
	SV_LOCK_SCOPE(&ck->pool->lock);
	struct sv_volume *vol;
	if (sv_volume_get_locked(ck->pool, name, &vol) == -1) {
		report(ck, name, "error", false, "opening it to repair: %s", sv_last_error());
		return;
	}
	sv_volume_put_locked(vol);
}

int
sv_pool_check(struct sv_pool *pool, const char *volume, bool repair, sv_check_fn *fn, void *opaque)
{
	struct checker ck = {.pool = pool, .repair = repair, .fn = fn, .opaque = opaque};
	if (volume && sv_check_name(volume, "volume") == -1)
		return -1;
	char **names;
	size_t n;
	if (pool->ops->vol_list(pool->st, &names, &n) == -1)
		return sv_error_errno("pool %s: cannot list volumes", sv_pool_describe(pool));
	if (volume) {
		bool listed = false;
		for (size_t i = 0; i < n; i++) {
			listed |= !strcmp(names[i], volume);
			free(names[i]);
		}
		free(names);
		check_volume(&ck, volume, listed);
		return (int)ck.errors;
	}
	for (size_t i = 0; i < n; i++) {
		if (sv_check_name(names[i], "volume") == -1)
			report(&ck, names[i], "warning", false,
			       "not a valid volume name: not snapvol's, left alone");
		else
			check_volume(&ck, names[i], true);
		free(names[i]);
	}
	free(names);
	return (int)ck.errors;
}
