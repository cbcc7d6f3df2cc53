/*
 * writeback.c: early writeback of a volume's origin, so that the origin
 * never carries much unsynced data.
 *
 * Why: writes to the origin are buffered (NBD only promises durability at
 * FLUSH or FUA), and on Linux a file's dirty pages are written back only
 * when they are 30 s old or when the whole machine holds 10 % of its
 * memory dirty: under a 30k-IOPS random-write load that is gigabytes.  The
 * syncs that make a snapshot durable, a FLUSH, or the FLUSHes inside a
 * filesystem freeze then have seconds of scattered writes to push, in one
 * burst that fills the device's queue; every other sync behind them (the
 * pre-image commits of first writes after a snapshot) waits, write-behind
 * fills, and writers stall for as long (issue 3: 1.2 s).
 *
 * What: every write of the live volume adds its length to a counter; when
 * the counter passes SNAPVOL_WRITEBACK_MB (default 32 MiB; 0 turns this
 * off) it is reset and the volume's writeback thread is woken, which asks
 * the store to start writing the origin's dirty data (obj_writeback:
 * sync_file_range(SYNC_FILE_RANGE_WRITE) on a file pool; NULL on RADOS,
 * whose writes are durable when acknowledged).  The writer itself only
 * adds to an atomic counter and, once per threshold, signals a condition:
 * starting writeback of thousands of scattered pages submits as many
 * requests and blocks whenever the device's queue is full, which must
 * never be a client's write.  Kicks that arrive while one is running fold
 * into the next.
 *
 * Backpressure.  Starting writeback does not make the disk faster: a load
 * that writes faster than the disk takes it (46k IOPS of 4 KiB writes
 * here, absorbed by the page cache) left gigabytes dirty anyway, and a
 * snapshot's sync then took 15 s with commits and writers waiting behind
 * it (bench/results/cow-2026-11-22-162934.md: 2.8 GiB dirty, a write held
 * 9.2 s).  A pass of the thread submits every dirty page and blocks while
 * the device's queue is full, so it ends at about the pace the disk takes
 * the data.  If a whole threshold more is written while the last kick is
 * not taken yet (the thread is still busy with the pass before), the
 * volume is behind: every writer waits, after its write, until the thread
 * starts the next pass.
 * So the origin holds at most three or four thresholds not yet submitted
 * (the running pass's, the pending kick's, one more if the thread was
 * slow to take a kick), and a sync or FLUSH pushes about that much,
 * whatever the load.  The cost is the disk's pace for sustained writes:
 * the kernel's own rule at its dirty limit, reached here at 96-128 MiB
 * instead of gigabytes.
 *
 * Durability is unchanged: only obj_sync makes data durable; this only
 * leaves obj_sync less to do.  The threshold trades the two costs
 * measured in bench/cow.sh (sections "rw" and "create"): too small and
 * pages are written back one by one instead of being absorbed in the page
 * cache and written later in merged requests (sustained rewrites at 70k
 * IOPS fell to about half); too large and a sync again has seconds of
 * data to push.  At 32 MiB the create's sync took 150 ms p50 here instead
 * of 3.2 s, and the longest write during a create 20 ms instead of 345 ms.
 *
 * The same op, waiting, can pace the sync that makes a snapshot durable
 * (sv_writeback_sync, below; off by default).  docs/design-notes.md, "Writeback of the
 * origin", has the measurements.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define WRITEBACK_DEFAULT_MB  32
#define SYNC_SLICE_DEFAULT_MB 0
#define SYNC_SLICES_MAX	      256

static uint64_t threshold_bytes;
static pthread_once_t threshold_once = PTHREAD_ONCE_INIT;

static void
read_threshold(void)
{
	uint64_t mb = WRITEBACK_DEFAULT_MB;
	const char *env = getenv("SNAPVOL_WRITEBACK_MB");
	if (env && sv_parse_size(env, &mb) == -1) {
		sv_log_warn("SNAPVOL_WRITEBACK_MB=%s: not a number; using %u", env,
			    WRITEBACK_DEFAULT_MB);
		mb = WRITEBACK_DEFAULT_MB;
	}
	threshold_bytes = (mb > 65536 ? 65536 : mb) << 20;
}

uint64_t
sv_writeback_threshold(void)
{
	pthread_once(&threshold_once, read_threshold);
	return threshold_bytes;
}

void
sv_writeback_init(struct sv_volume *vol)
{
	struct sv_wback *w = &vol->wback;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	pthread_cond_init(&w->done, NULL);
	w->threshold = vol->ops->obj_writeback ? sv_writeback_threshold() : 0;
}

static void *
writeback_thread(void *arg)
{
	struct sv_volume *vol = arg;
	struct sv_wback *w = &vol->wback;
	sv_lock_or_abort(&w->lock);
	for (;;) {
		while (!w->kick && !w->stop)
			pthread_cond_wait(&w->cond, &w->lock);
		if (w->stop)
			break;
		w->kick = false;
		if (w->behind) { /* the writers held for this kick go on */
			__atomic_store_n(&w->behind, false, __ATOMIC_RELEASE);
			pthread_cond_broadcast(&w->done);
		}
		sv_unlock_or_abort(&w->lock);
		uint64_t t0 = sv_now_ns();
		int r = vol->ops->obj_writeback(vol->origin, 0, 0, 0);
		int e = errno;
		uint64_t ns = sv_now_ns() - t0;
		sv_lock_or_abort(&w->lock);
		w->kicks++;
		w->kick_ns += ns;
		if (ns > w->kick_ns_max)
			w->kick_ns_max = ns;
		/* Not an error that loses data: a sync reports real ones. */
		if (r == -1 && !w->warned) {
			w->warned = true;
			sv_log_warn("volume %s: cannot start writeback of its data: %s", vol->name,
				    strerror(e));
		}
	}
	sv_unlock_or_abort(&w->lock);
	return NULL;
}

