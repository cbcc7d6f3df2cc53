/*
 * snapshot.c: taking, listing, deleting and rolling back snapshots, and the
 * snapshot part of a volume's metadata.
 *
 * Taking a snapshot (consistency groups included) is an epoch switch under
 * cow_lock: O(1), whatever the volume's size, and no I/O waits for it.
 * Before it the origin is synced once (presync, below: the bulk of its
 * dirty data, while no write waits for a commit of the new epoch).
 * Then, while writes go on in the new epoch, the call waits for the writes
 * stamped with the old epoch to finish (they belong in the snapshot), syncs
 * the origin once (so every write acknowledged before the switch is
 * durable), and records the snapshot in volume.meta.  Until that record is
 * written the snapshot is "pending": not listed, not exportable, and a
 * crash forgets it (its epoch stays, harmlessly: its pre-images are then
 * simply the older snapshots' pre-images, see cow.c).
 *
 * Which epochs are needed: epoch j matters to the live snapshots taken at or
 * before it (k <= j).  Epochs older than the oldest live snapshot are
 * dropped with their objects.  Deleting a snapshot that has an older
 * neighbour merges its interval into the neighbour's: chunks recorded in
 * both are redundant in the later epochs (every reader finds the earlier
 * pre-image first), so their bits are cleared and their space punched.
 * Deleting the newest snapshot widens the current epoch's nocopy set back
 * to the previous snapshot; deleting the last one starts a fresh epoch that
 * copies nothing.
 *
 * Rollback writes the snapshot's contents back over the origin through the
 * ordinary copy-on-write path (so newer snapshots keep theirs), with writes
 * held at the gate and the target persisted first, so a crash mid-way is
 * finished when the volume is next opened.  Reads are not held: during a
 * rollback a reader of the live volume may see a mixture of old and
 * rolled-back chunks; every request that starts after the call returns sees
 * the snapshot's contents.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#include <zlib.h>

struct sv_snap *
sv_snap_find_locked(struct sv_volume *vol, const char *name)
{
	for (size_t i = 0; i < vol->n_snaps; i++)
		if (!strcmp(vol->snaps[i]->name, name))
			return vol->snaps[i];
	for (size_t i = 0; i < vol->n_dead; i++)
		if (!strcmp(vol->dead[i]->name, name))
			return vol->dead[i];
	return NULL;
}

static void
snap_free(struct sv_snap *s)
{
	if (s && s->released)
		roaring_bitmap_free(s->released);
	free(s);
}

static int
add_dead_locked(struct sv_volume *vol, struct sv_snap *s)
{
	struct sv_snap **arr = realloc(vol->dead, (vol->n_dead + 1) * sizeof *arr);
	if (!arr)
		return sv_error(ENOMEM, "out of memory");
	vol->dead = arr;
	s->invalid = true;
	arr[vol->n_dead++] = s;
	return 0;
}

static bool
remove_dead_locked(struct sv_volume *vol, struct sv_snap *s)
{
	for (size_t i = 0; i < vol->n_dead; i++) {
		if (vol->dead[i] == s) {
			vol->dead[i] = vol->dead[--vol->n_dead];
			return true;
		}
	}
	return false;
}

static int
insert_snap_locked(struct sv_volume *vol, struct sv_snap *s)
{
	struct sv_snap **arr = realloc(vol->snaps, (vol->n_snaps + 1) * sizeof *arr);
	if (!arr)
		return sv_error(ENOMEM, "out of memory");
	vol->snaps = arr;
	size_t i = vol->n_snaps;
	while (i > 0 && arr[i - 1]->epoch > s->epoch) {
		arr[i] = arr[i - 1];
		i--;
	}
	arr[i] = s;
	vol->n_snaps++;
	return 0;
}

static void
remove_snap_locked(struct sv_volume *vol, struct sv_snap *s)
{
	for (size_t i = 0; i < vol->n_snaps; i++) {
		if (vol->snaps[i] == s) {
			memmove(&vol->snaps[i], &vol->snaps[i + 1],
				(vol->n_snaps - i - 1) * sizeof *vol->snaps);
			vol->n_snaps--;
			return;
		}
	}
}

/* ---- metadata ---- */

json_t *
sv_snap_state_json_locked(struct sv_volume *vol)
{
	json_t *arr = json_array();
	for (size_t i = 0; i < vol->n_snaps + vol->n_dead; i++) {
		const struct sv_snap *s =
		    i < vol->n_snaps ? vol->snaps[i] : vol->dead[i - vol->n_snaps];
		json_array_append_new(arr, json_pack("{s:s, s:I, s:I, s:s, s:b}", "name", s->name,
						     "epoch", (json_int_t)s->epoch, "created",
						     (json_int_t)s->created, "consistency",
						     s->consistency, "invalid", s->invalid));
	}
	json_t *o = json_pack("{s:I, s:o, s:s}", "epoch",
			      (json_int_t)sv_current_epoch_locked(vol)->id, "snapshots", arr,
			      "full_policy", vol->drop_when_full ? "drop-snapshot" : "fail-writes");
	if (vol->rollback_to[0])
		json_object_set_new(o, "rollback_to", json_string(vol->rollback_to));
	return o;
}

int
sv_snap_state_load(struct sv_volume *vol, json_t *m)
{
	json_t *jep = json_object_get(m, "epoch");
	json_t *jsn = json_object_get(m, "snapshots");
	json_t *jrb = json_object_get(m, "rollback_to");
	uint64_t cur = 0;
	if (jep) {
		if (!json_is_integer(jep) || json_integer_value(jep) < 0)
			return sv_error(EUCLEAN, "volume %s: metadata has a bad epoch", vol->name);
		cur = (uint64_t)json_integer_value(jep);
	}
	if (jsn && !json_is_array(jsn))
		return sv_error(EUCLEAN, "volume %s: metadata has a bad snapshot list", vol->name);
	size_t i;
	json_t *js;
	json_array_foreach(jsn, i, js)
	{
		const char *name = json_string_value(json_object_get(js, "name"));
		json_t *e = json_object_get(js, "epoch"), *c = json_object_get(js, "created");
		const char *cons = json_string_value(json_object_get(js, "consistency"));
		json_t *inv = json_object_get(js, "invalid");
		if (!name || sv_check_name(name, "snapshot") == -1 || !json_is_integer(e) ||
		    json_integer_value(e) < 0 || !json_is_integer(c) || !cons ||
		    (strcmp(cons, "crash") && strcmp(cons, "frozen")) || !json_is_boolean(inv) ||
		    sv_snap_find_locked(vol, name))
			return sv_error(EUCLEAN, "volume %s: metadata has a bad snapshot entry %zu",
					vol->name, i);
		struct sv_snap *s = calloc(1, sizeof *s);
		if (!s)
			return sv_error(ENOMEM, "out of memory");
		snprintf(s->name, sizeof s->name, "%s", name);
		s->epoch = (uint64_t)json_integer_value(e);
		s->created = (uint64_t)json_integer_value(c);
		snprintf(s->consistency, sizeof s->consistency, "%s", cons);
		if (json_is_true(inv) ? add_dead_locked(vol, s) : insert_snap_locked(vol, s)) {
			free(s);
			return -1;
		}
		if (s->epoch > cur)
			cur = s->epoch;
	}
	json_t *jfp = json_object_get(m, "full_policy");
	if (jfp) {
		const char *fp = json_string_value(jfp);
		if (!fp || (strcmp(fp, "fail-writes") && strcmp(fp, "drop-snapshot")))
			return sv_error(EUCLEAN, "volume %s: metadata has a bad full_policy",
					vol->name);
		vol->drop_when_full = !strcmp(fp, "drop-snapshot");
	}
	if (jrb) {
		const char *rb = json_string_value(jrb);
		if (!rb || !sv_snap_find_locked(vol, rb))
			return sv_error(EUCLEAN, "volume %s: metadata has a bad rollback target",
					vol->name);
		snprintf(vol->rollback_to, sizeof vol->rollback_to, "%s", rb);
	}
	if (!sv_epoch_find_locked(vol, cur) && !sv_epoch_new_locked(vol, cur))
		return -1;
	return 0;
}

