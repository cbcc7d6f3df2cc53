/*
 * freeze.c: block-level freezes with leases, and the write gate under them.
 *
 * The gate.  Every write, trim and zeroing of a live volume passes
 * sv_cow_write_begin, which waits while vol->gate_holds > 0 (or, asked not
 * to wait, fails with EAGAIN so the NBD layer can park the request and
 * serve reads meanwhile: DESIGN invariant 6).  A write is stamped with its
 * epoch only after it passed the gate, so whoever closes the gate need
 * only wait for the stamped writes still in flight (sv_gate_drain_locked).
 * Holders are counted: lease freezes, a rollback, a quiesced snapshot
 * create; writes flow again when the last one lets go.  Reads never look
 * at the gate.
 *
 * A freeze follows the XFS sequence: (1) close the gate on every volume of
 * the group, (2) wait for the writes in flight, (3) sync the origin, (4)
 * checkpoint the change journal, which syncs the pre-image objects and
 * leaves the journal empty: the volume is clean, an open after a crash
 * replays nothing.  A failed sync fails the freeze (it never reports a
 * volume clean that is not); a failed pre-image sync has also invalidated
 * the snapshots that read them (the checkpoint's sticky rule, journal.c).  The
 * steps run under each volume's admin_lock (in name order, as a snapshot
 * group takes them), so a freeze never interleaves with a rollback or a
 * snapshot's metadata work.  Before step 1 the origin is synced once while
 * writes still flow (a few passes, each shorter than the last), so the
 * sync of step 3, inside the hold, has only the last moments' writes to do.
 *
 * Leases (DESIGN invariant 7).  A freeze ends at sv_freeze_end, when it is
 * not renewed within its lease, or at its hard maximum, whichever comes
 * first.  One reaper thread per pool, started with the first freeze, sleeps
 * on a CLOCK_MONOTONIC condition variable until the earliest deadline
 * (renewals only push deadlines later, so it never sleeps past one), ends
 * what lapsed and logs it.  The control server ends the freezes of a
 * connection that closes (ctl-server.c); pool close ends the rest.
 *
 * Locks: freezer->lock guards the list, the ids, the default maximum and
 * the record of why recent freezes ended.  It may be held while taking a
 * volume's cow_lock (listing), never the reverse; freezes are ended (gates
 * opened, volumes put) after they left the list, without freezer->lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define NS_PER_MS UINT64_C(1000000)
#define N_ENDED	  64 /* why recent freezes ended, for renew's message */
/* Syncs of the origin before writes are held (see sv_freeze_begin). */
#define PRESYNC_PASSES	 4
#define PRESYNC_QUICK_NS (20 * NS_PER_MS)

struct sv_freeze {
	struct sv_freeze *next;
	uint64_t id;
	struct sv_volume *vols[SV_FREEZE_MAX_VOLUMES]; /* counted references */
	size_t n;
	uint64_t created_ms; /* Unix time */
	uint64_t lease_ms, max_ms;
	uint64_t expires_ns; /* lease deadline, CLOCK_MONOTONIC, <= hard_ns */
	uint64_t hard_ns;    /* begin + max */
	char holder[SV_FREEZE_HOLDER_MAX];
};

struct sv_freezer {
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* CLOCK_MONOTONIC: the list or a deadline changed */
	struct sv_freeze *list; /* oldest first */
	uint64_t next_id;
	uint64_t default_max_ms;
	bool reaper_started, stopping;
	pthread_t reaper;
	struct {
		uint64_t id;
		char why[48];
	} ended[N_ENDED];
	unsigned ended_next;
};

/* ---- tracing ---- */

static int tracing;
static pthread_once_t tracing_once = PTHREAD_ONCE_INIT;

static void
tracing_init(void)
{
	const char *e = getenv("SNAPVOL_TRACE_FREEZE");
	tracing = e && *e && strcmp(e, "0");
}

bool
sv_freeze_tracing(void)
{
	pthread_once(&tracing_once, tracing_init);
	return tracing;
}

/* ---- the gate ---- */

void
sv_gate_close_locked(struct sv_volume *vol)
{
	vol->gate_holds++;
}

void
sv_gate_open_locked(struct sv_volume *vol)
{
	if (vol->gate_holds == 0)
		abort(); /* unbalanced: a bug */
	if (--vol->gate_holds == 0)
		pthread_cond_broadcast(&vol->cow_cond);
}

