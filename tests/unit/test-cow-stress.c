/*
 * test-cow-stress.c: the copy-on-write engine under concurrency (run under
 * TSan in CI: suite "concurrency").
 *
 * Many writers hammer the same few chunks of one volume through views
 * (31 writes in 32; the others go anywhere in a volume 8 times as large, so
 * some first writes come late in an epoch), with writes of 1 to 3 chunks
 * that start and end anywhere on a sector boundary (so most are not
 * chunk-aligned); a snapshot thread takes snapshots in the middle of it and
 * deletes some; snapshot readers read the live snapshots continuously
 * (short reads, and now and then all of a snapshot: a long read leaves a
 * wide window between reading the origin and re-checking it).  The oracle
 * does not depend on timing:
 *
 *   - Every 512-byte sector any writer writes is stamped (writer, sequence
 *     number, sector index) and checksummed, so a reader can tell a complete
 *     sector written to that very offset from a torn or misplaced one.
 *   - A snapshot is read in full as soon as sv_snapshot_create returns
 *     (racing with the writers) and read again and again later: it must be
 *     byte-identical every time (DESIGN invariants 1 and 3: a copy in
 *     flight is waited for; an origin chunk is never overwritten before its
 *     pre-image is kept).
 *   - Every write is logged with a global tick before it starts and after
 *     it returns, and so is every snapshot creation.  At the end each
 *     snapshot's first image is checked against the logs: each sector holds
 *     a write that covered it and started before the create returned, and
 *     no write that covered it, completed before the create was called and
 *     started after the snapshot's write completed (a write acknowledged
 *     before the switch is in the snapshot; none started after it is).
 *   - The same holds for the volume's image at the end, and every image is
 *     all or nothing per write: a sector that shows a write means every
 *     other sector it wrote shows it or something not older (a write is
 *     stamped with one epoch; a copy made while a write of the previous
 *     epoch is still going would split it).
 *   - Exactly one copy per chunk per epoch (invariant 3): the copied bytes
 *     the engine counts lie between what the epochs certainly wrote and what
 *     they could have written, chunk by chunk.
 *   - A thread that does not stop within a minute of the end is stuck: the
 *     test says so and exits, rather than hang.
 *
 * Writers never trim (a hole would carry no stamp).  The snapshot thread
 * keeps at least two snapshots, so every epoch after the first copies: a
 * first write to a chunk in an epoch copies it unless the epoch's snapshot
 * was deleted while it was the newest (then its older neighbour's
 * pre-images serve, and the copy count is only bounded from above).
 *
 * A second test runs the same writers and readers against rollbacks
 * (mostly to the newest snapshot, which then drops its pre-images) instead
 * of creates and deletes; there the snapshots must not change either, and
 * after a rollback with the writers held the volume is the snapshot.  A
 * failure prints the control thread's last operations with their ticks.
 *
 * Knobs (environment): SNAPVOL_STRESS_SECONDS (per test; default 4 and 3,
 * 8 and 5 under TSan), SNAPVOL_STRESS_WRITERS (6), SNAPVOL_STRESS_READERS
 * (2), SNAPVOL_STRESS_CHUNKS (8 hot chunks), SNAPVOL_TEST_FILTER (run only
 * the tests whose name matches), SNAPVOL_SEED (the threads' random
 * streams; the interleaving itself is not reproducible).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "testpool.h"
#include "error.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

#define SECTOR	    512u
#define CHUNK	    4096u
#define STAMP_MAGIC 0x53565354u /* "TSVS" */
#define MAX_SNAPS   4096
#define MAX_LIVE    5
#define VOLUME	    "stress"

/* ---- sector stamps ---- */

/* A checksum over 64-bit words (cheap under TSan, which instruments
 * every load). */
static uint64_t
sum_words(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	return h;
}

