/*
 * test-powerloss.c: power loss at any instant, simulated the way SQLite's
 * crash tests do it (store-crash.c: unsynced writes are dropped, applied or
 * torn), so that the order of copy, record and origin write (DESIGN
 * invariants 1, 2 and 8) is proven, not hoped.
 *
 * Each round makes a fresh pool and volume and lives several lives.  A life
 * opens the pool over the crash store, runs a random workload (writes of 1
 * sector to 4 chunks, most not chunk-aligned, some FUA; trims; zero-writes;
 * flushes; snapshot create, delete and rollback; releases (trims of a
 * snapshot's export); bursts of concurrent writes; reads checked against
 * the model) and loses power at a random counted store call, which may
 * fall in the middle of any engine operation, opening the volume included.
 * A life in three first meets a fault (one store call fails with EIO or
 * ENOSPC, and the life goes on): the operation that meets it may fail,
 * and what it left is read back and must be the old state or the new.
 * Then the engine's state is thrown away (every store call fails with EIO
 * and the pool is closed), the pool is opened again with the plain file
 * backend, and:
 *
 *   (a) every snapshot reads exactly as it did when sv_snapshot_create
 *       returned, but for the chunks released from it, which read as
 *       zeros; one whose create or delete was cut short may exist or not,
 *       but if it exists, it reads as the volume did when the create was
 *       called; chunks of a release cut short read as before or as zeros;
 *       no other snapshot exists;
 *   (b) every sector of the volume holds its value as of the last
 *       successful FLUSH (or FUA write to it, or completed rollback), or a
 *       value written to it since (a torn write may leave garbage in a
 *       sector it was writing: only there, and the crash store says where);
 *       a rollback cut short leaves the volume either exactly the snapshot
 *       (it was finished at open) or untouched by it.
 *
 * The change-tracking invariant (a chunk written since snapshot S is in the
 * union of the changed bitmaps) is checked through (a): a lost bit makes S
 * read the origin's newer data.
 *
 * Every sector a write stores is stamped with the write's id and the sector
 * index, so a mismatch says which write's data is where.  The workload is
 * deterministic but for the bursts (SNAPVOL_PL_BURSTS=0 turns them off), so
 * a round replays: SNAPVOL_SEED=N (printed) replays a run, SNAPVOL_ROUND=R
 * only its round R; SNAPVOL_ROUNDS (300, 40 under a sanitizer),
 * SNAPVOL_LIVES (4) and SNAPVOL_PL_CHUNKS (32) size the run;
 * SNAPVOL_TEST_FILTER runs only the tests whose name matches.  The engine
 * logs the errors of the crashed phase and of the faults: they are
 * expected.
 *
 * test_rollback_faults: a fault at each store call of a rollback in turn
 * (no crash); then the snapshots are intact, a write is refused or durable
 * once flushed, across a clean reopen that may finish the rollback.
 * test_group_faults: the same for a consistency group's create: all of
 * it or none of it, now and after a clean reopen.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
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
#include "store-crash.h"

/* Sanitizers make every step several times slower: fewer rounds there. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define SECTOR	  512u
#define CHUNK	  4096u
#define SPC	  (CHUNK / SECTOR)
#define VOL	  "pl"
#define MAX_SNAPS 8
#define MAX_STEPS 80 /* per life, if the power has not gone by then */
#define TRACE	  96 /* operations remembered for a failure report */

/* ---- sector contents ---- */

#define MAGIC 0x4c505653u /* "SVPL" */

/* The sector write `id` stores at sector `sct`; id 0 is zeros. */
static void
sector_image(unsigned char *p, uint32_t id, uint32_t sct)
{
	test_sector_image(p, MAGIC, id, sct);
}

/* What a sector holds, for messages: "write 17", "zeros", "garbage". */
static const char *
describe_sector(const unsigned char *p, uint32_t sct, char *buf, size_t len)
{
	unsigned char want[SECTOR];
	uint32_t hdr[4];
	memcpy(hdr, p, sizeof hdr);
	sector_image(want, 0, sct);
	if (!memcmp(p, want, SECTOR))
		return "zeros";
	if (hdr[0] == MAGIC && hdr[3] == ~hdr[1]) {
		sector_image(want, hdr[1], hdr[2]);
		if (!memcmp(p, want, SECTOR)) {
			if (hdr[2] == sct)
				snprintf(buf, len, "write %u", hdr[1]);
			else
				snprintf(buf, len, "write %u's sector %u (misplaced)", hdr[1],
					 hdr[2]);
			return buf;
		}
		snprintf(buf, len, "a torn sector of write %u", hdr[1]);
		return buf;
	}
	return "garbage";
}

/* The id a sector holds, or -1 if it is no write's (garbage). */
static int64_t
sector_id(const unsigned char *p, uint32_t sct)
{
	return test_sector_id(p, MAGIC, sct);
}

/* ---- the model ---- */

struct idset {
	uint32_t *v;
	size_t n, cap;
};

static void
idset_add(struct idset *s, uint32_t id)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i] == id)
			return;
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 4;
		s->v = realloc(s->v, s->cap * sizeof *s->v);
		assert_non_null(s->v);
	}
	s->v[s->n++] = id;
}

enum snap_state {
	SNAP_LIVE,  /* exists for sure */
	SNAP_MAYBE, /* its create or delete was cut short */
	SNAP_DEAD,  /* invalidated: a fault hit a sync of its pre-images (snapshot.c) */
};

struct msnap {
	char name[16];
	uint32_t *ids; /* per sector, as created (0 where released) */
	enum snap_state state;
	uint8_t *doubt; /* per chunk: a release of it was cut short (or NULL) */
};

struct model {
	uint32_t nsect;
	uint32_t *cur;	     /* what the volume holds: every write acknowledged */
	uint32_t *flushed;   /* what it holds durably */
	struct idset *since; /* written since flushed (may or may not be there) */
	struct msnap snaps[MAX_SNAPS];
	size_t n_snaps;
	uint32_t *rollback_doubt; /* a rollback cut short: its target's contents */
	bool rollback_mix;	  /* ... and its target turned invalid: any mixture */
	uint32_t next_id;
	unsigned next_snap;
};

static void
model_write(struct model *m, uint32_t first, uint32_t n, uint32_t id, bool durable)
{
	for (uint32_t s = first; s < first + n; s++) {
		m->cur[s] = id;
		if (durable) {
			m->flushed[s] = id;
			m->since[s].n = 0;
		} else {
			idset_add(&m->since[s], id);
		}
	}
}

static void
model_flushed(struct model *m)
{
	memcpy(m->flushed, m->cur, m->nsect * sizeof *m->cur);
	for (uint32_t s = 0; s < m->nsect; s++)
		m->since[s].n = 0;
}

static void
model_drop_snap(struct model *m, size_t i)
{
	free(m->snaps[i].ids);
	free(m->snaps[i].doubt);
	m->snaps[i] = m->snaps[--m->n_snaps];
}

