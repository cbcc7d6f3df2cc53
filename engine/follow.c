/*
 * follow.c: a snapshot view of a volume another node holds.
 *
 * On a pool several servers share (RADOS), a volume is written by the one
 * process that holds its claim.  Any other node may still serve the
 * volume's snapshots, read-only: it takes no claim and writes nothing to
 * the pool (no journal generation, no checkpoint, no rollback finish, no
 * reclaim), it only reads what the holder makes durable.  sv_view_open
 * (view.c) makes such a "follower" when the claim is refused
 * (EWOULDBLOCK) and the export names a snapshot; the live volume stays
 * refused.  Only the records-only journal is followed (store.h's
 * durable_writes: RADOS); a pool whose writes need syncs has one lock for
 * every volume anyway.
 *
 * What a follower keeps: a volume struct of its own (not in pool->open)
 * whose epochs hold the changed bitmaps as the holder's last checkpoint
 * (changed.meta, generation G) plus the journal records of generation G
 * after it; the exported snapshot (from volume.meta) and its released
 * chunks (released.meta); volume.meta's bytes as last checked.
 *
 * Consistency.  A snapshot read is, per chunk c: zeros if the snapshot
 * released c, else the pre-image of the first epoch at or after the
 * snapshot's whose bitmap holds c, else the origin.  The holder keeps this
 * order for every first write after a snapshot: pre-image written
 * (durable when acknowledged), then its record appended (durable), then
 * the origin written.  So the follower reads in the opposite order:
 *
 *   1. the origin's bytes of the range;
 *   2. the journal's new records (the copy state), after them;
 *   3. for the chunks the copy state sends elsewhere, the pre-images
 *      (or zeros);
 *   4. volume.meta again: unchanged, the read is done.
 *
 * If any origin byte read in 1 was written since the snapshot, the record
 * of that chunk's copy was durable before that write, so 2 sees it and 3
 * replaces the byte with the pre-image; a record seen in 2 whose origin
 * write did not happen yet is harmless (the pre-image then equals the
 * origin).  A record may be visible before its batch is acknowledged:
 * still harmless, its pre-image was durable before the record was sent.
 *
 * Refreshing the copy state (2) costs two small reads: the records from
 * the slot after the last one applied (32 bytes each; a hole, a torn
 * record, or a record of a generation known to be past ends them), and
 * slot 0.  A checkpoint on the holder (log full, open, close, snapshot
 * delete, rollback) writes changed.meta under a new random generation and
 * then starts the records again at slot 0.  Any valid record of an
 * unknown generation, at slot 0 or where the follower's records continue,
 * means one happened: the follower reloads changed.meta and the records of
 * its generation from slot 0, then reads changed.meta again; if it
 * changed meanwhile (a second checkpoint may have overwritten records of
 * the first before they were read), it starts over.  A record the holder
 * made durable before the origin write seen in 1 is therefore either in
 * the follower's generation at or after its next slot, or in a newer
 * generation whose first record (slot 0) was durable before it, or in a
 * checkpoint that a reload reads.  Generations that stopped a reload and
 * were proven old by the second read are remembered as past, so stale
 * records beyond the end do not cause a reload at every read.
 *
 * Deletes and rollbacks (4): the holder rewrites volume.meta before it
 * checkpoints or punches anything (snapshot.c): a delete of this snapshot
 * removes it there first, an invalidation marks it there first, a
 * rollback records its target there first.  So if a pre-image read in 3
 * saw punched space, or the origin in 1 a write the holder no longer
 * copied for this snapshot, volume.meta had changed before: step 4 sees
 * it.  Then the snapshot gone or invalid (or a new one under its name)
 * fails the read with EIO, and so does every later read: never another
 * epoch's data.  Any other change (a snapshot taken or deleted, a
 * rollback) reloads the state and reads the range again.  Deleting some
 * other snapshot clears bits and punches pre-images only where an earlier
 * epoch this snapshot reads holds the chunk too (snapshot.c), so a state
 * that still has those bits reads the same bytes.  A chunk that the
 * holder's export of the snapshot released reads as zeros here (or its
 * snapshot contents, until the follower next reloads released.meta).
 *
 * Costs: every read is the origin read, two journal reads and one
 * volume.meta read, plus the pre-image reads; a reload reads changed.meta
 * twice.  Block status answers "data" for the whole range (never wrong:
 * it never calls data a hole).  Each view has its own follower (no state
 * shared between connections), serialized by its lock: one read at a time.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define TAIL_SLOTS  128u /* records read per step of a refresh (4 KiB) */
