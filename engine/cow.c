/*
 * cow.c: copy-on-write with shared pre-images.
 *
 * DESIGN
 *
 * Time is cut into epochs by snapshots: taking a snapshot ends the current
 * epoch and starts the next, and the snapshot is "the volume as it was at
 * the start of epoch k".  For each epoch E the volume keeps a bitmap
 * changed[E] and a sparse pre-image object of the volume's size that holds,
 * at each chunk's own offset, the chunk as it was just before its first
 * write in E.
 *
 *   - Snapshot k reads chunk c from the first epoch E >= k whose changed[E]
 *     has c; if none has it, c has not changed since, and the origin holds
 *     it.  One pre-image serves every snapshot taken since c last changed,
 *     so a write never costs more with more snapshots.
 *   - The union of changed[E] for k <= E is exactly what changed since
 *     snapshot k: change tracking costs nothing more.
 *
 * The write path (sv_cow_write_begin, then the origin write, then
 * sv_cow_write_end):
 *
 *   1. Under cow_lock, stamp the write with the current epoch (so a
 *      snapshot can wait for every write stamped before it) and decide per
 *      chunk: no copy needed (the epoch's nocopy set has it: one bit test,
 *      the rewrite fast path), copy it myself (claim it in the in-flight
 *      set), or wait for another writer's copy of it.
 *   2. Copy my claimed chunks as runs, skipping holes (a hole reads back as
 *      zeros from the sparse pre-image too), then commit them through the
 *      journal (journal.c): pre-image data synced, record synced, bits set,
 *      with group commit across writers.
 *   3. Wait (on cow_cond, never by polling) for chunks others are copying,
 *      then re-check: a failed copy is retried by whoever comes next.
 *   4. Only then is the origin written (DESIGN invariant 1).
 *
 * Bit-only records: a chunk every snapshot that would read its pre-image
 * has released (a trim on the snapshot's export, snapshot.c) needs no copy,
 * but a write to it must still show in every diff (DESIGN invariant 8).
 * Such chunks are in the current epoch's bitonly set: their first write
 * goes through steps 1-3 like a copy but copies no data, so changed[E]
 * gets the bit, durably, before the origin is written, and the pre-image
 * stays a hole.  Nobody reads that hole: every snapshot that would read
 * epoch E for the chunk released it and reads zeros before looking at the
 * epochs, and snapshots taken later never read E.
 *
 * Native pre-images (store.h, vol_native_pre: RADOS self-managed
 * snapshots): the store keeps the origin's old bytes itself, the OSD
 * cloning a stripe on its first write after a snapshot, inside the
 * cluster.  A first write then costs a record and no copy: step 2 copies
 * nothing, and the commit makes the bits durable before the origin write
 * as always (so diffs and the snapshot reads' resolution are unchanged).
 * What the store keeps must hold every write of the older epochs and
 * none of the new one's, so sv_epoch_preserve_locked starts it once per
 * epoch, after the older epochs' writes have drained (the wait copies
 * make anyway) and before the epoch's first write reaches the origin.
 * The epoch's object is made before the switch (snapshot.c): making it
 * takes a round trip, the switch must not.
 *
 * Deadlock freedom (invariant 4): a writer claims chunks in ascending order
 * and finishes its own copies before it waits for anyone else's, so no
 * writer ever holds a claim while waiting: there is no cycle to form.
 *
 * Torn pre-images: a copy in epoch E+1 could read a chunk while a write
 * stamped E (started before the snapshot, still in flight) is writing it.
 * So copies in an epoch wait until every older epoch's writes have drained;
 * snapshot creation waits for the same thing before it returns, so this
 * only ever delays the first copies after a snapshot, by the length of the
 * writes that were in flight at the switch.
 *
 * Landing (write-behind, writebehind.c): a write acknowledged before its
 * copy holds its chunks as "landing" (vol->landing, counted per chunk in
 * vol->lcount) until the origin has its data.  A later write of the same
 * bytes, in place or behind, waits for it in admit_locked, so writes reach
 * the origin in acknowledgement order.  A write of other bytes of a
 * landing chunk does not wait there: if the chunk still needs a copy it
 * goes behind too (the chunk then has two landings), and its copy waits
 * like any copy: for the older epochs' writes (so a write stamped after a
 * snapshot copies the chunk only once the older write is on the origin,
 * and the snapshot between them holds the older write), or for the copy in
 * flight of its own epoch; if not, it is written in place at once, and its
 * bytes are not the landing ones.  Before session 6 such a write waited
 * for the whole landing (copy, commit, origin write), and during a create
 * that commit queued behind the create's origin sync: most of the writes
 * held over 1 ms during creates.  Waits over 1 ms are traced
 * (SNAPVOL_TRACE_FREEZE).  Session 5 let any later write follow the
 * landing instead (SNAPVOL_WB_FOLLOW); it filled write-behind with chains
 * of followers and made creates 3x slower on a quiet machine, and was
 * removed (docs/design-notes.md).
 *
 * The snapshot read path (sv_cow_snap_pread) resolves each chunk to an
 * epoch or to the origin under cow_lock, waits for a copy in flight, reads
 * without the lock, and re-checks the chunks it read from the origin: a
 * copy that completed meanwhile may have let a writer change the origin,
 * and then the chunk is read again from its new pre-image.  This works
 * because an origin chunk is only ever overwritten after its pre-image's
 * bit is set (a seqlock in spirit; reads of the origin never wait for
 * copies of other chunks).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define MAX_RUNS       32
#define MAX_BATCH_RUNS 4096
#define COPY_BUF       (1u << 20)

/* ---- epochs ---- */