void
sv_snap_state_free(struct sv_volume *vol)
{
	for (size_t i = 0; i < vol->n_snaps; i++)
		snap_free(vol->snaps[i]);
	free(vol->snaps);
	vol->snaps = NULL;
	vol->n_snaps = 0;
	for (size_t i = 0; i < vol->n_dead; i++)
		snap_free(vol->dead[i]);
	free(vol->dead);
	vol->dead = NULL;
	vol->n_dead = 0;
	for (size_t i = 0; i < vol->n_epochs; i++)
		sv_epoch_free(vol, vol->epochs[i]);
	free(vol->epochs);
	while (vol->graveyard) {
		struct sv_epoch *ep = vol->graveyard;
		vol->graveyard = ep->grave_next;
		sv_epoch_free(vol, ep);
	}
	vol->epochs = NULL;
	vol->n_epochs = 0;
}

/* ---- which epochs are needed ---- */

/* Pre-images to give back: chunks of an epoch's object. */
struct punch {
	struct sv_epoch *ep;
	roaring_bitmap_t *chunks;
};

/* Punch each run of chunks; frees the list.  No locks held. */
static void
punch_all(struct sv_volume *vol, struct punch *punches, size_t npunch)
{
	for (size_t i = 0; i < npunch; i++) {
		struct sv_obj *pre;
		if (sv_epoch_pre(vol, punches[i].ep, false, &pre) == 0 && pre) {
			roaring_uint32_iterator_t *it = roaring_create_iterator(punches[i].chunks);
			while (it->has_value) {
				uint64_t a = it->current_value, z = a + 1;
				while (roaring_advance_uint32_iterator(it) &&
				       it->current_value == z)
					z++;
				uint64_t off = a << vol->chunk_shift;
				uint64_t len = (z - a) << vol->chunk_shift;
				if (off + len > vol->size)
					len = vol->size - off;
				if (vol->ops->obj_punch(pre, off, len) == -1)
					sv_log_warn("volume %s: cannot free space: %m", vol->name);
			}
			roaring_free_uint32_iterator(it);
		}
		roaring_bitmap_free(punches[i].chunks);
	}
	free(punches);
}

/* ---- released ranges (trim on a snapshot's export) ---- */

/* Which copies a release makes unneeded.  A snapshot reads chunk c from
 * the first epoch at or after its own that holds c, else from the origin;
 * a copy (a pre-image, or the origin's current contents) is needed while
 * any snapshot that reads it there has not released c. */

/* Of the chunks r, those no snapshot still needs where it would read them:
 * from epoch j's pre-images (j an epoch id), or, with j = UINT64_MAX, from
 * the origin (their current contents: writes to them need no copy).  A
 * snapshot taken at k <= j reads chunk c there unless an epoch in [k, j)
 * holds c; it needs it unless it released c. */
static roaring_bitmap_t *
unneeded_locked(struct sv_volume *vol, uint64_t j, const roaring_bitmap_t *r)
{
	roaring_bitmap_t *out = roaring_bitmap_copy(r);
	roaring_bitmap_t *held = roaring_bitmap_create(); /* changed in [k_m, j) */
	uint64_t upto = j;
	for (size_t m = vol->n_snaps; m-- > 0 && !roaring_bitmap_is_empty(out);) {
		const struct sv_snap *sm = vol->snaps[m];
		if (sm->epoch > j)
			continue; /* reads epochs after j only */
		for (size_t e = 0; e < vol->n_epochs; e++)
			if (vol->epochs[e]->id >= sm->epoch && vol->epochs[e]->id < upto)
				roaring_bitmap_or_inplace(held, vol->epochs[e]->changed);
		upto = sm->epoch;
		roaring_bitmap_t *need = roaring_bitmap_andnot(out, held);
		if (sm->released)
			roaring_bitmap_andnot_inplace(need, sm->released);
		roaring_bitmap_andnot_inplace(out, need);
		roaring_bitmap_free(need);
	}
	roaring_bitmap_free(held);
	return out;
}

/* Chunks no snapshot needs from the origin need no more copies; but a write
 * to them still records its changed bit (a bit-only record, cow.c), else a
 * diff from a snapshot that released them would miss it.  The bit without
 * a pre-image is harmless: every snapshot that reads this epoch for them
 * released them and reads zeros first. */
static void
add_bitonly_locked(struct sv_epoch *cur, const roaring_bitmap_t *un)
{
	if (roaring_bitmap_is_empty(un))
		return;
	if (!cur->bitonly)
		cur->bitonly = roaring_bitmap_create();
	roaring_bitmap_or_inplace(cur->bitonly, un);
	roaring_bitmap_andnot_inplace(cur->bitonly, cur->changed);
}

/* Released chunks no snapshot needs from the origin need no more copies. */
static void
add_released_locked(struct sv_volume *vol)
{
	roaring_bitmap_t *any = roaring_bitmap_create();
	for (size_t i = 0; i < vol->n_snaps; i++)
		if (vol->snaps[i]->released)
			roaring_bitmap_or_inplace(any, vol->snaps[i]->released);
	if (!roaring_bitmap_is_empty(any)) {
		struct sv_epoch *cur = sv_current_epoch_locked(vol);
		roaring_bitmap_t *un = unneeded_locked(vol, UINT64_MAX, any);
		add_bitonly_locked(cur, un);
		roaring_bitmap_free(un);
	}
	roaring_bitmap_free(any);
}

/* released.meta: "snapvol-released 1 n=N len=L crc32=0x...\n", then per
 * snapshot: u16 name length, the name, u64 length, a portable bitmap.
 *
 * Saves are grouped, as commits are (DESIGN invariant 5): release number
 * upto (vol->rel_made counts them, under cow_lock with the bits) returns
 * at once if a save that began after it was made has succeeded, for that
 * save wrote its bits.  Releases that queue on meta_lock behind a save in
 * progress so share the next one: one metadata write for all of them, and
 * each still returns only once its release is durable.  upto 0: save
 * whatever the state is (a delete, which removes a snapshot's entry). */
static int
released_save(struct sv_volume *vol, uint64_t upto)
{
	SV_LOCK_SCOPE(&vol->meta_lock);
	if (upto && vol->rel_saved >= upto)
		return 0;
	sv_lock_or_abort(&vol->cow_lock);
	uint64_t made = vol->rel_made;
	size_t blen = 0, n = 0;
	for (size_t i = 0; i < vol->n_snaps; i++) {
		if (!vol->snaps[i]->released)
			continue;
		roaring_bitmap_run_optimize(vol->snaps[i]->released);
		blen += 2 + strlen(vol->snaps[i]->name) + 8 +
			roaring_bitmap_portable_size_in_bytes(vol->snaps[i]->released);
		n++;
	}
	char *buf = malloc(blen + 128);
	if (!buf) {
		sv_unlock_or_abort(&vol->cow_lock);
		return sv_error(ENOMEM, "out of memory");
	}
	char *p = buf + 128;
	for (size_t i = 0; i < vol->n_snaps; i++) {
		const struct sv_snap *s = vol->snaps[i];
		if (!s->released)
			continue;
		uint16_t nl = htole16((uint16_t)strlen(s->name));
		uint64_t bl = htole64(roaring_bitmap_portable_size_in_bytes(s->released));
		memcpy(p, &nl, 2);
		memcpy(p + 2, s->name, strlen(s->name));
		p += 2 + strlen(s->name);
		memcpy(p, &bl, 8);
		p += 8;
		p += roaring_bitmap_portable_serialize(s->released, p);
	}
	sv_unlock_or_abort(&vol->cow_lock);
	char hdr[128];
	int hl =
	    snprintf(hdr, sizeof hdr, "snapvol-released 1 n=%zu len=%zu crc32=0x%08" PRIx32 "\n", n,
		     blen, (uint32_t)crc32(0, (const Bytef *)buf + 128, (uInt)blen));
	memcpy(buf + 128 - hl, hdr, (size_t)hl);
	int r = vol->ops->meta_write(vol->pool->st, vol->name, SV_META_RELEASED, buf + 128 - hl,
				     (size_t)hl + blen);
	free(buf);
	if (r == -1)
		return sv_error_errno("volume %s: cannot write released.meta", vol->name);
	if (made > vol->rel_saved)
		vol->rel_saved = made;
	return 0;
}