#define PAST_GENS   16u	 /* generations remembered as past */
#define MAX_RETRIES 5	 /* reads again after a volume.meta change */
#define MAX_RELOADS 8	 /* changed.meta changed under a reload */

struct sv_follow {
	struct sv_volume *vol; /* the follower's own volume struct */
	struct sv_snap *snap;  /* the exported snapshot; vol->snaps[0] */
	/* One read or refresh at a time; guards everything below, and is
	 * the only place the epochs change (under cow_lock too, for diff.c). */
	pthread_mutex_t lock;
	struct sv_obj *journal; /* NULL until the holder has made one */
	uint64_t gen, next;	/* generation followed, next slot to read */
	uint64_t past[PAST_GENS];
	unsigned n_past, past_at;
	char *vmeta; /* volume.meta as last checked */
	size_t vmeta_len;
	bool gone; /* the snapshot was deleted or invalidated: reads fail */
	char holder[512];
	uint64_t reloads;
	struct sv_follow *list_next; /* followers; list_lock */
	struct sv_pool *pool;
};

/* Every follower of the process (for status). */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sv_follow *followers;

static bool
is_past(struct sv_follow *f, uint64_t gen)
{
	for (unsigned i = 0; i < f->n_past; i++)
		if (f->past[i] == gen)
			return true;
	return false;
}

static void
add_past(struct sv_follow *f, uint64_t gen)
{
	if (is_past(f, gen))
		return;
	f->past[f->past_at] = gen;
	f->past_at = (f->past_at + 1) % PAST_GENS;
	if (f->n_past < PAST_GENS)
		f->n_past++;
}

/* The epochs a scratch volume built, freed. */
static void
free_epochs(struct sv_volume *v)
{
	for (size_t i = 0; i < v->n_epochs; i++)
		sv_epoch_free(v, v->epochs[i]);
	free(v->epochs);
	v->epochs = NULL;
	v->n_epochs = 0;
}

static int
open_journal(struct sv_follow *f)
{
	struct sv_volume *v = f->vol;
	if (f->journal)
		return 0;
	if (v->ops->obj_open(v->pool->st, v->name, SV_OBJ_JOURNAL,
			     sv_journal_slots() * SV_JOURNAL_REC_SIZE, SV_OBJ_RDONLY,
			     &f->journal) == -1) {
		f->journal = NULL;
		if (errno == ENOENT)
			return 0; /* never opened by a server: no records */
		return sv_error_errno("volume %s: cannot open its journal", v->name);
	}
	return 0;
}

/* Records of generation gen from slot *next on, into v's epochs (cow_lock
 * taken when v is the follower's own).  *stop: 0 at a hole, a torn record
 * or a past generation; 1 at a valid record of another generation (its
 * generation in *other). */
static int
read_records(struct sv_follow *f, struct sv_volume *v, uint64_t gen, uint64_t *next, int *stop,
	     uint64_t *other)
{
	unsigned char buf[TAIL_SLOTS * SV_JOURNAL_REC_SIZE];
	uint64_t cap = sv_journal_slots();
	*stop = 0;
	if (!f->journal)
		return 0;
	bool own = v == f->vol;
	while (*next < cap) {
		uint64_t n = cap - *next < TAIL_SLOTS ? cap - *next : TAIL_SLOTS;
		if (v->ops->obj_pread(f->journal, buf, n * SV_JOURNAL_REC_SIZE,
				      *next * SV_JOURNAL_REC_SIZE) == -1)
			return sv_error_errno("volume %s: reading its journal", v->name);
		for (uint64_t i = 0; i < n; i++) {
			uint64_t g, e;
			uint32_t first, count;
			if (!sv_journal_decode(buf + i * SV_JOURNAL_REC_SIZE, &g, &e, &first,
					       &count))
				return 0;
			if (g != gen) {
				if (!is_past(f, g)) {
					*stop = 1;
					*other = g;
				}
				return 0;
			}
			if (count == 0 || (uint64_t)first + count > v->nchunks)
				return sv_error(EUCLEAN,
						"volume %s: journal record %" PRIu64
						" names chunks past the end",
						v->name, *next);
			if (own)
				sv_lock_or_abort(&v->cow_lock);
			struct sv_epoch *ep = sv_epoch_find_locked(v, e);
			if (!ep)
				ep = sv_epoch_new_locked(v, e);
			if (ep)
				roaring_bitmap_add_range(ep->changed, first,
							 (uint64_t)first + count);
			if (own)
				sv_unlock_or_abort(&v->cow_lock);
			if (!ep)
				return -1;
			(*next)++;
		}
	}
	return 0;
}