void
sv_gate_drain_locked(struct sv_volume *vol)
{
	for (;;) {
		bool busy = false;
		for (size_t i = 0; i < vol->n_epochs; i++)
			busy |= vol->epochs[i]->writes > 0;
		if (!busy)
			return;
		pthread_cond_wait(&vol->cow_cond, &vol->cow_lock);
	}
}

/* ---- set-up ---- */

int
sv_freezer_init(struct sv_pool *pool)
{
	struct sv_freezer *fz = calloc(1, sizeof *fz);
	if (!fz)
		return sv_error(ENOMEM, "out of memory");
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fz->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&fz->lock, NULL);
	fz->next_id = 1;
	fz->default_max_ms = SV_FREEZE_MAX_DEFAULT_MS;
	pool->freezer = fz;
	return 0;
}

/* "250 ms", "5 s", "1.5 s", "10 min", "365 d": for messages. */
static const char *
fmt_ms(uint64_t ms, char *buf, size_t len)
{
	if (ms < 1000)
		snprintf(buf, len, "%" PRIu64 " ms", ms);
	else if (ms < 120000)
		snprintf(buf, len, ms % 1000 ? "%.1f s" : "%.0f s", (double)ms / 1000);
	else if (ms < 2 * 3600000)
		snprintf(buf, len, "%.0f min", (double)ms / 60000);
	else if (ms < 2 * 86400000ull)
		snprintf(buf, len, "%.0f h", (double)ms / 3600000);
	else
		snprintf(buf, len, "%.0f d", (double)ms / 86400000);
	return buf;
}

int
sv_freeze_set_default_max(struct sv_pool *pool, uint64_t max_ms)
{
	char b[32];
	if (max_ms < SV_FREEZE_LEASE_MIN_MS || max_ms > SV_FREEZE_MAX_LIMIT_MS)
		return sv_error(EINVAL, "a freeze's maximum of %s is out of range (100 ms to 1 h)",
				fmt_ms(max_ms, b, sizeof b));
	SV_LOCK_SCOPE(&pool->freezer->lock);
	pool->freezer->default_max_ms = max_ms;
	return 0;
}

/* ---- ending ---- */

static void
note_ended_locked(struct sv_freezer *fz, uint64_t id, const char *why)
{
	fz->ended[fz->ended_next].id = id;
	snprintf(fz->ended[fz->ended_next].why, sizeof fz->ended[0].why, "%s", why);
	fz->ended_next = (fz->ended_next + 1) % N_ENDED;
}

static void
unlink_locked(struct sv_freezer *fz, struct sv_freeze *f)
{
	for (struct sv_freeze **pp = &fz->list; *pp; pp = &(*pp)->next)
		if (*pp == f) {
			*pp = f->next;
			return;
		}
}

/* Release the volumes of a freeze that is off the list, and free it. */
static void
release(struct sv_pool *pool, struct sv_freeze *f)
{
	for (size_t i = 0; i < f->n; i++) {
		struct sv_volume *vol = f->vols[i];
		SV_LOCK_SCOPE(&vol->cow_lock);
		vol->freezes--;
		sv_gate_open_locked(vol);
	}
	sv_lock_or_abort(&pool->lock);
	for (size_t i = 0; i < f->n; i++)
		sv_volume_put_locked(f->vols[i]);
	sv_unlock_or_abort(&pool->lock);
	free(f);
}

static void
describe_volumes(const struct sv_freeze *f, char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < f->n && used < len; i++) {
		int k = snprintf(buf + used, len - used, "%s%s", i ? "," : "", f->vols[i]->name);
		if (k < 0)
			break;
		used += (size_t)k;
	}
}

static uint64_t
realtime_ms(void)
{
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	return (uint64_t)rt.tv_sec * 1000 + (uint64_t)rt.tv_nsec / NS_PER_MS;
}

static void
timespec_of(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000u);
	ts->tv_nsec = (long)(ns % 1000000000u);
}