int
sv_snap_released_save(struct sv_volume *vol)
{
	return released_save(vol, 0);
}

int
sv_snap_released_load(struct sv_volume *vol)
{
	char *buf;
	size_t len;
	if (vol->ops->meta_read(vol->pool->st, vol->name, SV_META_RELEASED, &buf, &len) == -1) {
		if (errno == ENOENT)
			return 0;
		return sv_error_errno("volume %s: reading released.meta", vol->name);
	}
	int rc = sv_error(EUCLEAN, "volume %s: released.meta is damaged", vol->name);
	const char *nl = memchr(buf, '\n', len < 128 ? len : 128);
	size_t n, blen;
	uint32_t crc;
	if (!nl ||
	    sscanf(buf, "snapvol-released 1 n=%zu len=%zu crc32=0x%" SCNx32, &n, &blen, &crc) != 3)
		goto out;
	const char *p = nl + 1;
	size_t have = len - (size_t)(p - buf);
	if (have != blen || (uint32_t)crc32(0, (const Bytef *)p, (uInt)blen) != crc)
		goto out;
	for (size_t i = 0; i < n; i++) {
		uint16_t l;
		uint64_t bl;
		if (have < 2)
			goto out;
		memcpy(&l, p, 2);
		l = le16toh(l);
		if (l > SV_NAME_MAX || have < 2u + l + 8u)
			goto out;
		char name[SV_NAME_MAX + 1];
		memcpy(name, p + 2, l);
		name[l] = '\0';
		memcpy(&bl, p + 2 + l, 8);
		bl = le64toh(bl);
		p += 2 + l + 8;
		have -= 2u + l + 8u;
		if (bl > have)
			goto out;
		roaring_bitmap_t *bm = sv_bitmap_load(p, bl, vol->nchunks);
		if (!bm)
			goto out;
		struct sv_snap *s = sv_snap_find_locked(vol, name);
		if (s && !s->invalid && !s->released)
			s->released = bm; /* others: a snapshot deleted since, ignore */
		else
			roaring_bitmap_free(bm);
		p += bl;
		have -= bl;
	}
	rc = 0;
out:
	free(buf);
	return rc;
}

int
sv_snap_release(struct sv_volume *vol, struct sv_snap *s, uint64_t off, uint64_t len, int *err)
{
	/* Only whole chunks are released; the last chunk of the volume
	 * counts as whole when the range reaches the end. */
	uint64_t cs = vol->chunk_size;
	uint64_t a = (off + cs - 1) >> vol->chunk_shift;
	uint64_t z = (off + len == vol->size) ? vol->nchunks : (off + len) >> vol->chunk_shift;
	if (a >= z)
		return 0;
	sv_lock_or_abort(&vol->cow_lock);
	size_t si = 0;
	while (si < vol->n_snaps && vol->snaps[si] != s)
		si++;
	if (si == vol->n_snaps) { /* invalidated meanwhile */
		sv_unlock_or_abort(&vol->cow_lock);
		*err = EIO;
		return -1;
	}
	roaring_bitmap_t *r = roaring_bitmap_from_range(a, z, 1);
	if (s->released)
		roaring_bitmap_andnot_inplace(r, s->released);
	if (roaring_bitmap_is_empty(r)) {
		sv_unlock_or_abort(&vol->cow_lock);
		roaring_bitmap_free(r);
		return 0;
	}
	if (!s->released)
		s->released = roaring_bitmap_create();
	roaring_bitmap_or_inplace(s->released, r);
	uint64_t mine = ++vol->rel_made;
	sv_unlock_or_abort(&vol->cow_lock);

	/* Recorded before anything is given up, and before the request is
	 * acknowledged (by this save or a grouped one).  A failed save takes
	 * the bits back in memory; a save by another release may have
	 * written them meanwhile, so a failed release may have taken effect
	 * on disk (as a failed write may have landed). */
	if (released_save(vol, mine) == -1) {
		sv_lock_or_abort(&vol->cow_lock);
		/* Only this release's bits: others made meanwhile (queued on
		 * the save) are in the same bitmap. */
		roaring_bitmap_andnot_inplace(s->released, r);
		if (roaring_bitmap_is_empty(s->released)) {
			roaring_bitmap_free(s->released);
			s->released = NULL;
		}
		sv_unlock_or_abort(&vol->cow_lock);
		roaring_bitmap_free(r);
		*err = sv_last_errno();
		return -1;
	}

	/* What may go: the pre-images this snapshot reads for those chunks,
	 * where every snapshot reading them released them too, and further
	 * copies of chunks every snapshot reading the origin released.  The
	 * whole range counts, not just what is new: a release here may free
	 * what another snapshot released earlier. */
	struct punch *punches = NULL;
	size_t npunch = 0;
	roaring_bitmap_t *whole = roaring_bitmap_from_range(a, z, 1);
	sv_lock_or_abort(&vol->cow_lock);
	roaring_bitmap_t *rel = roaring_bitmap_copy(whole);
	punches = calloc(vol->n_epochs ? vol->n_epochs : 1, sizeof *punches);
	for (size_t i = 0; punches && i < vol->n_epochs && !roaring_bitmap_is_empty(rel); i++) {
		struct sv_epoch *ep = vol->epochs[i];
		if (ep->id < s->epoch)
			continue;
		roaring_bitmap_t *pj = roaring_bitmap_and(rel, ep->changed);
		roaring_bitmap_andnot_inplace(rel, pj);
		roaring_bitmap_t *un = pj;
		if (!roaring_bitmap_is_empty(pj)) {
			un = unneeded_locked(vol, ep->id, pj);
			roaring_bitmap_free(pj);
		}
		if (roaring_bitmap_is_empty(un)) {
			roaring_bitmap_free(un);
			continue;
		}
		punches[npunch++] = (struct punch){.ep = ep, .chunks = un};
	}
	roaring_bitmap_t *un = unneeded_locked(vol, UINT64_MAX, whole);
	add_bitonly_locked(sv_current_epoch_locked(vol), un);
	roaring_bitmap_free(un);
	roaring_bitmap_free(whole);
	sv_unlock_or_abort(&vol->cow_lock);
	roaring_bitmap_free(rel);
	roaring_bitmap_free(r);
	punch_all(vol, punches, npunch);
	return 0;
}

void
sv_snap_refresh_current_locked(struct sv_volume *vol)
{
	struct sv_epoch *cur = sv_current_epoch_locked(vol);
	if (cur->nocopy) {
		roaring_bitmap_free(cur->nocopy);
		cur->nocopy = NULL;
	}
	if (cur->bitonly) {
		roaring_bitmap_free(cur->bitonly);
		cur->bitonly = NULL;
	}
	cur->cow = vol->n_snaps > 0;
	if (!cur->cow)
		return;
	uint64_t newest = vol->snaps[vol->n_snaps - 1]->epoch;
	if (newest == cur->id) {
		add_released_locked(vol);
		return;
	}
	cur->nocopy = roaring_bitmap_create();
	for (size_t i = 0; i < vol->n_epochs; i++)
		if (vol->epochs[i]->id >= newest)
			roaring_bitmap_or_inplace(cur->nocopy, vol->epochs[i]->changed);
	add_released_locked(vol);
}