/* ---- one run ---- */

struct run {
	unsigned seed;		/* the whole run's */
	unsigned round;		/* this round's number */
	bool bursts;		/* concurrent writes now and then */
	struct sv_store *st;	/* this life's crash store */
	uint64_t faults_seen;	/* injected faults before this step */
	uint64_t life_faults;	/* injected in the life that just ended */
	bool flush_owes;	/* a create failed: the next flush may report its sync's
				   error (snapshot.c) */
	unsigned char *scratch; /* a volume's worth */
	unsigned life, step;
	unsigned rng;
	char dir[80];
	struct model m;
	char trace[TRACE][96];
	unsigned n_trace;
	/* totals, for the closing line */
	uint64_t crashes, ops, dropped, applied, torn, garbage, garbage_seen, maybe_kept,
	    maybe_gone, rollbacks_finished, crashed_in_open, releases, burst_writes, faults;
	/* recoveries that copied pre-images back from the log (journal.c) */
	uint64_t log_replays, log_replayed_bytes;

	/* this life's crash control (crashed: the power is gone) */
	const struct crash_ctl *ctl;
};

/* How a round commits copies (engine/journal.c), by its number: with the
 * pre-image log (checkpoints at open, close, delete and rollback), with a
 * 64 KiB log (checkpoints also when it fills, in the middle of a life),
 * or records only (as on RADOS: pre-image objects synced at each commit;
 * the recovery, over the file backend, then replays that journal as an
 * older snapvol's). */
enum { MODE_LOG, MODE_SMALL_LOG, MODE_RECORDS, MODES };
static const char *const mode_names[MODES] = {"log", "64 KiB log", "records only"};

/* "snapvol check" before the recovery: how many logged pre-image bytes
 * the open is about to copy back. */
static void
on_check_finding(void *opaque, const struct sv_check_finding *f)
{
	uint64_t recs, bytes;
	const char *p = strstr(f->what, "the journal holds ");
	if (p && sscanf(p,
			"the journal holds %" SCNu64 " records not yet in the checkpoint, "
			"with %" SCNu64 " bytes",
			&recs, &bytes) == 2)
		*(uint64_t *)opaque += bytes;
}

static void __attribute__((format(printf, 2, 3))) trace(struct run *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->trace[r->n_trace % TRACE], sizeof r->trace[0], fmt, ap);
	va_end(ap);
	r->n_trace++;
}

static void __attribute__((format(printf, 2, 3), noreturn))
fail_run(struct run *r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fflush(stderr);
	printf("last operations of round %u (oldest first):\n", r->round);
	unsigned from = r->n_trace > TRACE ? r->n_trace - TRACE : 0;
	for (unsigned i = from; i < r->n_trace; i++)
		printf("  %s\n", r->trace[i % TRACE]);
	printf("(the pool is left in %s)\n", r->dir);
	fflush(stdout);
	fail_msg("SNAPVOL_SEED=%u SNAPVOL_ROUND=%u (life %u, step %u): %s", r->seed, r->round,
		 r->life, r->step, msg);
	abort(); /* not reached */
}

/* Read a whole view (live volume or snapshot) into buf; 0 or -1 with *err
 * (sv_last_error() has the message if the view did not open). */
static int
read_view(struct sv_pool *pool, const char *name, unsigned char *buf, uint32_t size, int *err)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1) {
		*err = sv_last_errno();
		return -1;
	}
	int rc = sv_view_pread(v, buf, size, 0, err);
	sv_view_close(v);
	return rc;
}

/* The first sector where an image differs from ids, or -1. */
static int64_t
first_mismatch(const unsigned char *img, const uint32_t *ids, uint32_t nsect)
{
	unsigned char want[SECTOR];
	for (uint32_t s = 0; s < nsect; s++) {
		sector_image(want, ids[s], s);
		if (memcmp(img + (size_t)s * SECTOR, want, SECTOR))
			return s;
	}
	return -1;
}

static void
expect_image(struct run *r, const unsigned char *img, const uint32_t *ids, const char *what)
{
	int64_t s = first_mismatch(img, ids, r->m.nsect);
	if (s < 0)
		return;
	char b1[64], b2[64], want[SECTOR];
	sector_image((unsigned char *)want, ids[s], (uint32_t)s);
	fail_run(r, "%s: sector %" PRId64 " (chunk %" PRId64 ") holds %s, expected %s", what, s,
		 s / SPC, describe_sector(img + (size_t)s * SECTOR, (uint32_t)s, b1, sizeof b1),
		 describe_sector((unsigned char *)want, (uint32_t)s, b2, sizeof b2));
}

/* An operation failed: fine if the power is gone (false: the life ends)
 * or if the fault injected into this life came during this step (true: it
 * goes on).  One fault may fail several writes of a burst: they share the
 * syncs of a group commit. */
static bool
failed(struct run *r, const struct crash_ctl *ctl, const char *what, const char *why)
{
	if (crash_ctl_crashed(ctl)) {
		trace(r, "  ... cut short by the power loss (%s)", why);
		return false;
	}
	if (crash_ctl_faults(ctl) > r->faults_seen) {
		trace(r, "  ... failed by the injected fault (%s)", why);
		return true;
	}
	fail_run(r, "%s failed with the power on and no fault injected: %s", what, why);
}

/* A write, trim or zero-write that failed: each of its sectors may hold
 * the old data or the new, now and after a crash.  After a fault the
 * volume is read back to learn which (and that it is one of the two). */
static void
uncertain_write(struct run *r, struct sv_view *v, bool fault, uint32_t first, uint32_t n,
		uint32_t id)
{
	struct model *m = &r->m;
	for (uint32_t s = first; s < first + n; s++) {
		idset_add(&m->since[s], id);
		if (!fault)
			m->cur[s] = id; /* no more reads before the crash */
	}
	if (!fault)
		return;
	int err = 0;
	if (sv_view_pread(v, r->scratch, m->nsect * SECTOR, 0, &err) == -1) {
		/* The power may go meanwhile: a background thread's store calls
		 * (journal.c's early checkpoint) count too.  Then as above. */
		if (!r->ctl || !crash_ctl_crashed(r->ctl))
			fail_run(r, "after a fault, reading the volume: %s", strerror(err));
		trace(r, "  ... the read after it cut short by the power loss");
		for (uint32_t s = first; s < first + n; s++)
			m->cur[s] = id;
		return;
	}
	for (uint32_t s = first; s < first + n; s++) {
		int64_t now = sector_id(r->scratch + (size_t)s * SECTOR, s);
		char b1[64];
		if (now != m->cur[s] && now != id)
			fail_run(r,
				 "after a failed write %u, sector %u holds %s: neither the old "
				 "(write %u) nor the new",
				 id, s,
				 describe_sector(r->scratch + (size_t)s * SECTOR, s, b1, sizeof b1),
				 m->cur[s]);
		m->cur[s] = (uint32_t)now;
	}
	expect_image(r, r->scratch, m->cur, "the volume after a failed write");
}