struct sv_epoch *
sv_epoch_new_locked(struct sv_volume *vol, uint64_t id)
{
	struct sv_epoch *ep = calloc(1, sizeof *ep);
	struct sv_epoch **arr = realloc(vol->epochs, (vol->n_epochs + 1) * sizeof *arr);
	if (!ep || !arr) {
		free(ep);
		if (arr)
			vol->epochs = arr;
		sv_error(ENOMEM, "out of memory");
		return NULL;
	}
	vol->epochs = arr;
	ep->id = id;
	ep->changed = roaring_bitmap_create();
	size_t i = vol->n_epochs;
	while (i > 0 && arr[i - 1]->id > id) {
		arr[i] = arr[i - 1];
		i--;
	}
	arr[i] = ep;
	vol->n_epochs++;
	return ep;
}

struct sv_epoch *
sv_epoch_find_locked(struct sv_volume *vol, uint64_t id)
{
	for (size_t i = 0; i < vol->n_epochs; i++)
		if (vol->epochs[i]->id == id)
			return vol->epochs[i];
	return NULL;
}

void
sv_epoch_pre_name(const struct sv_epoch *ep, char *buf, size_t len)
{
	snprintf(buf, len, "pre-%" PRIu64, ep->id);
}

void
sv_epoch_free(struct sv_volume *vol, struct sv_epoch *ep)
{
	if (ep->pre)
		vol->ops->obj_close(ep->pre);
	if (ep->changed)
		roaring_bitmap_free(ep->changed);
	if (ep->nocopy)
		roaring_bitmap_free(ep->nocopy);
	if (ep->bitonly)
		roaring_bitmap_free(ep->bitonly);
	free(ep);
}

void
sv_epoch_retire(struct sv_volume *vol, struct sv_epoch *ep)
{
	char name[32];
	sv_epoch_pre_name(ep, name, sizeof name);
	/* Freeing the space of a large sparse file can take seconds (one
	 * discard per extent on a filesystem mounted with discard), and
	 * happens when the last handle of an unlinked file goes.  Where the
	 * store has a trash, the object moves there (durably: the name leaves
	 * the volume now) and our handle is closed at once, which is quick
	 * while the file still has a name; the pool's reclaimer frees it in
	 * steps (reclaim.c).  Elsewhere remove the name holding a handle
	 * (opened here if need be), and let the reclaimer close it. */
	sv_journal_pause(vol); /* not while a checkpoint syncs it (journal.c) */
	sv_lock_or_abort(&vol->pre_lock);
	struct sv_obj *pre = ep->pre;
	ep->pre = NULL;
	sv_unlock_or_abort(&vol->pre_lock);
	sv_journal_resume(vol);
	bool gone = false;
	if (vol->ops->obj_trash) {
		if (vol->ops->obj_trash(vol->pool->st, vol->name, name) == 0) {
			sv_reclaim_trashed(vol->pool);
			gone = true;
		} else if (errno == ENOENT) {
			gone = true;
		} else {
			sv_log_warn("volume %s: cannot move %s to the trash: %m; removing it",
				    vol->name, name);
		}
		if (gone && pre)
			vol->ops->obj_close(pre);
	}
	if (!gone) {
		if (!pre &&
		    vol->ops->obj_open(vol->pool->st, vol->name, name, vol->size, 0, &pre) == -1)
			pre = NULL; /* none (ENOENT), or it is removed in place below */
		if (vol->ops->obj_remove(vol->pool->st, vol->name, name) == -1 && errno != ENOENT)
			sv_log_warn("volume %s: cannot remove %s: %m", vol->name, name);
		if (pre)
			sv_reclaim_close(vol->pool, pre);
	}
	SV_LOCK_SCOPE(&vol->pre_lock);
	roaring_bitmap_free(ep->changed);
	ep->changed = NULL;
	if (ep->nocopy)
		roaring_bitmap_free(ep->nocopy);
	ep->nocopy = NULL;
	if (ep->bitonly)
		roaring_bitmap_free(ep->bitonly);
	ep->bitonly = NULL;
	ep->grave_next = vol->graveyard;
	vol->graveyard = ep;
}

int
sv_epoch_pre(struct sv_volume *vol, struct sv_epoch *ep, bool create, struct sv_obj **out)
{
	SV_LOCK_SCOPE(&vol->pre_lock);
	if (!ep->changed) { /* retired: its object is gone */
		*out = NULL;
		return 0;
	}
	if (!ep->pre) {
		char name[32];
		sv_epoch_pre_name(ep, name, sizeof name);
		if (vol->ops->obj_open(vol->pool->st, vol->name, name, vol->size,
				       create ? SV_OBJ_CREATE : 0, &ep->pre) == -1) {
			ep->pre = NULL;
			if (!create && errno == ENOENT) {
				*out = NULL;
				return 0;
			}
			return -1;
		}
	}
	*out = ep->pre;
	return 0;
}

/* Native pre-images (vol->native_pre): have the store keep the origin's
 * bytes for ep from now on (store.h, obj_preserve).  Once per epoch, after
 * every write of an older epoch has reached the origin (so what the store
 * keeps holds them all, as a copy by the engine would) and before any write
 * stamped with ep does: each of those copies first, and so comes here
 * (copy_for_writes_locked); the snapshot's creation calls it too.  The
 * object was made before the switch (snapshot.c), and an epoch with writes
 * in flight, or the current one, is never retired, so the handle stays
 * valid.  cow_lock held; let go while the handle is looked up.  -1 with
 * errno. */