void
sv_snap_gc_locked(struct sv_volume *vol, bool wait_writes, struct sv_epoch ***dropped,
		  size_t *n_dropped)
{
	*dropped = NULL;
	*n_dropped = 0;
	/* Snapshot reads hold epoch pointers between resolving and reading. */
	while (vol->snap_readers > 0)
		pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
	uint64_t oldest = vol->n_snaps ? vol->snaps[0]->epoch : UINT64_MAX;
	struct sv_epoch *cur = sv_current_epoch_locked(vol);
	for (;;) {
		bool busy = false;
		for (size_t i = 0; i < vol->n_epochs; i++)
			if (vol->epochs[i] != cur && vol->epochs[i]->id < oldest &&
			    vol->epochs[i]->writes)
				busy = true;
		if (!busy || !wait_writes)
			break;
		pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
	}
	size_t n = 0;
	for (size_t i = 0; i < vol->n_epochs; i++)
		if (vol->epochs[i] != cur && vol->epochs[i]->id < oldest && !vol->epochs[i]->writes)
			n++;
	if (n == 0)
		return;
	struct sv_epoch **d = malloc(n * sizeof *d);
	if (!d)
		return; /* try again next time */
	size_t k = 0, w = 0;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		struct sv_epoch *ep = vol->epochs[i];
		if (ep != cur && ep->id < oldest && !ep->writes)
			d[k++] = ep;
		else
			vol->epochs[w++] = ep;
	}
	vol->n_epochs = w;
	*dropped = d;
	*n_dropped = k;
}

static void
free_dropped(struct sv_volume *vol, struct sv_epoch **d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sv_epoch_retire(vol, d[i]);
	free(d);
}

/* ---- taking snapshots ---- */

/* Sync the origin once before the switch too (SNAPVOL_SNAP_PRESYNC, see
 * presync below); read once. */
static bool presync_on;
static pthread_once_t presync_once = PTHREAD_ONCE_INIT;

static void
read_presync(void)
{
	const char *env = getenv("SNAPVOL_SNAP_PRESYNC");
	presync_on = !(env && !strcmp(env, "0"));
}

struct group_member {
	struct sv_volume *vol;
	char snap[SV_NAME_MAX + 1];
	struct sv_snap *s;
	struct sv_epoch *old;
	struct sv_epoch *ep; /* the new epoch, once switched */
	struct sv_obj *pre;  /* native pre-images: its object, until the switch takes it */
	uint64_t pre_id;     /* ... made for this epoch id */
};

/* Native pre-images (store.h, vol_native_pre): make the object of the epoch
 * the snapshot starts before the instant (it may take a round trip to the
 * cluster).  One of that name can only be the leftover of a create that
 * failed or crashed before it was recorded: it is replaced. */
static int
make_native_pre(struct sv_volume *vol, struct group_member *mb)
{
	{
		SV_LOCK_SCOPE(&vol->cow_lock);
		mb->pre_id = sv_current_epoch_locked(vol)->id + 1;
	}
	char name[32];
	sv_epoch_pre_name(&(struct sv_epoch){.id = mb->pre_id}, name, sizeof name);
	const unsigned fl = SV_OBJ_CREATE | SV_OBJ_EXCL;
	int r = vol->ops->obj_open(vol->pool->st, vol->name, name, vol->size, fl, &mb->pre);
	if (r == -1 && errno == EEXIST &&
	    (vol->ops->obj_remove(vol->pool->st, vol->name, name) == 0 || errno == ENOENT))
		r = vol->ops->obj_open(vol->pool->st, vol->name, name, vol->size, fl, &mb->pre);
	if (r == -1) {
		mb->pre = NULL;
		return sv_error_errno("volume %s: cannot make the snapshot's pre-image object %s",
				      vol->name, name);
	}
	return 0;
}

/* Give back a native pre-image object no epoch took. */
static void
drop_native_pre(struct sv_volume *vol, struct group_member *mb)
{
	if (!mb->pre)
		return;
	char name[32];
	sv_epoch_pre_name(&(struct sv_epoch){.id = mb->pre_id}, name, sizeof name);
	vol->ops->obj_close(mb->pre);
	mb->pre = NULL;
	if (vol->ops->obj_remove(vol->pool->st, vol->name, name) == -1 && errno != ENOENT)
		sv_log_warn("volume %s: cannot remove %s: %m", vol->name, name);
}

static int
cmp_member(const void *a, const void *b)
{
	return strcmp(((const struct group_member *)a)->vol->name,
		      ((const struct group_member *)b)->vol->name);
}

static void
put_members(struct sv_pool *pool, struct group_member *m, size_t n)
{
	sv_lock_or_abort(&pool->lock);
	for (size_t i = 0; i < n; i++)
		if (m[i].vol)
			sv_volume_put_locked(m[i].vol);
	sv_unlock_or_abort(&pool->lock);
}

int
sv_snapshot_create(struct sv_pool *pool, const char *const *specs, size_t n,
		   const char *consistency)
{
	return sv_snapshot_create_ex(pool, specs, n, consistency, 0);
}

int
sv_snapshot_create_ex(struct sv_pool *pool, const char *const *specs, size_t n,
		      const char *consistency, unsigned flags)
{
	return sv_snapshot_create_cb(pool, specs, n, consistency, flags, NULL, NULL);
}

