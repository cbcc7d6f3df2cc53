/*
 * writebehind.c: acknowledging first writes after a snapshot before their
 * copies are made.
 *
 * The first write to a chunk after a snapshot must wait until the chunk's
 * old contents are durable in the epoch's pre-image (DESIGN invariant 1):
 * a pre-image sync and a journal sync, a millisecond or more on most disks.
 * Done while the client waits, that caps a client at queue-depth writes
 * per commit, a few thousand IOPS.  But NBD, like a disk with a volatile
 * write cache, only promises that a write is durable after a FLUSH (or
 * with FUA).  So such a write is acknowledged at once and kept here, its
 * payload copied; worker threads then do exactly what the client would
 * have waited for (copy, group commit, origin write), many at a time, so
 * group commits grow with the load instead of with the client's depth.
 *
 * What stays true (the invariants hold because nothing below changes):
 *   - the origin is still written only after the pre-image and its record
 *     are durable; a crash loses at most writes that were never flushed,
 *     which NBD allows, and never a snapshot's contents;
 *   - the write is stamped with its epoch when it is acknowledged, so a
 *     snapshot taken later contains it (snapshot creation waits for the
 *     writes stamped before it, landed ones included);
 *   - its chunks are marked "landing" until the origin holds the data:
 *     reads of the live volume, block status, snapshot reads and in-place
 *     writes (FUA, trims, write-zeroes) of those chunks wait for it
 *     (read-your-writes);
 *   - a later write of the same bytes waits for it (cow.c, "Landing"),
 *     so writes reach the origin in the order they were acknowledged
 *     wherever they overlap; a write of other bytes of a landing chunk
 *     does not wait: it goes behind too, or in place if its chunk's copy
 *     is already durable;
 *   - FLUSH waits for every write-behind of the volume acknowledged before
 *     it, then syncs the origin; an error a write-behind met (EIO, or
 *     ENOSPC under the fail-writes policy) fails the next FLUSH, the way
 *     Linux reports writeback errors at fsync.  To keep ENOSPC synchronous
 *     where it is likely, a volume with the fail-writes policy takes writes
 *     behind only while its filesystem has room for every byte held here
 *     plus a reserve;
 *   - memory is bounded: at most max_bytes of payload (16 MiB by default,
 *     SNAPVOL_WRITE_BEHIND_MB, 0 turns write-behind off); past it, writes
 *     are done in place as before.
 * FUA writes, trims and write-zeroes are always done in place.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define WB_THREADS	 16
#define WB_BATCH	 256
#define WB_BATCH_BYTES	 (UINT64_C(1) << 20) /* 256 writes of 4 KiB */
#define WB_DEFAULT_MB	 16
#define WB_SPACE_RESERVE (UINT64_C(256) << 20)

struct sv_wb_entry {
	struct sv_wb_entry *next;	   /* the queue */
	struct sv_wb_entry *vnext, *vprev; /* the volume's outstanding list */
	struct sv_volume *vol;
	struct sv_write_ticket t;
	uint64_t off, seq;
	uint32_t len;
	char data[];
};

void
sv_wb_init(struct sv_pool *pool)
{
	struct sv_wb *wb = &pool->wb;
	pthread_mutex_init(&wb->lock, NULL);
	pthread_cond_init(&wb->work, NULL);
	pthread_cond_init(&wb->landed, NULL);
	uint64_t mb = WB_DEFAULT_MB;
	const char *env = getenv("SNAPVOL_WRITE_BEHIND_MB");
	if (env && sv_parse_size(env, &mb) == -1) {
		sv_log_warn("SNAPVOL_WRITE_BEHIND_MB=%s: not a number; using %u", env,
			    WB_DEFAULT_MB);
		mb = WB_DEFAULT_MB;
	}
	wb->max_bytes = (size_t)(mb > 4096 ? 4096 : mb) << 20;
}