int
sv_epoch_preserve_locked(struct sv_volume *vol, struct sv_epoch *ep)
{
	while (vol->native_pre && !ep->preserved) {
		struct sv_obj *pre = NULL;
		sv_unlock_or_abort(&vol->cow_lock);
		int r = sv_epoch_pre(vol, ep, false, &pre);
		sv_lock_or_abort(&vol->cow_lock);
		if (r == -1)
			return -1;
		if (!pre) {
			errno = EIO; /* made before the switch: it cannot be missing */
			return -1;
		}
		if (!ep->preserved && vol->ops->obj_preserve(vol->origin, pre) == -1)
			return -1;
		ep->preserved = true;
	}
	return 0;
}

/* ---- the write path ---- */

static inline bool
no_copy_needed_locked(struct sv_epoch *ep, uint64_t c)
{
	return roaring_bitmap_contains(ep->nocopy ? ep->nocopy : ep->changed, (uint32_t)c);
}

/* A released chunk no snapshot reads from here: record, do not copy. */
static inline bool
bit_only_locked(struct sv_epoch *ep, uint64_t c)
{
	return ep->bitonly && roaring_bitmap_contains(ep->bitonly, (uint32_t)c);
}

bool
sv_older_writes_locked(struct sv_volume *vol, uint64_t id)
{
	/* Not only the epoch just before: deleting the last snapshot starts
	 * a fresh epoch while writes of the old one may still be landing. */
	for (size_t i = 0; i < vol->n_epochs && vol->epochs[i]->id < id; i++)
		if (vol->epochs[i]->writes > 0)
			return true;
	return false;
}

/* The bytes one copier hands to the pre-image log (journal.c): runs
 * beyond it are synced in their object at commit instead, so memory in
 * flight stays bounded. */
#define LOG_COPY_MAX (UINT64_C(8) << 20)

/* Copied bytes kept for the log: runs and their bytes back to back. */
struct logbuf {
	struct sv_jseg *seg;
	size_t nseg, cap_seg;
	unsigned char *data;
	size_t used, cap;
};

/* Room for len more bytes at lb->data + lb->used. */
static bool
logbuf_reserve(struct logbuf *lb, size_t len)
{
	if (lb->used + len > lb->cap) {
		size_t cap = lb->cap ? lb->cap : COPY_BUF;
		while (cap < lb->used + len)
			cap *= 2;
		unsigned char *d = realloc(lb->data, cap);
		if (!d)
			return false;
		lb->data = d;
		lb->cap = cap;
	}
	if (lb->nseg == lb->cap_seg) {
		size_t cap = lb->cap_seg ? 2 * lb->cap_seg : 16;
		struct sv_jseg *sg = realloc(lb->seg, cap * sizeof *sg);
		if (!sg)
			return false;
		lb->seg = sg;
		lb->cap_seg = cap;
	}
	return true;
}

/* A chunk whose old contents are a hole gets no copy: the pre-image
 * reads it as zeros.  But a crash can leave there the bytes of a copy it
 * cut short, which no record names (`check` reports them): harmless until
 * a later first write of such a chunk in the same epoch, to a hole, sets
 * its bit over them, and a snapshot then read the stale bytes instead of
 * zeros (test-powerloss, seed 1795422403 round 3).  So the pre-image's
 * part of a hole run must be a hole too: any data there is punched, and
 * *punched says the object must be synced before the record.  An epoch
 * with no object yet has nothing stale. */
static int
punch_stale(struct sv_volume *vol, struct sv_epoch *ep, struct sv_obj **pre, uint64_t off,
	    uint64_t len, bool *punched)
{
	if (!*pre && sv_epoch_pre(vol, ep, false, pre) == -1)
		return -1;
	for (uint64_t end = off + len; *pre && off < end;) {
		struct sv_extent x;
		if (vol->ops->obj_extent(*pre, off, end - off, &x) == -1)
			return -1;
		if (x.length == 0)
			break;
		uint64_t n = x.length < end - off ? x.length : end - off;
		if (!x.hole) {
			if (vol->ops->obj_punch(*pre, off, n) == -1)
				return -1;
			*punched = true;
		}
		off += n;
	}
	return 0;
}

/* Copy runs of chunks into ep's pre-image object and commit them; runs
 * with nodata set are only recorded (bit-only records, see bitonly).  In
 * log mode the bytes copied go to the commit too (journal.c). */