int
sv_snapshot_create_cb(struct sv_pool *pool, const char *const *specs, size_t n,
		      const char *consistency, unsigned flags, void (*taken)(void *arg), void *arg)
{
	if (flags & ~SV_SNAP_QUIESCE)
		return sv_error(EINVAL, "unknown snapshot flags 0x%x", flags);
	if (n == 0)
		return sv_error(EINVAL, "no snapshot named");
	if (!consistency)
		consistency = "crash";
	if (strcmp(consistency, "crash") && strcmp(consistency, "frozen"))
		return sv_error(EINVAL, "consistency must be 'crash' or 'frozen', not '%s'",
				consistency);
	struct group_member *m = calloc(n, sizeof *m);
	if (!m)
		return sv_error(ENOMEM, "out of memory");
	char vname[SV_NAME_MAX + 1];
	bool has;
	int rc = -1;
	size_t got = 0, saved = 0;
	for (size_t i = 0; i < n; i++) {
		if (sv_split_export_name(specs[i], strlen(specs[i]), vname, m[i].snap, &has) == -1)
			goto out;
		if (!has) {
			sv_error(EINVAL, "'%s' names no snapshot: write VOLUME@SNAPSHOT", specs[i]);
			goto out;
		}
		sv_lock_or_abort(&pool->lock);
		int r = sv_volume_get_locked(pool, vname, &m[i].vol);
		sv_unlock_or_abort(&pool->lock);
		if (r == -1)
			goto out;
		got = i + 1;
		for (size_t k = 0; k < i; k++)
			if (m[k].vol == m[i].vol) {
				sv_error(EINVAL, "volume %s appears twice in one snapshot group",
					 vname);
				goto out;
			}
	}
	qsort(m, n, sizeof *m, cmp_member);
	for (size_t i = 0; i < n; i++)
		sv_lock_or_abort(&m[i].vol->admin_lock);

	/* Check everything before switching anything. */
	for (size_t i = 0; i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		SV_LOCK_SCOPE(&vol->cow_lock);
		if (sv_snap_find_locked(vol, m[i].snap)) {
			sv_error(EEXIST, "snapshot %s@%s already exists", vol->name, m[i].snap);
			goto unlock_admin;
		}
		if (vol->rollback_to[0]) {
			sv_error(EBUSY, "volume %s is being rolled back", vol->name);
			goto unlock_admin;
		}
		if (!(m[i].s = calloc(1, sizeof *m[i].s))) {
			sv_error(ENOMEM, "out of memory");
			goto unlock_admin;
		}
	}

	/* Presync: the sync after the switch must push every page dirtied
	 * before it, and every first write after the switch waits for its
	 * commit, whose device flush queues behind that sync (on a
	 * write-back-cached disk a flush waits for everything written before
	 * it).  Before the switch nobody waits for a commit of this epoch's
	 * copies, so the bulk is synced here, while the writers' cost is
	 * that of any sync; the sync after the switch then finds only what
	 * was written during this one.  Durability is unchanged: that sync
	 * still makes every write acknowledged before the switch durable.
	 * Not for a frozen or quiesced snapshot: nothing writes then (the
	 * freeze's FLUSHes synced it), and a sync would only lengthen the
	 * freeze window (issue 4). */
	pthread_once(&presync_once, read_presync);
	uint64_t t_pre = sv_now_ns();
	bool presync = presync_on && !(flags & SV_SNAP_QUIESCE) && strcmp(consistency, "frozen");
	for (size_t i = 0; presync && i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		if (sv_store_durable(vol->ops))
			continue; /* writes durable when acknowledged (RADOS) */
		if (sv_writeback_presync(vol) == -1) {
			sv_wb_note_error(vol, errno ? errno : EIO); /* writes may be lost */
			sv_error_errno("volume %s: cannot sync for the snapshot", vol->name);
			goto unlock_admin;
		}
	}

	for (size_t i = 0; i < n; i++)
		if (m[i].vol->native_pre && make_native_pre(m[i].vol, &m[i]) == -1)
			goto unlock_admin;

	/* Quiesce: hold the group's writes and let those in flight finish
	 * (a block-level freeze around the switch); they are released right
	 * after it, before the durability wait, so the hold stays short. */
	bool quiesced = false;
	uint64_t t_held = sv_now_ns();
	if (flags & SV_SNAP_QUIESCE) {
		for (size_t i = 0; i < n; i++) {
			SV_LOCK_SCOPE(&m[i].vol->cow_lock);
			sv_gate_close_locked(m[i].vol);
		}
		for (size_t i = 0; i < n; i++) {
			SV_LOCK_SCOPE(&m[i].vol->cow_lock);
			sv_gate_drain_locked(m[i].vol);
		}
		quiesced = true;
	}
	uint64_t t_drained = sv_now_ns();

	/* The instant: every volume of the group switches under all locks. */
	for (size_t i = 0; i < n; i++)
		sv_lock_or_abort(&m[i].vol->cow_lock);
	uint64_t now = sv_realtime_s();
	int err = 0;
	for (size_t i = 0; i < n && !err; i++) {
		struct sv_volume *vol = m[i].vol;
		struct sv_epoch *old = sv_current_epoch_locked(vol);
		struct sv_epoch *ep = sv_epoch_new_locked(vol, old->id + 1);
		struct sv_snap *s = m[i].s;
		snprintf(s->name, sizeof s->name, "%s", m[i].snap);
		s->epoch = old->id + 1;
		s->created = now;
		snprintf(s->consistency, sizeof s->consistency, "%s", consistency);
		s->pending = true;
		if (!ep || insert_snap_locked(vol, s) == -1) {
			err = sv_last_errno();
			break;
		}
		ep->cow = true;
		if (m[i].pre) {
			if (ep->id != m[i].pre_id) { /* admin_lock keeps epochs still */
				err = EIO;
				sv_error(EIO,
					 "volume %s: epoch %" PRIu64 " changed under a snapshot",
					 vol->name, old->id);
				break;
			}
			ep->pre = m[i].pre; /* not yet seen by anyone: no pre_lock */
			m[i].pre = NULL;
		}
		m[i].old = old;
		m[i].ep = ep;
		vol->setting_up++;
	}
	for (size_t i = 0; quiesced && i < n; i++)
		sv_gate_open_locked(m[i].vol);
	for (size_t i = n; i-- > 0;)
		sv_unlock_or_abort(&m[i].vol->cow_lock);
	uint64_t t_switched = sv_now_ns();
	if (quiesced)
		sv_log_debug("snapshot %s: writes held %" PRIu64 " us around the switch", specs[0],
			     (t_switched - t_held) / 1000);
	if (err)
		goto undo;
	if (taken)
		taken(arg);

	/* Writes that started before the switch belong to the snapshot: wait
	 * for them, then make them durable. */
	for (size_t i = 0; i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		SV_LOCK_SCOPE(&vol->cow_lock);
		while (sv_older_writes_locked(vol, m[i].old->id + 1))
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
		if (sv_epoch_preserve_locked(vol, m[i].ep) == -1) {
			sv_error_errno("volume %s: cannot keep the snapshot's pre-images",
				       vol->name);
			goto undo;
		}
	}
	uint64_t t_older = sv_now_ns();
	struct sv_wb_probe probe = {.running = false};
	if (sv_freeze_tracing())
		sv_wb_probe_start(pool, &probe);
	for (size_t i = 0; i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		__atomic_add_fetch(&vol->snap_sync_seq, 1, __ATOMIC_RELAXED);
		int r = vol->ops->obj_sync(vol->origin);
		__atomic_add_fetch(&vol->snap_sync_seq, 1, __ATOMIC_RELAXED);
		if (r == -1) {
			sv_wb_probe_stop(&probe);
			sv_wb_note_error(vol, errno ? errno : EIO); /* writes may be lost */
			sv_error_errno("volume %s: cannot sync for the snapshot", vol->name);
			goto undo;
		}
	}
	uint64_t t_synced = sv_now_ns();
	sv_wb_probe_stop(&probe);
	for (; saved < n; saved++)
		if (sv_volume_save_meta(m[saved].vol) == -1)
			goto undo;
	if (sv_freeze_tracing())
		sv_log_info("trace: snapshot %s: presync %" PRIu64 " us", specs[0],
			    (t_held - t_pre) / 1000);
	if (sv_freeze_tracing())
		sv_log_info("trace: snapshot %s: drain %" PRIu64 " us, switch %" PRIu64
			    " us, older writes %" PRIu64 " us, origin sync %" PRIu64
			    " us, metadata %" PRIu64 " us; at the sync: dirty %ld KiB, writeback "
			    "%ld KiB; write-behind max %zu KiB, near full in %u of %u samples",
			    specs[0], (t_drained - t_held) / 1000, (t_switched - t_drained) / 1000,
			    (t_older - t_switched) / 1000, (t_synced - t_older) / 1000,
			    (sv_now_ns() - t_synced) / 1000, probe.dirty_kib, probe.wback_kib,
			    probe.wb_max >> 10, probe.full_samples, probe.samples);
	for (size_t i = 0; i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		SV_LOCK_SCOPE(&vol->cow_lock);
		m[i].s->pending = false;
		/* Invalidated while pending (sv_snap_invalidate_epoch): it is
		 * recorded so; it joins the others. */
		if (m[i].s->invalid && add_dead_locked(vol, m[i].s) == 0)
			remove_snap_locked(vol, m[i].s);
		m[i].s = NULL;
		vol->setting_up--;
		pthread_cond_broadcast(&vol->cow_cond);
	}
	rc = 0;
	goto unlock_admin;

undo:
	for (size_t i = 0; i < n; i++) {
		struct sv_volume *vol = m[i].vol;
		SV_LOCK_SCOPE(&vol->cow_lock);
		if (m[i].s && m[i].s->pending) {
			remove_snap_locked(vol, m[i].s);
			sv_snap_refresh_current_locked(vol);
			if (m[i].old)
				vol->setting_up--;
			pthread_cond_broadcast(&vol->cow_cond);
		}
	}
	/* Nothing is taken unless all are: members whose record was already
	 * written get it rewritten without the snapshot (else it would come
	 * back at the next open, half a group). */
	if (saved > 0) {
		int e = sv_last_errno();
		char msg[1024];
		snprintf(msg, sizeof msg, "%s", sv_last_error());
		for (size_t i = 0; i < saved; i++)
			if (sv_volume_save_meta(m[i].vol) == -1)
				sv_log_warn(
				    "volume %s: snapshot %s@%s of a failed group may come back "
				    "at the next open: %s",
				    m[i].vol->name, m[i].vol->name, m[i].snap, sv_last_error());
		sv_error(e, "%s", msg);
	}
unlock_admin:
	for (size_t i = 0; i < n; i++) {
		drop_native_pre(m[i].vol, &m[i]);
		free(m[i].s);
		sv_unlock_or_abort(&m[i].vol->admin_lock);
	}
out:
	put_members(pool, m, got);
	free(m);
	return rc;
}

