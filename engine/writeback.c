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
 * the data.  The volume's backlog is what was written since the last
 * finished pass started (the pass submitted everything before that).
 *
 * Pacing (session 7), as the kernel's balance_dirty_pages paces a task:
 *   - the disk's rate: bytes a pass submitted / its time, averaged over
 *     busy passes (the next kick came while it ran: the writers are
 *     ahead of the disk), which block on the full device queue and so end
 *     at the disk's pace.  A pass submits what was written before it
 *     started and about half of what is written while it runs (the pages
 *     ahead of its walk of the file).  A first version counted only the
 *     first (about half the rate), paced at most at twice the rate, slept
 *     for pauses of any length and paced while the thread was idle:
 *     sustained rewrites fell to about half (the rules here fixed it);
 *   - the backlog, smoothed: the running pass's bytes count as going to
 *     the disk at that rate, not all at once when the pass ends (a pass
 *     holds a threshold or more, so the raw backlog is a saw-tooth as tall
 *     as the whole pacing range);
 *   - under the setpoint (half a threshold of raw backlog) a write costs
 *     one atomic add and a load: no lock, never a sleep;
 *   - above it, while a pass runs or is due (an idle thread means the
 *     disk is not behind), every write is paused a little: its bytes at
 *     the disk's rate times a factor of the smoothed backlog, 8 at the
 *     setpoint, 1 at one threshold, 0 at one and a half (cubic either
 *     side, as the kernel's pos_ratio), so the backlog settles where the
 *     writers' pace meets the disk's whatever the estimate's error within
 *     that range.  The pauses are slots on one clock per volume, so the
 *     volume's writers together get that rate however many threads
 *     write; a write sleeps only once the clock is PAUSE_MIN_US ahead
 *     (shorter pauses add up: a wake-up on a busy CPU costs more than
 *     they would), and at most PAUSE_MAX_MS;
 *   - the hard stop stays the last resort: at four thresholds of raw
 *     backlog a writer waits until a pass ends (before the first pass
 *     ends there is no rate to pace at).
 * Stopping writers until a pass ended (session 6's only rule) made them
 * wait for the disk in steps of a whole pass: the longest write with no
 * snapshot near was 0.5-1.4 s.  A sync or FLUSH still finds at most a few
 * thresholds to push.
 *
 * Durability is unchanged: only obj_sync makes data durable; this only
 * leaves obj_sync less to do.  The threshold trades the two costs
 * measured in bench/cow.sh (sections "rw" and "create"): too small and
 * pages are written back one by one instead of being absorbed in the page
 * cache and written later in merged requests (sustained rewrites at 70k
 * IOPS fell to about half); too large and a sync again has seconds of
 * data to push.  At 32 MiB the create's sync took 150 ms p50 here instead
 * of 3.2 s, and the longest write during a create 20 ms instead of 345 ms.
 * docs/design-notes.md, "Writeback of the origin", has the measurements.
 *
 * A snapshot create's presync (snapshot.c) starts the origin's writeback
 * here too, one slice of the address range at a time, so that the create's
 * thread does not submit a burst of dirty pages in one kernel call (section
 * "a snapshot create's presync, in slices").
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define WRITEBACK_DEFAULT_MB 32
#define PAUSE_MIN_US	     1000
#define PAUSE_MAX_MS	     20		 /* one write's pause at most (the hard stop aside) */
#define SETPOINT(t)	     ((t) / 2)	 /* (smoothed) backlog with no pause at all */
#define PACE_END(t)	     ((t)*3 / 2) /* (smoothed) backlog paced at nothing */
#define HARD_STOP(t)	     (4 * (t))	 /* backlog at which writers wait for a pass */

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

/* Where the next writer must take the slow path: the next kick, or the
 * pacing setpoint.  lock. */
static void
set_slow_at_locked(struct sv_wback *w)
{
	uint64_t pace = w->taken + SETPOINT(w->threshold);
	__atomic_store_n(&w->slow_at, w->kick_at < pace ? w->kick_at : pace, __ATOMIC_RELAXED);
}

void
sv_writeback_init(struct sv_volume *vol)
{
	struct sv_wback *w = &vol->wback;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	pthread_cond_init(&w->done, NULL);
	w->threshold = vol->ops->obj_writeback ? sv_writeback_threshold() : 0;
	w->kick_at = w->threshold;
	set_slow_at_locked(w); /* nobody else sees it yet */
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
		/* Everything written before this is submitted when the pass ends. */
		uint64_t start = __atomic_load_n(&w->written, __ATOMIC_RELAXED);
		uint64_t t0 = sv_now_ns();
		w->running = true;
		w->pass_start = start;
		w->pass_ns = t0;
		sv_unlock_or_abort(&w->lock);
		int r = vol->ops->obj_writeback(vol->origin);
		int e = errno;
		uint64_t ns = sv_now_ns() - t0;
		sv_lock_or_abort(&w->lock);
		w->running = false;
		/* A busy pass (the next kick came while it ran: the writers are
		 * ahead of the disk) measures the disk's pace.  It submitted what
		 * was written before it started and about half of what was
		 * written while it ran (the pages ahead of its walk of the file). */
		uint64_t end = __atomic_load_n(&w->written, __ATOMIC_RELAXED);
		if (start > w->taken && ns > 0) {
			double bytes = (double)(start - w->taken) + (double)(end - start) / 2;
			double bps = bytes * 1e9 / (double)ns;
			uint64_t avg = w->rate ? (uint64_t)((double)w->rate / 2 + bps / 2) : 0;
			if (!w->rate)
				w->rate = (uint64_t)bps;
			else if (w->kick)
				w->rate = avg;
			else if (avg > w->rate) /* the disk kept up: it takes at least this */
				w->rate = avg;
		}
		w->taken = start;
		set_slow_at_locked(w);
		pthread_cond_broadcast(&w->done); /* writers at the hard stop go on */
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

/* The pace at (smoothed) backlog b: the disk's rate times 1 + k y^3,
 * y = 1 - 2x, x the backlog's place between the setpoint (x = 0: 8 times
 * the rate, k = 7) and PACE_END (x = 1: nothing, k = 1); the pause is the
 * slot of bytes on the volume's clock, at most PAUSE_MAX_MS from now.
 * lock. */
static uint64_t
pause_locked(struct sv_wback *w, uint64_t b, uint64_t bytes)
{
	uint64_t set = SETPOINT(w->threshold), end = PACE_END(w->threshold);
	double x = b >= end ? 1 : (double)(b - set) / (double)(end - set);
	double y = 1 - 2 * x;
	double g = 1 + (y > 0 ? 7 : 1) * y * y * y;
	uint64_t now = sv_now_ns(), max = (uint64_t)PAUSE_MAX_MS * 1000000;
	double cost = (double)bytes * 1e9 / ((double)w->rate * g);
	uint64_t slot =
	    (w->slot_ns > now ? w->slot_ns : now) + (cost > (double)max ? max : (uint64_t)cost);
	if (slot > now + max)
		slot = now + max;
	w->slot_ns = slot;
	/* Short pauses add up on the clock, and the write that takes it
	 * PAUSE_MIN_US ahead sleeps: a sleep's own cost (a wake-up on a busy
	 * CPU) is then small against it. */
	return slot - now >= (uint64_t)PAUSE_MIN_US * 1000 ? slot - now : 0;
}

/* A kick due, or the volume past the setpoint: n is written with this
 * write's bytes. */
static void
note_slow(struct sv_volume *vol, uint64_t n, uint64_t bytes)
{
	struct sv_wback *w = &vol->wback;
	uint64_t pause = 0;
	{
		SV_LOCK_SCOPE(&w->lock);
		if (w->stop)
			return;
		if (n >= w->kick_at) {
			if (!w->started) {
				if (pthread_create(&w->thread, NULL, writeback_thread, vol) != 0) {
					sv_log_warn(
					    "volume %s: cannot start its writeback thread; "
					    "the origin is written back by the kernel alone",
					    vol->name);
					__atomic_store_n(&w->threshold, 0, __ATOMIC_RELAXED);
					return;
				}
				w->started = true;
			}
			w->kick = true; /* kicks while a pass runs fold into the next */
			w->kick_at = n + w->threshold;
			pthread_cond_signal(&w->cond);
		}
		uint64_t t = w->threshold;
		if (n >= w->taken + HARD_STOP(t)) {
			/* The last resort: a pass is running or due (a kick comes
			 * every threshold), and its end takes the backlog down. */
			uint64_t t0 = sv_now_ns();
			while (n >= w->taken + HARD_STOP(t) && !w->stop)
				pthread_cond_wait(&w->done, &w->lock);
			w->waits++;
			w->wait_ns += sv_now_ns() - t0;
		} else if (n > w->taken + SETPOINT(t) && w->rate && (w->running || w->kick)) {
			/* (No pass running or due: the disk is not behind.) */
			/* The backlog, smoothed: the running pass's bytes go to the
			 * disk at its rate, not all at once when the pass ends. */
			uint64_t taken = w->taken;
			if (w->running) {
				uint64_t now = sv_now_ns();
				double gone = (double)w->rate * (double)(now - w->pass_ns) / 1e9;
				taken = gone >= (double)(w->pass_start - taken)
					    ? w->pass_start
					    : taken + (uint64_t)gone;
			}
			if (n > taken + SETPOINT(t))
				pause = pause_locked(w, n - taken, bytes);
			w->paced += pause > 0;
			w->paced_ns += pause;
			if (pause > w->pause_ns_max)
				w->pause_ns_max = pause;
		}
		set_slow_at_locked(w);
	}
	if (pause) {
		struct timespec ts = {(time_t)(pause / 1000000000), (long)(pause % 1000000000)};
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
	}
}

void
sv_writeback_note(struct sv_volume *vol, uint64_t bytes)
{
	struct sv_wback *w = &vol->wback;
	if (!__atomic_load_n(&w->threshold, __ATOMIC_RELAXED))
		return;
	/* The fast path: one atomic add, under the setpoint and between kicks. */
	uint64_t n = __atomic_add_fetch(&w->written, bytes, __ATOMIC_RELAXED);
	if (n < __atomic_load_n(&w->slow_at, __ATOMIC_RELAXED))
		return;
	note_slow(vol, n, bytes);
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
			     "average, %" PRIu64 " us at most; disk rate %" PRIu64
			     " KiB/s; writers paused %" PRIu64 " times, %" PRIu64
			     " us in all, %" PRIu64 " us at most; held at the hard stop %" PRIu64
			     " times, %" PRIu64 " us in all",
			     vol->name, w->kicks, w->kicks ? w->kick_ns / w->kicks / 1000 : 0,
			     w->kick_ns_max / 1000, w->rate / 1024, w->paced, w->paced_ns / 1000,
			     w->pause_ns_max / 1000, w->waits, w->wait_ns / 1000);
	}
	w->started = false;
	pthread_cond_destroy(&w->cond);
	pthread_cond_destroy(&w->done);
	pthread_mutex_destroy(&w->lock);
}

/* ---- a snapshot create's presync, in slices ----
 *
 * The presync (snapshot.c) was one fdatasync of the whole origin: the
 * kernel walks the file and submits every dirty page in one call, a
 * millisecond or two of CPU in the create's thread on this machine (a few
 * hundred scattered 4 KiB pages at LOAD_IOPS=8000), in a kernel built
 * without preemption, then one flush.  Session 10 traced the 1-2 ms writes
 * of a take to that burst: the NBD worker woken by the client's next
 * request waited 0.8-2.5 ms to run, behind the create's thread or on a
 * CPU that stayed idle meanwhile (a VM's vCPU), while nothing in the
 * engine held it.  Starting the writeback one slice of the address range
 * at a time (sync_file_range(SYNC_FILE_RANGE_WRITE), which waits for
 * nothing), with a sched_yield() between slices, returns to user space
 * every few pages; the fdatasync after it then finds only what was
 * written meanwhile, and it alone still makes the data durable (an I/O
 * error of the slices is reported by it).  Measured on the quiet machine
 * (docs/design-notes.md, "Writeback of the origin", session 10): the
 * take's longest write 0.36-0.38 ms p50 against 1.27-1.62 ms.  A priority
 * for the create's thread (nice 19, SCHED_IDLE) or a short scheduler
 * slice for the NBD workers did not change it.  The cost: size / slice
 * system calls per create (256 for 4 GiB, microseconds each on a clean
 * range).  SNAPVOL_PRESYNC_SLICE_MB (16; 0: one fdatasync, as before). */
#define PRESYNC_SLICE_DEFAULT_MB 16

static uint64_t presync_slice;
static pthread_once_t presync_slice_once = PTHREAD_ONCE_INIT;

static void
read_presync_slice(void)
{
	uint64_t mb = PRESYNC_SLICE_DEFAULT_MB;
	const char *env = getenv("SNAPVOL_PRESYNC_SLICE_MB");
	if (env && sv_parse_size(env, &mb) == -1) {
		sv_log_warn("SNAPVOL_PRESYNC_SLICE_MB=%s: not a number; using %u", env,
			    PRESYNC_SLICE_DEFAULT_MB);
		mb = PRESYNC_SLICE_DEFAULT_MB;
	}
	presync_slice = (mb > 65536 ? 65536 : mb) << 20;
}

int
sv_writeback_presync(struct sv_volume *vol)
{
	pthread_once(&presync_slice_once, read_presync_slice);
	int fd = presync_slice ? vol->ops->obj_fd(vol->origin) : -1;
	for (uint64_t off = 0; fd >= 0 && off < vol->size; off += presync_slice) {
		if (sync_file_range(fd, (off64_t)off, (off64_t)presync_slice,
				    SYNC_FILE_RANGE_WRITE) == -1)
			break; /* the fdatasync below does it all, and reports errors */
		sched_yield();
	}
	return vol->ops->obj_sync(vol->origin);
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
