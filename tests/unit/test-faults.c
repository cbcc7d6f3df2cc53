/*
 * test-faults.c: the fault matrix (issue 6, "Faults").
 *
 * Every operation that touches the store (a first write after a snapshot,
 * which copies; a first write to a hole; a rewrite; a FUA write; trim and
 * zero-write; flush; snapshot create, delete (the newest, the oldest),
 * rollback; a release (trim of a snapshot's export); write-behind landing;
 * opening a volume after a kill: journal replay and checkpoint; a
 * block-level freeze, which must fail on any failed sync)
 * is run once without faults over the fault store (store-crash.c), which
 * counts the store calls of each kind it makes (read, write, sync,
 * punch/zero, meta_write, open, remove, extent).  Then, for every call of
 * every kind it made, the operation runs again on a fresh pool with that
 * call failing: with EIO, with ENOSPC, short (a write applies half, a read
 * fills half), sticky (that call and every later one of its kind fail,
 * until the fault clears, with EIO or ENOSPC), and for syncs also with the
 * dirty pages kept (by default a failed sync loses them, as Linux may).  New code paths are covered without listing
 * them: they are counted.  After each run:
 *
 *   - the caller got the error (the injected errno, which the NBD layer
 *     maps to NBD_EIO / NBD_ENOSPC), or the operation is complete;
 *   - every sector of the volume holds what was acknowledged and flushed,
 *     or a value written since (a failed write may have landed or not);
 *   - every snapshot reads exactly as it did, unless the fault hit a sync
 *     of pre-images: then every snapshot taken at or before that epoch is
 *     invalid (and must be: the sticky-failure rule, snapshot.c), its
 *     export refuses reads with EIO, and the engine said so at error level;
 *   - once the fault clears, the volume works again (a copy-on-write
 *     write and a flush succeed), and a clean reopen with the plain file
 *     backend shows the same bytes and the same snapshots, and "snapvol
 *     check" finds no error (and reports each invalid snapshot).
 *
 * test_sticky_open_view: a snapshot exported while its pre-images fail is
 * invalidated under its reader (reads get EIO), writes to the origin go
 * on.  test_sticky_unrecorded: when even the record of the invalidation
 * fails, writes fail (none may reach the origin) until the volume is
 * reopened, and the snapshots on disk still read right.
 * test_release_grouped: releases that arrive during a save of
 * released.meta share the next one, and are durable when acknowledged.
 * test_file_short_io: the file backend under a kernel that transfers a
 * few bytes at a time and interrupts calls (pread/pwrite wrapped at link
 * time): every byte still lands.
 *
 * SNAPVOL_FAULT_STRIDE=N tests every Nth point only (default 1, 3 under a
 * sanitizer); SNAPVOL_FAULT_VERBOSE=1 names the points a run did not
 * reach (write-behind lands in batches of varying size, so its calls vary
 * a little from run to run); SNAPVOL_TEST_FILTER picks tests by name.  The engine logs
 * the faults it meets: that output goes to a scratch file, not the
 * terminal.
 */
#include <errno.h>
#include <fcntl.h>
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
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "store-crash.h"
#include "testpool.h"

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

#define CHUNK		  4096u
#define NCHUNK		  16u
#define SECTOR		  512u
#define SPC		  (CHUNK / SECTOR)
#define NSECT		  (NCHUNK * SPC)
#define VSIZE		  (NCHUNK * CHUNK)
#define VOL		  "fv"
#define MAX_SNAPS	  4
#define SV_LOG_OBJ_PREFIX "prelog" /* engine/internal.h's SV_OBJ_LOG */

/* ---- sector contents: write id and sector number, id 0 is zeros ---- */

#define MAGIC 0x46565653u /* "SVVF" */

static void
sector_image(unsigned char *p, unsigned id, unsigned sct)
{
	test_sector_image(p, MAGIC, id, sct);
}

/* The write id a sector holds (ids are below 64), or -1 for anything else. */
static int
sector_id(const unsigned char *p, unsigned sct)
{
	int64_t id = test_sector_id(p, MAGIC, sct);
	return id >= 64 ? -1 : (int)id;
}

/* ---- the world: a pool over the fault store, and what it must hold ---- */

struct esnap {
	char name[16];
	bool exists;
	unsigned char img[VSIZE]; /* as created */
	bool zeroable[NCHUNK];	  /* a release that failed: may read as zeros */
};

struct world {
	char dir[64];
	struct crash_ctl ctl;
	struct sv_store *st;
	struct sv_pool *pool;
	struct sv_view *v;
	bool wb;		 /* write-behind on (and the drop-snapshot policy) */
	uint64_t allowed[NSECT]; /* bit i: the sector may hold write i's data */
	uint64_t flushed[NSECT]; /* the same, as of the last successful flush */
	unsigned next_id;
	struct esnap snaps[MAX_SNAPS];
	size_t n_snaps;
	/* what the operation saw */
	int first_err; /* the first error a call of it returned, 0 if none */
	int rb_rc;     /* a rollback's result */
	const char *rb_target;
	struct sv_view *sv; /* a snapshot view the operation uses */
	unsigned char *scratch;
	/* the point and mode, for messages */
	char what[160];
};

static FILE *engine_log; /* the engine's stderr while a scenario runs */
static int saved_stderr = -1;

static void
log_capture(void)
{
	fflush(stderr);
	if (!engine_log)
		engine_log = tmpfile();
	assert_non_null(engine_log);
	assert_int_equal(ftruncate(fileno(engine_log), 0), 0);
	rewind(engine_log);
	if (saved_stderr < 0)
		saved_stderr = dup(2);
	dup2(fileno(engine_log), 2);
}

static void
log_release(void)
{
	fflush(stderr);
	if (saved_stderr >= 0)
		dup2(saved_stderr, 2);
}

/* Does the captured engine log hold s? */
static bool
log_has(const char *s)
{
	fflush(stderr);
	long n = lseek(fileno(engine_log), 0, SEEK_END);
	char *buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	ssize_t got = pread(fileno(engine_log), buf, (size_t)n, 0);
	buf[got > 0 ? got : 0] = '\0';
	bool has = strstr(buf, s) != NULL;
	free(buf);
	return has;
}

static void __attribute__((format(printf, 2, 3), noreturn))
fail_world(struct world *w, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_release();
	fail_msg("%s: %s (pool left in %s)", w->what, msg, w->dir);
	abort(); /* not reached */
}

static void
note(struct world *w, int rc, int err)
{
	if (rc == -1 && !w->first_err)
		w->first_err = err ? err : -1;
}

/* Write id to chunks [c, c+n) through the live view. */
static int
wr(struct world *w, unsigned c, unsigned n, unsigned flags)
{
	unsigned id = ++w->next_id;
	assert_true(id < 64);
	unsigned char *buf = w->scratch;
	for (unsigned s = 0; s < n * SPC; s++)
		sector_image(buf + (size_t)s * SECTOR, id, c * SPC + s);
	int err = 0;
	int rc = sv_view_pwrite(w->v, buf, n * CHUNK, (uint64_t)c * CHUNK, flags, &err);
	note(w, rc, err);
	for (unsigned s = c * SPC; s < (c + n) * SPC; s++) {
		if (rc == 0)
			w->allowed[s] = UINT64_C(1) << id;
		else
			w->allowed[s] |= UINT64_C(1) << id;
		if (rc == 0 && (flags & SV_FUA))
			w->flushed[s] = w->allowed[s];
	}
	return rc;
}