/* ---- listing ---- */

struct epoch_space {
	uint64_t id, bytes;
};

/* The epochs from snapshot si up to the next one exist for it (and serve
 * older ones as fallbacks); the space their objects hold, as measured. */
static uint64_t
space_held_locked(struct sv_volume *vol, size_t si, const struct epoch_space *es, size_t n)
{
	uint64_t from = vol->snaps[si]->epoch;
	uint64_t to = si + 1 < vol->n_snaps ? vol->snaps[si + 1]->epoch : UINT64_MAX;
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++)
		if (es[i].id >= from && es[i].id < to)
			total += es[i].bytes;
	return total;
}

static int
get_volume(struct sv_pool *pool, const char *name, struct sv_volume **out)
{
	if (sv_check_name(name, "volume") == -1)
		return -1;
	SV_LOCK_SCOPE(&pool->lock);
	return sv_volume_get_locked(pool, name, out);
}

static void
put_volume(struct sv_pool *pool, struct sv_volume *vol)
{
	SV_LOCK_SCOPE(&pool->lock);
	sv_volume_put_locked(vol);
}

static int
cmp_info_epoch(const void *a, const void *b)
{
	uint64_t x = ((const struct sv_snapshot_info *)a)->epoch;
	uint64_t y = ((const struct sv_snapshot_info *)b)->epoch;
	return x < y ? -1 : x > y;
}