/* released.meta's chunks of the exported snapshot, again. */
static int
reload_released(struct sv_follow *f)
{
	struct sv_volume *v = f->vol;
	sv_lock_or_abort(&v->cow_lock);
	roaring_bitmap_t *old = f->snap->released;
	f->snap->released = NULL;
	sv_unlock_or_abort(&v->cow_lock);
	/* sv_snap_released_load finds the snapshot in v->snaps. */
	if (sv_snap_released_load(v) == -1) {
		sv_lock_or_abort(&v->cow_lock);
		f->snap->released = old;
		sv_unlock_or_abort(&v->cow_lock);
		return -1;
	}
	if (old)
		roaring_bitmap_free(old);
	return 0;
}

/* The whole copy state again: changed.meta, its generation's records, and
 * changed.meta once more (see the top). */
static int
reload(struct sv_follow *f)
{
	struct sv_volume *v = f->vol;
	if (open_journal(f) == -1)
		return -1;
	for (int round = 0; round < MAX_RELOADS; round++) {
		char *b1 = NULL, *b2 = NULL;
		size_t l1 = 0, l2 = 0;
		if (v->ops->meta_read(v->pool->st, v->name, SV_META_CHANGED, &b1, &l1) == -1) {
			if (errno != ENOENT)
				return sv_error_errno("volume %s: reading changed.meta", v->name);
			b1 = NULL;
			l1 = 0;
		}
		struct sv_volume *tmp = calloc(1, sizeof *tmp);
		if (!tmp) {
			free(b1);
			return sv_error(ENOMEM, "out of memory");
		}
		snprintf(tmp->name, sizeof tmp->name, "%s", v->name);
		tmp->nchunks = v->nchunks;
		tmp->ops = v->ops;
		uint64_t gen = 0, next = 0, other = 0;
		int stop = 0;
		int r = b1 ? sv_journal_parse_checkpoint(tmp, b1, l1, &gen) : 0;
		if (r == 0)
			r = read_records(f, tmp, gen, &next, &stop, &other);
		if (r == 0 &&
		    v->ops->meta_read(v->pool->st, v->name, SV_META_CHANGED, &b2, &l2) == -1) {
			if (errno != ENOENT)
				r = sv_error_errno("volume %s: reading changed.meta", v->name);
			b2 = NULL;
			l2 = 0;
		}
		bool same = r == 0 && l1 == l2 && (l1 == 0 || !memcmp(b1, b2, l1));
		free(b1);
		free(b2);
		if (r == -1 || !same) {
			free_epochs(tmp);
			free(tmp);
			if (r == -1)
				return -1;
			continue; /* a checkpoint meanwhile: again */
		}
		/* The new state replaces the old one whole (a checkpoint may have
		 * cleared bits). */
		sv_lock_or_abort(&v->cow_lock);
		struct sv_epoch **old = v->epochs;
		size_t n_old = v->n_epochs;
		v->epochs = tmp->epochs;
		v->n_epochs = tmp->n_epochs;
		sv_unlock_or_abort(&v->cow_lock);
		tmp->epochs = old;
		tmp->n_epochs = n_old;
		tmp->ops = v->ops; /* closes the old epochs' pre-image objects */
		free_epochs(tmp);
		free(tmp);
		if (f->gen != gen)
			add_past(f, f->gen);
		if (stop) /* older than the generation changed.meta still has */
			add_past(f, other);
		f->gen = gen;
		f->next = next;
		f->reloads++;
		return reload_released(f);
	}
	return sv_error(EIO, "volume %s: its holder's checkpoints changed %d times during one read",
			v->name, MAX_RELOADS);
}