static int
copy_runs(struct sv_volume *vol, struct sv_epoch *ep, struct sv_jrec *runs, const bool *nodata,
	  size_t n, int *err)
{
	struct sv_obj *pre = NULL;
	char *buf = NULL;
	uint64_t copied = 0, holes = 0;
	bool punched = false; /* stale bytes punched: sync pre before the record */
	struct logbuf lb = {0};
	size_t *segstart = NULL; /* per run: its first run of bytes in lb */
	bool logging = vol->journal.log;
	/* The origin's last run asked about: the chunks claimed here do not
	 * change under the copy (their writers wait for it), so one query to
	 * the end of the volume answers for every run it covers (most of a
	 * batch of random writes into an allocated origin). */
	struct sv_extent known = {.length = 0};
	if (logging && !(segstart = calloc(n, sizeof *segstart)))
		logging = false; /* then every object is synced at commit */
	for (size_t r = 0; r < n; r++) {
		runs[r].nodata = nodata[r];
		runs[r].data = NULL;
		runs[r].seg = NULL;
		runs[r].nseg = 0;
		if (nodata[r] || vol->native_pre) /* native: the store keeps the bytes */
			continue;
		uint64_t off = (uint64_t)runs[r].first << vol->chunk_shift;
		uint64_t end = (uint64_t)(runs[r].first + runs[r].count) << vol->chunk_shift;
		if (end > vol->size)
			end = vol->size;
		/* This run's bytes go to the log if they all fit. */
		bool log_run = logging && lb.used + (end - off) <= LOG_COPY_MAX;
		if (log_run)
			segstart[r] = lb.nseg;
		while (off < end) {
			struct sv_extent e;
			if (off < known.offset || off >= known.offset + known.length) {
				if (vol->ops->obj_extent(vol->origin, off, vol->size - off,
							 &known) == -1)
					goto fail;
				if (known.length == 0) {
					errno = EIO; /* a backend that maps nothing */
					goto fail;
				}
			}
			e = known;
			e.length = known.offset + known.length - off;
			e.offset = off;
			if (e.length > end - off)
				e.length = end - off;
			if (e.hole) {
				if (punch_stale(vol, ep, &pre, off, e.length, &punched) == -1)
					goto fail;
				holes += e.length;
				off += e.length;
				continue;
			}
			if (!pre && sv_epoch_pre(vol, ep, true, &pre) == -1)
				goto fail;
			if (!log_run && !buf && !(buf = malloc(COPY_BUF)))
				goto fail;
			uint64_t todo = e.length;
			while (todo > 0) {
				size_t piece = todo < COPY_BUF ? (size_t)todo : COPY_BUF;
				char *dst = buf;
				if (log_run) {
					if (!logbuf_reserve(&lb, piece))
						goto fail;
					dst = (char *)lb.data + lb.used;
				}
				if (vol->ops->obj_pread(vol->origin, dst, piece, off) == -1 ||
				    vol->ops->obj_pwrite(pre, dst, piece, off, 0) == -1)
					goto fail;
				if (log_run) {
					struct sv_jseg *last =
					    lb.nseg > segstart[r] ? &lb.seg[lb.nseg - 1] : NULL;
					if (last && last->off + last->len == off)
						last->len += piece;
					else
						lb.seg[lb.nseg++] = (struct sv_jseg){off, piece};
					lb.used += piece;
				}
				off += piece;
				todo -= piece;
				copied += piece;
			}
		}
		if (log_run) {
			/* Pointers are set once lb stops moving, below. */
			runs[r].nseg = (uint32_t)(lb.nseg - segstart[r]);
			runs[r].data = (const unsigned char *)1;
		}
	}
	free(buf);
	buf = NULL;
	/* Point the logged runs at their bytes (a run of holes only logs
	 * nothing, and needs no sync either). */
	for (size_t r = 0, used = 0; logging && r < n; r++) {
		if (!runs[r].data)
			continue;
		static const unsigned char none[1];
		runs[r].seg = runs[r].nseg ? lb.seg + segstart[r] : NULL;
		runs[r].data = runs[r].nseg ? lb.data + used : none;
		for (uint32_t k = 0; k < runs[r].nseg; k++)
			used += runs[r].seg[k].len;
	}
	if (punched && vol->ops->obj_sync(pre) == -1)
		goto fail;
	if (sv_journal_commit(vol, runs, n) == -1) {
		/* Some records may be in the journal: keep the data they name. */
		pre = NULL;
		goto fail;
	}
	free(lb.data);
	free(lb.seg);
	free(segstart);
	sv_lock_or_abort(&vol->cow_lock);
	vol->stat_copies += n;
	vol->stat_copied_bytes += copied;
	vol->stat_hole_copies += holes ? 1 : 0;
	sv_unlock_or_abort(&vol->cow_lock);
	return 0;
fail:
	*err = errno ? errno : EIO;
	if (*err != ENOSPC)
		sv_log_error("volume %s: copy-on-write into epoch %" PRIu64 " failed: %s",
			     vol->name, ep->id, strerror(*err));
	/* Give back what a copy that failed before its commit wrote: its
	 * chunks are claimed by us and have no record, so nothing reads that
	 * part of the pre-image, and on a full store that space is what the
	 * next metadata write (a snapshot invalidated by drop-snapshot, a
	 * policy change) needs. */
	for (size_t r = 0; pre && r < n; r++) {
		uint64_t a = (uint64_t)runs[r].first << vol->chunk_shift;
		uint64_t z = (uint64_t)(runs[r].first + runs[r].count) << vol->chunk_shift;
		if (z > vol->size)
			z = vol->size;
		if (vol->ops->obj_punch(pre, a, z - a) == -1)
			sv_log_warn("volume %s: cannot give back a failed copy's space: %m",
				    vol->name);
	}
	free(buf);
	free(lb.data);
	free(lb.seg);
	free(segstart);
	return -1;
}

static uint64_t
next_set(const roaring_bitmap_t *bm, uint64_t from, uint64_t limit)
{
	if (!bm || from >= limit)
		return limit;
	roaring_uint32_iterator_t it;
	roaring_init_iterator(bm, &it);
	if (!roaring_move_uint32_iterator_equalorlarger(&it, (uint32_t)from))
		return limit;
	return it.current_value < limit ? it.current_value : limit;
}

/* ---- landing write-behinds: chunk -> how many ---- */

/* Several write-behinds of disjoint bytes may land on one chunk at once:
 * vol->landing has the chunks with at least one, and this table counts
 * them.  Open addressing, linear probing, deletion by backward shift; at
 * most half full, so a lookup is a probe or two.  Sized by the chunks
 * landing (bounded by write-behind's bytes), kept until the volume closes
 * (volume.c frees it). */