void
sv_writeback_note(struct sv_volume *vol, uint64_t bytes)
{
	struct sv_wback *w = &vol->wback;
	uint64_t t = __atomic_load_n(&w->threshold, __ATOMIC_RELAXED);
	if (!t)
		return;
	if (__atomic_load_n(&w->behind, __ATOMIC_ACQUIRE)) { /* backpressure */
		uint64_t t0 = sv_now_ns();
		SV_LOCK_SCOPE(&w->lock);
		while (w->behind && !w->stop)
			pthread_cond_wait(&w->done, &w->lock);
		w->waits++;
		w->wait_ns += sv_now_ns() - t0;
	}
	if (__atomic_add_fetch(&w->pending, bytes, __ATOMIC_RELAXED) < t)
		return;
	/* One writer wins the reset and kicks; the others go on. */
	if (__atomic_exchange_n(&w->pending, 0, __ATOMIC_RELAXED) < t)
		return;
	SV_LOCK_SCOPE(&w->lock);
	if (w->stop)
		return;
	if (!w->started) {
		if (pthread_create(&w->thread, NULL, writeback_thread, vol) != 0) {
			sv_log_warn("volume %s: cannot start its writeback thread; the origin is "
				    "written back by the kernel alone",
				    vol->name);
			__atomic_store_n(&w->threshold, 0, __ATOMIC_RELAXED);
			return;
		}
		w->started = true;
	}
	if (w->kick) /* the last kick is not even taken: a whole threshold behind */
		__atomic_store_n(&w->behind, true, __ATOMIC_RELEASE);
	w->kick = true;
	pthread_cond_signal(&w->cond);
}

void
sv_writeback_stop(struct sv_volume *vol)
{
	struct sv_wback *w = &vol->wback;
	sv_lock_or_abort(&w->lock);
	w->stop = true;
	pthread_cond_signal(&w->cond);
	pthread_cond_broadcast(&w->done);
	bool started = w->started;
	sv_unlock_or_abort(&w->lock);
	if (started) {
		pthread_join(w->thread, NULL);
		sv_log_debug("volume %s: %" PRIu64 " writeback kicks, %" PRIu64 " us each on "
			     "average, %" PRIu64 " us at most; writers held %" PRIu64
			     " times, %" PRIu64 " us in all",
			     vol->name, w->kicks, w->kicks ? w->kick_ns / w->kicks / 1000 : 0,
			     w->kick_ns_max / 1000, w->waits, w->wait_ns / 1000);
	}
	w->started = false;
	pthread_cond_destroy(&w->cond);
	pthread_cond_destroy(&w->done);
	pthread_mutex_destroy(&w->lock);
}