static void *
reaper_main(void *arg)
{
	struct sv_pool *pool = arg;
	struct sv_freezer *fz = pool->freezer;
	sv_lock_or_abort(&fz->lock);
	while (!fz->stopping) {
		uint64_t now = sv_now_ns(), earliest = UINT64_MAX;
		struct sv_freeze *lapsed = NULL, *next;
		for (struct sv_freeze *f = fz->list; f; f = next) {
			next = f->next;
			if (f->expires_ns <= now) {
				bool hard = f->expires_ns >= f->hard_ns;
				unlink_locked(fz, f);
				note_ended_locked(fz, f->id,
						  hard ? "its maximum was reached"
						       : "its lease lapsed without a heartbeat");
				f->next = lapsed;
				lapsed = f;
			} else if (f->expires_ns < earliest) {
				earliest = f->expires_ns;
			}
		}
		if (lapsed) {
			sv_unlock_or_abort(&fz->lock);
			for (struct sv_freeze *f = lapsed; f; f = next) {
				next = f->next;
				char vols[512], b[32];
				describe_volumes(f, vols, sizeof vols);
				if (f->expires_ns >= f->hard_ns)
					sv_log_warn("freeze %" PRIu64 " of %s (%s) reached its "
						    "maximum of %s: thawed",
						    f->id, vols, f->holder[0] ? f->holder : "-",
						    fmt_ms(f->max_ms, b, sizeof b));
				else
					sv_log_warn("freeze %" PRIu64 " of %s (%s): lease of %s "
						    "lapsed without a heartbeat: thawed",
						    f->id, vols, f->holder[0] ? f->holder : "-",
						    fmt_ms(f->lease_ms, b, sizeof b));
				release(pool, f);
			}
			sv_lock_or_abort(&fz->lock);
			continue;
		}
		if (earliest == UINT64_MAX) {
			pthread_cond_wait(&fz->cond, &fz->lock);
		} else {
			struct timespec ts;
			timespec_of(earliest, &ts);
			pthread_cond_timedwait(&fz->cond, &fz->lock, &ts);
		}
	}
	sv_unlock_or_abort(&fz->lock);
	return NULL;
}

void
sv_freezer_shutdown(struct sv_pool *pool)
{
	struct sv_freezer *fz = pool->freezer;
	if (!fz)
		return;
	sv_lock_or_abort(&fz->lock);
	fz->stopping = true;
	struct sv_freeze *all = fz->list;
	fz->list = NULL;
	pthread_cond_broadcast(&fz->cond);
	bool started = fz->reaper_started;
	sv_unlock_or_abort(&fz->lock);
	if (started)
		pthread_join(fz->reaper, NULL);
	for (struct sv_freeze *f = all, *next; f; f = next) {
		next = f->next;
		sv_log_info("freeze %" PRIu64 ": thawed as the pool closes", f->id);
		release(pool, f);
	}
	pthread_cond_destroy(&fz->cond);
	pthread_mutex_destroy(&fz->lock);
	free(fz);
	pool->freezer = NULL;
}

/* ---- beginning ---- */

static int
cmp_vol(const void *a, const void *b)
{
	return strcmp((*(struct sv_volume *const *)a)->name, (*(struct sv_volume *const *)b)->name);
}

/* Steps 3 and 4 for one volume whose writes are held and drained; adds
 * the time the checkpoint took to *ckpt_ns.  The checkpoint syncs the
 * pre-image objects itself (journal.c), in both journal modes, and on a
 * failed sync invalidates the snapshots that read those pre-images and
 * fails: the freeze then fails too, as the volume is not clean.  It leaves
 * the log's dead space to the next checkpoint: no punch inside the hold. */
static int
make_clean(struct sv_volume *vol, uint64_t *ckpt_ns)
{
	if (vol->ops->obj_sync(vol->origin) == -1) {
		int e = errno ? errno : EIO;
		sv_wb_note_error(vol, e); /* the next FLUSH reports it too */
		return sv_error(e, "volume %s: cannot sync for the freeze: %s", vol->name,
				strerror(e));
	}
	uint64_t t = sv_now_ns();
	if (sv_journal_checkpoint_keep(vol) == -1)
		return sv_error(sv_last_errno(), "volume %s: freeze: %s", vol->name,
				sv_last_error());
	*ckpt_ns += sv_now_ns() - t;
	return 0;
}