struct sv_lcount {
	uint64_t chunk;
	uint32_t n; /* 0: empty */
};

static inline size_t
lc_home(uint64_t c, size_t cap)
{
	return (size_t)((c * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (cap - 1);
}

/* Room for extra more chunks without passing half full; -1 (ENOMEM). */
static int
lc_reserve_locked(struct sv_volume *vol, uint64_t extra)
{
	if ((vol->lcount_n + extra) * 2 <= vol->lcount_cap)
		return 0;
	size_t cap = vol->lcount_cap ? vol->lcount_cap : 64;
	while (cap < (vol->lcount_n + extra) * 2)
		cap *= 2;
	struct sv_lcount *t = calloc(cap, sizeof *t);
	if (!t)
		return -1;
	for (size_t j = 0; j < vol->lcount_cap; j++) {
		if (!vol->lcount[j].n)
			continue;
		size_t i = lc_home(vol->lcount[j].chunk, cap);
		while (t[i].n)
			i = (i + 1) & (cap - 1);
		t[i] = vol->lcount[j];
	}
	free(vol->lcount);
	vol->lcount = t;
	vol->lcount_cap = cap;
	return 0;
}

/* One more landing of c (room reserved). */
static void
lc_inc_locked(struct sv_volume *vol, uint64_t c)
{
	size_t i = lc_home(c, vol->lcount_cap);
	while (vol->lcount[i].n && vol->lcount[i].chunk != c)
		i = (i + 1) & (vol->lcount_cap - 1);
	if (!vol->lcount[i].n) {
		vol->lcount_n++;
		vol->lcount[i].chunk = c;
		roaring_bitmap_add(vol->landing, (uint32_t)c);
	}
	vol->lcount[i].n++;
}

/* One fewer landing of c (there is one). */
static void
lc_dec_locked(struct sv_volume *vol, uint64_t c)
{
	size_t mask = vol->lcount_cap - 1, i = lc_home(c, vol->lcount_cap);
	while (vol->lcount[i].chunk != c || !vol->lcount[i].n)
		i = (i + 1) & mask;
	if (--vol->lcount[i].n > 0)
		return;
	roaring_bitmap_remove(vol->landing, (uint32_t)c);
	/* Shift back the slots after it whose home is not between the hole
	 * and themselves, so no probe sequence crosses an empty slot. */
	for (size_t j = (i + 1) & mask; vol->lcount[j].n; j = (j + 1) & mask) {
		size_t h = lc_home(vol->lcount[j].chunk, vol->lcount_cap);
		if (((j - h) & mask) >= ((j - i) & mask)) {
			vol->lcount[i] = vol->lcount[j];
			i = j;
		}
	}
	vol->lcount[i].n = 0;
	vol->lcount_n--;
}

/* Is any chunk in [first, last] in a write-behind not yet landed?  cow_lock. */
static bool
landing_overlaps_locked(struct sv_volume *vol, uint64_t first, uint64_t last)
{
	return vol->n_landing && next_set(vol->landing, first, last + 1) <= last;
}

/* Trace (with SNAPVOL_TRACE_FREEZE) a wait for a landing that began at t0
 * (sv_now_ns) and took more than 1 ms. */
static void
note_landing_wait_locked(struct sv_volume *vol, uint64_t t0, const char *who)
{
	uint64_t ns = sv_now_ns() - t0;
	if (ns > 1000000 && sv_freeze_tracing())
		sv_log_info("trace: volume %s: %s waited %" PRIu64 " us for a landing write-behind",
			    vol->name, who, ns / 1000);
}

/* Pass the gate (freeze.c) and wait behind writes still landing on the
 * range (writebehind.c), then stamp the write with the current epoch.
 * cow_lock held.  -1 with *err: EAGAIN at a closed gate with SV_GATE_TRY,
 * EIO while a failed rollback is pending. */
static int
admit_locked(struct sv_volume *vol, uint64_t off, uint64_t len, int gate, struct sv_write_ticket *t,
	     int *err)
{
	uint64_t waited_from = 0;
	for (;;) {
		/* Held writes wait here, before they are stamped, so a freeze
		 * need only wait for the stamped ones. */
		if (gate == SV_GATE_TRY && vol->gate_holds) {
			*err = EAGAIN;
			return -1;
		}
		while (gate != SV_GATE_NONE && vol->gate_holds)
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
		if (gate != SV_GATE_NONE && vol->rollback_to[0]) {
			/* A rollback failed half-way and stays recorded: the next
			 * open finishes it, over anything written meanwhile.
			 * Refuse writes until a rollback succeeds, rather than
			 * lose them. */
			*err = EIO;
			return -1;
		}
		if (__atomic_load_n(&vol->pre_untrusted, __ATOMIC_ACQUIRE)) {
			*err = EIO; /* sv_snap_invalidate_epoch could not record it */
			return -1;
		}
		/* An acknowledged write-behind of the same bytes lands first:
		 * writes reach the origin in the order they were acknowledged.
		 * (Disjoint bytes of a landing chunk need no wait: a copy in
		 * a newer epoch waits for the older writes anyway, and one in
		 * the same epoch for the copy in flight.)  The wait is short
		 * (landing never waits at the gate), but it lets go of
		 * cow_lock and the gate may close meanwhile: look at it
		 * again. */
		if (len == 0 ||
		    !landing_overlaps_locked(vol, off >> vol->chunk_shift,
					     (off + len - 1) >> vol->chunk_shift) ||
		    !sv_wb_overlaps(vol, off, len))
			break;
		if (!waited_from)
			waited_from = sv_now_ns();
		pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
	}
	if (waited_from)
		note_landing_wait_locked(vol, waited_from, "an in-place write");
	struct sv_epoch *ep = sv_current_epoch_locked(vol);
	ep->writes++;
	t->ep = ep;
	t->landing = false;
	return 0;
}

/* Does a write of [off, off+len) stamped with ep need copies?  cow_lock. */
static bool
needs_copy_locked(struct sv_volume *vol, struct sv_epoch *ep, uint64_t off, uint64_t len)
{
	if (!ep->cow || len == 0)
		return false; /* no snapshot (or the last one went away meanwhile) */
	uint64_t first = off >> vol->chunk_shift, last = (off + len - 1) >> vol->chunk_shift;
	return !roaring_bitmap_contains_range(ep->nocopy ? ep->nocopy : ep->changed, first,
					      last + 1);
}

/* Claim, under cow_lock, the chunks of [first, last] that still need a copy
 * in ep and nobody is copying, as runs appended to runs[*nruns] (at most
 * cap); *others is set if someone else is copying one of them. */
static void
claim_runs_locked(struct sv_volume *vol, struct sv_epoch *ep, uint64_t first, uint64_t last,
		  struct sv_jrec *runs, bool *nodata, size_t *nruns, size_t cap, bool *others)
{
	for (uint64_t c = first; c <= last && *nruns < cap; c++) {
		if (no_copy_needed_locked(ep, c))
			continue;
		if (roaring_bitmap_contains(vol->inflight, (uint32_t)c)) {
			*others = true;
			continue;
		}
		uint64_t a = c;
		bool bitonly = bit_only_locked(ep, c);
		while (c + 1 <= last && !no_copy_needed_locked(ep, c + 1) &&
		       !roaring_bitmap_contains(vol->inflight, (uint32_t)(c + 1)) &&
		       bit_only_locked(ep, c + 1) == bitonly)
			c++;
		roaring_bitmap_add_range(vol->inflight, a, c + 1);
		nodata[*nruns] = bitonly;
		runs[(*nruns)++] = (struct sv_jrec){
		    .ep = ep, .first = (uint32_t)a, .count = (uint32_t)(c + 1 - a)};
	}
}

/* Make the pre-images that writes of the ranges rg[0..n), all stamped with
 * ep, need durable (steps 1-3 above).  Several writes at once (the
 * write-behind landers) share one journal commit: its two syncs are the
 * cost of a first write, so a batch of them costs little more than one.
 * cow_lock held; on failure the stamps are still held. */
static int
copy_for_writes_locked(struct sv_volume *vol, struct sv_epoch *ep, const struct sv_range *rg,
		       size_t n, int *err)
{
	struct sv_jrec stack_runs[MAX_RUNS], *runs = stack_runs;
	bool stack_nodata[MAX_RUNS], *nodata = stack_nodata;
	size_t cap = MAX_RUNS;
	if (n > MAX_RUNS / 2) {
		size_t want = n * 2 < MAX_BATCH_RUNS ? n * 2 : MAX_BATCH_RUNS;
		struct sv_jrec *r = malloc(want * sizeof *r);
		bool *nd = malloc(want * sizeof *nd);
		if (r && nd) {
			runs = r;
			nodata = nd;
			cap = want;
		} else {
			free(r);
			free(nd);
		}
	}
	int ret = 0;
	for (;;) {
		bool any = false;
		for (size_t i = 0; i < n && !any; i++)
			any = needs_copy_locked(vol, ep, rg[i].off, rg[i].len);
		if (!any)
			break; /* everything already copied: the rewrite fast path */

		while (sv_older_writes_locked(vol, ep->id))
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
		if (sv_epoch_preserve_locked(vol, ep) == -1) {
			*err = errno ? errno : EIO;
			sv_log_error("volume %s: cannot keep the pre-images of epoch %" PRIu64
				     ": %s",
				     vol->name, ep->id, strerror(*err));
			ret = -1;
			break;
		}

		size_t nruns = 0;
		bool others = false;
		for (size_t i = 0; i < n && nruns < cap; i++)
			if (rg[i].len)
				claim_runs_locked(vol, ep, rg[i].off >> vol->chunk_shift,
						  (rg[i].off + rg[i].len - 1) >> vol->chunk_shift,
						  runs, nodata, &nruns, cap, &others);
		if (nruns > 0) {
			sv_unlock_or_abort(&vol->cow_lock);
			int r = copy_runs(vol, ep, runs, nodata, nruns, err);
			sv_lock_or_abort(&vol->cow_lock);
			if (r == -1) {
				for (size_t i = 0; i < nruns; i++)
					roaring_bitmap_remove_range(vol->inflight, runs[i].first,
								    (uint64_t)runs[i].first +
									runs[i].count);
				pthread_cond_broadcast(&vol->cow_cond);
				if (*err == ENOSPC && vol->drop_when_full) {
					/* Give up the oldest snapshot's space and try
					 * again; with none left, nothing needs a copy. */
					sv_unlock_or_abort(&vol->cow_lock);
					r = sv_snap_invalidate_oldest(vol);
					sv_lock_or_abort(&vol->cow_lock);
					if (r == 0)
						continue;
				}
				ret = -1;
				break;
			}
			continue;
		}
		if (others)
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
	}
	if (runs != stack_runs) {
		free(runs);
		free(nodata);
	}
	return ret;
}

static void
unstamp_locked(struct sv_volume *vol, struct sv_write_ticket *t)
{
	assert(t->ep->writes > 0);
	if (--t->ep->writes == 0)
		pthread_cond_broadcast(&vol->cow_cond);
}

int
sv_cow_write_begin(struct sv_volume *vol, uint64_t off, uint64_t len, int gate,
		   struct sv_write_ticket *t, int *err)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	if (admit_locked(vol, off, len, gate, t, err) == -1)
		return -1;
	struct sv_range rg = {off, len};
	if (copy_for_writes_locked(vol, t->ep, &rg, 1, err) == -1) {
		unstamp_locked(vol, t);
		return -1;
	}
	return 0;
}

int
sv_cow_write_begin_behind(struct sv_volume *vol, uint64_t off, uint64_t len, int gate,
			  struct sv_write_ticket *t, bool *behind, int *err)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	if (admit_locked(vol, off, len, gate, t, err) == -1)
		return -1;
	/* admit_locked waited for any landing of these bytes */
	*behind = needs_copy_locked(vol, t->ep, off, len);
	if (!*behind)
		return 0;
	uint64_t first = off >> vol->chunk_shift, last = (off + len - 1) >> vol->chunk_shift;
	if (lc_reserve_locked(vol, last - first + 1) == -1) {
		unstamp_locked(vol, t);
		*err = ENOMEM;
		return -1;
	}
	for (uint64_t c = first; c <= last; c++)
		lc_inc_locked(vol, c);
	__atomic_add_fetch(&vol->n_landing, 1, __ATOMIC_RELEASE);
	t->landing = true;
	t->off = off;
	t->len = len;
	return 0;
}