/* The copy state up to now: new records, or a reload after a checkpoint. */
static int
refresh(struct sv_follow *f)
{
	if (open_journal(f) == -1)
		return -1;
	if (!f->journal)
		return 0;
	struct sv_volume *v = f->vol;
	uint64_t other;
	int stop;
	if (read_records(f, v, f->gen, &f->next, &stop, &other) == -1)
		return -1;
	if (stop)
		return reload(f);
	if (f->next > 0) {
		unsigned char b[SV_JOURNAL_REC_SIZE];
		uint64_t g, e;
		uint32_t first, count;
		if (v->ops->obj_pread(f->journal, b, sizeof b, 0) == -1)
			return sv_error_errno("volume %s: reading its journal", v->name);
		if (!sv_journal_decode(b, &g, &e, &first, &count) || g != f->gen)
			return reload(f);
	}
	return 0;
}

/* The snapshot's entry in volume.meta (body): 0 and *valid, or ENOENT. */
static int
find_snap(json_t *body, const char *name, uint64_t epoch, bool *valid)
{
	size_t i;
	json_t *js;
	json_array_foreach(json_object_get(body, "snapshots"), i, js)
	{
		const char *n = json_string_value(json_object_get(js, "name"));
		if (!n || strcmp(n, name))
			continue;
		json_t *e = json_object_get(js, "epoch");
		if (!json_is_integer(e) || (uint64_t)json_integer_value(e) != epoch)
			return -1; /* another snapshot under the same name */
		*valid = !json_is_true(json_object_get(js, "invalid"));
		return 0;
	}
	return -1;
}

/* Step 4 (see the top): 0 if volume.meta is as last checked, 1 if it
 * changed and the snapshot is still there (state reloaded), -1 with the
 * last error set (the snapshot is gone: f->gone). */
static int
check_meta(struct sv_follow *f)
{
	struct sv_volume *v = f->vol;
	char *buf;
	size_t len;
	if (v->ops->meta_read(v->pool->st, v->name, SV_META_VOLUME, &buf, &len) == -1) {
		if (errno != ENOENT)
			return sv_error_errno("volume %s: reading volume.meta", v->name);
		f->gone = true;
		return sv_error(EIO, "volume %s was deleted by its holder", v->name);
	}
	if (len == f->vmeta_len && !memcmp(buf, f->vmeta, len)) {
		free(buf);
		return 0;
	}
	json_t *body;
	if (sv_meta_decode(buf, len, &body) == -1) {
		free(buf);
		return -1;
	}
	bool valid = false;
	int r = find_snap(body, f->snap->name, f->snap->epoch, &valid);
	json_decref(body);
	if (r == -1 || !valid) {
		free(buf);
		f->gone = true;
		sv_log_warn("volume %s: snapshot %s was %s by the node that holds the volume; its "
			    "read-only export here fails from now on",
			    v->name, f->snap->name, r == -1 ? "deleted" : "invalidated");
		return sv_error(EIO, "snapshot %s@%s was %s by the volume's holder", v->name,
				f->snap->name, r == -1 ? "deleted" : "invalidated");
	}
	free(f->vmeta);
	f->vmeta = buf;
	f->vmeta_len = len;
	if (reload(f) == -1)
		return -1;
	return 1;
}

static int
epoch_pre(struct sv_follow *f, struct sv_epoch *ep, struct sv_obj **out)
{
	struct sv_volume *v = f->vol;
	*out = NULL;
	SV_LOCK_SCOPE(&v->pre_lock);
	if (!ep->pre) {
		char name[32];
		sv_epoch_pre_name(ep, name, sizeof name);
		if (v->ops->obj_open(v->pool->st, v->name, name, v->size, SV_OBJ_RDONLY,
				     &ep->pre) == -1) {
			ep->pre = NULL;
			if (errno == ENOENT)
				return 0; /* only holes copied: zeros */
			return -1;
		}
	}
	*out = ep->pre;
	return 0;
}