/* Copy, commit, write the origin: what the client would have waited for.
 * 0, or -1 with *err (*err is meaningful only then: a copy retried after
 * dropping a snapshot leaves it set). */
static int
copy_and_write(struct sv_volume *vol, const void *buf, uint32_t len, uint64_t off,
	       struct sv_write_ticket *t, int *err)
{
	struct sv_range rg = {off, len};
	int r = sv_cow_write_copy(vol, t->ep, &rg, 1, err);
	if (r == 0 && (r = vol->ops->obj_pwrite(vol->origin, buf, len, off, 0)) == -1)
		*err = errno ? errno : EIO;
	return r;
}

/* Queue e for a lander.  In epoch order within its volume: a write of
 * epoch E+1 waits in its copy for the writes of epoch E, so one stamped
 * E that reaches here after it (the stamp and the queueing are under
 * different locks) goes before it.  wb->lock. */
static void
enqueue_locked(struct sv_wb *wb, struct sv_wb_entry *e)
{
	struct sv_wb_entry **pp = &wb->head;
	if (wb->tail && (wb->tail->vol != e->vol || wb->tail->t.ep->id > e->t.ep->id))
		while (*pp && !((*pp)->vol == e->vol && (*pp)->t.ep->id > e->t.ep->id))
			pp = &(*pp)->next;
	else if (wb->tail)
		pp = &wb->tail->next;
	e->next = *pp;
	*pp = e;
	if (!e->next)
		wb->tail = e;
	pthread_cond_signal(&wb->work);
}

/* Land b[0..n): writes of one volume stamped with one epoch, copied
 * together under one journal commit, then written to the origin. */
static void
land(struct sv_wb_entry **b, size_t n)
{
	struct sv_volume *vol = b[0]->vol;
	struct sv_range rg[WB_BATCH];
	for (size_t i = 0; i < n; i++)
		rg[i] = (struct sv_range){b[i]->off, b[i]->len};
	int err = 0;
	size_t failed = 0;
	if (sv_cow_write_copy(vol, b[0]->t.ep, rg, n, &err) == -1) {
		failed = n;
	} else {
		err = 0;
		for (size_t i = 0; i < n; i++) {
			if (vol->ops->obj_pwrite(vol->origin, b[i]->data, b[i]->len, b[i]->off,
						 0) == -1) {
				err = errno ? errno : EIO;
				failed++;
			}
		}
	}
	if (err)
		sv_log_error("volume %s: %zu of %zu writes acknowledged before their copies "
			     "could not be completed: %s; the next flush fails",
			     vol->name, failed, n, strerror(err));
	/* Leave the outstanding list before the chunks stop landing: a flush
	 * that sees the list empty then also sees the data on the origin. */
	sv_lock_or_abort(&vol->pool->wb.lock);
	if (err) {
		vol->wb_error = err;
		vol->wb_err_seq++;
	}
	for (size_t i = 0; i < n; i++) {
		struct sv_wb_entry *e = b[i];
		*(e->vprev ? &e->vprev->vnext : &vol->wb_oldest) = e->vnext;
		*(e->vnext ? &e->vnext->vprev : &vol->wb_newest) = e->vprev;
		vol->pool->wb.bytes -= e->len;
	}
	pthread_cond_broadcast(&vol->pool->wb.landed);
	sv_unlock_or_abort(&vol->pool->wb.lock);
	for (size_t i = 0; i < n; i++) {
		sv_cow_write_landed(vol, &b[i]->t);
		free(b[i]);
	}
}