/* A create or delete that met a fault: the listing says how it ended. */
static void
settle_snapshot(struct run *r, struct sv_pool *pool, size_t i)
{
	struct model *m = &r->m;
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(pool, VOL, &infos, &n) == -1)
		fail_run(r, "after a fault, listing snapshots: %s", sv_last_error());
	bool listed = false;
	for (size_t k = 0; k < n; k++)
		listed |= !strcmp(infos[k].name, m->snaps[i].name);
	free(infos);
	trace(r, "  ... %s %s", m->snaps[i].name, listed ? "exists" : "does not exist");
	if (listed)
		m->snaps[i].state = SNAP_LIVE;
	else
		model_drop_snap(m, i);
}

/* Chunks of a release that was cut short read as zeros, or as before,
 * and stay so: learn which from a read of the snapshot. */
static void
settle_release(struct run *r, struct msnap *s, const unsigned char *img)
{
	unsigned char zero[SECTOR] = {0};
	for (uint32_t k = 0; k < r->m.nsect; k++)
		if (s->doubt[k / SPC] && !memcmp(img + (size_t)k * SECTOR, zero, SECTOR))
			s->ids[k] = 0;
	free(s->doubt);
	s->doubt = NULL;
}

/* ---- the workload ---- */

static void
pick_range(struct run *r, uint32_t *first, uint32_t *n)
{
	uint32_t nsect = r->m.nsect;
	if (rand_r(&r->rng) % 3 == 0) { /* whole chunks, 1 to 4 */
		*first = (uint32_t)rand_r(&r->rng) % (nsect / SPC) * SPC;
		*n = SPC * (1 + (uint32_t)rand_r(&r->rng) % 4);
	} else { /* any sectors, up to 3 chunks' worth */
		*first = (uint32_t)rand_r(&r->rng) % nsect;
		*n = 1 + (uint32_t)rand_r(&r->rng) % (3 * SPC);
	}
	if (*first + *n > nsect)
		*n = nsect - *first;
}

static int
pick_live(struct run *r)
{
	size_t live[MAX_SNAPS], n = 0;
	for (size_t i = 0; i < r->m.n_snaps; i++)
		if (r->m.snaps[i].state == SNAP_LIVE)
			live[n++] = i;
	return n ? (int)live[(size_t)rand_r(&r->rng) % n] : -1;
}

static void note_invalidated(struct run *r, struct sv_pool *pool);

/* Snapshot i could not be opened or read: was it invalidated since the
 * step that met this life's fault?  A background thread's sync (journal.c's
 * early checkpoint) may meet the fault and invalidate after that step. */
static bool
late_invalid(struct run *r, struct sv_pool *pool, const struct crash_ctl *ctl, int i)
{
	if (!crash_ctl_faults(ctl) || crash_ctl_crashed(ctl))
		return false;
	note_invalidated(r, pool);
	return r->m.snaps[i].state == SNAP_DEAD;
}

/* A backup reader done with a range of a snapshot trims it on the
 * snapshot's export: its whole chunks are released and read as zeros. */
static void
release(struct run *r, struct sv_pool *pool, const struct crash_ctl *ctl)
{
	struct model *m = &r->m;
	int i = pick_live(r), err = 0;
	if (i < 0)
		return;
	struct msnap *s = &m->snaps[i];
	uint32_t first, n;
	pick_range(r, &first, &n);
	char spec[64];
	snprintf(spec, sizeof spec, VOL "@%s", s->name);
	trace(r, "release %s: sectors [%u, %u)", spec, first, first + n);
	struct sv_view *sv;
	if (sv_view_open(pool, spec, strlen(spec), &sv) == -1) {
		if (!late_invalid(r, pool, ctl, i))
			failed(r, ctl, "opening a snapshot", sv_last_error());
		return;
	}
	int rc = sv_view_trim(sv, n * SECTOR, (uint64_t)first * SECTOR, 0, &err);
	sv_view_close(sv);
	r->releases++;
	/* whole chunks only; the last one counts as whole at the end */
	uint32_t ca = (first + SPC - 1) / SPC;
	uint32_t cz = first + n == m->nsect ? m->nsect / SPC : (first + n) / SPC;
	bool fault = rc == -1 && failed(r, ctl, "release", strerror(err));
	if (rc == -1 && !s->doubt)
		s->doubt = calloc(m->nsect / SPC, 1);
	for (uint32_t c = ca; c < cz; c++) {
		if (rc == -1)
			s->doubt[c] = 1;
		else
			memset(&s->ids[c * SPC], 0, SPC * sizeof *s->ids);
	}
	if (fault) {
		if (read_view(pool, spec, r->scratch, m->nsect * SECTOR, &err) == -1) {
			if (!r->ctl || !crash_ctl_crashed(r->ctl)) /* as in uncertain_write */
				fail_run(r, "after a fault, reading %s: %s", spec, strerror(err));
			return; /* its chunks stay in doubt */
		}
		settle_release(r, s, r->scratch);
	}
}

struct burst {
	struct sv_view *v;
	unsigned char *buf;
	uint32_t first, n, id;
	int rc, err;
	pthread_t t;
};

static void *
burst_main(void *arg)
{
	struct burst *b = arg;
	b->rc =
	    sv_view_pwrite(b->v, b->buf, b->n * SECTOR, (uint64_t)b->first * SECTOR, 0, &b->err);
	return NULL;
}

/* Several writes at once, to disjoint sectors of possibly the same chunks,
 * so that copies are shared, waited for and group-committed, and the power
 * may go in the middle of a batch.  (The threads' order is not the seed's:
 * a round with a burst may not replay exactly.) */
static void
burst(struct run *r, struct sv_view *v, const struct crash_ctl *ctl)
{
	struct model *m = &r->m;
	struct burst b[4] = {0};
	unsigned k = 2 + (unsigned)rand_r(&r->rng) % 3, got = 0;
	for (unsigned tries = 0; got < k && tries < 20; tries++) {
		uint32_t first, n;
		pick_range(r, &first, &n);
		bool overlap = false;
		for (unsigned j = 0; j < got; j++)
			overlap |= first < b[j].first + b[j].n && b[j].first < first + n;
		if (overlap)
			continue;
		b[got] = (struct burst){.v = v, .first = first, .n = n, .id = ++m->next_id};
		b[got].buf = malloc((size_t)n * SECTOR);
		for (uint32_t i = 0; i < n; i++)
			sector_image(b[got].buf + (size_t)i * SECTOR, b[got].id, first + i);
		trace(r, "burst write %u: sectors [%u, %u)", b[got].id, first, first + n);
		got++;
		r->burst_writes++;
	}
	for (unsigned j = 0; j < got; j++)
		assert_int_equal(pthread_create(&b[j].t, NULL, burst_main, &b[j]), 0);
	for (unsigned j = 0; j < got; j++)
		pthread_join(b[j].t, NULL);
	/* the ones that worked first: a failed one reads the volume back */
	for (unsigned j = 0; j < got; j++)
		if (b[j].rc == 0)
			model_write(m, b[j].first, b[j].n, b[j].id, false);
	for (unsigned j = 0; j < got; j++) {
		if (b[j].rc == -1)
			uncertain_write(r, v, failed(r, ctl, "burst write", strerror(b[j].err)),
					b[j].first, b[j].n, b[j].id);
		free(b[j].buf);
	}
}