int
sv_cow_write_copy(struct sv_volume *vol, struct sv_epoch *ep, const struct sv_range *rg, size_t n,
		  int *err)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	return copy_for_writes_locked(vol, ep, rg, n, err);
}

void
sv_cow_write_landed(struct sv_volume *vol, struct sv_write_ticket *t)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	assert(t->landing);
	for (uint64_t c = t->off >> vol->chunk_shift;
	     c <= (t->off + t->len - 1) >> vol->chunk_shift; c++)
		lc_dec_locked(vol, c);
	t->landing = false;
	__atomic_sub_fetch(&vol->n_landing, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vol->cow_cond);
	unstamp_locked(vol, t);
}

void
sv_cow_wait_landed(struct sv_volume *vol, uint64_t off, uint64_t len)
{
	if (len == 0 || !__atomic_load_n(&vol->n_landing, __ATOMIC_ACQUIRE))
		return;
	SV_LOCK_SCOPE(&vol->cow_lock);
	while (landing_overlaps_locked(vol, off >> vol->chunk_shift,
				       (off + len - 1) >> vol->chunk_shift))
		pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
}

bool
sv_cow_landing(struct sv_volume *vol, uint64_t off, uint64_t len)
{
	if (len == 0 || !__atomic_load_n(&vol->n_landing, __ATOMIC_ACQUIRE))
		return false;
	SV_LOCK_SCOPE(&vol->cow_lock);
	return landing_overlaps_locked(vol, off >> vol->chunk_shift,
				       (off + len - 1) >> vol->chunk_shift);
}