/* Fill one sector with (writer, seq, sector), filler and a checksum. */
static void
stamp(unsigned char *p, uint32_t writer, uint32_t seq, uint32_t sector)
{
	uint32_t hdr[4] = {STAMP_MAGIC, writer, seq, sector};
	memcpy(p, hdr, sizeof hdr);
	uint64_t x = test_mix(((uint64_t)writer << 48) ^ ((uint64_t)seq << 16) ^ sector) | 1;
	for (size_t i = sizeof hdr; i < SECTOR - 8; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
	uint64_t sum = sum_words(p, SECTOR - 8);
	memcpy(p + SECTOR - 8, &sum, 8);
}

/* A complete sector some writer wrote to sector `sector`?  Fills *writer
 * and *seq; returns a reason on failure, NULL on success. */
static const char *
check_stamp(const unsigned char *p, uint32_t sector, uint32_t *writer, uint32_t *seq)
{
	uint32_t hdr[4];
	uint64_t sum;
	memcpy(hdr, p, sizeof hdr);
	memcpy(&sum, p + SECTOR - 8, 8);
	if (hdr[0] != STAMP_MAGIC)
		return "no stamp (zeros or garbage)";
	if (sum != sum_words(p, SECTOR - 8))
		return "torn sector (checksum mismatch)";
	if (hdr[3] != sector)
		return "sector written for another offset";
	*writer = hdr[1];
	*seq = hdr[2];
	return NULL;
}

/* What a sector holds, for messages. */
static void
describe(const unsigned char *p, uint32_t sector, char *buf, size_t len)
{
	uint32_t wr, seq;
	const char *why = check_stamp(p, sector, &wr, &seq);
	if (why)
		snprintf(buf, len, "%s", why);
	else
		snprintf(buf, len, "writer %u's write %u", wr, seq);
}

/* ---- shared state ---- */

struct wlog {		     /* one write, as its writer logged it */
	uint64_t start, end; /* ticks */
	uint32_t sector, nsect;
};

struct writer {
	pthread_t tid;
	uint32_t id; /* 1..n; 0 is the initial fill */
	unsigned rng;
	struct wlog *log; /* only this writer touches it until it is joined */
	size_t n, cap;
	uint64_t fua, flushes;
};

struct snapinfo {
	char name[16];
	uint64_t t0, t1;	/* ticks around sv_snapshot_create */
	uint64_t del;		/* tick before sv_snapshot_delete (UINT64_MAX: none) */
	unsigned char *capture; /* read right after the create returned */
	bool deleted;		/* snaps_lock */
};

struct stress {
	struct sv_pool *pool;
	uint32_t hot;	  /* chunks the writers hammer: 0..hot-1 */
	uint32_t nchunks; /* the volume's: 8 * hot, the rest written now and then */
	uint32_t nsect;
	uint64_t size;
	unsigned seed;
	atomic_bool stop;
	atomic_uint_fast64_t clock;
	/* the first failure any thread saw; fail_lock */
	pthread_mutex_t fail_lock;
	char failure[512];
	atomic_bool failed;

	pthread_mutex_t snaps_lock; /* guards n_snaps, live[], every deleted flag */
	struct snapinfo snaps[MAX_SNAPS];
	size_t n_snaps;		/* published (captured) snapshots */
	size_t live[MAX_SNAPS]; /* indices of the published, undeleted ones, oldest first */
	size_t n_live;
	atomic_uint_fast64_t snapshot_reads, deletes, busy_deletes, rollbacks, longest_rollback_us;
	/* The control thread's last operations, for a failure report;
	 * events_lock. */
	pthread_mutex_t events_lock;
	struct {
		uint64_t t0, t1;
		char what[56];
	} events[32];
	unsigned n_events;
	/* writers hold it shared around each write; the rollback test takes
	 * it to hold them while it checks a rollback's result */
	pthread_rwlock_t pause;
	struct wlog init; /* the initial fill: writer 0, seq 1 */
};

static uint64_t
tick(struct stress *s)
{
	return atomic_fetch_add(&s->clock, 1) + 1;
}

static void __attribute__((format(printf, 2, 3))) report(struct stress *s, const char *fmt, ...)
{
	pthread_mutex_lock(&s->fail_lock);
	if (!atomic_load(&s->failed)) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(s->failure, sizeof s->failure, fmt, ap);
		va_end(ap);
		atomic_store(&s->failed, true);
		atomic_store(&s->stop, true);
	}
	pthread_mutex_unlock(&s->fail_lock);
}

/* Record a control operation that ran from tick t0 to now. */
static void __attribute__((format(printf, 3, 4)))
note(struct stress *s, uint64_t t0, const char *fmt, ...)
{
	uint64_t t1 = tick(s);
	pthread_mutex_lock(&s->events_lock);
	unsigned i = s->n_events++ % 32;
	s->events[i].t0 = t0;
	s->events[i].t1 = t1;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->events[i].what, sizeof s->events[i].what, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&s->events_lock);
}

static void
print_events(struct stress *s)
{
	pthread_mutex_lock(&s->events_lock);
	printf("the last operations of the control thread (ticks):\n");
	for (unsigned i = s->n_events > 32 ? s->n_events - 32 : 0; i < s->n_events; i++)
		printf("  [%" PRIu64 ", %" PRIu64 "] %s\n", s->events[i % 32].t0,
		       s->events[i % 32].t1, s->events[i % 32].what);
	pthread_mutex_unlock(&s->events_lock);
	fflush(stdout);
}

static bool
running(struct stress *s)
{
	return !atomic_load(&s->stop);
}

static struct sv_view *
open_view(struct sv_pool *pool, const char *name)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1)
		return NULL;
	return v;
}

/* ---- writers ---- */

struct writer_arg {
	struct stress *s;
	struct writer *w;
};