static void note_invalidated(struct run *r, struct sv_pool *pool);

static void
step(struct run *r, struct sv_pool *pool, struct sv_view *v, const struct crash_ctl *ctl,
     unsigned char *buf)
{
	struct model *m = &r->m;
	uint32_t size = m->nsect * SECTOR;
	int op = rand_r(&r->rng) % 100, err = 0;
	r->ops++;
	if (op < 36) {
		uint32_t first, n, id = ++m->next_id;
		pick_range(r, &first, &n);
		bool fua = rand_r(&r->rng) % 8 == 0;
		for (uint32_t i = 0; i < n; i++)
			sector_image(buf + (size_t)i * SECTOR, id, first + i);
		trace(r, "write %u: sectors [%u, %u)%s", id, first, first + n, fua ? " FUA" : "");
		if (sv_view_pwrite(v, buf, n * SECTOR, (uint64_t)first * SECTOR, fua ? SV_FUA : 0,
				   &err) == -1)
			uncertain_write(r, v, failed(r, ctl, "write", strerror(err)), first, n, id);
		else
			model_write(m, first, n, id, fua);
	} else if (op < 49) {
		uint32_t first, n;
		pick_range(r, &first, &n);
		bool trim = op < 43, fua = rand_r(&r->rng) % 8 == 0;
		unsigned fl = (fua ? SV_FUA : 0) | (!trim && rand_r(&r->rng) % 2 ? SV_NO_HOLE : 0);
		trace(r, "%s: sectors [%u, %u)%s%s", trim ? "trim" : "zero", first, first + n,
		      fua ? " FUA" : "", fl & SV_NO_HOLE ? " NO_HOLE" : "");
		int rc = trim ? sv_view_trim(v, n * SECTOR, (uint64_t)first * SECTOR, fl, &err)
			      : sv_view_zero(v, n * SECTOR, (uint64_t)first * SECTOR, fl, &err);
		if (rc == -1)
			uncertain_write(r, v, failed(r, ctl, trim ? "trim" : "zero", strerror(err)),
					first, n, 0);
		else
			model_write(m, first, n, 0, fua);
	} else if (op < 57) {
		trace(r, "flush");
		bool owed = r->flush_owes;
		r->flush_owes = false;
		if (sv_view_flush(v, &err) == -1) {
			if (owed && !crash_ctl_crashed(ctl))
				trace(r, "  ... reports the failed sync of the snapshot create");
			else
				failed(r, ctl, "flush", strerror(err));
		} else {
			model_flushed(m);
		}
	} else if (op < 68) {
		if (m->n_snaps == MAX_SNAPS)
			return;
		struct msnap *s = &m->snaps[m->n_snaps++];
		snprintf(s->name, sizeof s->name, "s%u", m->next_snap++);
		s->ids = malloc(m->nsect * sizeof *s->ids);
		memcpy(s->ids, m->cur, m->nsect * sizeof *s->ids);
		s->state = SNAP_LIVE;
		char spec[64];
		snprintf(spec, sizeof spec, VOL "@%s", s->name);
		const char *specs[] = {spec};
		trace(r, "snapshot create %s", spec);
		if (sv_snapshot_create(pool, specs, 1, NULL) == -1) {
			s->state = SNAP_MAYBE;
			if (failed(r, ctl, "snapshot create", sv_last_error())) {
				settle_snapshot(r, pool, m->n_snaps - 1);
				r->flush_owes = true;
			}
		}
	} else if (op < 75) {
		int i = pick_live(r);
		if (i < 0)
			return;
		trace(r, "snapshot delete %s", m->snaps[i].name);
		if (sv_snapshot_delete(pool, VOL, m->snaps[i].name) == -1) {
			m->snaps[i].state = SNAP_MAYBE;
			if (failed(r, ctl, "snapshot delete", sv_last_error()))
				settle_snapshot(r, pool, (size_t)i);
		} else {
			model_drop_snap(m, (size_t)i);
		}
	} else if (op < 79) {
		int i = pick_live(r);
		if (i < 0)
			return;
		trace(r, "snapshot rollback %s", m->snaps[i].name);
		if (sv_snapshot_rollback(pool, VOL, m->snaps[i].name) == -1) {
			/* After a fault the volume is a mixture that
			 * refuses writes until the rollback is finished (see
			 * test_rollback_faults): end the life here. */
			if (failed(r, ctl, "snapshot rollback", sv_last_error())) {
				/* a fault on a pre-image sync invalidates the
				 * target: the rollback is abandoned, half done */
				note_invalidated(r, pool);
				m->rollback_mix = m->snaps[i].state == SNAP_DEAD;
				crash_store_powerloss(r->st);
			}
			m->rollback_doubt = malloc(m->nsect * sizeof *m->rollback_doubt);
			memcpy(m->rollback_doubt, m->snaps[i].ids, m->nsect * sizeof *m->cur);
		} else {
			/* rollback syncs: the volume is the snapshot, durably */
			memcpy(m->cur, m->snaps[i].ids, m->nsect * sizeof *m->cur);
			model_flushed(m);
		}
	} else if (op < 84) {
		release(r, pool, ctl);
	} else if (op < 89) {
		if (r->bursts)
			burst(r, v, ctl);
	} else {
		/* Reads through the crash store (they see what is not yet
		 * synced) against the model: the engine without a crash. */
		trace(r, "check the volume and a snapshot");
		if (sv_view_pread(v, buf, size, 0, &err) == -1) {
			failed(r, ctl, "read of the volume", strerror(err));
			return;
		}
		expect_image(r, buf, m->cur, "the volume (before any crash)");
		int i = pick_live(r);
		if (i < 0)
			return;
		char spec[64], what[96];
		snprintf(spec, sizeof spec, VOL "@%s", m->snaps[i].name);
		/* opening a pre-image object is a store call: the power may go */
		if (read_view(pool, spec, buf, size, &err) == -1) {
			if (!late_invalid(r, pool, ctl, i))
				failed(r, ctl, "read of a snapshot", strerror(err));
			return;
		}
		snprintf(what, sizeof what, "%s (before any crash)", spec);
		expect_image(r, buf, m->snaps[i].ids, what);
	}
}

/* A fault that hits a sync of pre-images invalidates the snapshots that
 * read them (snapshot.c, sv_snap_invalidate_epoch): from then on they are
 * listed invalid and not read. */