static int
flush(struct world *w)
{
	int err = 0;
	int rc = sv_view_flush(w->v, &err);
	note(w, rc, err);
	for (unsigned s = 0; s < NSECT; s++) {
		if (rc == 0)
			w->flushed[s] = w->allowed[s];
		else /* a failed sync may lose what was not flushed (Linux may) */
			w->allowed[s] |= w->flushed[s];
	}
	return rc;
}

/* Trim or zero chunk c (what reads back is zeros: id 0). */
static void
trim_or_zero(struct world *w, unsigned c, bool trim, unsigned flags)
{
	int err = 0;
	int rc = trim ? sv_view_trim(w->v, CHUNK, (uint64_t)c * CHUNK, flags, &err)
		      : sv_view_zero(w->v, CHUNK, (uint64_t)c * CHUNK, flags, &err);
	note(w, rc, err);
	for (unsigned s = c * SPC; s < (c + 1) * SPC; s++) {
		w->allowed[s] = rc == 0 ? 1 : w->allowed[s] | 1;
		if (rc == 0 && (flags & SV_FUA))
			w->flushed[s] = w->allowed[s];
	}
}

static int
read_view(struct sv_pool *pool, const char *name, unsigned char *buf, int *err)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1) {
		*err = sv_last_errno();
		return -1;
	}
	int rc = sv_view_pread(v, buf, VSIZE, 0, err);
	sv_view_close(v);
	return rc;
}

static struct esnap *
add_snap(struct world *w, const char *name)
{
	assert_true(w->n_snaps < MAX_SNAPS);
	struct esnap *s = &w->snaps[w->n_snaps++];
	memset(s, 0, sizeof *s);
	snprintf(s->name, sizeof s->name, "%s", name);
	int err = 0;
	if (read_view(w->pool, VOL, s->img, &err) == -1)
		fail_world(w, "reading the volume before snapshot %s: %s", name, strerror(err));
	return s;
}

static struct esnap *
find_snap(struct world *w, const char *name)
{
	for (size_t i = 0; i < w->n_snaps; i++)
		if (!strcmp(w->snaps[i].name, name))
			return &w->snaps[i];
	return NULL;
}

static void
take_snap(struct world *w, const char *name)
{
	struct esnap *s = add_snap(w, name);
	char spec[2 * SV_NAME_MAX + 2];
	snprintf(spec, sizeof spec, VOL "@%s", name);
	const char *specs[] = {spec};
	if (sv_snapshot_create(w->pool, specs, 1, NULL) == -1)
		fail_world(w, "snapshot %s: %s", spec, sv_last_error());
	s->exists = true;
}

/* The engine commits records only (as on RADOS), syncing pre-image
 * objects at each commit, instead of logging pre-images (journal.c). */
static bool records_only;

/* A fresh pool: chunks 0-13 hold write 1 (14 and 15 are holes); snapshot
 * s1; chunks 0-5 get write 2; snapshot s2; chunk 0 gets write 3 (copied
 * in the current epoch already); all flushed. */
static void
world_open(struct world *w, bool wb, const char *what)
{
	memset(w, 0, sizeof *w);
	snprintf(w->what, sizeof w->what, "%s", what);
	w->wb = wb;
	w->scratch = malloc(VSIZE);
	assert_non_null(w->scratch);
	for (unsigned s = 0; s < NSECT; s++)
		w->allowed[s] = w->flushed[s] = 1;
	assert_int_equal(test_mkdtemp(w->dir, "faults", true), 0);
	/* write-behind is decided when the pool opens */
	setenv("SNAPVOL_WRITE_BEHIND_MB", wb ? "16" : "0", 1);
	w->ctl.records_only = records_only;
	assert_int_equal(crash_store_open(w->dir, true, &w->ctl, &w->st), 0);
	assert_int_equal(sv_pool_open_store(w->st, w->dir, &w->pool), 0);
	assert_int_equal(sv_volume_create(w->pool, VOL, VSIZE, CHUNK), 0);
	if (wb)
		assert_int_equal(sv_volume_set_policy(w->pool, VOL, "drop-snapshot"), 0);
	assert_int_equal(sv_view_open(w->pool, VOL, strlen(VOL), &w->v), 0);
	if (wr(w, 0, 14, 0) || flush(w))
		fail_world(w, "set-up write 1");
	take_snap(w, "s1");
	if (wr(w, 0, 6, 0) || flush(w))
		fail_world(w, "set-up write 2");
	take_snap(w, "s2");
	if (wr(w, 0, 1, 0) || flush(w))
		fail_world(w, "set-up write 3");
}

static void
world_close(struct world *w)
{
	if (w->sv)
		sv_view_close(w->sv);
	if (w->v)
		sv_view_close(w->v);
	if (w->pool)
		sv_pool_close(w->pool);
	assert_int_equal(test_rmtree(w->dir), 0);
	free(w->scratch);
}

/* ---- the operations ---- */

struct op {
	const char *name;
	bool wb;
	bool data;		       /* a data-path operation: a fault must reach the caller */
	void (*prep)(struct world *w); /* before the fault is armed */
	void (*run)(struct world *w);
};

static void
op_cow_write(struct world *w)
{
	wr(w, 2, 2, 0); /* first writes after s2: copies */
	flush(w);
}

static void
op_hole_write(struct world *w)
{
	wr(w, 14, 1, 0); /* a hole: its record, no data copied */
	flush(w);
}

static void
op_rewrite(struct world *w)
{
	wr(w, 0, 1, 0); /* copied already in this epoch */
	flush(w);
}

static void
op_fua_write(struct world *w)
{
	wr(w, 4, 1, SV_FUA);
}

static void
op_trim_zero(struct world *w)
{
	trim_or_zero(w, 7, false, SV_FUA);
	trim_or_zero(w, 6, true, 0);
	flush(w);
}

static void
op_wb_write(struct world *w)
{
	wr(w, 8, 2, 0); /* acknowledged from memory, landed later */
	wr(w, 11, 1, 0);
	flush(w); /* reports a landing's error */
}

static void
prep_create(struct world *w)
{
	/* a write acknowledged, not flushed: in the snapshot, and durable
	 * once the flush after it succeeds, whatever the create met */
	if (wr(w, 10, 1, 0))
		fail_world(w, "a write before the snapshot");
	add_snap(w, "s3"); /* its expected contents; it exists once created */
}

static void
op_create(struct world *w)
{
	const char *specs[] = {VOL "@s3"};
	int rc = sv_snapshot_create(w->pool, specs, 1, NULL);
	note(w, rc, sv_last_errno());
	find_snap(w, "s3")->exists = rc == 0;
	flush(w);
}