static void *
writer_main(void *arg)
{
	struct stress *s = ((struct writer_arg *)arg)->s;
	struct writer *w = ((struct writer_arg *)arg)->w;
	struct sv_view *v = open_view(s->pool, VOLUME);
	if (!v) {
		report(s, "writer %u: open: %s", w->id, sv_last_error());
		return NULL;
	}
	unsigned char *buf = malloc(3 * CHUNK);
	const uint32_t spc = CHUNK / SECTOR;
	while (running(s)) {
		/* 1 to 3 chunks' worth, starting anywhere on a sector */
		uint32_t c =
		    (uint32_t)rand_r(&w->rng) % (rand_r(&w->rng) % 32 ? s->hot : s->nchunks);
		uint32_t first = c * spc;
		uint32_t nsect = spc * (1 + (uint32_t)rand_r(&w->rng) % 3);
		if (rand_r(&w->rng) % 2) { /* unaligned: shift and trim */
			first += (uint32_t)rand_r(&w->rng) % spc;
			nsect -= (uint32_t)rand_r(&w->rng) % spc;
		}
		if (first >= s->nsect)
			first = s->nsect - 1;
		if (first + nsect > s->nsect)
			nsect = s->nsect - first;
		if (w->n == w->cap) {
			w->cap = w->cap ? 2 * w->cap : 4096;
			w->log = realloc(w->log, w->cap * sizeof *w->log);
			if (!w->log) {
				report(s, "out of memory");
				break;
			}
		}
		uint32_t seq = (uint32_t)w->n + 1;
		for (uint32_t i = 0; i < nsect; i++)
			stamp(buf + (size_t)i * SECTOR, w->id, seq, first + i);
		unsigned flags = 0;
		if (rand_r(&w->rng) % 16 == 0) {
			flags = SV_FUA;
			w->fua++;
		}
		struct wlog *e = &w->log[w->n];
		e->sector = first;
		e->nsect = nsect;
		pthread_rwlock_rdlock(&s->pause);
		e->start = tick(s);
		int err = 0;
		int r =
		    sv_view_pwrite(v, buf, nsect * SECTOR, (uint64_t)first * SECTOR, flags, &err);
		pthread_rwlock_unlock(&s->pause);
		if (r == -1) {
			report(s, "writer %u: write of %u sectors at %u: %s", w->id, nsect, first,
			       strerror(err));
			break;
		}
		e->end = tick(s);
		w->n++;
		if (rand_r(&w->rng) % 64 == 0) {
			if (sv_view_flush(v, &err) == -1) {
				report(s, "writer %u: flush: %s", w->id, strerror(err));
				break;
			}
			w->flushes++;
		}
	}
	free(buf);
	sv_view_close(v);
	return NULL;
}

/* ---- snapshots ---- */

/* Every sector of a snapshot image is a complete stamp for its offset. */
static bool
check_image(struct stress *s, const unsigned char *img, const char *what)
{
	for (uint32_t i = 0; i < s->nsect; i++) {
		uint32_t wr, seq;
		const char *why = check_stamp(img + (size_t)i * SECTOR, i, &wr, &seq);
		if (why) {
			report(s, "%s: sector %u (chunk %u): %s", what, i, i * SECTOR / CHUNK, why);
			return false;
		}
	}
	return true;
}

/* Take snapshot "s<counter>", read its image at once (racing with the
 * writers) and publish it to the readers.  Its index, or -1 (reported). */
static ssize_t
take_snapshot(struct stress *s, unsigned *counter)
{
	pthread_mutex_lock(&s->snaps_lock);
	size_t idx = s->n_snaps;
	pthread_mutex_unlock(&s->snaps_lock);
	if (idx == MAX_SNAPS)
		return -1;
	/* Only this thread writes the entry until it is published. */
	struct snapinfo *si = &s->snaps[idx];
	snprintf(si->name, sizeof si->name, "s%u", (*counter)++);
	char spec[64];
	snprintf(spec, sizeof spec, VOLUME "@%s", si->name);
	const char *specs[] = {spec};
	si->del = UINT64_MAX;
	si->t0 = tick(s);
	if (sv_snapshot_create(s->pool, specs, 1, NULL) == -1) {
		report(s, "snapshot %s: %s", spec, sv_last_error());
		return -1;
	}
	si->t1 = tick(s);
	note(s, si->t0, "create %s", si->name);
	/* Its image now, while the writers go on. */
	struct sv_view *v = open_view(s->pool, spec);
	if (!v) {
		report(s, "open %s: %s", spec, sv_last_error());
		return -1;
	}
	si->capture = malloc(s->size);
	int err = 0;
	int r = sv_view_pread(v, si->capture, (uint32_t)s->size, 0, &err);
	sv_view_close(v);
	if (r == -1)
		report(s, "read %s: %s", spec, strerror(err));
	if (r == -1 || !check_image(s, si->capture, spec)) {
		free(si->capture);
		si->capture = NULL;
		return -1;
	}
	pthread_mutex_lock(&s->snaps_lock);
	s->n_snaps++;
	s->live[s->n_live++] = idx;
	pthread_mutex_unlock(&s->snaps_lock);
	return (ssize_t)idx;
}

/* Delete the vi-th live snapshot; a reader holding it open is no error.
 * false if the run must stop. */
static bool
delete_snapshot(struct stress *s, size_t vi)
{
	pthread_mutex_lock(&s->snaps_lock);
	size_t victim = s->live[vi];
	pthread_mutex_unlock(&s->snaps_lock);
	s->snaps[victim].del = tick(s);
	if (sv_snapshot_delete(s->pool, VOLUME, s->snaps[victim].name) == -1) {
		if (sv_last_errno() == EBUSY) { /* a reader has it open */
			note(s, s->snaps[victim].del, "delete %s: busy", s->snaps[victim].name);
			s->snaps[victim].del = UINT64_MAX;
			atomic_fetch_add(&s->busy_deletes, 1);
			return true;
		}
		report(s, "delete %s: %s", s->snaps[victim].name, sv_last_error());
		return false;
	}
	note(s, s->snaps[victim].del, "delete %s", s->snaps[victim].name);
	atomic_fetch_add(&s->deletes, 1);
	pthread_mutex_lock(&s->snaps_lock);
	s->snaps[victim].deleted = true;
	memmove(&s->live[vi], &s->live[vi + 1], (s->n_live - vi - 1) * sizeof *s->live);
	s->n_live--;
	pthread_mutex_unlock(&s->snaps_lock);
	return true;
}