static void
note_invalidated(struct run *r, struct sv_pool *pool)
{
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(pool, VOL, &infos, &n) == -1)
		return; /* the power went: check_snapshots sees what is left */
	for (size_t k = 0; k < n; k++) {
		for (size_t i = 0; infos[k].invalid && i < r->m.n_snaps; i++) {
			if (strcmp(r->m.snaps[i].name, infos[k].name) ||
			    r->m.snaps[i].state == SNAP_DEAD)
				continue;
			trace(r, "  ... snapshot %s is now invalid", infos[k].name);
			r->m.snaps[i].state = SNAP_DEAD;
		}
	}
	free(infos);
}

/* ---- after the power loss ---- */

static void
check_snapshots(struct run *r, struct sv_pool *pool, unsigned char *buf)
{
	struct model *m = &r->m;
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(pool, VOL, &infos, &n) == -1)
		fail_run(r, "after the crash, listing snapshots: %s", sv_last_error());
	bool listed[MAX_SNAPS] = {false}, dead[MAX_SNAPS] = {false};
	for (size_t k = 0; k < n; k++) {
		size_t i = 0;
		while (i < m->n_snaps && strcmp(m->snaps[i].name, infos[k].name))
			i++;
		if (i == m->n_snaps)
			fail_run(
			    r, "after the crash, snapshot %s exists: it was deleted, or never made",
			    infos[k].name);
		/* A fault on a pre-image sync invalidates snapshots; the
		 * power may have gone before the step that met it ended. */
		if (infos[k].invalid && m->snaps[i].state != SNAP_DEAD && !r->life_faults)
			fail_run(r, "after the crash, snapshot %s is marked invalid",
				 infos[k].name);
		if (infos[k].invalid && m->snaps[i].state != SNAP_DEAD && m->rollback_doubt)
			m->rollback_mix = true; /* maybe the target: abandoned half done */
		listed[i] = true;
		dead[i] = infos[k].invalid;
	}
	free(infos);
	for (size_t i = m->n_snaps; i-- > 0;) {
		if (listed[i]) {
			if (m->snaps[i].state == SNAP_MAYBE)
				r->maybe_kept++;
			/* dead but listed valid: the power went before it was
			 * recorded invalid, and it must read as it did */
			m->snaps[i].state = dead[i] ? SNAP_DEAD : SNAP_LIVE;
			continue;
		}
		if (m->snaps[i].state != SNAP_MAYBE)
			fail_run(r, "after the crash, snapshot %s is gone", m->snaps[i].name);
		r->maybe_gone++;
		model_drop_snap(m, i);
	}
	for (size_t i = 0; i < m->n_snaps; i++) {
		char spec[64], what[96];
		int err = 0;
		if (m->snaps[i].state == SNAP_DEAD)
			continue; /* invalid: reads fail, by design */
		snprintf(spec, sizeof spec, VOL "@%s", m->snaps[i].name);
		if (read_view(pool, spec, buf, m->nsect * SECTOR, &err) == -1)
			fail_run(r, "after the crash, reading %s: %s (%s)", spec, strerror(err),
				 sv_last_error());
		snprintf(what, sizeof what, "after the crash, snapshot %s", spec);
		struct msnap *s = &m->snaps[i];
		if (s->doubt)
			settle_release(r, s, buf);
		expect_image(r, buf, s->ids, what);
	}
}

static void
check_volume(struct run *r, struct sv_pool *pool, const struct crash_ctl *ctl, unsigned char *buf)
{
	struct model *m = &r->m;
	int err = 0;
	if (read_view(pool, VOL, buf, m->nsect * SECTOR, &err) == -1)
		fail_run(r, "after the crash, reading the volume: %s (%s)", strerror(err),
			 sv_last_error());
	if (m->rollback_doubt && first_mismatch(buf, m->rollback_doubt, m->nsect) < 0) {
		/* the rollback was persisted, and finished at open */
		memcpy(m->cur, m->rollback_doubt, m->nsect * sizeof *m->cur);
		model_flushed(m);
		r->rollbacks_finished++;
	} else {
		for (uint32_t s = 0; s < m->nsect; s++) {
			const unsigned char *p = buf + (size_t)s * SECTOR;
			int64_t id = sector_id(p, s);
			bool ok = id == m->flushed[s];
			for (size_t k = 0; !ok && k < m->since[s].n; k++)
				ok = id == m->since[s].v[k];
			if (!ok && m->rollback_mix)
				ok = id == m->rollback_doubt[s];
			if (!ok && id < 0 && (m->since[s].n > 0 || m->rollback_mix) &&
			    crash_ctl_garbage(ctl, VOL, "origin", (uint64_t)s * SECTOR)) {
				ok = true; /* a torn write's garbage: rewritten below */
				r->garbage_seen++;
			}
			if (ok) {
				m->cur[s] = id < 0 ? UINT32_MAX : (uint32_t)id;
				continue;
			}
			char b1[64], since[200] = "";
			size_t len = 0;
			for (size_t k = 0; k < m->since[s].n && len + 12 < sizeof since; k++)
				len += (size_t)snprintf(since + len, sizeof since - len, " %u",
							m->since[s].v[k]);
			fail_run(r,
				 "after the crash, volume sector %u (chunk %u) holds %s; expected "
				 "write %u (flushed)%s%s%s",
				 s, s / SPC, describe_sector(p, s, b1, sizeof b1), m->flushed[s],
				 m->since[s].n ? " or one written since:" : "", since,
				 m->rollback_doubt
				     ? ", or exactly the snapshot of the rollback that "
				       "was cut short"
				     : "");
		}
	}
	free(m->rollback_doubt);
	m->rollback_doubt = NULL;
	m->rollback_mix = false;

	/* What is there now is durable: the next life starts from it.  Garbage
	 * is replaced by a fresh write, so every sector is some write's. */
	struct sv_view *v;
	if (sv_view_open(pool, VOL, strlen(VOL), &v) == -1)
		fail_run(r, "open: %s", sv_last_error());
	for (uint32_t s = 0; s < m->nsect; s++) {
		if (m->cur[s] != UINT32_MAX)
			continue;
		m->cur[s] = ++m->next_id;
		sector_image(buf, m->cur[s], s);
		if (sv_view_pwrite(v, buf, SECTOR, (uint64_t)s * SECTOR, 0, &err) == -1)
			fail_run(r, "rewriting garbage: %s", strerror(err));
	}
	if (sv_view_flush(v, &err) == -1)
		fail_run(r, "flush: %s", strerror(err));
	sv_view_close(v);
	model_flushed(m);
}