int
sv_snapshot_list(struct sv_pool *pool, const char *volume, struct sv_snapshot_info **infos,
		 size_t *n)
{
	struct sv_volume *vol;
	if (get_volume(pool, volume, &vol) == -1)
		return -1;
	/* Measure every epoch's pre-image object first (pre_lock, I/O),
	 * then build the list under cow_lock.  Epoch structs outlive their
	 * use (the graveyard), so the copied pointers stay valid. */
	sv_lock_or_abort(&vol->cow_lock);
	size_t ne = vol->n_epochs;
	struct sv_epoch **eps = malloc((ne ? ne : 1) * sizeof *eps);
	struct epoch_space *es = malloc((ne ? ne : 1) * sizeof *es);
	for (size_t i = 0; eps && es && i < ne; i++) {
		eps[i] = vol->epochs[i];
		es[i] = (struct epoch_space){.id = eps[i]->id};
	}
	sv_unlock_or_abort(&vol->cow_lock);
	if (!eps || !es) {
		free(eps);
		free(es);
		put_volume(pool, vol);
		return sv_error(ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < ne; i++) {
		struct sv_obj *o;
		if (sv_epoch_pre(vol, eps[i], false, &o) == 0 && o &&
		    vol->ops->obj_allocated(o, &es[i].bytes) == -1)
			es[i].bytes = errno == ENOTSUP ? UINT64_MAX : 0;
	}
	sv_lock_or_abort(&vol->cow_lock);
	/* A store that keeps the pre-images itself may not measure them
	 * (native pre-images): count the chunks the epoch holds instead. */
	for (size_t i = 0; i < ne; i++) {
		if (es[i].bytes != UINT64_MAX)
			continue;
		es[i].bytes = 0;
		for (size_t k = 0; k < vol->n_epochs; k++)
			if (vol->epochs[k] == eps[i]) /* not retired meanwhile */
				es[i].bytes = roaring_bitmap_get_cardinality(eps[i]->changed)
					      << vol->chunk_shift;
	}
	free(eps);
	size_t total = vol->n_snaps + vol->n_dead;
	struct sv_snapshot_info *out = calloc(total ? total : 1, sizeof *out);
	size_t k = 0;
	for (size_t i = 0; out && i < total; i++) {
		const struct sv_snap *s =
		    i < vol->n_snaps ? vol->snaps[i] : vol->dead[i - vol->n_snaps];
		if (s->pending)
			continue;
		struct sv_snapshot_info *o = &out[k++];
		snprintf(o->volume, sizeof o->volume, "%s", vol->name);
		snprintf(o->name, sizeof o->name, "%s", s->name);
		o->epoch = s->epoch;
		o->created = s->created;
		snprintf(o->consistency, sizeof o->consistency, "%s", s->consistency);
		o->invalid = s->invalid;
		o->space = i < vol->n_snaps ? space_held_locked(vol, i, es, ne) : 0;
		o->open_views = s->refs;
	}
	sv_unlock_or_abort(&vol->cow_lock);
	free(es);
	put_volume(pool, vol);
	if (!out)
		return sv_error(ENOMEM, "out of memory");
	/* Oldest first, as documented: invalidated snapshots sit apart from
	 * the live ones (vol->dead) but take their place by epoch. */
	qsort(out, k, sizeof *out, cmp_info_epoch);
	*infos = out;
	*n = k;
	return 0;
}

/* ---- deleting ---- */

/* Open the volume and find its snapshot for an administrative operation:
 * returns with admin_lock and cow_lock held, or -1 with nothing held. */
static int
admin_begin(struct sv_pool *pool, const char *volume, const char *snap, struct sv_volume **volp,
	    struct sv_snap **sp)
{
	if (sv_check_name(snap, "snapshot") == -1)
		return -1;
	struct sv_volume *vol;
	if (get_volume(pool, volume, &vol) == -1)
		return -1;
	sv_lock_or_abort(&vol->admin_lock);
	sv_lock_or_abort(&vol->cow_lock);
	struct sv_snap *s = sv_snap_find_locked(vol, snap);
	if (!s || s->pending) {
		sv_unlock_or_abort(&vol->cow_lock);
		sv_unlock_or_abort(&vol->admin_lock);
		put_volume(pool, vol);
		return sv_error(ENOENT, "snapshot %s@%s does not exist", volume, snap);
	}
	*volp = vol;
	*sp = s;
	return 0;
}

int
sv_snapshot_delete(struct sv_pool *pool, const char *volume, const char *snap)
{
	struct sv_volume *vol;
	struct sv_snap *s;
	if (admin_begin(pool, volume, snap, &vol, &s) == -1)
		return -1;
	int rc = -1;
	if (s->refs) {
		sv_error(EBUSY, "snapshot %s@%s is in use by %u connection%s", volume, snap,
			 s->refs, s->refs == 1 ? "" : "s");
		goto unlock_cow;
	}
	if (vol->rollback_to[0] && !strcmp(vol->rollback_to, snap)) {
		sv_error(EBUSY, "snapshot %s@%s is the target of a rollback", volume, snap);
		goto unlock_cow;
	}
	if (remove_dead_locked(vol, s)) {
		/* Invalidated: its space is already gone; only its entry is left. */
		sv_unlock_or_abort(&vol->cow_lock);
		if (sv_volume_save_meta(vol) == -1) {
			sv_lock_or_abort(&vol->cow_lock);
			add_dead_locked(vol, s); /* the array has room: it held s */
			goto unlock_cow;
		}
		snap_free(s);
		rc = 0;
		goto unlock_admin;
	}
	size_t si = 0;
	while (vol->snaps[si] != s)
		si++;
	uint64_t k = s->epoch;
	bool has_prev = si > 0;
	uint64_t prev = has_prev ? vol->snaps[si - 1]->epoch : 0;
	uint64_t next = si + 1 < vol->n_snaps ? vol->snaps[si + 1]->epoch : UINT64_MAX;
	remove_snap_locked(vol, s);
	sv_unlock_or_abort(&vol->cow_lock);

	if (sv_volume_save_meta(vol) == -1) {
		sv_lock_or_abort(&vol->cow_lock);
		insert_snap_locked(vol, s); /* the array has room: it held s */
		sv_unlock_or_abort(&vol->cow_lock);
		goto unlock_admin;
	}
	snap_free(s);
	(void)sv_snap_released_save(vol);

	/* The snapshot is gone for good; now give its space back. */
	struct punch *punches = NULL;
	size_t npunch = 0;
	struct sv_epoch **dropped = NULL;
	size_t ndropped = 0;
	sv_lock_or_abort(&vol->cow_lock);
	if (vol->n_snaps == 0) {
		/* The last one: start an epoch that copies nothing. */
		struct sv_epoch *old = sv_current_epoch_locked(vol);
		struct sv_epoch *ep = sv_epoch_new_locked(vol, old->id + 1);
		if (ep)
			ep->cow = false;
	} else if (has_prev) {
		roaring_bitmap_t *u = roaring_bitmap_create();
		for (size_t i = 0; i < vol->n_epochs; i++)
			if (vol->epochs[i]->id >= prev && vol->epochs[i]->id < k)
				roaring_bitmap_or_inplace(u, vol->epochs[i]->changed);
		punches = calloc(vol->n_epochs, sizeof *punches);
		for (size_t i = 0; punches && i < vol->n_epochs; i++) {
			struct sv_epoch *ep = vol->epochs[i];
			if (ep->id < k || ep->id >= next)
				continue;
			roaring_bitmap_t *r = roaring_bitmap_and(ep->changed, u);
			if (roaring_bitmap_is_empty(r)) {
				roaring_bitmap_free(r);
				continue;
			}
			roaring_bitmap_andnot_inplace(ep->changed, r);
			punches[npunch++] = (struct punch){.ep = ep, .chunks = r};
		}
		roaring_bitmap_free(u);
	}
	sv_snap_refresh_current_locked(vol);
	sv_snap_gc_locked(vol, true, &dropped, &ndropped);
	sv_unlock_or_abort(&vol->cow_lock);

	/* Bits first (a checkpoint), then space. */
	if (sv_journal_checkpoint_keep(vol) == -1)
		sv_log_warn("%s", sv_last_error()); /* it names the volume */
	punch_all(vol, punches, npunch);
	free_dropped(vol, dropped, ndropped);
	rc = 0;
	goto unlock_admin;

unlock_cow:
	sv_unlock_or_abort(&vol->cow_lock);
unlock_admin:
	sv_unlock_or_abort(&vol->admin_lock);
	put_volume(pool, vol);
	return rc;
}

/* ---- a full store ---- */

int
sv_snap_invalidate_oldest(struct sv_volume *vol)
{
	sv_lock_or_abort(&vol->cow_lock);
	if (!vol->drop_when_full || vol->n_snaps == 0 || vol->snaps[0]->pending) {
		sv_unlock_or_abort(&vol->cow_lock);
		return -1;
	}
	struct sv_snap *s = vol->snaps[0];
	remove_snap_locked(vol, s);
	if (add_dead_locked(vol, s) == -1) {
		insert_snap_locked(vol, s);
		sv_unlock_or_abort(&vol->cow_lock);
		return -1;
	}
	sv_unlock_or_abort(&vol->cow_lock);
	/* Durably invalid before anything it needs is given up. */
	if (sv_volume_save_meta(vol) == -1) {
		sv_lock_or_abort(&vol->cow_lock);
		remove_dead_locked(vol, s);
		s->invalid = false;
		insert_snap_locked(vol, s);
		sv_unlock_or_abort(&vol->cow_lock);
		return -1;
	}
	sv_log_warn("volume %s: the store is full: snapshot %s invalidated to make room "
		    "(policy drop-snapshot)",
		    vol->name, s->name);
	struct sv_epoch **dropped;
	size_t nd;
	sv_lock_or_abort(&vol->cow_lock);
	sv_snap_refresh_current_locked(vol);
	sv_snap_gc_locked(vol, false, &dropped, &nd);
	pthread_cond_broadcast(&vol->cow_cond);
	sv_unlock_or_abort(&vol->cow_lock);
	if (sv_journal_checkpoint_keep(vol) == -1)
		sv_log_warn("%s", sv_last_error()); /* it names the volume */
	free_dropped(vol, dropped, nd);
	sv_reclaim_wait(vol->pool); /* the retry needs the space now */
	return 0;
}

/* ---- a pre-image that can no longer be trusted ---- */

int
sv_snap_invalidate_epoch(struct sv_volume *vol, uint64_t epoch, int cause)
{
	char names[512] = "";
	size_t len = 0, moved = 0;
	sv_lock_or_abort(&vol->cow_lock);
	for (size_t i = 0; i < vol->n_snaps && vol->snaps[i]->epoch <= epoch;) {
		struct sv_snap *s = vol->snaps[i];
		if (len < sizeof names)
			len += (size_t)snprintf(names + len, sizeof names - len, "%s%s",
						moved ? ", " : "", s->name);
		moved++;
		if (s->pending) {
			/* being created: recorded invalid by its own metadata
			 * write or ours; sv_snapshot_create_ex moves it */
			s->invalid = true;
			i++;
		} else if (add_dead_locked(vol, s) == 0) {
			remove_snap_locked(vol, s);
		} else {
			s->invalid = true; /* readers see it; the record below decides */
			i++;
		}
	}
	/* Writes go on copying as before until the record is durable: none
	 * may skip a copy on the strength of an invalidation a crash forgets. */
	sv_unlock_or_abort(&vol->cow_lock);
	if (!moved)
		return 0;
	if (sv_volume_save_meta(vol) == -1) {
		__atomic_store_n(&vol->pre_untrusted, true, __ATOMIC_RELEASE);
		sv_log_error("volume %s: a sync of the pre-images of epoch %" PRIu64
			     " failed (%s) and snapshot(s) %s cannot be recorded invalid (%s): "
			     "writes to the volume fail until it is reopened",
			     vol->name, epoch, strerror(cause), names, sv_last_error());
		return -1;
	}
	sv_log_error("volume %s: a sync of the pre-images of epoch %" PRIu64
		     " failed (%s): snapshot(s) %s can no longer be trusted and are now invalid "
		     "(reads of them fail; delete them); the volume goes on",
		     vol->name, epoch, strerror(cause), names);
	sv_lock_or_abort(&vol->cow_lock);
	sv_snap_refresh_current_locked(vol);
	pthread_cond_broadcast(&vol->cow_cond);
	sv_unlock_or_abort(&vol->cow_lock);
	return 0;
}

/* ---- rollback ---- */

static int
do_rollback(struct sv_volume *vol, struct sv_snap *s)
{
	/* Every chunk that changed since the snapshot. */
	roaring_bitmap_t *d = roaring_bitmap_create();
	sv_lock_or_abort(&vol->cow_lock);
	for (size_t i = 0; i < vol->n_epochs; i++)
		if (vol->epochs[i]->id >= s->epoch)
			roaring_bitmap_or_inplace(d, vol->epochs[i]->changed);
	/* Released chunks read as zeros in the snapshot: so they become. */
	if (s->released)
		roaring_bitmap_or_inplace(d, s->released);
	bool newest = vol->n_snaps && vol->snaps[vol->n_snaps - 1] == s;
	sv_unlock_or_abort(&vol->cow_lock);

	const uint64_t piece = 1 << 20;
	char *buf = malloc(piece);
	int err = 0;
	roaring_uint32_iterator_t *it = roaring_create_iterator(d);
	while (buf && it->has_value && !err) {
		uint64_t a = it->current_value, z = a + 1;
		while (roaring_advance_uint32_iterator(it) && it->current_value == z)
			z++;
		uint64_t off = a << vol->chunk_shift, end = z << vol->chunk_shift;
		if (end > vol->size)
			end = vol->size;
		while (off < end && !err) {
			uint64_t len = end - off < piece ? end - off : piece;
			struct sv_write_ticket t;
			if (sv_cow_snap_pread(vol, s, buf, len, off, &err) == 0 &&
			    sv_cow_write_begin(vol, off, len, false, &t, &err) == 0) {
				if (vol->ops->obj_pwrite(vol->origin, buf, len, off, 0) == -1)
					err = errno ? errno : EIO;
				sv_cow_write_end(vol, &t);
			}
			off += len;
		}
	}
	roaring_free_uint32_iterator(it);
	free(buf);
	roaring_bitmap_free(d);
	if (!buf)
		err = ENOMEM;
	if (!err && vol->ops->obj_sync(vol->origin) == -1) {
		err = errno ? errno : EIO;
		sv_wb_note_error(vol, err); /* writes before it may be lost */
	}
	if (err)
		return sv_error(err, "volume %s: rollback to %s failed: %s", vol->name, s->name,
				strerror(err));
	if (newest && !s->released && !vol->native_pre) {
		/* The origin is the snapshot again, exactly: nothing has changed
		 * since it, and its pre-images are redundant.  (Not so with
		 * released chunks: the origin now holds zeros there, and older
		 * snapshots may still need what the pre-images hold.  Nor with
		 * native pre-images: the store's copy for the current epoch was
		 * taken at its start, which may be after the snapshot (a newer
		 * one was deleted since), and a chunk's next first write would
		 * not take it again; the bits stay, and diffs since the snapshot
		 * list the rolled-back chunks too.) */
		sv_lock_or_abort(&vol->cow_lock);
		/* Snapshot reads in flight may have resolved chunks to these
		 * pre-images (about to be punched), or have read the origin
		 * before this rollback rewrote it, counting on a bit they will
		 * find set when they re-check (cow.c): let them finish while
		 * the bits are there.  Reads that start once the bits are gone
		 * read the origin, which is the snapshot again. */
		while (vol->snap_readers > 0)
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
		for (size_t i = 0; i < vol->n_epochs; i++)
			if (vol->epochs[i]->id >= s->epoch)
				roaring_bitmap_clear(vol->epochs[i]->changed);
		sv_snap_refresh_current_locked(vol);
		sv_unlock_or_abort(&vol->cow_lock);
		if (sv_journal_checkpoint_keep(vol) == -1)
			return -1;
		for (size_t i = 0; i < vol->n_epochs; i++) {
			struct sv_obj *pre;
			if (vol->epochs[i]->id >= s->epoch &&
			    sv_epoch_pre(vol, vol->epochs[i], false, &pre) == 0 && pre)
				(void)vol->ops->obj_punch(pre, 0, vol->size);
		}
	}
	return 0;
}

/* The target of a rollback was invalidated (a pre-image sync failed on the
 * way): the rollback can never be finished.  The volume keeps the mixture
 * of old and rolled-back chunks it has; say so, and let writes go on. */
static int
abandon_rollback(struct sv_volume *vol)
{
	sv_log_error("volume %s: the rollback to %s cannot be finished: that snapshot is now "
		     "invalid; the volume holds a mixture of its contents before the rollback "
		     "and the snapshot's",
		     vol->name, vol->rollback_to);
	vol->rollback_to[0] = '\0';
	return sv_volume_save_meta(vol);
}

static bool
snap_invalid(struct sv_volume *vol, struct sv_snap *s)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	return s->invalid;
}