static void
delete_snap(struct world *w, const char *name)
{
	int rc = sv_snapshot_delete(w->pool, VOL, name);
	note(w, rc, sv_last_errno());
	if (rc == 0)
		find_snap(w, name)->exists = false;
}

static void
op_delete_newest(struct world *w)
{
	delete_snap(w, "s2");
}

static void
op_delete_oldest(struct world *w)
{
	delete_snap(w, "s1");
}

/* Rollback to s1: the volume becomes s1, sector by sector. */
static void
op_rollback(struct world *w)
{
	w->rb_target = "s1";
	w->rb_rc = sv_snapshot_rollback(w->pool, VOL, "s1");
	note(w, w->rb_rc, sv_last_errno());
	const struct esnap *t = find_snap(w, "s1");
	for (unsigned s = 0; s < NSECT; s++) {
		int id = sector_id(t->img + (size_t)s * SECTOR, s);
		assert_true(id >= 0);
		if (w->rb_rc == 0)
			w->allowed[s] = w->flushed[s] = UINT64_C(1) << id;
		else
			w->allowed[s] |= UINT64_C(1) << id;
	}
}

static void
prep_release(struct world *w)
{
	assert_int_equal(sv_view_open(w->pool, VOL "@s1", strlen(VOL "@s1"), &w->sv), 0);
}

/* A backup reader done with chunks 1-3 of s1 trims them on its export:
 * their pre-images (epoch 1, which only s1 reads) are punched. */
static void
op_release(struct world *w)
{
	int err = 0;
	int rc = sv_view_trim(w->sv, 3 * CHUNK, CHUNK, 0, &err);
	note(w, rc, err);
	struct esnap *s = find_snap(w, "s1");
	for (unsigned c = 1; c <= 3; c++) {
		if (rc == 0)
			memset(s->img + (size_t)c * CHUNK, 0, CHUNK);
		else
			s->zeroable[c] = true;
	}
	sv_view_close(w->sv);
	w->sv = NULL;
}

/* The server was killed (the journal holds records no checkpoint has),
 * and the pool is opened again: the volume is loaded when first viewed
 * (journal replay, a new checkpoint, unneeded epochs dropped). */
static void
prep_reopen(struct world *w)
{
	crash_store_powerloss(w->st); /* everything was flushed: nothing is lost */
	sv_view_close(w->v);
	w->v = NULL;
	sv_pool_close(w->pool);
	free(w->ctl.garbage);
	memset(&w->ctl, 0, sizeof w->ctl);
	w->ctl.records_only = records_only;
	assert_int_equal(crash_store_open(w->dir, false, &w->ctl, &w->st), 0);
	assert_int_equal(sv_pool_open_store(w->st, w->dir, &w->pool), 0);
}

static void
op_reopen(struct world *w)
{
	if (sv_view_open(w->pool, VOL, strlen(VOL), &w->v) == -1) {
		note(w, -1, sv_last_errno());
		w->v = NULL; /* opened again once the fault clears */
	}
}

static void
prep_freeze(struct world *w)
{
	/* first writes after s2, acknowledged, not flushed: pre-images and
	 * origin that the freeze must make durable */
	if (wr(w, 2, 2, 0) || wr(w, 13, 1, 0))
		fail_world(w, "writes before the freeze");
}

/* A block-level freeze promises a clean volume: every sync it needs done.
 * The checkpoint syncs the pre-images (journal.c), so a sync or metadata
 * fault in it must fail the freeze, never leave a "clean" volume whose
 * snapshots lost pre-images (and a failed pre-image sync invalidates the
 * snapshots reading them: check_world). */
static void
op_freeze(struct world *w)
{
	const char *names[] = {VOL};
	uint64_t id;
	int rc = sv_freeze_begin(w->pool, names, 1, 10000, 60000, &id);
	note(w, rc, sv_last_errno());
	bool must_fail = crash_store_fired_on(w->st, CRASH_OP_SYNC, "", NULL) ||
			 crash_store_fired_on(w->st, CRASH_OP_META, "", NULL);
	if (rc == 0 && must_fail)
		fail_world(w, "the freeze reported a clean volume after a failed sync");
	if (rc == 0 && sv_freeze_end(w->pool, id) == -1)
		fail_world(w, "thawing: %s", sv_last_error());
	/* a failed sync may lose what was not flushed, as in flush() */
	for (unsigned s = 0; rc == -1 && s < NSECT; s++)
		w->allowed[s] |= w->flushed[s];
	flush(w);
}

static const struct op ops[] = {
    {"cow-write", false, true, NULL, op_cow_write},
    {"hole-write", false, true, NULL, op_hole_write},
    {"rewrite", false, true, NULL, op_rewrite},
    {"fua-write", false, true, NULL, op_fua_write},
    {"trim-zero", false, true, NULL, op_trim_zero},
    {"write-behind", true, true, NULL, op_wb_write},
    {"snapshot-create", false, false, prep_create, op_create},
    {"delete-newest", false, false, NULL, op_delete_newest},
    {"delete-oldest", false, false, NULL, op_delete_oldest},
    {"rollback", false, false, NULL, op_rollback},
    {"release", false, false, prep_release, op_release},
    {"reopen", false, false, prep_reopen, op_reopen},
    {"freeze", false, false, prep_freeze, op_freeze},
};

/* ---- the checks ---- */

/* Does img match snapshot s (chunks it may have released read as zeros)? */
static bool
snap_matches(const struct esnap *s, const unsigned char *img, unsigned *bad)
{
	static const unsigned char zeros[CHUNK];
	for (unsigned c = 0; c < NCHUNK; c++) {
		const unsigned char *p = img + (size_t)c * CHUNK;
		if (!memcmp(p, s->img + (size_t)c * CHUNK, CHUNK) ||
		    (s->zeroable[c] && !memcmp(p, zeros, CHUNK)))
			continue;
		*bad = c;
		return false;
	}
	return true;
}

static void
check_volume(struct world *w, unsigned char *img)
{
	int err = 0;
	if (sv_view_pread(w->v, img, VSIZE, 0, &err) == -1)
		fail_world(w, "reading the volume after the fault cleared: %s", strerror(err));
	for (unsigned s = 0; s < NSECT; s++) {
		int id = sector_id(img + (size_t)s * SECTOR, s);
		if (id < 0 || !(w->allowed[s] >> id & 1))
			fail_world(w,
				   "volume sector %u (chunk %u) holds %s%d; allowed: 0x%" PRIx64
				   " (flushed 0x%" PRIx64 ")",
				   s, s / SPC, id < 0 ? "garbage " : "write ", id, w->allowed[s],
				   w->flushed[s]);
	}
}

/* Snapshots as the model says, validity as the fault allows: a fault on
 * a sync of pre-E invalidates every snapshot taken at or before epoch E. */