static void *
snapshot_main(void *arg)
{
	struct stress *s = arg;
	unsigned rng = s->seed ^ 0x5a5a5a5au;
	unsigned counter = 0;
	while (running(s)) {
		struct timespec ts = {0, (long)(1 + rand_r(&rng) % 15) * 1000000L};
		nanosleep(&ts, NULL);
		if (!running(s) || take_snapshot(s, &counter) < 0)
			break;
		/* Too many live ones: delete one; the newest a third of the time
		 * (the current epoch's copy decision then widens, see top). */
		pthread_mutex_lock(&s->snaps_lock);
		size_t nlive = s->n_live;
		pthread_mutex_unlock(&s->snaps_lock);
		if (nlive <= MAX_LIVE)
			continue;
		size_t vi = rand_r(&rng) % 3 == 0 ? nlive - 1 : (size_t)rand_r(&rng) % (nlive - 1);
		if (!delete_snapshot(s, vi))
			break;
	}
	return NULL;
}

/* The rollback test's control thread: roll back, mostly to the newest
 * snapshot (whose pre-images a rollback then drops), while readers read
 * the snapshots and writers write; every fourth rollback with the writers
 * held, to check the volume is then exactly the snapshot; now and then a
 * new snapshot, and a delete. */
static void *
rollback_main(void *arg)
{
	struct stress *s = arg;
	unsigned rng = s->seed ^ 0xa5a5a5a5u;
	unsigned counter = 100000;
	unsigned char *img = malloc(s->size);
	for (unsigned n = 0; running(s); n++) {
		struct timespec ts = {0, (long)(rand_r(&rng) % 3) * 1000000L};
		nanosleep(&ts, NULL);
		if (n % 32 == 31) {
			if (take_snapshot(s, &counter) < 0)
				break;
			pthread_mutex_lock(&s->snaps_lock);
			size_t nlive = s->n_live;
			pthread_mutex_unlock(&s->snaps_lock);
			if (nlive > 3 && !delete_snapshot(s, (size_t)rand_r(&rng) % (nlive - 1)))
				break;
			continue;
		}
		pthread_mutex_lock(&s->snaps_lock);
		size_t nlive = s->n_live;
		size_t target =
		    s->live[rand_r(&rng) % 4 ? nlive - 1 : (size_t)rand_r(&rng) % nlive];
		pthread_mutex_unlock(&s->snaps_lock);
		bool held = n % 4 == 0;
		if (held)
			pthread_rwlock_wrlock(&s->pause);
		uint64_t t0 = tick(s);
		struct timespec a, z;
		clock_gettime(CLOCK_MONOTONIC, &a);
		int r = sv_snapshot_rollback(s->pool, VOLUME, s->snaps[target].name);
		clock_gettime(CLOCK_MONOTONIC, &z);
		uint64_t us = (uint64_t)(z.tv_sec - a.tv_sec) * 1000000u +
			      (uint64_t)((z.tv_nsec - a.tv_nsec) / 1000);
		if (us > atomic_load(&s->longest_rollback_us))
			atomic_store(&s->longest_rollback_us, us);
		note(s, t0, "rollback to %s%s%s", s->snaps[target].name,
		     target == s->live[nlive - 1] ? " (the newest)" : "",
		     held ? ", writers held" : "");
		if (r == -1)
			report(s, "rollback to %s: %s", s->snaps[target].name, sv_last_error());
		else
			atomic_fetch_add(&s->rollbacks, 1);
		if (r == 0 && held) {
			struct sv_view *v = open_view(s->pool, VOLUME);
			int err = 0;
			if (!v || sv_view_pread(v, img, (uint32_t)s->size, 0, &err) == -1)
				report(s, "read the volume: %s",
				       v ? strerror(err) : sv_last_error());
			else if (memcmp(img, s->snaps[target].capture, s->size) != 0)
				report(s, "after a rollback to %s, the volume is not the snapshot",
				       s->snaps[target].name);
			sv_view_close(v);
		}
		if (held)
			pthread_rwlock_unlock(&s->pause);
		if (r == -1)
			break;
	}
	free(img);
	return NULL;
}

struct reader_arg {
	struct stress *s;
	unsigned rng;
};