int
sv_snap_finish_rollback(struct sv_volume *vol)
{
	struct sv_snap *s = sv_snap_find_locked(vol, vol->rollback_to);
	if (s->invalid)
		return abandon_rollback(vol);
	sv_log_info("volume %s: finishing the interrupted rollback to %s", vol->name,
		    vol->rollback_to);
	if (do_rollback(vol, s) == -1)
		return -1;
	vol->rollback_to[0] = '\0';
	return sv_volume_save_meta(vol);
}

int
sv_snapshot_rollback(struct sv_pool *pool, const char *volume, const char *snap)
{
	struct sv_volume *vol;
	struct sv_snap *s;
	if (admin_begin(pool, volume, snap, &vol, &s) == -1)
		return -1;
	int rc = -1;
	if (s->invalid) {
		sv_unlock_or_abort(&vol->cow_lock);
		sv_error(EIO, "snapshot %s@%s is invalid: it cannot be rolled back to", volume,
			 snap);
		goto out;
	}
	if (vol->freezes) {
		/* A freeze promises the volume does not change until it ends. */
		sv_unlock_or_abort(&vol->cow_lock);
		sv_error(EBUSY, "volume %s is frozen: thaw it before a rollback", volume);
		goto out;
	}
	/* Hold new writes (one more holder of the freeze gate); let those in
	 * flight finish. */
	sv_gate_close_locked(vol);
	sv_gate_drain_locked(vol);
	snprintf(vol->rollback_to, sizeof vol->rollback_to, "%s", snap);
	sv_unlock_or_abort(&vol->cow_lock);
	if (sv_volume_save_meta(vol) == -1) {
		vol->rollback_to[0] = '\0';
	} else if (do_rollback(vol, s) == 0) {
		vol->rollback_to[0] = '\0';
		rc = sv_volume_save_meta(vol);
		if (rc == -1) /* still recorded: a failed rollback, as below */
			snprintf(vol->rollback_to, sizeof vol->rollback_to, "%s", snap);
	} else if (snap_invalid(vol, s)) {
		int e = sv_last_errno();
		char msg[1024];
		snprintf(msg, sizeof msg, "%s", sv_last_error());
		if (abandon_rollback(vol) == -1) /* recorded still: the next open abandons it */
			snprintf(vol->rollback_to, sizeof vol->rollback_to, "%s", snap);
		sv_error(e, "%s", msg);
	}
	/* On failure the target stays persisted: the next open finishes it,
	 * and until a rollback succeeds the volume refuses writes (cow.c),
	 * which that would overwrite. */
	sv_lock_or_abort(&vol->cow_lock);
	sv_gate_open_locked(vol);
	sv_unlock_or_abort(&vol->cow_lock);
out:
	sv_unlock_or_abort(&vol->admin_lock);
	put_volume(pool, vol);
	return rc;
}

/* ---- consistency ---- */

int
sv_snapshot_set_consistency(struct sv_pool *pool, const char *volume, const char *snap,
			    const char *consistency)
{
	if (!consistency || (strcmp(consistency, "crash") && strcmp(consistency, "frozen")))
		return sv_error(EINVAL, "consistency must be 'crash' or 'frozen', not '%s'",
				consistency ? consistency : "(none)");
	struct sv_volume *vol;
	struct sv_snap *s;
	if (admin_begin(pool, volume, snap, &vol, &s) == -1)
		return -1;
	char old[sizeof s->consistency];
	snprintf(old, sizeof old, "%s", s->consistency);
	snprintf(s->consistency, sizeof s->consistency, "%s", consistency);
	sv_unlock_or_abort(&vol->cow_lock);
	int rc = 0;
	if (strcmp(old, consistency) && (rc = sv_volume_save_meta(vol)) == -1) {
		sv_lock_or_abort(&vol->cow_lock);
		snprintf(s->consistency, sizeof s->consistency, "%s", old);
		sv_unlock_or_abort(&vol->cow_lock);
	}
	sv_unlock_or_abort(&vol->admin_lock);
	put_volume(pool, vol);
	return rc;
}