static void
life(struct run *r, bool first, unsigned char *buf)
{
	unsigned mode = r->round % MODES;
	struct crash_ctl ctl = {.seed = (unsigned)rand_r(&r->rng),
				.records_only = mode == MODE_RECORDS};
	if (mode == MODE_SMALL_LOG)
		setenv("SNAPVOL_PRELOG_KB", "64", 1);
	else
		unsetenv("SNAPVOL_PRELOG_KB");
	if (first)
		trace(r, "round %u: copies committed %s", r->round, mode_names[mode]);
	struct sv_store *st;
	struct sv_pool *pool;
	if (crash_store_open(r->dir, first, &ctl, &st) == -1)
		fail_run(r, "crash store: %s", strerror(errno));
	if (sv_pool_open_store(st, r->dir, &pool) == -1)
		fail_run(r, "pool: %s", sv_last_error());
	if (first && sv_volume_create(pool, VOL, (uint64_t)r->m.nsect * SECTOR, CHUNK) == -1)
		fail_run(r, "create: %s", sv_last_error());
	/* The power goes at a random call from here, opening the volume
	 * (replay, checkpoint, a rollback finished) included. */
	ctl.crash_at = ctl.calls + 1 + (uint64_t)rand_r(&r->rng) % 250;
	trace(r, "life %u: the power goes at store call %" PRIu64, r->life, ctl.crash_at);
	/* A life in three also meets a fault first: one call fails (EIO, or
	 * ENOSPC: a full store) and the life goes on. */
	if (rand_r(&r->rng) % 3 == 0) {
		ctl.fail_at =
		    ctl.calls + 1 + (uint64_t)rand_r(&r->rng) % (ctl.crash_at - ctl.calls);
		ctl.fail_errno = rand_r(&r->rng) % 3 ? EIO : ENOSPC;
		trace(r, "  and a fault (%s) at store call %" PRIu64, strerror(ctl.fail_errno),
		      ctl.fail_at);
	}
	r->st = st;
	r->ctl = &ctl;
	r->faults_seen = 0;
	r->flush_owes = false;
	r->step = 0;
	struct sv_view *v = NULL;
	if (sv_view_open(pool, VOL, strlen(VOL), &v) == -1) {
		failed(r, &ctl, "opening the volume", sv_last_error());
		r->crashed_in_open++;
		v = NULL;
	}
	for (; v && !crash_ctl_crashed(&ctl) && r->step < MAX_STEPS; r->step++) {
		step(r, pool, v, &ctl, buf);
		if (crash_ctl_faults(&ctl) > r->faults_seen && !crash_ctl_crashed(&ctl))
			note_invalidated(r, pool);
		r->faults_seen = crash_ctl_faults(&ctl); /* this step's fault, if any, is spent */
	}
	r->faults += crash_ctl_faults(&ctl);
	r->life_faults = crash_ctl_faults(&ctl);
	r->ctl = NULL; /* the steps are over */
	if (!crash_ctl_crashed(&ctl)) {
		trace(r, "power loss between operations");
		crash_store_powerloss(st);
	}
	/* Throw the engine's state away: every call fails now (the engine
	 * says so on stderr: expected). */
	if (v)
		sv_view_close(v);
	sv_pool_close(pool);
	r->crashes++;
	r->dropped += ctl.dropped;
	r->applied += ctl.applied;
	r->torn += ctl.torn;
	r->garbage += ctl.n_garbage;
	trace(r,
	      "recovery: %" PRIu64 " pending writes dropped, %" PRIu64 " applied, %" PRIu64
	      " torn (%zu garbage sectors)",
	      ctl.dropped, ctl.applied, ctl.torn, ctl.n_garbage);

	struct sv_pool *plain;
	if (sv_pool_open(r->dir, 0, &plain) == -1)
		fail_run(r, "after the crash, opening the pool: %s", sv_last_error());
	uint64_t logged = 0;
	if (sv_pool_check(plain, VOL, false, on_check_finding, &logged) < 0)
		fail_run(r, "check after the crash: %s", sv_last_error());
	r->log_replays += logged > 0;
	r->log_replayed_bytes += logged;
	check_snapshots(r, plain, buf);
	check_volume(r, plain, &ctl, buf);
	sv_pool_close(plain);
	free(ctl.garbage);
}

static void
run_round(struct run *r, unsigned lives, uint32_t nsect)
{
	struct model *m = &r->m;
	memset(m, 0, sizeof *m);
	m->nsect = nsect;
	m->cur = calloc(nsect, sizeof *m->cur);
	m->flushed = calloc(nsect, sizeof *m->flushed);
	m->since = calloc(nsect, sizeof *m->since);
	r->rng = (unsigned)test_mix(((uint64_t)r->seed << 32) | r->round);
	r->n_trace = 0;
	if (test_mkdtemp(r->dir, "pl", true) == -1)
		fail_run(r, "mkdtemp: %s", strerror(errno));
	unsigned char *buf = malloc((size_t)nsect * SECTOR);
	r->scratch = malloc((size_t)nsect * SECTOR);
	for (r->life = 0; r->life < lives; r->life++)
		life(r, r->life == 0, buf);
	free(buf);
	free(r->scratch);
	assert_int_equal(test_rmtree(r->dir), 0);
	for (size_t i = 0; i < m->n_snaps; i++)
		free(m->snaps[i].ids);
	for (uint32_t s = 0; s < nsect; s++)
		free(m->since[s].v);
	free(m->since);
	free(m->cur);
	free(m->flushed);
}

static unsigned
env_uint(const char *name, unsigned dflt)
{
	const char *v = getenv(name);
	return v && *v ? (unsigned)strtoul(v, NULL, 10) : dflt;
}

static void
test_powerloss(void **state)
{
	(void)state;
	struct run *r = calloc(1, sizeof *r);
	r->seed = env_uint("SNAPVOL_SEED", (unsigned)time(NULL));
	unsigned rounds = env_uint("SNAPVOL_ROUNDS", SANITIZED ? 40 : 300);
	r->bursts = env_uint("SNAPVOL_PL_BURSTS", 1) != 0;
	unsigned lives = env_uint("SNAPVOL_LIVES", 4);
	uint32_t nsect = env_uint("SNAPVOL_PL_CHUNKS", 32) * SPC;
	const char *one = getenv("SNAPVOL_ROUND");
	printf("test_powerloss: seed %u, %u rounds of %u lives, %u KiB volume "
	       "(SNAPVOL_SEED=%u to replay, SNAPVOL_ROUND=N for one round)\n",
	       r->seed, rounds, lives, nsect / 2, r->seed);
	for (unsigned i = 0; i < rounds; i++) {
		r->round = one && *one ? (unsigned)atoi(one) : i;
		run_round(r, lives, nsect);
		if (one && *one)
			break;
	}
	printf("%" PRIu64 " power losses (%" PRIu64 " while opening the volume) after %" PRIu64
	       " operations; pending writes at the losses: %" PRIu64 " dropped, %" PRIu64
	       " applied, %" PRIu64 " torn (%" PRIu64 " garbage sectors, %" PRIu64
	       " of them seen in the volume); cut-short creates/deletes: %" PRIu64 " kept, %" PRIu64
	       " gone; %" PRIu64 " cut-short rollbacks finished at open; %" PRIu64
	       " releases; %" PRIu64 " concurrent writes in bursts; %" PRIu64 " faults injected\n",
	       r->crashes, r->crashed_in_open, r->ops, r->dropped, r->applied, r->torn, r->garbage,
	       r->garbage_seen, r->maybe_kept, r->maybe_gone, r->rollbacks_finished, r->releases,
	       r->burst_writes, r->faults);
	printf("%" PRIu64 " recoveries copied %" PRIu64
	       " bytes of pre-images back from the log (a power loss between a commit and "
	       "the checkpoint)\n",
	       r->log_replays, r->log_replayed_bytes);
	/* a run that never lost a pending write proved little */
	assert_true(r->crashes > 0);
	if (rounds >= 10 && !(one && *one))
		assert_true(r->log_replays > 0);
	unsetenv("SNAPVOL_PRELOG_KB");
	free(r);
}