static void *
lander(void *arg)
{
	struct sv_wb *wb = arg;
	struct sv_wb_entry *batch[WB_BATCH];
	sv_lock_or_abort(&wb->lock);
	for (;;) {
		while (!wb->head && !wb->stop)
			pthread_cond_wait(&wb->work, &wb->lock);
		if (!wb->head)
			break; /* stopping, and nothing is left */
		/* Strictly oldest first: a write of epoch E+1 waits in its copy
		 * for the writes of epoch E, which are then already taken.  The
		 * writes behind the oldest that share its volume and epoch come
		 * along, so one commit makes all their copies durable; up to
		 * WB_BATCH_BYTES of them, so that large writes land in
		 * parallel (a batch's copies and writes are made one after
		 * another: on RADOS each is a round trip). */
		size_t n = 0, bytes = 0;
		struct sv_wb_entry *first = wb->head;
		while (n < WB_BATCH && wb->head && wb->head->vol == first->vol &&
		       wb->head->t.ep == first->t.ep &&
		       (n == 0 || bytes + wb->head->len <= WB_BATCH_BYTES)) {
			bytes += wb->head->len;
			batch[n++] = wb->head;
			wb->head = wb->head->next;
		}
		if (!wb->head)
			wb->tail = NULL;
		sv_unlock_or_abort(&wb->lock);
		land(batch, n);
		sv_lock_or_abort(&wb->lock);
	}
	sv_unlock_or_abort(&wb->lock);
	return NULL;
}

/* Reserve room for len bytes; start the threads on first use.  wb->lock. */
static bool
reserve_locked(struct sv_wb *wb, uint32_t len)
{
	if (wb->stop || wb->bytes + len > wb->max_bytes)
		return false;
	if (!wb->threads) {
		wb->threads = calloc(WB_THREADS, sizeof *wb->threads);
		if (!wb->threads)
			return false;
		for (unsigned i = 0; i < WB_THREADS; i++) {
			if (pthread_create(&wb->threads[i], NULL, lander, wb) != 0)
				break;
			wb->nthreads++;
		}
		if (!wb->nthreads) {
			sv_log_warn(
			    "write-behind: cannot start a thread; writes are done in place");
			wb->max_bytes = 0;
			return false;
		}
	}
	wb->bytes += len;
	return true;
}

/* With the fail-writes policy, ENOSPC must reach the writer: take writes
 * behind only while the store has clear room for them. */
static bool
room_for(struct sv_volume *vol, size_t held)
{
	sv_lock_or_abort(&vol->cow_lock);
	bool drop = vol->drop_when_full;
	sv_unlock_or_abort(&vol->cow_lock);
	if (drop)
		return true;
	uint64_t avail;
	int fd = vol->ops->obj_fd(vol->origin);
	struct statvfs sv;
	if (fd >= 0 && fstatvfs(fd, &sv) == 0)
		avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	else if (!vol->ops->space_avail || vol->ops->space_avail(vol->pool->st, &avail) == -1)
		return false; /* no way to know (RADOS without space_avail): not behind */
	return avail > 2 * (uint64_t)held + WB_SPACE_RESERVE;
}

static void
unreserve(struct sv_wb *wb, uint32_t len)
{
	SV_LOCK_SCOPE(&wb->lock);
	wb->bytes -= len;
}

int
sv_wb_write(struct sv_volume *vol, const void *buf, uint32_t len, uint64_t off, int gate,
	    struct sv_write_ticket *t, int *err)
{
	struct sv_wb *wb = &vol->pool->wb;
	if (!wb->max_bytes || len == 0)
		return sv_cow_write_begin(vol, off, len, gate, t, err);
	bool behind;
	if (sv_cow_write_begin_behind(vol, off, len, gate, t, &behind, err) == -1)
		return -1;
	if (!behind)
		return 0; /* no copy needed (a rewrite, or no snapshot) */
	sv_lock_or_abort(&wb->lock);
	bool ok = reserve_locked(wb, len);
	size_t held = wb->bytes;
	sv_unlock_or_abort(&wb->lock);
	struct sv_wb_entry *e = ok && room_for(vol, held) ? malloc(sizeof *e + len) : NULL;
	if (!e) {
		/* Full, or near a full store: what the client would have
		 * waited for anyway, now (after older writes of its chunks). */
		if (ok)
			unreserve(wb, len);
		uint64_t t0 = sv_now_ns();
		int r = copy_and_write(vol, buf, len, off, t, err);
		sv_cow_write_landed(vol, t);
		uint64_t ns = sv_now_ns() - t0;
		if (ns > 1000000 && sv_freeze_tracing())
			sv_log_info(
			    "trace: volume %s: write-behind %s: a first write done in place "
			    "took %" PRIu64 " us",
			    vol->name, ok ? "near a full store" : "full", ns / 1000);
		return r == -1 ? -1 : 1;
	}
	e->vol = vol;
	e->t = *t;
	e->off = off;
	e->len = len;
	memcpy(e->data, buf, len);
	sv_lock_or_abort(&wb->lock);
	e->seq = ++vol->wb_seq;
	e->vnext = NULL;
	e->vprev = vol->wb_newest;
	*(vol->wb_newest ? &vol->wb_newest->vnext : &vol->wb_oldest) = e;
	vol->wb_newest = e;
	enqueue_locked(wb, e);
	sv_unlock_or_abort(&wb->lock);
	return 1;
}