/* Where snapshot s reads chunk c: an epoch, NULL (the origin) or zeros. */
static struct sv_epoch *
source(struct sv_volume *v, const struct sv_snap *s, uint64_t c, bool *zeros)
{
	*zeros = s->released && roaring_bitmap_contains(s->released, (uint32_t)c);
	if (*zeros)
		return NULL;
	for (size_t i = 0; i < v->n_epochs; i++) {
		struct sv_epoch *ep = v->epochs[i];
		if (ep->id >= s->epoch && roaring_bitmap_contains(ep->changed, (uint32_t)c))
			return ep;
	}
	return NULL;
}

/* Step 3: replace what the copy state sends elsewhere. */
static int
read_copies(struct sv_follow *f, char *buf, uint64_t len, uint64_t off)
{
	struct sv_volume *v = f->vol;
	uint64_t end = off + len, pos = off;
	while (pos < end) {
		uint64_t c = pos >> v->chunk_shift;
		bool zeros;
		struct sv_epoch *ep = source(v, f->snap, c, &zeros);
		uint64_t run_end = (c + 1) << v->chunk_shift;
		/* extend over the following chunks with the same source */
		while (run_end < end) {
			bool z2;
			struct sv_epoch *e2 = source(v, f->snap, run_end >> v->chunk_shift, &z2);
			if (e2 != ep || z2 != zeros)
				break;
			run_end += v->chunk_size;
		}
		if (run_end > end)
			run_end = end;
		char *dst = buf + (pos - off);
		if (zeros) {
			memset(dst, 0, run_end - pos);
		} else if (ep) {
			struct sv_obj *pre;
			if (epoch_pre(f, ep, &pre) == -1)
				return -1;
			if (!pre)
				memset(dst, 0, run_end - pos);
			else if (v->ops->obj_pread(pre, dst, run_end - pos, pos) == -1)
				return -1;
		}
		pos = run_end;
	}
	return 0;
}

int
sv_follow_pread(struct sv_volume *vol, void *buf, uint64_t len, uint64_t off, int *err)
{
	struct sv_follow *f = vol->follow;
	SV_LOCK_SCOPE(&f->lock);
	for (int attempt = 0;; attempt++) {
		if (f->gone) {
			*err = EIO;
			return -1;
		}
		sv_clear_error();
		if (vol->ops->obj_pread(vol->origin, buf, len, off) == -1) {
			sv_error_errno("volume %s: reading its data", vol->name);
			break;
		}
		if (refresh(f) == -1)
			break;
		if (read_copies(f, buf, len, off) == -1) {
			sv_error_errno("volume %s: reading its pre-images", vol->name);
			break;
		}
		int r = check_meta(f);
		if (r == 0)
			return 0;
		if (r == -1)
			break;
		if (attempt == MAX_RETRIES) {
			sv_log_warn(
			    "volume %s: snapshot %s: volume.meta changed at each of %d reads",
			    vol->name, f->snap->name, MAX_RETRIES + 1);
			break;
		}
	}
	if (sv_last_errno() && !f->gone)
		sv_log_warn("volume %s: snapshot %s (followed): %s", vol->name, f->snap->name,
			    sv_last_error());
	*err = EIO;
	return -1;
}

int
sv_follow_extents(struct sv_volume *vol, uint64_t len, uint64_t off, struct sv_extent *ext,
		  size_t max, size_t *n, int *err)
{
	(void)err;
	if (max == 0 || len == 0) {
		*n = 0;
		return 0;
	}
	/* Data throughout: never calls data a hole (see the top). */
	ext[0] = (struct sv_extent){.offset = off, .length = len, .hole = false};
	*n = 1;
	(void)vol;
	return 0;
}

static void
follow_free(struct sv_volume *v)
{
	struct sv_follow *f = v->follow;
	if (f) {
		if (f->journal)
			v->ops->obj_close(f->journal);
		free(f->vmeta);
		if (f->snap) {
			if (f->snap->released)
				roaring_bitmap_free(f->snap->released);
			free(f->snap);
		}
		pthread_mutex_destroy(&f->lock);
		free(f);
	}
	free(v->snaps);
	free_epochs(v);
	if (v->origin)
		v->ops->obj_close(v->origin);
	sv_volume_fini_struct(v);
	free(v);
}