static void
check_snapshots(struct world *w, struct sv_pool *pool, bool may_drop, uint64_t dead_upto,
		bool *invalid)
{
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(pool, VOL, &infos, &n) == -1)
		fail_world(w, "listing snapshots: %s", sv_last_error());
	size_t expected = 0;
	for (size_t i = 0; i < w->n_snaps; i++)
		expected += w->snaps[i].exists;
	if (n != expected)
		fail_world(w, "%zu snapshots listed, %zu expected", n, expected);
	unsigned char *img = malloc(VSIZE);
	assert_non_null(img);
	for (size_t k = 0; k < n; k++) {
		struct esnap *s = find_snap(w, infos[k].name);
		if (!s || !s->exists)
			fail_world(w, "snapshot %s exists; it should not", infos[k].name);
		size_t idx = (size_t)(s - w->snaps);
		bool must_die = infos[k].epoch <= dead_upto;
		if (infos[k].invalid != must_die && !(may_drop && infos[k].invalid))
			fail_world(
			    w, "snapshot %s (epoch %" PRIu64 ") is %s; expected %s", infos[k].name,
			    infos[k].epoch, infos[k].invalid ? "invalid" : "valid",
			    must_die ? "invalid (a pre-image sync of its epochs failed)" : "valid");
		if (invalid && invalid[idx] != infos[k].invalid)
			fail_world(w, "after a clean reopen, snapshot %s is %s", infos[k].name,
				   infos[k].invalid ? "invalid" : "valid again");
		if (invalid)
			continue; /* the reopen compares bytes itself */
		char spec[2 * SV_NAME_MAX + 2];
		snprintf(spec, sizeof spec, VOL "@%s", infos[k].name);
		int err = 0;
		int rc = read_view(pool, spec, img, &err);
		if (infos[k].invalid) {
			if (rc != -1 || err != EIO)
				fail_world(w, "invalid snapshot %s: read %s (%s), not EIO", spec,
					   rc == 0 ? "succeeded" : "failed", strerror(err));
			continue;
		}
		unsigned bad;
		if (rc == -1)
			fail_world(w, "reading %s: %s", spec, strerror(err));
		if (!snap_matches(s, img, &bad))
			fail_world(w, "snapshot %s changed: chunk %u", spec, bad);
	}
	free(img);
	free(infos);
}

struct findings {
	unsigned errors, invalid_reports;
	char first_error[512];
};

static void
on_finding(void *opaque, const struct sv_check_finding *f)
{
	struct findings *fs = opaque;
	if (!strcmp(f->severity, "error") && !f->repaired && fs->errors++ == 0)
		snprintf(fs->first_error, sizeof fs->first_error, "%s", f->what);
	if (strstr(f->what, "is invalid"))
		fs->invalid_reports++;
}

static bool
listed_invalid(struct sv_pool *pool, const char *name)
{
	struct sv_snapshot_info *infos;
	size_t n;
	bool dead = false;
	assert_int_equal(sv_snapshot_list(pool, VOL, &infos, &n), 0);
	for (size_t k = 0; k < n; k++)
		dead |= !strcmp(infos[k].name, name) && infos[k].invalid;
	free(infos);
	return dead;
}

/* The epoch of the first pre-image object a sync fault hit, or none. */
static bool
pre_sync_fault(struct world *w, uint64_t *epoch)
{
	char name[32];
	if (!crash_store_fired_on(w->st, CRASH_OP_SYNC, "pre-", name))
		return false;
	assert_int_equal(sscanf(name, "pre-%" SCNu64, epoch), 1);
	return true;
}

/* After the operation, with the fault cleared: everything above. */
static void
check_world(struct world *w, const struct op *op, const struct crash_fault *f)
{
	uint64_t fired = crash_store_fired(w->st, NULL);
	int ferr = f && f->err ? f->err : EIO;
	uint64_t dead_upto = 0;
	bool pre_fail = fired && pre_sync_fault(w, &dead_upto);
	if (!pre_fail)
		dead_upto = 0; /* epochs start at 1: none dies */
	/* drop-snapshot under a full store invalidates the oldest ones */
	bool may_drop = w->wb && ferr == ENOSPC;

	/* A full store under the pre-image log: a commit whose block cannot be
	 * written or synced for want of space retries with records only,
	 * syncing the pre-image objects instead (journal.c), and succeeds; the
	 * checks below still hold. */
	bool log_full = ferr == ENOSPC && !w->first_err &&
			(crash_store_fired_on(w->st, CRASH_OP_WRITE, SV_LOG_OBJ_PREFIX, NULL) ||
			 crash_store_fired_on(w->st, CRASH_OP_SYNC, SV_LOG_OBJ_PREFIX, NULL));
	/* the caller got the error */
	if (fired && op->data && !(may_drop && !w->first_err) && !log_full && w->first_err != ferr)
		fail_world(w, "the fault fired, but the caller %s",
			   w->first_err ? "got another error" : "saw no error");
	if (w->first_err && !fired)
		fail_world(w, "an error (%s) without a fault", strerror(w->first_err));
	if (w->first_err && w->first_err != ferr && w->first_err != EIO)
		fail_world(w, "error %s, expected %s or EIO", strerror(w->first_err),
			   strerror(ferr));
	if (pre_fail && !log_has("can no longer be trusted"))
		fail_world(w,
			   "a pre-image sync failed and the log does not say what it invalidated");

	if (!w->v && sv_view_open(w->pool, VOL, strlen(VOL), &w->v) == -1)
		fail_world(w, "opening the volume, the fault cleared: %s", sv_last_error());
	check_snapshots(w, w->pool, may_drop, dead_upto, NULL);
	unsigned char *img = malloc(VSIZE);
	assert_non_null(img);
	check_volume(w, img);

	/* The volume works again.  A failed rollback is finished first (until
	 * then writes are refused), unless its target died with the fault. */
	if (w->rb_target && w->rb_rc == -1) {
		struct esnap *t = find_snap(w, w->rb_target);
		bool dead = listed_invalid(w->pool, w->rb_target);
		if (!dead && sv_snapshot_rollback(w->pool, VOL, w->rb_target) == -1)
			fail_world(w, "the rollback again, the fault cleared: %s", sv_last_error());
		for (unsigned s = 0; !dead && s < NSECT; s++)
			w->allowed[s] = UINT64_C(1) << sector_id(t->img + (size_t)s * SECTOR, s);
	}
	/* A sync that failed outside a flush is reported by the next one,
	 * once (as Linux reports a writeback error at the next fsync). */
	if (w->first_err)
		flush(w);
	w->first_err = 0;
	if (wr(w, 12, 1, 0) || wr(w, 0, 1, 0) || wr(w, 9, 1, SV_FUA) || flush(w))
		fail_world(w, "writing after the fault cleared: %s", strerror(w->first_err));
	check_volume(w, img);
	bool invalid[MAX_SNAPS] = {false};
	struct sv_snapshot_info *infos;
	size_t n;
	assert_int_equal(sv_snapshot_list(w->pool, VOL, &infos, &n), 0);
	for (size_t k = 0; k < n; k++)
		invalid[find_snap(w, infos[k].name) - w->snaps] = infos[k].invalid;
	free(infos);
	check_snapshots(w, w->pool, may_drop, dead_upto, NULL);

	/* A clean reopen with the plain file backend shows the same. */
	sv_view_close(w->v);
	w->v = NULL;
	sv_pool_close(w->pool);
	w->pool = NULL;
	if (sv_pool_open(w->dir, 0, &w->pool) == -1)
		fail_world(w, "reopening: %s", sv_last_error());
	struct findings fs = {0};
	if (sv_pool_check(w->pool, VOL, false, on_finding, &fs) != 0)
		fail_world(w, "snapvol check: %u error(s): %s", fs.errors, fs.first_error);
	unsigned n_invalid = 0;
	for (size_t i = 0; i < w->n_snaps; i++)
		n_invalid += w->snaps[i].exists && invalid[i];
	if (fs.invalid_reports != n_invalid)
		fail_world(w, "snapvol check reported %u invalid snapshots, not %u",
			   fs.invalid_reports, n_invalid);
	assert_int_equal(sv_view_open(w->pool, VOL, strlen(VOL), &w->v), 0);
	unsigned char *again = malloc(VSIZE);
	assert_non_null(again);
	int err = 0;
	if (sv_view_pread(w->v, again, VSIZE, 0, &err) == -1 || memcmp(img, again, VSIZE))
		fail_world(w, "after a clean reopen the volume reads differently");
	check_snapshots(w, w->pool, may_drop, dead_upto, invalid);
	for (size_t i = 0; i < w->n_snaps; i++) {
		char spec[2 * SV_NAME_MAX + 2];
		if (!w->snaps[i].exists || invalid[i])
			continue;
		snprintf(spec, sizeof spec, VOL "@%s", w->snaps[i].name);
		unsigned bad;
		if (read_view(w->pool, spec, again, &err) == -1 ||
		    !snap_matches(&w->snaps[i], again, &bad))
			fail_world(w, "after a clean reopen, snapshot %s reads differently", spec);
	}
	free(again);
	free(img);
}