/* Write sectors [first, first+n) of write id through a view. */
static void
write_id(struct sv_view *v, uint32_t first, uint32_t n, uint32_t id)
{
	unsigned char *buf = malloc((size_t)n * SECTOR);
	for (uint32_t i = 0; i < n; i++)
		sector_image(buf + (size_t)i * SECTOR, id, first + i);
	int err = 0;
	if (sv_view_pwrite(v, buf, n * SECTOR, (uint64_t)first * SECTOR, 0, &err) == -1)
		fail_msg("write %u: %s", id, strerror(err));
	free(buf);
}

/* Does a view read as ids (per sector)? */
static bool
view_is(struct sv_pool *pool, const char *name, const uint32_t *ids, uint32_t nsect)
{
	unsigned char *img = malloc((size_t)nsect * SECTOR);
	int err = 0;
	if (read_view(pool, name, img, nsect * SECTOR, &err) == -1)
		fail_msg("read %s: %s (%s)", name, strerror(err), sv_last_error());
	bool same = first_mismatch(img, ids, nsect) < 0;
	free(img);
	return same;
}

#define RB_SECT (16 * SPC)

/* Is snapshot fr@name listed invalid (a fault on a pre-image sync)? */
static bool
rb_invalid(struct sv_pool *pool, const char *name)
{
	struct sv_snapshot_info *infos;
	size_t n;
	bool dead = false;
	if (sv_snapshot_list(pool, "fr", &infos, &n) == -1)
		fail_msg("list: %s", sv_last_error());
	for (size_t i = 0; i < n; i++)
		dead |= !strcmp(infos[i].name, name) && infos[i].invalid;
	free(infos);
	return dead;
}

/* Do the snapshots read as they did (an invalid one cannot be read)? */
static bool
rb_snaps_intact(struct sv_pool *pool, const uint32_t *s_ids, const uint32_t *t_ids)
{
	return (rb_invalid(pool, "s") || view_is(pool, "fr@s", s_ids, RB_SECT)) &&
	       (rb_invalid(pool, "t") || view_is(pool, "fr@t", t_ids, RB_SECT));
}

/* Is every sector of the volume a[s] or b[s] (but the first chunk, which
 * is c if c is not 0)? */
static bool
rb_mixture(struct sv_pool *pool, const uint32_t *a, const uint32_t *b, uint32_t c)
{
	unsigned char *img = malloc((size_t)RB_SECT * SECTOR);
	int err = 0;
	if (read_view(pool, "fr", img, RB_SECT * SECTOR, &err) == -1)
		fail_msg("read fr: %s", strerror(err));
	bool ok = true;
	for (uint32_t s = 0; s < RB_SECT && ok; s++) {
		int64_t id = sector_id(img + (size_t)s * SECTOR, s);
		ok = c && s < SPC ? id == c : id == a[s] || id == b[s];
	}
	free(img);
	return ok;
}

/* One rollback with a fault at its k-th counted store call (0: none), to
 * the newest snapshot or to an older one; returns how many counted calls
 * the rollback made.  Whatever the fault breaks, the snapshots read as
 * they did; a rollback that succeeded left the volume the snapshot; a
 * write after it is refused, or durable once flushed, across a clean
 * reopen (which may finish a failed rollback, but never over acknowledged
 * writes); and after the reopen the volume is the snapshot, or untouched
 * if the rollback never got to record its target. */
static uint64_t
rollback_with_fault(bool newest, uint64_t k, int fail_errno)
{
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "plrb", true), 0);
	struct crash_ctl ctl = {0};
	struct sv_store *st;
	struct sv_pool *pool;
	assert_int_equal(crash_store_open(dir, true, &ctl, &st), 0);
	assert_int_equal(sv_pool_open_store(st, dir, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "fr", (uint64_t)RB_SECT * SECTOR, CHUNK), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "fr", 2, &v), 0);
	/* s: write 1 everywhere; t (newer): write 2 over chunks 0-3; the
	 * volume: write 3 over chunks 2-5, then 4 over sectors 50-60 */
	uint32_t s_ids[RB_SECT], t_ids[RB_SECT], vol_ids[RB_SECT];
	write_id(v, 0, RB_SECT, 1);
	const char *s_spec[] = {"fr@s"}, *t_spec[] = {"fr@t"};
	assert_int_equal(sv_snapshot_create(pool, s_spec, 1, NULL), 0);
	write_id(v, 0, 4 * SPC, 2);
	assert_int_equal(sv_snapshot_create(pool, t_spec, 1, NULL), 0);
	write_id(v, 2 * SPC, 4 * SPC, 3);
	write_id(v, 50, 10, 4);
	int err = 0;
	assert_int_equal(sv_view_flush(v, &err), 0);
	for (uint32_t i = 0; i < RB_SECT; i++) {
		s_ids[i] = 1;
		t_ids[i] = i < 4 * SPC ? 2 : 1;
		vol_ids[i] = i >= 50 && i < 60 ? 4 : i >= 2 * SPC && i < 6 * SPC ? 3 : t_ids[i];
	}
	const char *target = newest ? "t" : "s";
	const uint32_t *want = newest ? t_ids : s_ids;

	uint64_t before = ctl.calls;
	if (k) {
		ctl.fail_at = before + k;
		ctl.fail_errno = fail_errno;
	}
	int rc = sv_snapshot_rollback(pool, "fr", target);
	uint64_t used = ctl.calls - before;
	char what[160];
	snprintf(what, sizeof what,
		 "rollback to %s with a fault (%s) at its call %" PRIu64 " of %s", target,
		 strerror(fail_errno), k, k ? "it" : "none");
	if (k && !ctl.faults)
		fail_msg("%s: the fault missed it", what);
	if (!rb_snaps_intact(pool, s_ids, t_ids))
		fail_msg("%s: a snapshot changed", what);
	/* A fault on a pre-image sync invalidates the target: the rollback is
	 * abandoned half done (snapshot.c), and the volume is a mixture. */
	bool abandoned = rc == -1 && rb_invalid(pool, target);
	if (rc == 0 && !view_is(pool, "fr", want, RB_SECT))
		fail_msg("%s: it succeeded, but the volume is not the snapshot", what);
	if (!k && rc == -1)
		fail_msg("%s: it failed: %s", what, sv_last_error());

	/* A write now (chunk 0): refused, or durable once flushed. */
	unsigned char *buf = malloc((size_t)SPC * SECTOR);
	for (uint32_t i = 0; i < SPC; i++)
		sector_image(buf + (size_t)i * SECTOR, 5, i);
	bool taken =
	    sv_view_pwrite(v, buf, SPC * SECTOR, 0, 0, &err) == 0 && sv_view_flush(v, &err) == 0;
	free(buf);
	sv_view_close(v);
	sv_pool_close(pool); /* a clean close: no power loss at all */

	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	if (!rb_snaps_intact(pool, s_ids, t_ids))
		fail_msg("%s: after a clean reopen, a snapshot changed", what);
	if (abandoned) {
		if (!rb_mixture(pool, vol_ids, want, taken ? 5 : 0))
			fail_msg("%s: the target turned invalid; after a clean reopen the volume "
				 "is not a mixture of the two (with the write after it)",
				 what);
		sv_pool_close(pool);
		assert_int_equal(test_rmtree(dir), 0);
		return used;
	}
	uint32_t after[RB_SECT];
	memcpy(after, rc == 0 ? want : vol_ids, sizeof after);
	if (taken) {
		for (uint32_t i = 0; i < SPC; i++)
			after[i] = 5;
		if (!view_is(pool, "fr", after, RB_SECT))
			fail_msg("%s: a write acknowledged and flushed after it is not there after "
				 "a clean reopen (the reopen finished a failed rollback over it?)",
				 what);
	} else if (!view_is(pool, "fr", want, RB_SECT) &&
		   (rc == 0 || !view_is(pool, "fr", vol_ids, RB_SECT))) {
		fail_msg("%s: after a clean reopen the volume is neither the snapshot nor as "
			 "it was",
			 what);
	}
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
	return used;
}