/* The holder's name out of the refused claim's message. */
static void
holder_of(const char *claim_msg, char *buf, size_t len)
{
	const char *p = claim_msg ? strstr(claim_msg, "claimed by ") : NULL;
	p = p ? p + strlen("claimed by ") : "another node";
	const char *semi = strchr(p, ';');
	size_t n = semi ? (size_t)(semi - p) : strlen(p);
	snprintf(buf, len, "%.*s", (int)(n < len ? n : len - 1), p);
}

/* volume.meta of a volume another node holds: its bytes and its body. */
static int
read_volume_meta(struct sv_pool *pool, const char *volume, char **buf, size_t *len, json_t **body)
{
	if (pool->ops->meta_read(pool->st, volume, SV_META_VOLUME, buf, len) == -1) {
		if (errno == ENOENT)
			return sv_error(ENOENT, "volume %s does not exist", volume);
		return sv_error_errno("volume %s: reading volume.meta", volume);
	}
	if (sv_meta_decode(*buf, *len, body) == -1) {
		free(*buf);
		return -1;
	}
	return 0;
}

/* One entry of volume.meta's "snapshots": false if it is not a valid one. */
static bool
snap_fields(json_t *js, uint64_t *epoch, uint64_t *created, char consistency[8], bool *invalid)
{
	if (!json_is_integer(json_object_get(js, "epoch")) ||
	    !json_string_value(json_object_get(js, "name")))
		return false;
	const char *cons = json_string_value(json_object_get(js, "consistency"));
	*epoch = (uint64_t)json_integer_value(json_object_get(js, "epoch"));
	*created = (uint64_t)json_integer_value(json_object_get(js, "created"));
	snprintf(consistency, 8, "%s", cons && !strcmp(cons, "frozen") ? "frozen" : "crash");
	*invalid = json_is_true(json_object_get(js, "invalid"));
	return true;
}

int
sv_follow_snapshot_list(struct sv_pool *pool, const char *volume, struct sv_snapshot_info **infos,
			size_t *n)
{
	if (!pool->ops->durable_writes)
		return sv_error(EOPNOTSUPP, "volume %s: held by another process", volume);
	char *buf;
	size_t len;
	json_t *body;
	if (read_volume_meta(pool, volume, &buf, &len, &body) == -1)
		return -1;
	free(buf);
	json_t *arr = json_object_get(body, "snapshots");
	size_t cnt = json_array_size(arr), k = 0, i;
	struct sv_snapshot_info *out = calloc(cnt ? cnt : 1, sizeof *out);
	if (!out) {
		json_decref(body);
		return sv_error(ENOMEM, "out of memory");
	}
	json_t *e;
	json_array_foreach(arr, i, e)
	{
		struct sv_snapshot_info *o = &out[k];
		if (!snap_fields(e, &o->epoch, &o->created, o->consistency, &o->invalid))
			continue;
		snprintf(o->volume, sizeof o->volume, "%s", volume);
		snprintf(o->name, sizeof o->name, "%s",
			 json_string_value(json_object_get(e, "name")));
		k++;
	}
	json_decref(body);
	*infos = out;
	*n = k;
	return 0;
}