/* ---- the matrix ---- */

struct mode {
	const char *name;
	int err;
	unsigned flags;
	unsigned kinds; /* the kinds of call it applies to (bits); 0: all */
};

#define KIND(k) (1u << (k))
static const struct mode modes[] = {
    {"EIO", EIO, 0, 0},
    {"ENOSPC", ENOSPC, 0, 0},
    {"short", EIO, CRASH_SHORT, KIND(CRASH_OP_READ) | KIND(CRASH_OP_WRITE)},
    {"sticky EIO", EIO, CRASH_STICKY, 0},
    {"sticky ENOSPC", ENOSPC, CRASH_STICKY, KIND(CRASH_OP_WRITE) | KIND(CRASH_OP_SYNC)},
    {"EIO, pages kept", EIO, CRASH_KEEP_DIRTY, KIND(CRASH_OP_SYNC)},
};

static unsigned
env_uint(const char *name, unsigned def)
{
	const char *v = getenv(name);
	return v && *v ? (unsigned)strtoul(v, NULL, 10) : def;
}

static unsigned scenarios, fired_total, missed;

static void
run_point(const struct op *op, const struct crash_fault *f, const char *what)
{
	struct world w;
	log_capture();
	world_open(&w, op->wb, what);
	if (op->prep)
		op->prep(&w);
	if (f)
		assert_int_equal(crash_store_arm(w.st, f), 0);
	op->run(&w);
	crash_store_disarm(w.st);
	if (f && !crash_store_fired(w.st, NULL)) {
		missed++; /* the call did not come this time */
		if (getenv("SNAPVOL_FAULT_VERBOSE"))
			printf("not reached: %s\n", what);
	}
	fired_total += f && crash_store_fired(w.st, NULL);
	check_world(&w, op, f);
	world_close(&w);
	log_release();
	scenarios++;
}

static void
run_matrix(const struct op *op)
{
	unsigned stride = env_uint("SNAPVOL_FAULT_STRIDE", SANITIZED ? 3 : 1);
	if (!stride)
		stride = 1;
	/* Count the store calls the operation makes, fault-free. */
	struct world w;
	char what[160];
	snprintf(what, sizeof what, "%s without faults", op->name);
	log_capture();
	world_open(&w, op->wb, what);
	if (op->prep)
		op->prep(&w);
	uint64_t before[CRASH_OP_KINDS], after[CRASH_OP_KINDS];
	crash_store_counts(w.st, before);
	op->run(&w);
	crash_store_counts(w.st, after);
	if (w.first_err)
		fail_world(&w, "failed without a fault: %s", strerror(w.first_err));
	check_world(&w, op, NULL);
	world_close(&w);
	log_release();

	unsigned points = 0, idx = 0;
	for (int kind = 0; kind < CRASH_OP_KINDS; kind++) {
		uint64_t calls = after[kind] - before[kind];
		for (uint64_t k = 1; k <= calls; k++) {
			for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
				if (modes[m].kinds && !(modes[m].kinds & KIND(kind)))
					continue;
				if (idx++ % stride)
					continue;
				struct crash_fault f = {.op = (enum crash_op)kind,
							.nth = k,
							.err = modes[m].err,
							.flags = modes[m].flags};
				snprintf(what, sizeof what,
					 "%s, %s at its %s call %" PRIu64 " of %" PRIu64, op->name,
					 modes[m].name, crash_op_names[kind], k, calls);
				run_point(op, &f, what);
				points++;
			}
		}
	}
	printf("%-16s store calls:", op->name);
	for (int kind = 0; kind < CRASH_OP_KINDS; kind++)
		if (after[kind] - before[kind])
			printf(" %s %" PRIu64, crash_op_names[kind], after[kind] - before[kind]);
	printf("; %u fault points\n", points);
}

static void
test_matrix(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
		run_matrix(&ops[i]);
	printf("%u scenarios, %u faults fired, %u points the run did not reach\n", scenarios,
	       fired_total, missed);
	assert_true(fired_total > 0);
}

/* The same over a backend whose commits sync pre-image objects. */
static void
test_matrix_records_only(void **state)
{
	test_matrix(state);
}

/* A snapshot exported while a sync of its pre-images fails: invalidated
 * under its reader, whose reads then fail with EIO; origin writes go on. */
static void
test_sticky_open_view(void **state)
{
	(void)state;
	struct world w;
	log_capture();
	world_open(&w, false, "sticky failure under an open export");
	assert_int_equal(sv_view_open(w.pool, VOL "@s2", strlen(VOL "@s2"), &w.sv), 0);
	int err = 0;
	assert_int_equal(sv_view_pread(w.sv, w.scratch, CHUNK, 0, &err), 0);
	struct crash_fault f = {.op = CRASH_OP_SYNC, .nth = 1, .err = EIO, .obj = "pre-"};
	assert_int_equal(crash_store_arm(w.st, &f), 0);
	assert_int_equal(wr(&w, 2, 1, 0), -1);
	assert_int_equal(w.first_err, EIO);
	crash_store_disarm(w.st);
	assert_true(log_has("can no longer be trusted"));
	assert_int_equal(sv_view_pread(w.sv, w.scratch, CHUNK, 0, &err), -1);
	assert_int_equal(err, EIO);
	struct sv_snapshot_info *infos;
	size_t n;
	assert_int_equal(sv_snapshot_list(w.pool, VOL, &infos, &n), 0);
	assert_int_equal(n, 2);
	assert_true(infos[0].invalid && infos[1].invalid);
	free(infos);
	/* the origin goes on: writes, a flush, what they wrote */
	w.first_err = 0;
	assert_int_equal(wr(&w, 2, 2, 0), 0);
	assert_int_equal(flush(&w), 0);
	check_volume(&w, w.scratch);
	sv_view_close(w.sv);
	w.sv = NULL;
	world_close(&w);
	log_release();
}