void
sv_cow_write_end(struct sv_volume *vol, struct sv_write_ticket *t)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	unstamp_locked(vol, t);
}

/* ---- the snapshot read path ---- */

/* Stands for "reads as zeros" (a chunk released from the snapshot). */
static struct sv_epoch zero_source;
#define ZEROS (&zero_source)

/* The epoch holding snapshot s's contents of chunk c, NULL for the origin,
 * or ZEROS. */
static struct sv_epoch *
source_locked(struct sv_volume *vol, const struct sv_snap *s, uint64_t c)
{
	if (s->released && roaring_bitmap_contains(s->released, (uint32_t)c))
		return ZEROS;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		struct sv_epoch *ep = vol->epochs[i];
		if (ep->id >= s->epoch && roaring_bitmap_contains(ep->changed, (uint32_t)c))
			return ep;
	}
	return NULL;
}

/* The first chunk in [from, limit) that snapshot s might not read from the
 * origin (changed in an epoch it reads, being copied, or released), or
 * limit: lets a read or block status of a large, little-changed range
 * skip over the origin's runs instead of testing every chunk. */
static uint64_t
next_marked_locked(struct sv_volume *vol, const struct sv_snap *s, uint64_t from, uint64_t limit)
{
	uint64_t n = next_set(vol->inflight, from, limit);
	n = next_set(s->released, from, n);
	for (size_t i = 0; i < vol->n_epochs; i++)
		if (vol->epochs[i]->id >= s->epoch)
			n = next_set(vol->epochs[i]->changed, from, n);
	return n;
}

struct segment {
	uint64_t off, len;   /* bytes of the request */
	struct sv_epoch *ep; /* NULL: origin */
};

/* Resolve [off, off+len) into at most max segments; returns how many bytes
 * were resolved (a prefix of the range).  cow_lock held; waits for copies
 * in flight. */