int
sv_freeze_begin(struct sv_pool *pool, const char *const *names, size_t n, uint64_t lease_ms,
		uint64_t max_ms, uint64_t *id)
{
	struct sv_freezer *fz = pool->freezer;
	char b1[32], b2[32];
	uint64_t t0 = sv_now_ns();
	if (n == 0)
		return sv_error(EINVAL, "no volume named to freeze");
	if (n > SV_FREEZE_MAX_VOLUMES)
		return sv_error(EINVAL, "at most %u volumes in one freeze", SV_FREEZE_MAX_VOLUMES);
	if (max_ms == 0) {
		SV_LOCK_SCOPE(&fz->lock);
		max_ms = fz->default_max_ms;
	}
	if (max_ms > SV_FREEZE_MAX_LIMIT_MS || max_ms < SV_FREEZE_LEASE_MIN_MS)
		return sv_error(EINVAL,
				"a freeze's maximum of %s is out of range: from 100 ms to 1 h (a "
				"freeze holds writes, so it must end by itself)",
				fmt_ms(max_ms, b1, sizeof b1));
	if (lease_ms < SV_FREEZE_LEASE_MIN_MS)
		return sv_error(EINVAL,
				"a lease of %s is too short: at least 100 ms (the holder renews it "
				"with heartbeats)",
				fmt_ms(lease_ms, b1, sizeof b1));
	if (lease_ms > max_ms)
		return sv_error(EINVAL,
				"a lease of %s is longer than the freeze's maximum of %s (at most "
				"1 h; serve --freeze-max sets the default)",
				fmt_ms(lease_ms, b1, sizeof b1), fmt_ms(max_ms, b2, sizeof b2));

	struct sv_freeze *f = calloc(1, sizeof *f);
	if (!f)
		return sv_error(ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (sv_check_name(names[i], "volume") == -1)
			goto fail_put;
		SV_LOCK_SCOPE(&pool->lock);
		if (sv_volume_get_locked(pool, names[i], &f->vols[i]) == -1)
			goto fail_put;
		f->n = i + 1;
		for (size_t k = 0; k < i; k++)
			if (f->vols[k] == f->vols[i]) {
				sv_error(EINVAL, "volume %s appears twice in one freeze", names[i]);
				goto fail_put;
			}
	}
	qsort(f->vols, n, sizeof f->vols[0], cmp_vol);

	/* Write back what is dirty now, while writes still flow: the sync
	 * inside the freeze (step 3) then has only the last moments' writes
	 * to do, and the hold is that much shorter. */
	for (size_t i = 0; i < n; i++)
		for (int pass = 0; pass < PRESYNC_PASSES; pass++) {
			/* Each pass has only what was written during the one
			 * before: stop once a pass is quick. */
			uint64_t t = sv_now_ns();
			if (f->vols[i]->ops->obj_sync(f->vols[i]->origin) == -1) {
				sv_error_errno("volume %s: cannot sync for the freeze",
					       f->vols[i]->name);
				goto fail_put;
			}
			if (sv_now_ns() - t < PRESYNC_QUICK_NS)
				break;
		}

	/* Steps 1 and 2 on every volume, then 3 and 4: the group is frozen
	 * at one instant, as a snapshot group is taken. */
	for (size_t i = 0; i < n; i++)
		sv_lock_or_abort(&f->vols[i]->admin_lock);
	uint64_t t_held = sv_now_ns();
	for (size_t i = 0; i < n; i++) {
		SV_LOCK_SCOPE(&f->vols[i]->cow_lock);
		sv_gate_close_locked(f->vols[i]);
		f->vols[i]->freezes++;
	}
	for (size_t i = 0; i < n; i++) {
		SV_LOCK_SCOPE(&f->vols[i]->cow_lock);
		sv_gate_drain_locked(f->vols[i]);
	}
	uint64_t t_drained = sv_now_ns(), ckpt_ns = 0;
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = make_clean(f->vols[i], &ckpt_ns);
	for (size_t i = n; i-- > 0;)
		sv_unlock_or_abort(&f->vols[i]->admin_lock);

	/* Once on the list, f may be ended and freed by anyone at any time:
	 * what the log line needs is taken now. */
	char vols[512];
	describe_volumes(f, vols, sizeof vols);
	if (rc == 0) {
		SV_LOCK_SCOPE(&fz->lock);
		if (fz->stopping) {
			rc = sv_error(ESHUTDOWN, "the pool is closing");
		} else if (!fz->reaper_started) {
			int e = pthread_create(&fz->reaper, NULL, reaper_main, pool);
			if (e)
				rc = sv_error(e, "cannot start the freeze reaper thread: %s",
					      strerror(e));
			else
				fz->reaper_started = true;
		}
		if (rc == 0) {
			uint64_t now = sv_now_ns();
			f->id = fz->next_id++;
			f->lease_ms = lease_ms;
			f->max_ms = max_ms;
			f->created_ms = realtime_ms();
			f->hard_ns = t_held + max_ms * NS_PER_MS; /* from when writes stopped */
			f->expires_ns = now + lease_ms * NS_PER_MS;
			if (f->expires_ns > f->hard_ns)
				f->expires_ns = f->hard_ns;
			struct sv_freeze **pp = &fz->list;
			while (*pp)
				pp = &(*pp)->next;
			*pp = f;
			pthread_cond_broadcast(&fz->cond);
			*id = f->id;
		}
	}
	if (rc == 0) {
		uint64_t now = sv_now_ns();
		sv_log_info("freeze %" PRIu64 " of %s: writes held (lease %s, maximum %s; set up "
			    "in %" PRIu64 " ms; clean %" PRIu64
			    " ms after writes stopped: drain %" PRIu64 " ms, sync %" PRIu64
			    " ms, checkpoint %" PRIu64 " ms)",
			    *id, vols, fmt_ms(lease_ms, b1, sizeof b1),
			    fmt_ms(max_ms, b2, sizeof b2), (now - t0) / NS_PER_MS,
			    (now - t_held) / NS_PER_MS, (t_drained - t_held) / NS_PER_MS,
			    (now - t_drained - ckpt_ns) / NS_PER_MS, ckpt_ns / NS_PER_MS);
		return 0;
	}
	int e = sv_last_errno();
	char msg[1024];
	snprintf(msg, sizeof msg, "%s", sv_last_error());
	release(pool, f); /* opens the gates again */
	return sv_error(e, "%s", msg);

fail_put:
	sv_lock_or_abort(&pool->lock);
	for (size_t i = 0; i < f->n; i++)
		sv_volume_put_locked(f->vols[i]);
	sv_unlock_or_abort(&pool->lock);
	free(f);
	return -1;
}