/* One release (trim of chunk c on a snapshot's export), in a thread. */
struct releaser {
	struct sv_view *sv;
	unsigned c;
	int rc, err;
	pthread_t t;
};

static void *
releaser_main(void *arg)
{
	struct releaser *r = arg;
	r->rc = sv_view_trim(r->sv, CHUNK, (uint64_t)r->c * CHUNK, 0, &r->err);
	return NULL;
}

/* Releases that arrive while released.meta is being written share the next
 * write (snapshot.c, group save), and each is durable when acknowledged.
 * Release A's write stalls (and will fail); meanwhile releases B1..B6 are
 * made (their chunks read as zeros at once) and queue; then A's write
 * fails: one more write covers all six.  Without grouping: six. */
static void
test_release_grouped(void **state)
{
	(void)state;
	enum { NB = 6 };
	struct world w;
	log_capture();
	world_open(&w, false, "releases grouped into one save");
	assert_int_equal(sv_view_open(w.pool, VOL "@s1", strlen(VOL "@s1"), &w.sv), 0);
	struct crash_fault f = {
	    .op = CRASH_OP_META, .nth = 1, .err = EIO, .flags = CRASH_STALL, .obj = "released"};
	assert_int_equal(crash_store_arm(w.st, &f), 0);
	uint64_t c0[CRASH_OP_KINDS], c1[CRASH_OP_KINDS];
	crash_store_counts(w.st, c0);
	struct releaser a = {.sv = w.sv, .c = 1}, b[NB];
	assert_int_equal(pthread_create(&a.t, NULL, releaser_main, &a), 0);
	crash_store_wait_stalled(w.st);
	for (unsigned i = 0; i < NB; i++) {
		b[i] = (struct releaser){.sv = w.sv, .c = 2 + i};
		assert_int_equal(pthread_create(&b[i].t, NULL, releaser_main, &b[i]), 0);
	}
	/* Wait until every B is made: its chunk reads as zeros. */
	unsigned char *buf = malloc(VSIZE);
	assert_non_null(buf);
	for (bool all = false; !all;) {
		int err = 0;
		assert_int_equal(sv_view_pread(w.sv, buf, VSIZE, 0, &err), 0);
		all = true;
		for (unsigned i = 0; i < NB; i++)
			for (size_t k = 0; k < CHUNK && all; k++)
				all = buf[(size_t)b[i].c * CHUNK + k] == 0;
		if (!all)
			usleep(1000);
	}
	crash_store_release(w.st);
	assert_int_equal(pthread_join(a.t, NULL), 0);
	for (unsigned i = 0; i < NB; i++)
		assert_int_equal(pthread_join(b[i].t, NULL), 0);
	crash_store_disarm(w.st);
	crash_store_counts(w.st, c1);
	log_release(); /* the engine logged A's failure; the rest is quiet */
	assert_int_equal(a.rc, -1);
	assert_int_equal(a.err, EIO);
	for (unsigned i = 0; i < NB; i++)
		assert_int_equal(b[i].rc, 0);
	print_message("  %u releases: %" PRIu64 " metadata writes (one failed)\n", NB + 1,
		      c1[CRASH_OP_META] - c0[CRASH_OP_META]);
	assert_int_equal(c1[CRASH_OP_META] - c0[CRASH_OP_META], 2);
	sv_view_close(w.sv);
	w.sv = NULL;

	/* Durable: a power loss now, and the six read as zeros after it. */
	crash_store_powerloss(w.st);
	sv_view_close(w.v);
	w.v = NULL;
	sv_pool_close(w.pool);
	w.pool = NULL;
	assert_int_equal(sv_pool_open(w.dir, 0, &w.pool), 0);
	int err = 0;
	assert_int_equal(read_view(w.pool, VOL "@s1", buf, &err), 0);
	for (unsigned i = 0; i < NB; i++)
		for (size_t k = 0; k < CHUNK; k++)
			assert_int_equal(buf[(size_t)b[i].c * CHUNK + k], 0);
	free(buf);
	world_close(&w);
}

/* One write of id to chunk c, in a thread of its own (no model update). */
struct writer {
	struct world *w;
	unsigned c, id;
	int rc, err;
	pthread_t t;
};

static void *
writer_main(void *arg)
{
	struct writer *wt = arg;
	unsigned char *buf = malloc(CHUNK);
	assert_non_null(buf);
	for (unsigned s = 0; s < SPC; s++)
		sector_image(buf + (size_t)s * SECTOR, wt->id, wt->c * SPC + s);
	wt->rc = sv_view_pwrite(wt->w->v, buf, CHUNK, (uint64_t)wt->c * CHUNK, 0, &wt->err);
	free(buf);
	return NULL;
}

static void
writer_start(struct writer *wt, struct world *w, unsigned c)
{
	*wt = (struct writer){.w = w, .c = c, .id = ++w->next_id};
	assert_int_equal(pthread_create(&wt->t, NULL, writer_main, wt), 0);
}

static void
writer_join(struct writer *wt)
{
	assert_int_equal(pthread_join(wt->t, NULL), 0);
	struct world *w = wt->w;
	for (unsigned s = wt->c * SPC; s < (wt->c + 1) * SPC; s++)
		w->allowed[s] = (wt->rc == 0 ? 0 : w->allowed[s]) | UINT64_C(1) << wt->id;
}

/* Why the rule exists.  Writer A copies chunk 2 and its commit syncs the
 * pre-image file; that sync fails (and, as Linux may, the file's dirty
 * pages are dropped).  Meanwhile writer B copied chunk 3 into the same
 * file: its page is dropped too, but B's own sync, later, succeeds, and
 * B's record and origin write go through.  The snapshots would now read
 * chunk 3 from a pre-image that is not there: they must be invalid. */