/* A fault at every store call a rollback makes, in turn (to the newest
 * snapshot, whose pre-images it then drops, and to an older one, which
 * copies): see rollback_with_fault. */
static void
test_rollback_faults(void **state)
{
	(void)state;
	for (int newest = 0; newest < 2; newest++) {
		uint64_t n = rollback_with_fault(newest, 0, 0);
		for (uint64_t k = 1; k <= n; k++)
			rollback_with_fault(newest, k, k % 3 ? EIO : ENOSPC);
		printf("rollback to the %s snapshot: a fault at each of its %" PRIu64
		       " store calls\n",
		       newest ? "newest" : "older", n);
	}
}

/* Is a snapshot listed? */
static bool
listed(struct sv_pool *pool, const char *vol, const char *snap)
{
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(pool, vol, &infos, &n) == -1)
		fail_msg("list %s: %s", vol, sv_last_error());
	bool found = false;
	for (size_t k = 0; k < n; k++)
		found |= !strcmp(infos[k].name, snap);
	free(infos);
	return found;
}

#define GR_SECT (8 * SPC)

/* One snapshot of two volumes at one instant (a consistency group) with a
 * fault at its k-th counted store call (0: none); returns how many calls
 * the create made.  Nothing is taken unless all are: after a failed
 * create neither volume has the snapshot, now or after a clean reopen;
 * after one that worked both have it, reading as the volumes did. */
static uint64_t
group_with_fault(uint64_t k, int fail_errno)
{
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "plgr", true), 0);
	struct crash_ctl ctl = {0};
	struct sv_store *st;
	struct sv_pool *pool;
	assert_int_equal(crash_store_open(dir, true, &ctl, &st), 0);
	assert_int_equal(sv_pool_open_store(st, dir, &pool), 0);
	const char *names[2] = {"a", "b"};
	struct sv_view *v[2];
	uint32_t ids[2][GR_SECT];
	int err = 0;
	for (int i = 0; i < 2; i++) {
		assert_int_equal(
		    sv_volume_create(pool, names[i], (uint64_t)GR_SECT * SECTOR, CHUNK), 0);
		assert_int_equal(sv_view_open(pool, names[i], 1, &v[i]), 0);
		write_id(v[i], 0, GR_SECT, 1 + (uint32_t)i);
		for (uint32_t s = 0; s < GR_SECT; s++)
			ids[i][s] = 1 + (uint32_t)i;
	}
	uint64_t before = ctl.calls;
	if (k) {
		ctl.fail_at = before + k;
		ctl.fail_errno = fail_errno;
	}
	const char *specs[] = {"b@g", "a@g"};
	int rc = sv_snapshot_create(pool, specs, 2, NULL);
	uint64_t used = ctl.calls - before;
	char what[128];
	snprintf(what, sizeof what,
		 "a group create with a fault (%s) at its call %" PRIu64 " of %s",
		 strerror(fail_errno), k, k ? "it" : "none");
	if (k && !ctl.faults)
		fail_msg("%s: the fault missed it", what);
	if (!k && rc == -1)
		fail_msg("%s: it failed: %s", what, sv_last_error());
	for (int i = 0; i < 2; i++)
		if (listed(pool, names[i], "g") != (rc == 0))
			fail_msg("%s: it %s, but %s@g %s", what, rc ? "failed" : "worked", names[i],
				 rc ? "exists" : "does not exist");
	/* later writes must not show in the snapshots */
	for (int i = 0; i < 2; i++) {
		write_id(v[i], 0, SPC, 3 + (uint32_t)i);
		if (sv_view_flush(v[i], &err) == -1) {
			/* the create's failed sync, reported once (snapshot.c) */
			assert_int_not_equal(rc, 0);
			assert_int_equal(sv_view_flush(v[i], &err), 0);
		}
		sv_view_close(v[i]);
	}
	sv_pool_close(pool); /* a clean close */

	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	for (int i = 0; i < 2; i++) {
		char spec[8];
		snprintf(spec, sizeof spec, "%s@g", names[i]);
		if (listed(pool, names[i], "g") != (rc == 0))
			fail_msg("%s: after a clean reopen, %s %s", what, spec,
				 rc ? "exists (half a group)" : "is gone");
		if (rc == 0 && !view_is(pool, spec, ids[i], GR_SECT))
			fail_msg("%s: after a clean reopen, %s is not what it was", what, spec);
	}
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
	return used;
}

/* A fault at every store call of a group create, in turn. */
static void
test_group_faults(void **state)
{
	(void)state;
	uint64_t n = group_with_fault(0, 0);
	for (uint64_t k = 1; k <= n; k++)
		group_with_fault(k, k % 3 ? EIO : ENOSPC);
	printf("group create: a fault at each of its %" PRIu64 " store calls\n", n);
}

int
main(void)
{
	if (getenv("SNAPVOL_TEST_FILTER")) /* e.g. "test_powerloss" */
		cmocka_set_test_filter(getenv("SNAPVOL_TEST_FILTER"));
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_powerloss),
	    cmocka_unit_test(test_rollback_faults),
	    cmocka_unit_test(test_group_faults),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