/* ---- lookups ---- */

static struct sv_freeze *
find_locked(struct sv_freezer *fz, uint64_t id)
{
	for (struct sv_freeze *f = fz->list; f; f = f->next)
		if (f->id == id)
			return f;
	return NULL;
}

/* ENOENT for a freeze that is not (or no longer) there, saying why. */
static int
gone_locked(struct sv_freezer *fz, uint64_t id)
{
	for (unsigned i = 0; i < N_ENDED; i++)
		if (fz->ended[i].id == id && id)
			return sv_error(ENOENT, "freeze %" PRIu64 " has ended (%s)", id,
					fz->ended[i].why);
	if (id > 0 && id < fz->next_id)
		return sv_error(ENOENT, "freeze %" PRIu64 " has ended", id);
	return sv_error(ENOENT, "there is no freeze %" PRIu64, id);
}

int
sv_freeze_set_holder(struct sv_pool *pool, uint64_t id, const char *holder)
{
	struct sv_freezer *fz = pool->freezer;
	SV_LOCK_SCOPE(&fz->lock);
	struct sv_freeze *f = find_locked(fz, id);
	if (!f)
		return gone_locked(fz, id);
	snprintf(f->holder, sizeof f->holder, "%s", holder ? holder : "");
	return 0;
}

int
sv_freeze_renew(struct sv_pool *pool, uint64_t id)
{
	struct sv_freezer *fz = pool->freezer;
	sv_lock_or_abort(&fz->lock);
	struct sv_freeze *f = find_locked(fz, id);
	if (!f) {
		int r = gone_locked(fz, id);
		sv_unlock_or_abort(&fz->lock);
		return r;
	}
	uint64_t now = sv_now_ns();
	if (now >= f->expires_ns) {
		/* Too late, even if the reaper has not got to it yet: a lapsed
		 * lease is not revived.  Wake the reaper to end it.  The reaper
		 * frees f as soon as the lock is free: what the message needs is
		 * read before. */
		const char *why = f->expires_ns >= f->hard_ns
				      ? "its maximum was reached"
				      : "its lease lapsed without a heartbeat";
		pthread_cond_broadcast(&fz->cond);
		sv_unlock_or_abort(&fz->lock);
		return sv_error(ENOENT, "freeze %" PRIu64 " has ended (%s)", id, why);
	}
	uint64_t e = now + f->lease_ms * NS_PER_MS;
	f->expires_ns = e < f->hard_ns ? e : f->hard_ns;
	sv_unlock_or_abort(&fz->lock);
	return 0;
}