static uint64_t
resolve_locked(struct sv_volume *vol, const struct sv_snap *s, uint64_t off, uint64_t len,
	       struct segment *seg, size_t max, size_t *nseg)
{
	uint64_t end = off + len, pos = off;
	size_t n = 0;
	while (pos < end) {
		uint64_t c = pos >> vol->chunk_shift;
		while (roaring_bitmap_contains(vol->inflight, (uint32_t)c) ||
		       landing_overlaps_locked(vol, c, c))
			pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
		struct sv_epoch *ep = source_locked(vol, s, c);
		uint64_t cend = (c + 1) << vol->chunk_shift;
		if (!ep) /* a run of the origin: up to the next chunk marked anywhere */
			cend = next_marked_locked(vol, s, c + 1,
						  (end + vol->chunk_size - 1) >> vol->chunk_shift)
			       << vol->chunk_shift;
		uint64_t piece = (cend < end ? cend : end) - pos;
		if (n > 0 && seg[n - 1].ep == ep) {
			seg[n - 1].len += piece;
		} else {
			if (n == max)
				break;
			seg[n++] = (struct segment){.off = pos, .len = piece, .ep = ep};
		}
		pos += piece;
	}
	*nseg = n;
	return pos - off;
}

static int
read_segment(struct sv_volume *vol, const struct segment *sg, char *dst)
{
	if (!sg->ep)
		return vol->ops->obj_pread(vol->origin, dst, sg->len, sg->off);
	struct sv_obj *pre = NULL;
	if (sg->ep == ZEROS) {
		memset(dst, 0, sg->len);
		return 0;
	}
	if (sv_epoch_pre(vol, sg->ep, false, &pre) == -1)
		return -1;
	if (!pre) { /* only holes were ever copied into this epoch */
		memset(dst, 0, sg->len);
		return 0;
	}
	return vol->ops->obj_pread(pre, dst, sg->len, sg->off);
}

static void
reader_done(struct sv_volume *vol)
{
	SV_LOCK_SCOPE(&vol->cow_lock);
	if (--vol->snap_readers == 0)
		pthread_cond_broadcast(&vol->cow_cond);
}

int
sv_cow_snap_pread(struct sv_volume *vol, struct sv_snap *s, void *buf, uint64_t len, uint64_t off,
		  int *err)
{
	char *out = buf;
	struct segment seg[64];
	while (len > 0) {
		size_t n;
		sv_lock_or_abort(&vol->cow_lock);
		if (s->invalid) {
			sv_unlock_or_abort(&vol->cow_lock);
			*err = EIO;
			return -1;
		}
		vol->snap_readers++;
		uint64_t done = resolve_locked(vol, s, off, len, seg, 64, &n);
		sv_unlock_or_abort(&vol->cow_lock);
		for (size_t i = 0; i < n; i++)
			if (read_segment(vol, &seg[i], out + (seg[i].off - off)) == -1)
				goto fail;
		/* Re-check what came from the origin (see DESIGN above). */
		for (size_t i = 0; i < n; i++) {
			if (seg[i].ep)
				continue;
			uint64_t pos = seg[i].off, end = seg[i].off + seg[i].len;
			while (pos < end) {
				uint64_t c = pos >> vol->chunk_shift;
				uint64_t last = (end - 1) >> vol->chunk_shift;
				sv_lock_or_abort(&vol->cow_lock);
				/* chunks nothing marks since: still the origin's */
				uint64_t nx = next_marked_locked(vol, s, c, last + 1);
				if (nx > c) {
					sv_unlock_or_abort(&vol->cow_lock);
					uint64_t npos = nx << vol->chunk_shift;
					pos = npos < end ? npos : end;
					continue;
				}
				uint64_t cend = (c + 1) << vol->chunk_shift;
				struct segment again = {.off = pos,
							.len = (cend < end ? cend : end) - pos};
				while (roaring_bitmap_contains(vol->inflight, (uint32_t)c))
					pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
				again.ep = source_locked(vol, s, c);
				sv_unlock_or_abort(&vol->cow_lock);
				if (again.ep && read_segment(vol, &again, out + (pos - off)) == -1)
					goto fail;
				pos += again.len;
			}
		}
		reader_done(vol);
		out += done;
		off += done;
		len -= done;
	}
	return 0;
fail:
	*err = errno ? errno : EIO;
	reader_done(vol);
	return -1;
}

int
sv_cow_snap_extents(struct sv_volume *vol, struct sv_snap *s, uint64_t len, uint64_t off,
		    struct sv_extent *ext, size_t max, size_t *nout, int *err)
{
	struct segment seg[64];
	size_t k = 0;
	while (len > 0 && max > 0) {
		size_t n;
		sv_lock_or_abort(&vol->cow_lock);
		vol->snap_readers++;
		uint64_t done = resolve_locked(vol, s, off, len, seg, 64, &n);
		sv_unlock_or_abort(&vol->cow_lock);
		bool full = false;
		for (size_t i = 0; i < n && !full; i++) {
			struct sv_obj *o = vol->origin;
			if (seg[i].ep == ZEROS)
				o = NULL;
			else if (seg[i].ep && sv_epoch_pre(vol, seg[i].ep, false, &o) == -1)
				goto fail;
			uint64_t pos = seg[i].off, end = seg[i].off + seg[i].len;
			while (pos < end) {
				struct sv_extent e = {
				    .offset = pos, .length = end - pos, .hole = true};
				if (o && vol->ops->obj_extent(o, pos, end - pos, &e) == -1)
					goto fail;
				if (k > 0 && ext[k - 1].hole == e.hole &&
				    ext[k - 1].offset + ext[k - 1].length == pos) {
					ext[k - 1].length += e.length;
				} else {
					if (k == max) {
						full = true;
						break;
					}
					ext[k++] = e;
				}
				pos += e.length;
			}
		}
		reader_done(vol);
		if (full)
			break;
		off += done;
		len -= done;
	}
	*nout = k;
	return 0;
fail:
	*err = errno ? errno : EIO;
	reader_done(vol);
	return -1;
}