/* Only asked when the range's chunk is landing (a few per cent of random
 * 4 KiB writes while a snapshot is young), so a walk of the list (at most
 * max_bytes / 4 KiB entries) costs less than an index would on every
 * write-behind. */
bool
sv_wb_overlaps(struct sv_volume *vol, uint64_t off, uint64_t len)
{
	SV_LOCK_SCOPE(&vol->pool->wb.lock);
	for (struct sv_wb_entry *e = vol->wb_newest; e; e = e->vprev)
		if (e->off < off + len && off < e->off + e->len)
			return true;
	return false;
}

int
sv_wb_flush(struct sv_volume *vol, uint64_t *seen, int *err)
{
	struct sv_wb *wb = &vol->pool->wb;
	SV_LOCK_SCOPE(&wb->lock);
	uint64_t upto = vol->wb_seq;
	while (vol->wb_oldest && vol->wb_oldest->seq <= upto)
		pthread_cond_wait(&wb->landed, &wb->lock);
	if (vol->wb_err_seq > *seen) {
		*err = vol->wb_error;
		*seen = vol->wb_err_told = vol->wb_err_seq;
		return -1;
	}
	return 0;
}

uint64_t
sv_wb_error_sample(struct sv_volume *vol)
{
	SV_LOCK_SCOPE(&vol->pool->wb.lock);
	return vol->wb_err_seq;
}

uint64_t
sv_wb_note_error(struct sv_volume *vol, int err)
{
	SV_LOCK_SCOPE(&vol->pool->wb.lock);
	vol->wb_error = err;
	return ++vol->wb_err_seq;
}

void
sv_wb_drain(struct sv_volume *vol)
{
	struct sv_wb *wb = &vol->pool->wb;
	SV_LOCK_SCOPE(&wb->lock);
	while (vol->wb_oldest)
		pthread_cond_wait(&wb->landed, &wb->lock);
	if (vol->wb_err_seq > vol->wb_err_told)
		sv_log_error("volume %s: a write acknowledged before its copy was lost (%s) and "
			     "no flush reported it",
			     vol->name, strerror(vol->wb_error));
}

void
sv_wb_shutdown(struct sv_pool *pool)
{
	struct sv_wb *wb = &pool->wb;
	sv_lock_or_abort(&wb->lock);
	wb->stop = true;
	pthread_cond_broadcast(&wb->work);
	sv_unlock_or_abort(&wb->lock);
	for (unsigned i = 0; i < wb->nthreads; i++)
		pthread_join(wb->threads[i], NULL);
	free(wb->threads);
	wb->threads = NULL;
	wb->nthreads = 0;
}

void
sv_wb_free(struct sv_pool *pool)
{
	pthread_cond_destroy(&pool->wb.landed);
	pthread_cond_destroy(&pool->wb.work);
	pthread_mutex_destroy(&pool->wb.lock);
}