static void
test_sticky_race(void **state)
{
	(void)state;
	struct world w;
	log_capture();
	world_open(&w, false, "a pre-image sync fails under a concurrent copy");
	struct crash_fault f = {
	    .op = CRASH_OP_SYNC, .nth = 1, .err = EIO, .flags = CRASH_STALL, .obj = "pre-"};
	assert_int_equal(crash_store_arm(w.st, &f), 0);
	struct writer a, b;
	writer_start(&a, &w, 2);
	crash_store_wait_stalled(w.st); /* A leads the commit, in its sync */
	uint64_t c0[CRASH_OP_KINDS], c[CRASH_OP_KINDS];
	crash_store_counts(w.st, c0);
	writer_start(&b, &w, 3);
	/* B's pre-image write happens while A's sync is held, then B waits
	 * behind A's commit; a test may poll (bounded): no engine call does */
	for (unsigned i = 0; i < 10000; i++) {
		crash_store_counts(w.st, c);
		if (c[CRASH_OP_WRITE] > c0[CRASH_OP_WRITE])
			break;
		usleep(1000);
	}
	assert_true(c[CRASH_OP_WRITE] > c0[CRASH_OP_WRITE]);
	crash_store_release(w.st);
	writer_join(&a);
	writer_join(&b);
	crash_store_disarm(w.st);
	assert_int_equal(a.rc, -1);
	assert_int_equal(a.err, EIO);
	assert_int_equal(b.rc, 0);
	assert_true(log_has("can no longer be trusted"));
	check_snapshots(&w, w.pool, false, 2, NULL); /* s1 and s2: invalid */
	check_volume(&w, w.scratch);
	bool invalid[MAX_SNAPS] = {true, true};
	sv_view_close(w.v);
	w.v = NULL;
	sv_pool_close(w.pool);
	assert_int_equal(sv_pool_open(w.dir, 0, &w.pool), 0);
	check_snapshots(&w, w.pool, false, 2, invalid);
	world_close(&w);
	log_release();
}

/* The invalidation cannot be recorded either (volume.meta cannot be
 * written): writes fail, so none reaches the origin over a pre-image the
 * snapshot still claims on disk; after a reopen the snapshots read right
 * (nothing they need was overwritten) and the volume works. */
static void
test_sticky_unrecorded(void **state)
{
	(void)state;
	struct world w;
	log_capture();
	world_open(&w, false, "sticky failure, and its record fails too");
	struct crash_fault f1 = {.op = CRASH_OP_SYNC, .nth = 1, .err = EIO, .obj = "pre-"};
	struct crash_fault f2 = {
	    .op = CRASH_OP_META, .nth = 1, .err = ENOSPC, .flags = CRASH_STICKY, .obj = "volume"};
	assert_int_equal(crash_store_arm(w.st, &f1), 0);
	assert_int_equal(crash_store_arm(w.st, &f2), 0);
	assert_int_equal(wr(&w, 2, 1, 0), -1);
	assert_int_equal(w.first_err, EIO);
	crash_store_disarm(w.st);
	assert_true(log_has("cannot be recorded invalid"));
	/* every write fails now, a rewrite of an already copied chunk too */
	for (unsigned c = 0; c < 4; c++) {
		w.first_err = 0;
		assert_int_equal(wr(&w, c * 3, 1, 0), -1);
		assert_int_equal(w.first_err, EIO);
	}
	int err = 0;
	assert_int_equal(read_view(w.pool, VOL "@s1", w.scratch, &err), -1);
	/* reopen: the snapshots were never recorded invalid, and read right */
	sv_view_close(w.v);
	w.v = NULL;
	sv_pool_close(w.pool);
	assert_int_equal(sv_pool_open(w.dir, 0, &w.pool), 0);
	for (size_t i = 0; i < w.n_snaps; i++) {
		char spec[2 * SV_NAME_MAX + 2];
		unsigned bad;
		snprintf(spec, sizeof spec, VOL "@%s", w.snaps[i].name);
		assert_int_equal(read_view(w.pool, spec, w.scratch, &err), 0);
		assert_true(snap_matches(&w.snaps[i], w.scratch, &bad));
	}
	assert_int_equal(sv_view_open(w.pool, VOL, strlen(VOL), &w.v), 0);
	check_volume(&w, w.scratch);
	w.first_err = 0;
	assert_int_equal(wr(&w, 2, 2, 0), 0);
	assert_int_equal(flush(&w), 0);
	check_volume(&w, w.scratch);
	world_close(&w);
	log_release();
}

/* The three tests above are about the commit of a backend whose commits
 * sync pre-image objects (records only, as on RADOS).  With the pre-image
 * log (journal.c) those objects are synced at checkpoints instead: */
static int
records_only_on(void **state)
{
	(void)state;
	records_only = true;
	return 0;
}

static int
records_only_off(void **state)
{
	(void)state;
	records_only = false;
	return 0;
}

/* A log of 64 KiB: the set-up's copies (chunks 0-5 after s1, chunk 0 after
 * s2) take 36 KiB of it, and each one-chunk copy 8 KiB more. */
static void
small_log_world(struct world *w, const char *what)
{
	setenv("SNAPVOL_PRELOG_KB", "64", 1);
	setenv("SNAPVOL_PRELOG_EARLY", "0", 1); /* these test the log-full checkpoint */
	world_open(w, false, what);
	unsetenv("SNAPVOL_PRELOG_KB");
	unsetenv("SNAPVOL_PRELOG_EARLY");
}

/* A checkpoint (the log is full) meets a failed sync of pre-1, which loses
 * its unsynced pages: the pre-images s1 reads.  s1 is invalidated and
 * recorded so, and the write that needed the checkpoint fails with the
 * error (as when its commit synced pre-1); s2 (which reads epoch 2 only)
 * and the volume are intact, and the next write checkpoints. */
static void
test_sticky_checkpoint(void **state)
{
	(void)state;
	struct world w;
	log_capture();
	small_log_world(&w, "a pre-image sync fails at a checkpoint");
	struct crash_fault f = {.op = CRASH_OP_SYNC, .nth = 1, .err = EIO, .obj = "pre-"};
	assert_int_equal(crash_store_arm(w.st, &f), 0);
	for (unsigned c = 6; c < 9; c++)
		assert_int_equal(wr(&w, c, 1, 0), 0);
	assert_int_equal(wr(&w, 9, 1, 0), -1); /* needs a checkpoint: the log is full */
	assert_int_equal(w.first_err, EIO);
	crash_store_disarm(w.st);
	assert_int_equal(crash_store_fired(w.st, NULL), 1);
	char name[32];
	assert_true(crash_store_fired_on(w.st, CRASH_OP_SYNC, "pre-1", name));
	assert_true(log_has("can no longer be trusted"));
	w.first_err = 0;
	assert_int_equal(wr(&w, 9, 1, 0), 0);
	assert_int_equal(flush(&w), 0);
	check_snapshots(&w, w.pool, false, 1, NULL); /* s1: invalid */
	check_volume(&w, w.scratch);
	bool invalid[MAX_SNAPS] = {true, false};
	sv_view_close(w.v);
	w.v = NULL;
	sv_pool_close(w.pool);
	assert_int_equal(sv_pool_open(w.dir, 0, &w.pool), 0);
	check_snapshots(&w, w.pool, false, 1, invalid);
	assert_int_equal(sv_view_open(w.pool, VOL, strlen(VOL), &w.v), 0);
	check_volume(&w, w.scratch);
	world_close(&w);
	log_release();
}

/* The same, and the invalidation cannot be recorded: the checkpoint must
 * not forget the log, which holds the only copy of the pre-images pre-1
 * lost.  The write that needed it fails, and so does every write after it
 * (pre_untrusted); after a reopen, replay copies the pre-images back from
 * the log and both snapshots read right. */