static void *
reader_main(void *arg)
{
	struct stress *s = ((struct reader_arg *)arg)->s;
	unsigned rng = ((struct reader_arg *)arg)->rng;
	unsigned char *buf = malloc(s->size);
	while (running(s)) {
		pthread_mutex_lock(&s->snaps_lock);
		size_t n = s->n_live, pick = SIZE_MAX;
		if (n > 0) /* favour the newest: its chunks are being copied now */
			pick = s->live[rand_r(&rng) % 2 ? n - 1 : (size_t)rand_r(&rng) % n];
		pthread_mutex_unlock(&s->snaps_lock);
		if (pick == SIZE_MAX) {
			struct timespec nap = {0, 1000000L};
			nanosleep(&nap, NULL);
			continue;
		}
		struct snapinfo *si = &s->snaps[pick]; /* published: read-only now */
		char spec[64];
		snprintf(spec, sizeof spec, VOLUME "@%s", si->name);
		struct sv_view *v = open_view(s->pool, spec);
		if (!v) {
			if (sv_last_errno() == ENOENT) /* deleted meanwhile */
				continue;
			report(s, "open %s: %s", spec, sv_last_error());
			break;
		}
		for (int k = 0; k < 32 && running(s); k++) {
			/* 1 to 3 chunks' worth, at any byte, or whole chunks; now
			 * and then all of it (a long read: a wide window between
			 * reading the origin and re-checking it) */
			uint64_t off = (uint64_t)rand_r(&rng) % s->size;
			uint32_t len = 1 + (uint32_t)rand_r(&rng) % (3 * CHUNK);
			int kind = rand_r(&rng) % 8;
			if (kind < 3) {
				off &= ~(uint64_t)(CHUNK - 1);
				len = CHUNK * (1 + (uint32_t)rand_r(&rng) % 3);
			} else if (kind == 3) {
				off = 0;
				len = (uint32_t)s->size;
			}
			if (off + len > s->size)
				len = (uint32_t)(s->size - off);
			int err = 0;
			uint64_t t0 = tick(s);
			if (sv_view_pread(v, buf, len, off, &err) == -1) {
				report(s, "read %s [%" PRIu64 ", +%u): %s", spec, off, len,
				       strerror(err));
				break;
			}
			if (memcmp(buf, si->capture + off, len) != 0) {
				uint32_t i = 0;
				while (buf[i] == si->capture[off + i])
					i++;
				uint64_t sct = (off + i) / SECTOR;
				char now[80] = "part of a sector", then[80];
				if (sct * SECTOR >= off && (sct + 1) * SECTOR <= off + len)
					describe(buf + (sct * SECTOR - off), (uint32_t)sct, now,
						 sizeof now);
				describe(si->capture + sct * SECTOR, (uint32_t)sct, then,
					 sizeof then);
				uint64_t t1 = tick(s);
				report(s,
				       "snapshot %s changed: byte %" PRIu64 " (sector %" PRIu64
				       ", chunk %" PRIu64 ") now holds %s, at creation %s "
				       "(read during ticks [%" PRIu64 ", %" PRIu64 "])",
				       spec, off + i, sct, (off + i) / CHUNK, now, then, t0, t1);
				break;
			}
			atomic_fetch_add(&s->snapshot_reads, 1);
		}
		sv_view_close(v);
	}
	free(buf);
	return NULL;
}

/* ---- checks after the run ---- */

static const struct wlog *
find_write(struct stress *s, struct writer *ws, uint32_t nw, uint32_t writer, uint32_t seq)
{
	if (writer == 0 && seq == 1)
		return &s->init;
	if (writer < 1 || writer > nw || seq < 1 || seq > ws[writer - 1].n)
		return NULL;
	return &ws[writer - 1].log[seq - 1];
}

/* Per sector: every write that covered it, by completion tick, with the
 * latest start among those completed so far (to ask "did a write complete
 * before T, and start after X ended?" in O(log n)). */
struct sector_hist {
	uint64_t *end, *max_start;
	size_t n, cap;
};

static int
cmp_by_end(const void *a, const void *b)
{
	const struct wlog *x = *(const struct wlog *const *)a, *y = *(const struct wlog *const *)b;
	return x->end < y->end ? -1 : x->end > y->end;
}

static void
build_history(struct stress *s, struct writer *ws, uint32_t nw, struct sector_hist *h)
{
	size_t total = 1;
	for (uint32_t i = 0; i < nw; i++)
		total += ws[i].n;
	const struct wlog **all = malloc(total * sizeof *all);
	size_t k = 0;
	all[k++] = &s->init;
	for (uint32_t i = 0; i < nw; i++)
		for (size_t j = 0; j < ws[i].n; j++)
			all[k++] = &ws[i].log[j];
	qsort(all, total, sizeof *all, cmp_by_end);
	for (size_t i = 0; i < total; i++) {
		const struct wlog *e = all[i];
		for (uint32_t sct = e->sector; sct < e->sector + e->nsect; sct++) {
			struct sector_hist *sh = &h[sct];
			if (sh->n == sh->cap) {
				sh->cap = sh->cap ? 2 * sh->cap : 256;
				sh->end = realloc(sh->end, sh->cap * sizeof *sh->end);
				sh->max_start =
				    realloc(sh->max_start, sh->cap * sizeof *sh->max_start);
			}
			uint64_t prev = sh->n ? sh->max_start[sh->n - 1] : 0;
			sh->end[sh->n] = e->end;
			sh->max_start[sh->n] = e->start > prev ? e->start : prev;
			sh->n++;
		}
	}
	free(all);
}