/* ---- the sync that makes a snapshot durable ---- */

static uint64_t slice_bytes;
static pthread_once_t slice_once = PTHREAD_ONCE_INIT;

static void
read_slice(void)
{
	uint64_t mb = SYNC_SLICE_DEFAULT_MB;
	const char *env = getenv("SNAPVOL_SNAP_SYNC_SLICE_MB");
	if (env && sv_parse_size(env, &mb) == -1) {
		sv_log_warn("SNAPVOL_SNAP_SYNC_SLICE_MB=%s: not a number; using %u", env,
			    SYNC_SLICE_DEFAULT_MB);
		mb = SYNC_SLICE_DEFAULT_MB;
	}
	slice_bytes = (mb > 65536 ? 65536 : mb) << 20;
}

/* One fdatasync of the origin submits every dirty page at once: the
 * device's queue then holds all of it ahead of the pre-image commits that
 * first writes after the switch wait for (and a read-after-landing or a
 * write to a landing chunk waits for those).  Written back and waited for
 * one slice of the address range at a time (SNAPVOL_SNAP_SYNC_SLICE_MB),
 * at most a slice's dirty pages are queued ahead of a commit; the
 * fdatasync after it has only the pages dirtied meanwhile, the metadata
 * and the cache flush left.  Durability is the fdatasync's alone, as
 * before.  At most SYNC_SLICES_MAX slices, so a 1 TiB volume costs few
 * calls.  Off by default: on a quiet machine at 20k+ IOPS, 64 MiB slices
 * made the longest write during a create worse (2.1 s p50 against 0.35 s
 * with one fdatasync; docs/design-notes.md). */
int
sv_writeback_sync(struct sv_volume *vol)
{
	pthread_once(&slice_once, read_slice);
	const struct sv_store_ops *ops = vol->ops;
	if (ops->obj_writeback && slice_bytes) {
		uint64_t slice = slice_bytes;
		if (slice < vol->size / SYNC_SLICES_MAX)
			slice = vol->size / SYNC_SLICES_MAX;
		for (uint64_t off = 0; off < vol->size; off += slice) {
			uint64_t len = vol->size - off < slice ? vol->size - off : slice;
			/* A waited writeback reports a write error once, like a
			 * sync (Linux's errseq: the fdatasync after it would not
			 * see it again), so it fails the sync here. */
			if (ops->obj_writeback(vol->origin, off, len, SV_WRITEBACK_WAIT) == -1)
				return -1;
		}
	}
	return ops->obj_sync(vol->origin);
}

/* ---- tracing (SNAPVOL_TRACE_FREEZE=1): what a snapshot's sync meets ---- */

/* Kernel-wide dirty and under-writeback memory, KiB (-1 if unknown). */
static void
meminfo_dirty(long *dirty, long *wback)
{
	*dirty = *wback = -1;
	FILE *f = fopen("/proc/meminfo", "re");
	if (!f)
		return;
	char line[128];
	while (fgets(line, sizeof line, f)) {
		long v;
		if (sscanf(line, "Dirty: %ld kB", &v) == 1)
			*dirty = v;
		else if (sscanf(line, "Writeback: %ld kB", &v) == 1)
			*wback = v;
	}
	fclose(f);
}

static void *
probe_thread(void *arg)
{
	struct sv_wb_probe *p = arg;
	struct sv_wb *wb = &p->pool->wb;
	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		sv_lock_or_abort(&wb->lock);
		size_t b = wb->bytes, max = wb->max_bytes;
		sv_unlock_or_abort(&wb->lock);
		if (b > p->wb_max)
			p->wb_max = b;
		p->samples++;
		if (max && b + 65536 > max)
			p->full_samples++;
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

void
sv_wb_probe_start(struct sv_pool *pool, struct sv_wb_probe *p)
{
	memset(p, 0, sizeof *p);
	p->pool = pool;
	meminfo_dirty(&p->dirty_kib, &p->wback_kib);
	p->running = pthread_create(&p->thread, NULL, probe_thread, p) == 0;
}

void
sv_wb_probe_stop(struct sv_wb_probe *p)
{
	if (!p->running)
		return;
	__atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
	pthread_join(p->thread, NULL);
	p->running = false;
}