int
sv_freeze_end(struct sv_pool *pool, uint64_t id)
{
	struct sv_freezer *fz = pool->freezer;
	sv_lock_or_abort(&fz->lock);
	struct sv_freeze *f = find_locked(fz, id);
	if (!f) {
		int r = gone_locked(fz, id);
		sv_unlock_or_abort(&fz->lock);
		return r;
	}
	unlink_locked(fz, f);
	note_ended_locked(fz, id, "thawed");
	pthread_cond_broadcast(&fz->cond);
	sv_unlock_or_abort(&fz->lock);
	char vols[512];
	describe_volumes(f, vols, sizeof vols);
	sv_log_info("freeze %" PRIu64 " of %s: thawed", id, vols);
	release(pool, f);
	return 0;
}

int
sv_freeze_thaw_volume(struct sv_pool *pool, const char *name, unsigned *ended)
{
	if (sv_check_name(name, "volume") == -1)
		return -1;
	struct sv_freezer *fz = pool->freezer;
	struct sv_freeze *found = NULL, *next;
	sv_lock_or_abort(&fz->lock);
	for (struct sv_freeze *f = fz->list; f; f = next) {
		next = f->next;
		bool has = false;
		for (size_t i = 0; i < f->n; i++)
			has |= !strcmp(f->vols[i]->name, name);
		if (!has)
			continue;
		unlink_locked(fz, f);
		note_ended_locked(fz, f->id, "thawed");
		f->next = found;
		found = f;
	}
	pthread_cond_broadcast(&fz->cond);
	sv_unlock_or_abort(&fz->lock);
	unsigned k = 0;
	for (struct sv_freeze *f = found; f; f = next) {
		next = f->next;
		sv_log_info("freeze %" PRIu64 ": thawed (thaw of volume %s)", f->id, name);
		release(pool, f);
		k++;
	}
	if (ended)
		*ended = k;
	if (k == 0)
		return sv_error(ENOENT, "volume %s is not frozen", name);
	return 0;
}

/* ---- listing ---- */

static void
info_locked(const struct sv_freeze *f, uint64_t now, struct sv_freeze_info *fi)
{
	memset(fi, 0, sizeof *fi);
	fi->id = f->id;
	fi->n_volumes = f->n;
	for (size_t i = 0; i < f->n; i++) {
		snprintf(fi->volumes[i], sizeof fi->volumes[i], "%s", f->vols[i]->name);
		SV_LOCK_SCOPE(&f->vols[i]->cow_lock);
		if (f->vols[i]->freezes > fi->holds)
			fi->holds = f->vols[i]->freezes;
	}
	fi->created_ms = f->created_ms;
	fi->lease_ms = f->lease_ms;
	fi->expires_in_ms = f->expires_ns > now ? (f->expires_ns - now) / NS_PER_MS : 0;
	fi->max_in_ms = f->hard_ns > now ? (f->hard_ns - now) / NS_PER_MS : 0;
	fi->ends_ms = realtime_ms() + fi->expires_in_ms;
	snprintf(fi->holder, sizeof fi->holder, "%s", f->holder);
}

int
sv_freeze_get(struct sv_pool *pool, uint64_t id, struct sv_freeze_info *info)
{
	struct sv_freezer *fz = pool->freezer;
	SV_LOCK_SCOPE(&fz->lock);
	struct sv_freeze *f = find_locked(fz, id);
	if (!f)
		return gone_locked(fz, id);
	info_locked(f, sv_now_ns(), info);
	return 0;
}

int
sv_freeze_list(struct sv_pool *pool, struct sv_freeze_info **infos, size_t *n)
{
	struct sv_freezer *fz = pool->freezer;
	SV_LOCK_SCOPE(&fz->lock);
	size_t k = 0;
	for (struct sv_freeze *f = fz->list; f; f = f->next)
		k++;
	*infos = calloc(k ? k : 1, sizeof **infos);
	if (!*infos)
		return sv_error(ENOMEM, "out of memory");
	uint64_t now = sv_now_ns();
	size_t i = 0;
	for (struct sv_freeze *f = fz->list; f; f = f->next)
		info_locked(f, now, &(*infos)[i++]);
	*n = k;
	return 0;
}