/* The latest start of a write to this sector that completed before t. */
static uint64_t
latest_start_completed_before(const struct sector_hist *sh, uint64_t t)
{
	size_t lo = 0, hi = sh->n; /* count of entries with end < t */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (sh->end[mid] < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? sh->max_start[lo - 1] : 0;
}

/* An image taken of the volume at [t0, t1] (a snapshot, or the volume at
 * the end with t0 = t1 = now) against the writers' logs. */
static void
check_semantics(struct stress *s, struct writer *ws, uint32_t nw, const struct sector_hist *h,
		const unsigned char *img, uint64_t t0, uint64_t t1, const char *what)
{
	const struct wlog **val = calloc(s->nsect, sizeof *val);
	for (uint32_t sct = 0; sct < s->nsect; sct++) {
		uint32_t wr = 0, seq = 0;
		const char *why = check_stamp(img + (size_t)sct * SECTOR, sct, &wr, &seq);
		if (why)
			fail_msg("%s: sector %u: %s", what, sct, why);
		const struct wlog *x = find_write(s, ws, nw, wr, seq);
		if (!x || sct < x->sector || sct >= x->sector + x->nsect)
			fail_msg("%s: sector %u holds writer %u's write %u, which never wrote it",
				 what, sct, wr, seq);
		if (x->start >= t1)
			fail_msg("%s: sector %u holds writer %u's write %u, which started (tick "
				 "%" PRIu64 ") after the snapshot was complete (tick %" PRIu64 ")",
				 what, sct, wr, seq, x->start, t1);
		uint64_t ls = latest_start_completed_before(&h[sct], t0);
		if (ls > x->end)
			fail_msg("%s: sector %u holds writer %u's write %u (ended at tick %" PRIu64
				 "), but a write that started at tick %" PRIu64
				 " and completed before the snapshot (tick %" PRIu64 ") is missing",
				 what, sct, wr, seq, x->end, ls, t0);
		val[sct] = x;
	}
	/* All or nothing: a write is stamped with one epoch, so an image that
	 * shows it in one sector shows, in every other sector it wrote, it or
	 * something not older (never a write that had completed before it
	 * started).  A copy made while a write of the previous epoch was still
	 * going would break this. */
	for (uint32_t sct = 0; sct < s->nsect; sct++) {
		const struct wlog *y = val[sct];
		for (uint32_t o = y->sector; o < y->sector + y->nsect; o++)
			if (val[o]->end < y->start)
				fail_msg("%s: sector %u holds a write that started at tick %" PRIu64
					 ", but sector %u, which that write covered too, holds "
					 "an older one (ended at tick %" PRIu64 "): half a write",
					 what, sct, y->start, o, val[o]->end);
	}
	free(val);
}

/* Copies per epoch: epoch i (i = 1..n) is the one snapshot i started; a
 * write stamped with it ended after the switch began (t0[i]) and started
 * before the next switch was over (t1[i+1]). */
static void
check_copies(struct stress *s, struct writer *ws, uint32_t nw, const struct sv_cow_stats *st)
{
	size_t n = s->n_snaps;
	if (n == 0)
		return;
	uint32_t words = (s->nchunks + 63) / 64;
	uint64_t *maybe = calloc(n * words, 8), *sure = calloc(n * words, 8);
	for (uint32_t wi = 0; wi < nw; wi++) {
		for (size_t j = 0; j < ws[wi].n; j++) {
			const struct wlog *e = &ws[wi].log[j];
			/* epochs i with t0[i] < end and t1[i+1] > start: a range */
			size_t a = n, b = 0;
			for (size_t i = 0; i < n; i++) { /* n is small: linear is fine */
				uint64_t next_t1 = i + 1 < n ? s->snaps[i + 1].t1 : UINT64_MAX;
				if (s->snaps[i].t0 < e->end && next_t1 > e->start) {
					if (a == n)
						a = i;
					b = i;
				}
			}
			if (a == n)
				continue; /* before the first snapshot: no copies */
			uint32_t c0 = e->sector * SECTOR / CHUNK;
			uint32_t c1 = (e->sector + e->nsect - 1) * SECTOR / CHUNK;
			for (size_t i = a; i <= b; i++)
				for (uint32_t c = c0; c <= c1; c++)
					maybe[i * words + c / 64] |= 1ull << (c % 64);
			/* certainly epoch a, and it had to copy: started after its
			 * switch was over, ended before the next one began and
			 * before its snapshot was deleted */
			uint64_t next_t0 = a + 1 < n ? s->snaps[a + 1].t0 : UINT64_MAX;
			if (s->snaps[a].del < next_t0)
				next_t0 = s->snaps[a].del;
			if (a == b && e->start > s->snaps[a].t1 && e->end < next_t0)
				for (uint32_t c = c0; c <= c1; c++)
					sure[a * words + c / 64] |= 1ull << (c % 64);
		}
	}
	uint64_t lo = 0, hi = 0;
	for (size_t i = 0; i < n * words; i++) {
		lo += (uint64_t)__builtin_popcountll(sure[i]) * CHUNK;
		hi += (uint64_t)__builtin_popcountll(maybe[i]) * CHUNK;
	}
	free(maybe);
	free(sure);
	printf("copied %" PRIu64 " bytes in %" PRIu64 " runs, %" PRIu64
	       " group commits; expected between %" PRIu64 " and %" PRIu64 "\n",
	       st->copied_bytes, st->copies, st->journal_commits, lo, hi);
	if (st->copied_bytes > hi)
		fail_msg("seed %u: %" PRIu64
			 " bytes copied, more than one copy per chunk per epoch "
			 "allows (%" PRIu64 ")",
			 s->seed, st->copied_bytes, hi);
	if (st->copied_bytes < lo)
		fail_msg("seed %u: %" PRIu64 " bytes copied, fewer than the first writes of the "
			 "epochs need (%" PRIu64 ")",
			 s->seed, st->copied_bytes, lo);
}

/* ---- the test ---- */

/* Threads get a minute to notice the stop flag (two under TSan): one that
 * does not is stuck in the engine, a deadlock or a livelock.  Say so and
 * exit, rather than hang until the harness kills us with no word. */
static void
join_or_die(struct stress *s, pthread_t t, const char *who)
{
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += UNDER_TSAN ? 120 : 60;
	if (pthread_timedjoin_np(t, NULL, &deadline) == 0)
		return;
	fprintf(stderr,
		"seed %u: %s did not finish within %d s of the stop: stuck in the engine "
		"(deadlock or livelock)\n",
		s->seed, who, UNDER_TSAN ? 120 : 60);
	_exit(1);
}

static unsigned
env_uint(const char *name, unsigned dflt)
{
	const char *v = getenv(name);
	return v && *v ? (unsigned)strtoul(v, NULL, 10) : dflt;
}

static int
setup(void **state)
{
	return test_pool_setup(state, "stress", true);
}

static int
teardown(void **state)
{
	return test_pool_teardown(state);
}

/* One run: the snapshot thread (create and delete) or, with rollbacks, the
 * rollback thread, against the same writers and readers. */
static void
run(struct test_pool *f, bool rollbacks, unsigned default_secs)
{
	struct stress *s = calloc(1, sizeof *s);
	assert_non_null(s);
	s->pool = f->pool;
	s->seed = env_uint("SNAPVOL_SEED", (unsigned)time(NULL));
	unsigned secs = env_uint("SNAPVOL_STRESS_SECONDS", default_secs);
	uint32_t nw = env_uint("SNAPVOL_STRESS_WRITERS", 6);
	uint32_t nr = env_uint("SNAPVOL_STRESS_READERS", 2);
	s->hot = env_uint("SNAPVOL_STRESS_CHUNKS", 8);
	assert_true(nw >= 1 && nw < 1000 && s->hot >= 1 && s->hot <= 1024);
	s->nchunks = 8 * s->hot;
	s->size = (uint64_t)s->nchunks * CHUNK;
	s->nsect = (uint32_t)(s->size / SECTOR);
	pthread_mutex_init(&s->fail_lock, NULL);
	pthread_mutex_init(&s->snaps_lock, NULL);
	/* writer-preferring: glibc's default would let the writers' shared
	 * holds starve the rollback thread */
	pthread_rwlockattr_t ra_attr;
	pthread_rwlockattr_init(&ra_attr);
	pthread_rwlockattr_setkind_np(&ra_attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->pause, &ra_attr);
	pthread_rwlockattr_destroy(&ra_attr);
	pthread_mutex_init(&s->events_lock, NULL);
	printf("%s: seed %u, %u s, %u writers, %u readers, %u hot chunks of %u "
	       "(SNAPVOL_SEED=%u to reuse the random streams)\n",
	       rollbacks ? "test_rollback" : "test_stress", s->seed, secs, nw, nr, s->hot,
	       s->nchunks, s->seed);

	assert_int_equal(sv_volume_create(s->pool, VOLUME, s->size, CHUNK), 0);
	/* Fill every sector first (writer 0), so there is never a hole. */
	struct sv_view *v = open_view(s->pool, VOLUME);
	assert_non_null(v);
	unsigned char *img = malloc(s->size);
	for (uint32_t i = 0; i < s->nsect; i++)
		stamp(img + (size_t)i * SECTOR, 0, 1, i);
	int err = 0;
	s->init = (struct wlog){.start = tick(s), .sector = 0, .nsect = s->nsect};
	assert_int_equal(sv_view_pwrite(v, img, (uint32_t)s->size, 0, 0, &err), 0);
	s->init.end = tick(s);
	unsigned counter = 0;
	if (rollbacks) /* something to roll back to, and an older one */
		for (int i = 0; i < 2; i++)
			if (take_snapshot(s, &counter) < 0)
				fail_msg("%s", s->failure);

	struct writer *ws = calloc(nw, sizeof *ws);
	struct writer_arg *wa = calloc(nw, sizeof *wa);
	struct reader_arg *ra = calloc(nr ? nr : 1, sizeof *ra);
	pthread_t *rt = calloc(nr ? nr : 1, sizeof *rt), st;
	for (uint32_t i = 0; i < nw; i++) {
		ws[i].id = i + 1;
		ws[i].rng = s->seed * 31 + i;
		wa[i] = (struct writer_arg){.s = s, .w = &ws[i]};
		assert_int_equal(pthread_create(&ws[i].tid, NULL, writer_main, &wa[i]), 0);
	}
	for (uint32_t i = 0; i < nr; i++) {
		ra[i] = (struct reader_arg){.s = s, .rng = s->seed * 17 + i};
		assert_int_equal(pthread_create(&rt[i], NULL, reader_main, &ra[i]), 0);
	}
	assert_int_equal(pthread_create(&st, NULL, rollbacks ? rollback_main : snapshot_main, s),
			 0);

	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += secs;
	while (running(s)) {
		struct timespec now, nap = {0, 20 * 1000000L};
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > until.tv_sec ||
		    (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
			break;
		nanosleep(&nap, NULL);
	}
	atomic_store(&s->stop, true);
	for (uint32_t i = 0; i < nw; i++)
		join_or_die(s, ws[i].tid, "a writer");
	for (uint32_t i = 0; i < nr; i++)
		join_or_die(s, rt[i], "a reader");
	join_or_die(s, st, rollbacks ? "the rollback thread" : "the snapshot thread");
	if (atomic_load(&s->failed)) {
		print_events(s);
		fail_msg("seed %u: %s", s->seed, s->failure);
	}

	uint64_t writes = 0, fua = 0, flushes = 0;
	for (uint32_t i = 0; i < nw; i++) {
		writes += ws[i].n;
		fua += ws[i].fua;
		flushes += ws[i].flushes;
	}
	printf("%" PRIu64 " writes (%" PRIu64 " FUA, %" PRIu64 " flushes), %zu snapshots "
	       "(%" PRIu64 " deleted, %" PRIu64 " deletes refused while read), %" PRIu64
	       " snapshot reads checked, %" PRIu64 " rollbacks (the longest %" PRIu64 " ms)\n",
	       writes, fua, flushes, s->n_snaps, (uint64_t)atomic_load(&s->deletes),
	       (uint64_t)atomic_load(&s->busy_deletes), (uint64_t)atomic_load(&s->snapshot_reads),
	       (uint64_t)atomic_load(&s->rollbacks),
	       (uint64_t)atomic_load(&s->longest_rollback_us) / 1000);
	/* A run that exercised nothing proves nothing. */
	assert_true(writes > 0);
	assert_true(s->n_snaps >= 2);
	assert_true(!rollbacks || atomic_load(&s->rollbacks) > 0);

	/* Each snapshot's image against the write logs (a rollback brings
	 * old writes back: then the logs say nothing about order). */
	struct sector_hist *h = calloc(s->nsect, sizeof *h);
	build_history(s, ws, nw, h);
	for (size_t i = 0; !rollbacks && i < s->n_snaps; i++) {
		char what[64];
		snprintf(what, sizeof what, "seed %u: snapshot %s", s->seed, s->snaps[i].name);
		check_semantics(s, ws, nw, h, s->snaps[i].capture, s->snaps[i].t0, s->snaps[i].t1,
				what);
	}
	/* The live snapshots once more, quiet now, and the volume itself. */
	for (size_t i = 0; i < s->n_snaps; i++) {
		if (s->snaps[i].deleted)
			continue;
		char spec[64];
		snprintf(spec, sizeof spec, VOLUME "@%s", s->snaps[i].name);
		struct sv_view *sv = open_view(s->pool, spec);
		if (!sv) {
			fail_msg("open %s: %s", spec, sv_last_error());
			return;
		}
		assert_int_equal(sv_view_pread(sv, img, (uint32_t)s->size, 0, &err), 0);
		sv_view_close(sv);
		if (memcmp(img, s->snaps[i].capture, s->size) != 0)
			fail_msg("seed %u: snapshot %s changed after the run", s->seed, spec);
	}
	assert_int_equal(sv_view_pread(v, img, (uint32_t)s->size, 0, &err), 0);
	uint64_t now = tick(s);
	char what[64];
	snprintf(what, sizeof what, "seed %u: the volume at the end", s->seed);
	if (rollbacks) {
		if (!check_image(s, img, what))
			fail_msg("%s", s->failure);
	} else {
		check_semantics(s, ws, nw, h, img, now, now, what);
		struct sv_cow_stats cs;
		assert_int_equal(sv_volume_cow_stats(s->pool, VOLUME, &cs), 0);
		check_copies(s, ws, nw, &cs);
	}
	sv_view_close(v);

	for (uint32_t i = 0; i < s->nsect; i++) {
		free(h[i].end);
		free(h[i].max_start);
	}
	free(h);
	for (size_t i = 0; i < s->n_snaps; i++)
		free(s->snaps[i].capture);
	for (uint32_t i = 0; i < nw; i++)
		free(ws[i].log);
	free(ws);
	free(wa);
	free(ra);
	free(rt);
	free(img);
	pthread_mutex_destroy(&s->fail_lock);
	pthread_mutex_destroy(&s->snaps_lock);
	pthread_rwlock_destroy(&s->pause);
	pthread_mutex_destroy(&s->events_lock);
	free(s);
}

static void
test_stress(void **state)
{
	run(*state, false, UNDER_TSAN ? 8 : 4);
}

/* Rollbacks (mostly to the newest snapshot, which drops its pre-images)
 * while readers read the snapshots and writers wait at the gate. */
static void
test_rollback(void **state)
{
	run(*state, true, UNDER_TSAN ? 5 : 3);
}

int
main(void)
{
	if (getenv("SNAPVOL_TEST_FILTER")) /* e.g. "test_rollback" */
		cmocka_set_test_filter(getenv("SNAPVOL_TEST_FILTER"));
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_stress, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rollback, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