static void
test_sticky_checkpoint_unrecorded(void **state)
{
	(void)state;
	struct world w;
	log_capture();
	small_log_world(&w, "a pre-image sync fails at a checkpoint, and its record too");
	struct crash_fault f1 = {.op = CRASH_OP_SYNC, .nth = 1, .err = EIO, .obj = "pre-"};
	struct crash_fault f2 = {
	    .op = CRASH_OP_META, .nth = 1, .err = ENOSPC, .flags = CRASH_STICKY, .obj = "volume"};
	assert_int_equal(crash_store_arm(w.st, &f1), 0);
	assert_int_equal(crash_store_arm(w.st, &f2), 0);
	for (unsigned c = 6; c < 9; c++)
		assert_int_equal(wr(&w, c, 1, 0), 0);
	assert_int_equal(wr(&w, 9, 1, 0), -1);
	assert_int_equal(w.first_err, EIO);
	crash_store_disarm(w.st);
	assert_true(log_has("cannot be recorded invalid"));
	w.first_err = 0;
	assert_int_equal(wr(&w, 10, 1, 0), -1);
	assert_int_equal(w.first_err, EIO);
	/* reopen: the log brings pre-1's pre-images back */
	sv_view_close(w.v);
	w.v = NULL;
	sv_pool_close(w.pool);
	assert_int_equal(sv_pool_open(w.dir, 0, &w.pool), 0);
	int err = 0;
	for (size_t i = 0; i < w.n_snaps; i++) {
		char spec[2 * SV_NAME_MAX + 2];
		unsigned bad;
		snprintf(spec, sizeof spec, VOL "@%s", w.snaps[i].name);
		assert_int_equal(read_view(w.pool, spec, w.scratch, &err), 0);
		assert_true(snap_matches(&w.snaps[i], w.scratch, &bad));
	}
	assert_int_equal(sv_view_open(w.pool, VOL, strlen(VOL), &w.v), 0);
	check_volume(&w, w.scratch);
	w.first_err = 0;
	assert_int_equal(wr(&w, 11, 1, 0), 0);
	assert_int_equal(flush(&w), 0);
	check_volume(&w, w.scratch);
	world_close(&w);
	log_release();
}

/* ---- the file backend under short transfers ---- */

/* pread/pwrite are wrapped at link time (meson: -Wl,--wrap=...): while
 * short_io is on, each call moves at most 1000 bytes and every third
 * one is interrupted (EINTR), as a kernel may do (signals, some
 * filesystems, FUSE). */
static bool short_io;
static unsigned short_calls, short_cuts;
ssize_t __real_pread64(int fd, void *buf, size_t len, off_t off);
ssize_t __real_pwrite64(int fd, const void *buf, size_t len, off_t off);
ssize_t __real_pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags);
ssize_t __wrap_pread64(int fd, void *buf, size_t len, off_t off);
ssize_t __wrap_pwrite64(int fd, const void *buf, size_t len, off_t off);
ssize_t __wrap_pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags);

static bool
interrupt(size_t *len)
{
	if (!__atomic_load_n(&short_io, __ATOMIC_RELAXED))
		return false;
	unsigned c = __atomic_add_fetch(&short_calls, 1, __ATOMIC_RELAXED);
	if (c % 3 == 0) {
		errno = EINTR;
		return true;
	}
	if (*len > 1000) {
		*len = 1000;
		__atomic_add_fetch(&short_cuts, 1, __ATOMIC_RELAXED);
	}
	return false;
}

ssize_t
__wrap_pread64(int fd, void *buf, size_t len, off_t off)
{
	if (interrupt(&len))
		return -1;
	return __real_pread64(fd, buf, len, off);
}

ssize_t
__wrap_pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	if (interrupt(&len))
		return -1;
	return __real_pwrite64(fd, buf, len, off);
}

ssize_t
__wrap_pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	size_t len = n > 0 ? iov[0].iov_len : 0;
	if (n != 1 || !interrupt(&len)) {
		if (n != 1)
			return __real_pwritev64v2(fd, iov, n, off, flags);
		struct iovec one = {.iov_base = iov[0].iov_base, .iov_len = len};
		return __real_pwritev64v2(fd, &one, 1, off, flags);
	}
	return -1;
}

static void
test_file_short_io(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "shortio", true), 0);
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(dir, SV_POOL_CREATE, &pool), 0);
	assert_int_equal(sv_volume_create(pool, VOL, VSIZE, CHUNK), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, VOL, strlen(VOL), &v), 0);
	unsigned char *a = malloc(VSIZE), *b = malloc(VSIZE), *got = malloc(VSIZE);
	assert_true(a && b && got);
	for (unsigned s = 0; s < NSECT; s++) {
		sector_image(a + (size_t)s * SECTOR, 1, s);
		sector_image(b + (size_t)s * SECTOR, 2, s);
	}
	int err = 0;
	__atomic_store_n(&short_io, true, __ATOMIC_RELAXED);
	assert_int_equal(sv_view_pwrite(v, a, VSIZE, 0, 0, &err), 0);
	assert_int_equal(sv_view_flush(v, &err), 0);
	const char *specs[] = {VOL "@s"};
	assert_int_equal(sv_snapshot_create(pool, specs, 1, NULL), 0);
	/* copies (reads of the origin, writes of pre-images), plain and FUA */
	assert_int_equal(sv_view_pwrite(v, b, VSIZE / 2, 0, 0, &err), 0);
	assert_int_equal(sv_view_pwrite(v, b + VSIZE / 2, VSIZE / 2, VSIZE / 2, SV_FUA, &err), 0);
	assert_int_equal(sv_view_flush(v, &err), 0);
	assert_int_equal(sv_view_pread(v, got, VSIZE, 0, &err), 0);
	assert_memory_equal(got, b, VSIZE);
	sv_view_close(v);
	sv_pool_close(pool);
	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	assert_int_equal(read_view(pool, VOL, got, &err), 0);
	assert_memory_equal(got, b, VSIZE);
	assert_int_equal(read_view(pool, VOL "@s", got, &err), 0);
	assert_memory_equal(got, a, VSIZE);
	__atomic_store_n(&short_io, false, __ATOMIC_RELAXED);
	sv_pool_close(pool);
	printf("short I/O: %u calls, %u cut short, %u interrupted\n", short_calls, short_cuts,
	       short_calls / 3);
	assert_true(short_cuts > 0);
	free(a);
	free(b);
	free(got);
	assert_int_equal(test_rmtree(dir), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_file_short_io),
	    cmocka_unit_test_setup_teardown(test_sticky_open_view, records_only_on,
					    records_only_off),
	    cmocka_unit_test_setup_teardown(test_sticky_unrecorded, records_only_on,
					    records_only_off),
	    cmocka_unit_test_setup_teardown(test_sticky_race, records_only_on, records_only_off),
	    cmocka_unit_test(test_sticky_checkpoint),
	    cmocka_unit_test(test_release_grouped),
	    cmocka_unit_test(test_sticky_checkpoint_unrecorded),
	    cmocka_unit_test(test_matrix),
	    cmocka_unit_test_setup_teardown(test_matrix_records_only, records_only_on,
					    records_only_off),
	};
	if (getenv("SNAPVOL_TEST_FILTER"))
		cmocka_set_test_filter(getenv("SNAPVOL_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