int
sv_follow_open(struct sv_pool *pool, const char *volume, const char *snap, const char *claim_msg,
	       struct sv_volume **out)
{
	const struct sv_store_ops *ops = pool->ops;
	char holder[512];
	holder_of(claim_msg, holder, sizeof holder);
	if (!ops->durable_writes)
		return sv_error(EWOULDBLOCK, "%s", claim_msg);
	char *buf;
	size_t len;
	json_t *body;
	if (read_volume_meta(pool, volume, &buf, &len, &body) == -1)
		return -1;
	struct sv_volume_meta m;
	if (sv_volume_meta_parse(body, volume, &m) == -1) {
		json_decref(body);
		free(buf);
		return -1;
	}
	/* The snapshot, from the same volume.meta. */
	struct sv_snap *s = calloc(1, sizeof *s);
	json_t *js = NULL;
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(body, "snapshots"), i, e)
	{
		const char *n = json_string_value(json_object_get(e, "name"));
		if (n && !strcmp(n, snap))
			js = e;
	}
	int rc = 0;
	bool invalid = false;
	if (!s) {
		rc = sv_error(ENOMEM, "out of memory");
	} else if (!js || !snap_fields(js, &s->epoch, &s->created, s->consistency, &invalid)) {
		rc = sv_error(ENOENT, "volume %s has no snapshot %s", volume, snap);
	} else if (invalid) {
		rc = sv_error(EIO, "snapshot %s@%s is invalid (its pre-images were lost)", volume,
			      snap);
	} else {
		snprintf(s->name, sizeof s->name, "%s", snap);
	}
	json_decref(body);
	if (rc == -1) {
		free(s);
		free(buf);
		return -1;
	}

	struct sv_volume *v = calloc(1, sizeof *v);
	struct sv_follow *f = calloc(1, sizeof *f);
	struct sv_snap **snaps = malloc(sizeof *snaps);
	if (!v || !f || !snaps) {
		free(v);
		free(f);
		free(snaps);
		free(s);
		free(buf);
		return sv_error(ENOMEM, "out of memory");
	}
	sv_volume_init_struct(v, pool, volume, &m);
	snaps[0] = s;
	v->snaps = snaps;
	v->n_snaps = 1;
	v->refs = 1;
	v->follow = f;
	pthread_mutex_init(&f->lock, NULL);
	f->vol = v;
	f->snap = s;
	f->vmeta = buf;
	f->vmeta_len = len;
	f->pool = pool;
	snprintf(f->holder, sizeof f->holder, "%s", holder);
	if (ops->obj_open(pool->st, volume, SV_OBJ_ORIGIN, m.size, SV_OBJ_RDONLY, &v->origin) ==
	    -1) {
		v->origin = NULL;
		sv_error_errno("volume %s: cannot open its data", volume);
		follow_free(v);
		return -1;
	}
	sv_lock_or_abort(&f->lock);
	int r = reload(f);
	sv_unlock_or_abort(&f->lock);
	if (r == -1) {
		follow_free(v);
		return -1;
	}
	sv_lock_or_abort(&list_lock);
	f->list_next = followers;
	followers = f;
	sv_unlock_or_abort(&list_lock);
	sv_log_debug("volume %s: serving snapshot %s read-only; the volume's claim is held by %s",
		     volume, snap, holder);
	*out = v;
	return 0;
}

void
sv_follow_close(struct sv_volume *vol)
{
	struct sv_follow *f = vol->follow;
	sv_lock_or_abort(&list_lock);
	for (struct sv_follow **pp = &followers; *pp; pp = &(*pp)->list_next) {
		if (*pp == f) {
			*pp = f->list_next;
			break;
		}
	}
	sv_unlock_or_abort(&list_lock);
	follow_free(vol);
}

static int
cmp_follow(const void *a, const void *b)
{
	const struct sv_follow_info *x = a, *y = b;
	int c = strcmp(x->volume, y->volume);
	return c ? c : strcmp(x->snapshot, y->snapshot);
}

int
sv_follow_list(struct sv_pool *pool, struct sv_follow_info **infos, size_t *n)
{
	SV_LOCK_SCOPE(&list_lock);
	size_t cnt = 0;
	for (struct sv_follow *f = followers; f; f = f->list_next)
		cnt++;
	struct sv_follow_info *out = calloc(cnt ? cnt : 1, sizeof *out);
	if (!out)
		return sv_error(ENOMEM, "out of memory");
	size_t k = 0;
	for (struct sv_follow *f = followers; f; f = f->list_next) {
		if (f->pool != pool)
			continue;
		size_t j = 0;
		while (j < k && (strcmp(out[j].volume, f->vol->name) ||
				 strcmp(out[j].snapshot, f->snap->name)))
			j++;
		if (j == k) {
			snprintf(out[k].volume, sizeof out[k].volume, "%s", f->vol->name);
			snprintf(out[k].snapshot, sizeof out[k].snapshot, "%s", f->snap->name);
			snprintf(out[k].holder, sizeof out[k].holder, "%s", f->holder);
			k++;
		}
		out[j].views++;
	}
	qsort(out, k, sizeof *out, cmp_follow);
	*infos = out;
	*n = k;
	return 0;
}
