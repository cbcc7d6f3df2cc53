/*
 * store-rados.c: the Ceph RADOS backend ("--pool rados:POOL"), through
 * librados, behind the same ops table as the local one (store.h): the
 * engine does not know which backend it runs on.
 *
 * Layout in the RADOS pool (docs/design-notes.md says why, and how it
 * compares with RBD's):
 *
 *   snapvol.pool                       pool header.  omap: "format" (1),
 *                                      "object_size" (stripe size, fixed when
 *                                      the first volume is made), "vol.NAME"
 *                                      for each volume (the volume index)
 *   snapvol.claim.NAME                 volume NAME's claim: the exclusive
 *                                      RADOS lock "snapvol.claim"; omap
 *                                      "holder" = "COOKIE ADDR" of its last
 *                                      holder (removed on a clean release)
 *   snapvol.vol.NAME                   volume header.  omap: "obj.OBJ" = the
 *                                      data object's size in bytes ("SIZE
 *                                      snap=ID" for a native pre-image),
 *                                      "meta.KEY" for each metadata blob,
 *                                      "pre_mode" = "native" or "copy"
 *                                      (none: copy; see native pre-images)
 *   snapvol.vol.NAME/meta/KEY          a metadata blob, the whole object,
 *                                      replaced with write_full (atomic)
 *   snapvol.vol.NAME/data/OBJ.%016x    stripe i of data object OBJ (origin,
 *                                      pre-images, journal): bytes
 *                                      [i*S, (i+1)*S) of it, S = object_size
 *                                      (default 4 MiB, as RBD's)
 *
 * Native pre-images (volumes made since session 10, unless
 * SNAPVOL_RADOS_PRE=copy): a pre-image object "pre-N" is a self-managed
 * RADOS snapshot of the origin's stripes, which the OSD clones on their
 * first change after it, instead of stripes the engine copies into; the
 * section "native pre-images" below says how.
 *
 * A stripe that does not exist is a hole and reads as zeros; a stripe is
 * as long as its last written byte, and what lies beyond reads as zeros
 * too.  So creating a volume is O(1) (two omap entries), and a punch is a
 * remove (a whole stripe), a truncate (its tail) or a zero (the middle),
 * each one atomic RADOS op.  obj_extent reports holes at stripe
 * granularity from existence and length (the C API has no sparse read):
 * a coarse map is still exact about what it calls a hole.
 *
 * Durability: a RADOS write completes only once every replica has it
 * committed, so obj_pwrite returns when its stripes are durable and
 * obj_sync has nothing left to wait for (it only reports a claim lost to
 * another holder);
 * SV_STORE_FUA costs nothing more.  Writes spanning stripes go out in
 * parallel (aio) and are waited for together.  obj_pread_async issues a
 * read's stripes the same way and returns; the last one's completion (in
 * librados's completion thread) calls the caller back.  obj_extent stats
 * its stripes together too, and skips those the object has seen at full
 * length (a bit per stripe: a full stripe only shrinks by a punch, made by
 * this process, which clears it).
 *
 * Claims, per volume (vol_claim/vol_release): several servers share a
 * pool, and each volume is written by one process at a time.  A claim is
 * an exclusive RADOS lock on snapvol.claim.NAME with a cookie naming this
 * process ("HOST:PID:DURATION:RANDOM") and a duration (30 s;
 * SNAPVOL_RADOS_CLAIM, e.g. "5s", for tests), renewed with MUST_RENEW by
 * one thread every third of it for every volume held.  lock() only names
 * the process and starts that thread.  Another process's vol_claim gets
 * EWOULDBLOCK and a message naming the holder.  A holder that dies stops
 * renewing, and the OSD drops its lock after the duration; the next taker
 * blocklists the previous holder's address (its "holder" record) so that
 * nothing it still had in flight can land.  Fencing: a write is only
 * issued while it is certain to finish before its volume's claim could
 * lapse (the last renewal's send time + duration - the op timeout), and
 * writes of a volume without a claim fail with EIO.  A claim that lapsed
 * (the cluster was away) is taken back if "holder" still names this
 * process (nobody held it meanwhile: the in-memory state is still true),
 * else it is lost for good and its volume's writes and flushes fail with
 * EIO.  The renewal thread logs these changes (it has no caller to tell).
 *
 * Errors: librados returns -errno; data-path calls map the cluster's
 * failures to EIO, and a full pool (ENOSPC, EDQUOT) to ENOSPC, which the NBD
 * layer passes on.  Timeouts (rados_osd_op_timeout, rados_mon_op_timeout,
 * client_mount_timeout) turn a dead cluster into EIO within seconds instead
 * of a hang.  Configuration: CEPH_CONF (or --ceph-conf) names ceph.conf,
 * CEPH_ARGS adds options, SNAPVOL_CEPH_ID (--ceph-id) the client id.
 * Messages for people go through error.h (sv_error); this file prints only
 * from the renewal thread (log.h), whose claim changes have no caller.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <rados/librados.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "store.h"
#include "util.h"

#define POOL_OID	 "snapvol.pool"
#define CLAIM_LOCK	 "snapvol.claim"
#define POOL_FORMAT	 "1"
#define DEFAULT_OBJSZ	 (4u << 20)
#define MAX_OBJSZ	 (64u << 20)
#define MIN_OBJSZ	 (4u << 10)
#define CLAIM_DEFAULT_MS 30000u
#define META_MAX	 (64u << 20)
#define BATCH		 64 /* aio ops in flight for removes and stats */
#define SPARES		 2  /* spare snap ids kept (take_snap_id) */

struct rados_store {
	struct sv_store_base base;
	char *spec; /* "rados:POOL", for messages */
	rados_t cluster;
	rados_ioctx_t io;
	uint64_t objsz;		/* stripe size; 0 until the pool header is made */
	uint64_t op_timeout_ms; /* what a RADOS op may take before it fails */
	pthread_mutex_t lock;	/* serializes index changes (volumes, objects) */

	/* Claims, one per volume this process writes (see the top). */
	bool claimed; /* lock() succeeded: claims are enforced (set once, before threads) */
	char cookie[160];
	uint64_t claim_ms;
	pthread_t renewer;
	/* Protects each claim's refs and held, stopping, and serializes every
	 * RADOS lock call (take, renew, release). */
	pthread_mutex_t claim_lock;
	/* Protects the claims list (inserts at its head; a claim's next never
	 * changes once it is in): looking a claim up, as every metadata write
	 * does, never waits for a RADOS call (after claim_lock, if both). */
	pthread_mutex_t list_lock;
	pthread_cond_t claim_cond;
	bool stopping;
	struct claim *claims; /* never freed before close: objects point at them */

	/* space_avail's cache: one cluster round trip a second at most, made
	 * by one caller while the others take the last answer. */
	pthread_mutex_t space_lock;
	uint64_t space_at, space_bytes;
	int space_err; /* the last refresh failed with this errno */
	bool space_busy;

	/* Native pre-images (the section "native pre-images" below).
	 * native_lock protects the modes cache and the wctxs list (and each
	 * wctx's refs); never held across a RADOS call. */
	pthread_mutex_t native_lock;
	/* Spare snap ids for the next native pre-images (see take_snap_id),
	 * under spare_lock: allocated in the background once ids are taken,
	 * so that a snapshot does not wait for the monitor at its instant. */
	pthread_mutex_t spare_lock;
	pthread_cond_t spare_cond;    /* refilling became false */
	uint64_t spare[SPARES];	      /* ascending */
	uint64_t spare_asked[SPARES]; /* sv_now_ns() when each was asked for */
	unsigned nspare;
	uint64_t hwm;		   /* the highest id handed out by this process */
	uint64_t takes;		   /* ids handed out for claimed volumes */
	rados_completion_t refill; /* the allocation in flight, or done; NULL: none yet */
	rados_completion_t done_c; /* the one before: released at the next */
	bool refilling;
	uint64_t refill_id, refill_asked;
	struct volmode *modes; /* each volume's pre-image mode, once known (per claim) */
	struct wctx *wctxs;    /* the write contexts of open native origins */
};

/* A volume's pre-image mode, read from its header once per claim: it is
 * fixed for the volume's life, but another node may delete the volume and
 * make it again under the same name. */
struct volmode {
	struct volmode *next;
	char vol[72];
	bool native;
};

/* The write context of one native volume's origin: an ioctx of its own
 * whose snap context names every native pre-image's snap id, so that the
 * OSD clones a stripe before an origin write changes it.  Shared by every
 * handle of the origin this process has open (refs), so that obj_preserve
 * through one covers writes through all.  librados sets an ioctx's snap
 * context without a lock (IoCtxImpl::set_snap_write_context assigns
 * snapc; every write op copies it unlocked when it is issued), so the
 * issue of each write on io holds lock shared and a change holds it
 * exclusive: a preserve waits for issues in progress, never for a round
 * trip. */
struct wctx {
	struct wctx *next;
	char vol[72];
	unsigned refs; /* open handles; rs->native_lock */
	rados_ioctx_t io;
	pthread_rwlock_t lock; /* snaps, n, and the issue of writes on io */
	uint64_t *snaps;       /* descending */
	size_t n;
	uint64_t seq; /* the context's sequence: the highest id it ever named */
};

/* One volume's claim: the exclusive RADOS lock "snapvol.claim" on the
 * object "snapvol.claim.VOL" (not the volume's header, which a remove
 * deletes).  Its omap "holder" = "COOKIE ADDR" of the process that took it
 * last, removed on a clean release: the next taker blocklists ADDR when it
 * is there and not its own, and a holder whose claim lapsed may take it
 * back only while "holder" is still its own (nobody held it in between). */
struct claim {
	struct claim *next;
	char vol[72];
	char oid[96];
	unsigned refs; /* vol_claim calls not yet released; claim_lock */
	bool held;     /* the RADOS lock is (or was, until it lapsed) ours; claim_lock */
	_Atomic uint64_t valid_until; /* sv_now_ns(): writes may start until then */
	atomic_bool fenced;	      /* lost to another holder: writes fail until reclaimed */
	_Atomic uint64_t taken_ns;    /* sv_now_ns() when this process took it (0: not held) */
	bool lapsed;		      /* a renewal found it gone or failed; claim_lock */
};

struct rados_obj {
	struct sv_obj_base base;
	struct rados_store *st;
	char *prefix; /* "snapvol.vol.NAME/data/OBJ." */
	uint64_t size;
	bool rdonly;
	struct claim *claim; /* its volume's, for fencing writes */
	/* Stripes known to be full length (a bit each; NULL if read-only):
	 * obj_extent needs no stat for them.  Set when a stat or a write
	 * shows it, cleared around a punch (the one op that shortens a
	 * stripe).  Only this process writes the object (its claim), and a
	 * stale bit only makes obj_extent call a hole data, which the
	 * contract allows. */
	_Atomic uint64_t *full;
	/* Where its ops go: rs->io, or the origin's write context (wc) for
	 * the origin of a native volume, or an ioctx of its own that reads
	 * the origin's stripes at snapid for a native pre-image. */
	rados_ioctx_t io;
	struct wctx *wc;
	bool native_pre;
	uint64_t snapid;
};

/* Issue write ops on ro's ioctx (shared lock of its write context). */
static void
issue_begin(struct rados_obj *ro)
{
	if (ro->wc && pthread_rwlock_rdlock(&ro->wc->lock) != 0)
		abort();
}

static void
issue_end(struct rados_obj *ro)
{
	if (ro->wc)
		pthread_rwlock_unlock(&ro->wc->lock);
}

static bool
stripe_full(const struct rados_obj *ro, uint64_t i)
{
	return ro->full && (atomic_load_explicit(&ro->full[i / 64], memory_order_relaxed) &
			    (UINT64_C(1) << (i % 64)));
}

static void
mark_full(struct rados_obj *ro, uint64_t i, bool full)
{
	if (!ro->full)
		return;
	uint64_t bit = UINT64_C(1) << (i % 64);
	if (full)
		atomic_fetch_or(&ro->full[i / 64], bit);
	else
		atomic_fetch_and(&ro->full[i / 64], ~bit);
}

/* ---- helpers ---- */

/* Data path: the cluster's failures become EIO, a full pool ENOSPC. */
static int
data_errno(int r)
{
	int e = r < 0 ? -r : r;
	switch (e) {
	case ENOSPC:
	case EDQUOT:
		return ENOSPC;
	case ENOMEM:
		return ENOMEM;
	default:
		return EIO;
	}
}

static int
fail_data(int r)
{
	errno = data_errno(r);
	return -1;
}

/* Control path: keep what the caller can act on (ENOENT, EEXIST...). */
static int
fail_ctl(int r)
{
	int e = r < 0 ? -r : r;
	if (e == ETIMEDOUT || e == ESHUTDOWN || e == ENOTCONN)
		e = EIO;
	if (e == EDQUOT)
		e = ENOSPC;
	errno = e;
	return -1;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *p;
	int n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n == -1) {
		errno = ENOMEM;
		return NULL;
	}
	return p;
}

static void
vol_oid(char *buf, size_t len, const char *vol)
{
	snprintf(buf, len, "snapvol.vol.%s", vol);
}

/* The claim record of vol, made (unheld) if there is none yet. */
static struct claim *
claim_of(struct rados_store *rs, const char *vol)
{
	SV_LOCK_SCOPE(&rs->list_lock);
	for (struct claim *c = rs->claims; c; c = c->next)
		if (!strcmp(c->vol, vol))
			return c;
	struct claim *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	snprintf(c->vol, sizeof c->vol, "%s", vol);
	snprintf(c->oid, sizeof c->oid, "snapvol.claim.%s", vol);
	c->next = rs->claims;
	rs->claims = c;
	return c;
}

/* Writes may start only under a live claim of their volume (or with no
 * claim enforced at all: a store opened for a test of the contract). */
static int
check_claim(struct rados_store *rs, struct claim *c)
{
	if (!rs->claimed)
		return 0;
	if (!c || atomic_load(&c->fenced) || sv_now_ns() >= atomic_load(&c->valid_until)) {
		errno = EIO;
		return -1;
	}
	return 0;
}

static int
check_vol_claim(struct rados_store *rs, const char *vol)
{
	if (!rs->claimed)
		return 0;
	return check_claim(rs, claim_of(rs, vol));
}

/* ---- omap ---- */

/* Value of key in oid's omap: 0, -ENOENT (no object or no key), or -errno. */
static int
omap_get(struct rados_store *rs, const char *oid, const char *key, char **val, size_t *vlen)
{
	rados_read_op_t op = rados_create_read_op();
	if (!op)
		return -ENOMEM;
	rados_omap_iter_t it = NULL;
	int prval = 0;
	size_t klen = strlen(key);
	rados_read_op_omap_get_vals_by_keys2(op, &key, 1, &klen, &it, &prval);
	int r = rados_read_op_operate(op, rs->io, oid, 0);
	if (r == 0)
		r = prval;
	if (r == 0) {
		char *k = NULL, *v = NULL;
		size_t kl = 0, vl = 0;
		r = rados_omap_get_next2(it, &k, &v, &kl, &vl);
		if (r == 0 && !k)
			r = -ENOENT;
		if (r == 0) {
			*val = malloc(vl + 1);
			if (!*val) {
				r = -ENOMEM;
			} else {
				if (vl) /* an empty value may come as NULL */
					memcpy(*val, v, vl);
				(*val)[vl] = '\0';
				if (vlen)
					*vlen = vl;
			}
		}
	}
	if (it)
		rados_omap_get_end(it);
	rados_release_read_op(op);
	return r;
}

/* Set (val != NULL) or remove one key; with must_exist, fail with -ENOENT
 * if oid does not exist rather than create it. */
static int
omap_put(struct rados_store *rs, const char *oid, const char *key, const char *val, bool must_exist)
{
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return -ENOMEM;
	if (must_exist)
		rados_write_op_assert_exists(op);
	size_t klen = strlen(key);
	if (val) {
		size_t vlen = strlen(val);
		rados_write_op_omap_set2(op, &key, &val, &klen, &vlen, 1);
	} else {
		rados_write_op_omap_rm_keys2(op, &key, &klen, 1);
	}
	int r = rados_write_op_operate(op, rs->io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

/* Keys of oid's omap that start with prefix, without it (and values, if
 * vals is not NULL).  -ENOENT if oid does not exist. */
static int
omap_list(struct rados_store *rs, const char *oid, const char *prefix, char ***keys, char ***vals,
	  size_t *n)
{
	char **kv = NULL, **vv = NULL;
	size_t cnt = 0, cap = 0;
	size_t pl = strlen(prefix);
	char *after = strdup(prefix);
	int r = after ? 0 : -ENOMEM;
	unsigned char more = 1;
	while (r == 0 && more) {
		rados_read_op_t op = rados_create_read_op();
		if (!op) {
			r = -ENOMEM;
			break;
		}
		rados_omap_iter_t it = NULL;
		int prval = 0;
		more = 0;
		rados_read_op_omap_get_vals2(op, after, prefix, 512, &it, &more, &prval);
		r = rados_read_op_operate(op, rs->io, oid, 0);
		if (r == 0)
			r = prval;
		while (r == 0) {
			char *k = NULL, *v = NULL;
			size_t kl = 0, vl = 0;
			if ((r = rados_omap_get_next2(it, &k, &v, &kl, &vl)) != 0 || !k)
				break;
			if (cnt == cap) {
				cap = cap ? 2 * cap : 16;
				char **nk = realloc(kv, cap * sizeof *kv);
				if (nk)
					kv = nk;
				char **nv = vals ? realloc(vv, cap * sizeof *vv) : NULL;
				if (nv)
					vv = nv;
				if (!nk || (vals && !nv)) {
					r = -ENOMEM;
					break;
				}
			}
			kv[cnt] = kl >= pl ? strndup(k + pl, kl - pl) : NULL;
			if (vals)
				vv[cnt] = strndup(vl ? v : "", vl);
			if (!kv[cnt] || (vals && !vv[cnt])) {
				free(kv[cnt]);
				if (vals)
					free(vv[cnt]);
				r = -ENOMEM;
				break;
			}
			cnt++;
			free(after);
			after = strndup(k, kl);
			if (!after) {
				r = -ENOMEM;
				break;
			}
		}
		if (it)
			rados_omap_get_end(it);
		rados_release_read_op(op);
	}
	free(after);
	if (r < 0) {
		for (size_t i = 0; i < cnt; i++) {
			free(kv[i]);
			if (vals)
				free(vv[i]);
		}
		free(kv);
		free(vv);
		return r;
	}
	*keys = kv;
	if (vals)
		*vals = vv;
	*n = cnt;
	return 0;
}

static void
free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* ---- parallel ops on many objects ---- */

/* Remove the stripes [0, nstripes) of prefix, BATCH at a time; missing ones
 * are fine.  Through wc (a native origin's write context: the OSD keeps
 * what its snapshots still read) if not NULL. */
static int
remove_stripes(struct rados_store *rs, struct wctx *wc, const char *prefix, uint64_t nstripes)
{
	rados_completion_t c[BATCH];
	int first = 0;
	rados_ioctx_t io = wc ? wc->io : rs->io;
	for (uint64_t base = 0; base < nstripes; base += BATCH) {
		unsigned k = 0;
		if (wc && pthread_rwlock_rdlock(&wc->lock) != 0)
			abort();
		for (uint64_t i = base; i < nstripes && k < BATCH; i++, k++) {
			char oid[320];
			snprintf(oid, sizeof oid, "%s%016" PRIx64, prefix, i);
			int r = rados_aio_create_completion2(NULL, NULL, &c[k]);
			if (r == 0 && (r = rados_aio_remove(io, oid, c[k])) < 0)
				rados_aio_release(c[k]);
			if (r < 0) {
				if (!first)
					first = r;
				break;
			}
		}
		if (wc)
			pthread_rwlock_unlock(&wc->lock);
		for (unsigned j = 0; j < k; j++) {
			rados_aio_wait_for_complete(c[j]);
			int r = rados_aio_get_return_value(c[j]);
			if (r < 0 && r != -ENOENT && !first)
				first = r;
			rados_aio_release(c[j]);
		}
		if (first)
			break;
	}
	return first;
}

static uint64_t
nstripes_of(const struct rados_store *rs, uint64_t size)
{
	return (size + rs->objsz - 1) / rs->objsz;
}

/* ---- pool ---- */

static uint64_t
env_duration_ms(const char *name, uint64_t dflt)
{
	const char *s = getenv(name);
	uint64_t ns;
	/* At least 3 s: an op's timeout (1 s at least) must fit in a third. */
	if (!s || !*s || sv_parse_duration(s, &ns) == -1 || ns < 3000000000ull)
		return dflt;
	return ns / 1000000u;
}

/* Read the pool header's object_size; make the header if create and it is
 * missing. */
static int
load_pool_header(struct rados_store *rs, bool create)
{
	char *v = NULL;
	int r = omap_get(rs, POOL_OID, "object_size", &v, NULL);
	if (r == 0) {
		char *end;
		unsigned long long sz = strtoull(v, &end, 10);
		bool junk = *end != '\0';
		free(v);
		if (junk || sz < MIN_OBJSZ || sz > MAX_OBJSZ || !sv_is_power_of_2(sz))
			return sv_error(EUCLEAN, "pool %s: bad object_size in %s", rs->spec,
					POOL_OID);
		rs->objsz = sz;
		return 0;
	}
	if (r != -ENOENT) {
		fail_ctl(r);
		return sv_error_errno("pool %s: cannot read %s", rs->spec, POOL_OID);
	}
	if (!create)
		return sv_error(ENOENT, "pool %s has no snapvol volumes (no %s object)", rs->spec,
				POOL_OID);
	uint64_t sz = DEFAULT_OBJSZ;
	const char *e = getenv("SNAPVOL_RADOS_OBJECT_SIZE");
	if (e && *e &&
	    (sv_parse_size(e, &sz) == -1 || sz < MIN_OBJSZ || sz > MAX_OBJSZ ||
	     !sv_is_power_of_2(sz)))
		return sv_error(EINVAL, "SNAPVOL_RADOS_OBJECT_SIZE: a power of 2 from 4K to 64M");
	char szs[32];
	snprintf(szs, sizeof szs, "%" PRIu64, sz);
	const char *keys[2] = {"format", "object_size"};
	const char *vals[2] = {POOL_FORMAT, szs};
	size_t kl[2] = {strlen(keys[0]), strlen(keys[1])};
	size_t vl[2] = {strlen(vals[0]), strlen(vals[1])};
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return sv_error(ENOMEM, "out of memory");
	/* Exclusive: two creators race to one header, the loser reads it. */
	rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
	rados_write_op_omap_set2(op, keys, vals, kl, vl, 2);
	r = rados_write_op_operate(op, rs->io, POOL_OID, NULL, 0);
	rados_release_write_op(op);
	if (r == -EEXIST)
		return load_pool_header(rs, false);
	if (r < 0) {
		fail_ctl(r);
		return sv_error_errno("pool %s: cannot write %s", rs->spec, POOL_OID);
	}
	rs->objsz = sz;
	return 0;
}

static int
rados_store_open(const char *location, bool create, struct sv_store **out)
{
	const char *pool = location;
	if (!strncmp(pool, "rados:", 6))
		pool += 6;
	if (!*pool)
		return sv_error(EINVAL, "pool %s: no RADOS pool name after 'rados:'", location);
	struct rados_store *rs = calloc(1, sizeof *rs);
	if (!rs || !(rs->spec = xasprintf("rados:%s", pool))) {
		free(rs);
		return sv_error(ENOMEM, "out of memory");
	}
	rs->base.ops = &sv_store_rados_ops;
	rs->claim_ms = env_duration_ms("SNAPVOL_RADOS_CLAIM", CLAIM_DEFAULT_MS);
	/* An op must be able to fail well inside a third of the claim. */
	rs->op_timeout_ms = rs->claim_ms / 4;
	if (rs->op_timeout_ms > 10000)
		rs->op_timeout_ms = 10000;
	if (rs->op_timeout_ms < 1000)
		rs->op_timeout_ms = 1000;
	rs->op_timeout_ms -= rs->op_timeout_ms % 1000; /* Ceph takes whole seconds */
	pthread_mutex_init(&rs->lock, NULL);
	pthread_mutex_init(&rs->claim_lock, NULL);
	pthread_mutex_init(&rs->list_lock, NULL);
	/* The renewer waits on CLOCK_MONOTONIC deadlines (a realtime default
	 * would make every wait end at once: a renewal loop without pause). */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rs->claim_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&rs->space_lock, NULL);
	pthread_mutex_init(&rs->native_lock, NULL);
	pthread_mutex_init(&rs->spare_lock, NULL);
	pthread_cond_init(&rs->spare_cond, NULL);

	const char *id = getenv("SNAPVOL_CEPH_ID");
	int r = rados_create(&rs->cluster, id && *id ? id : NULL);
	if (r < 0) {
		fail_ctl(r);
		sv_error_errno("pool %s: cannot create a RADOS client%s%s", rs->spec,
			       id ? " with id " : "", id ? id : "");
		goto fail_free;
	}
	/* NULL: $CEPH_CONF, else the usual places (/etc/ceph/ceph.conf...). */
	r = rados_conf_read_file(rs->cluster, NULL);
	if (r < 0) {
		const char *cf = getenv("CEPH_CONF");
		fail_ctl(r);
		sv_error_errno("pool %s: cannot read the Ceph configuration %s (set CEPH_CONF or "
			       "--ceph-conf)",
			       rs->spec, cf && *cf ? cf : "/etc/ceph/ceph.conf");
		goto fail_shutdown;
	}
	(void)rados_conf_parse_env(rs->cluster, NULL); /* CEPH_ARGS */
	char tmo[32];
	snprintf(tmo, sizeof tmo, "%" PRIu64, rs->op_timeout_ms / 1000);
	const char *conf[][2] = {
	    {"rados_osd_op_timeout", tmo},  {"rados_mon_op_timeout", tmo},
	    {"client_mount_timeout", "10"}, {"log_to_stderr", "false"},
	    {"err_to_stderr", "false"},
	};
	for (size_t i = 0; i < sizeof conf / sizeof conf[0]; i++) {
		if ((r = rados_conf_set(rs->cluster, conf[i][0], conf[i][1])) < 0) {
			fail_ctl(r);
			sv_error_errno("pool %s: cannot set Ceph option %s=%s", rs->spec,
				       conf[i][0], conf[i][1]);
			goto fail_shutdown;
		}
	}
	r = rados_connect(rs->cluster);
	if (r < 0) {
		fail_ctl(r);
		sv_error_errno("pool %s: cannot connect to the Ceph cluster", rs->spec);
		goto fail_shutdown;
	}
	r = rados_ioctx_create(rs->cluster, pool, &rs->io);
	if (r < 0) {
		if (r == -ENOENT)
			sv_error(ENOENT,
				 "pool %s: the cluster has no RADOS pool '%s' (snapvol does not "
				 "create RADOS pools: ceph osd pool create %s)",
				 rs->spec, pool, pool);
		else {
			fail_ctl(r);
			sv_error_errno("pool %s: cannot open the RADOS pool", rs->spec);
		}
		goto fail_shutdown;
	}
	if (load_pool_header(rs, create) == -1)
		goto fail_ioctx;
	*out = (struct sv_store *)rs;
	return 0;
fail_ioctx:
	rados_ioctx_destroy(rs->io);
fail_shutdown:
	rados_shutdown(rs->cluster);
fail_free:;
	int e = sv_last_errno();
	pthread_cond_destroy(&rs->spare_cond);
	pthread_mutex_destroy(&rs->spare_lock);
	pthread_mutex_destroy(&rs->native_lock);
	pthread_mutex_destroy(&rs->space_lock);
	pthread_cond_destroy(&rs->claim_cond);
	pthread_mutex_destroy(&rs->claim_lock);
	pthread_mutex_destroy(&rs->list_lock);
	pthread_mutex_destroy(&rs->lock);
	free(rs->spec);
	free(rs);
	errno = e;
	return -1;
}

static int release_claim(struct rados_store *rs, struct claim *c);
static void mode_cache_drop(struct rados_store *rs, const char *vol);
static void spare_drop(struct rados_store *rs, bool remove);
static void refill_locked(struct rados_store *rs);

static void
rados_store_close(struct sv_store *st)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (rs->claimed) {
		sv_lock_or_abort(&rs->claim_lock);
		rs->stopping = true;
		pthread_cond_signal(&rs->claim_cond);
		sv_unlock_or_abort(&rs->claim_lock);
		pthread_join(rs->renewer, NULL);
	}
	/* A spare snap id is removed unless the cluster stopped answering. */
	bool answering = true;
	for (struct claim *c = rs->claims; c; c = c->next)
		answering &= !c->lapsed;
	spare_drop(rs, answering);
	/* A clean release of what is still held: the next holder has nobody
	 * to blocklist. */
	for (struct claim *c = rs->claims, *next; c; c = next) {
		next = c->next;
		if (c->held && !c->lapsed && !atomic_load(&c->fenced))
			(void)release_claim(rs, c);
		free(c);
	}
	for (struct volmode *m = rs->modes, *next; m; m = next) {
		next = m->next;
		free(m);
	}
	/* Every handle is closed before the store: no write context is left. */
	rados_ioctx_destroy(rs->io);
	rados_shutdown(rs->cluster);
	pthread_cond_destroy(&rs->spare_cond);
	pthread_mutex_destroy(&rs->spare_lock);
	pthread_mutex_destroy(&rs->native_lock);
	pthread_mutex_destroy(&rs->space_lock);
	pthread_cond_destroy(&rs->claim_cond);
	pthread_mutex_destroy(&rs->claim_lock);
	pthread_mutex_destroy(&rs->list_lock);
	pthread_mutex_destroy(&rs->lock);
	free(rs->spec);
	free(rs);
}

/* ---- claims ---- */

static bool
lost_lock(int r)
{
	return r == -EBUSY || r == -EEXIST;
}

/* Take (flags 0) or renew (MUST_RENEW) c's RADOS lock; claim_lock held. */
static int
take_lock_locked(struct rados_store *rs, struct claim *c, uint8_t flags)
{
	struct timeval tv = {.tv_sec = (time_t)(rs->claim_ms / 1000),
			     .tv_usec = (suseconds_t)(rs->claim_ms % 1000) * 1000};
	uint64_t sent = sv_now_ns();
	int r = rados_lock_exclusive(rs->io, c->oid, CLAIM_LOCK, rs->cookie, "snapvol server claim",
				     &tv, flags);
	if (r == 0) {
		/* Whatever this write starts must end before the lock could lapse. */
		uint64_t margin = (rs->claim_ms - rs->op_timeout_ms) * 1000000ull;
		atomic_store(&c->valid_until, sent + margin);
	}
	return r;
}

/* Who holds a claim, for the refusal message.  False when nobody does any
 * more: the lock lapsed between the failed attempt and this lookup. */
static bool
describe_holder(struct rados_store *rs, const char *oid, char *buf, size_t len)
{
	char tag[64], clients[256], cookies[512], addrs[256];
	size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies, al = sizeof addrs;
	int excl = 0;
	ssize_t n = rados_list_lockers(rs->io, oid, CLAIM_LOCK, &excl, tag, &tl, clients, &cl,
				       cookies, &kl, addrs, &al);
	if (n <= 0) {
		snprintf(buf, len, "another snapvol process");
		return n < 0;
	}
	char host[128] = "?";
	long pid = 0;
	unsigned long dur = 0;
	/* cookie: HOST:PID:DURATION_MS:RANDOM */
	char *c1 = strchr(cookies, ':');
	if (c1) {
		snprintf(host, sizeof host, "%.*s", (int)(c1 - cookies), cookies);
		sscanf(c1 + 1, "%ld:%lu", &pid, &dur);
	}
	if (snprintf(buf, len,
		     "snapvol pid %ld on host %s (RADOS %s at %s); its claim lapses %lu s after "
		     "it stops renewing it",
		     pid, host, clients, addrs, dur ? (dur + 999) / 1000 : 30) >= (int)len)
		buf[len - 1] = '\0'; /* cut short: still names the holder */
	return true;
}

/* Our own address, as the lockers list of oid shows it. */
static int
own_addr(struct rados_store *rs, const char *oid, char *buf, size_t len)
{
	char tag[64], clients[1024], cookies[2048], addrs[1024];
	size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies, al = sizeof addrs;
	int excl = 0;
	ssize_t n = rados_list_lockers(rs->io, oid, CLAIM_LOCK, &excl, tag, &tl, clients, &cl,
				       cookies, &kl, addrs, &al);
	const char *c = cookies, *a = addrs;
	for (ssize_t i = 0; i < n; i++) {
		if (!strcmp(c, rs->cookie)) {
			snprintf(buf, len, "%s", a);
			return 0;
		}
		c += strlen(c) + 1;
		a += strlen(a) + 1;
	}
	return -1;
}

/* "holder" of c: 1 if it is this process's, 0 if someone else's (its
 * address in addr) or none (addr ""), -errno if it cannot be read. */
static int
holder_is_us(struct rados_store *rs, struct claim *c, char *addr, size_t len)
{
	char *h = NULL;
	addr[0] = '\0';
	int r = omap_get(rs, c->oid, "holder", &h, NULL);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	char *sp = strchr(h, ' ');
	size_t cl = sp ? (size_t)(sp - h) : strlen(h);
	bool us = cl == strlen(rs->cookie) && !memcmp(h, rs->cookie, cl);
	if (!us && sp)
		snprintf(addr, len, "%s", sp + 1);
	free(h);
	return us ? 1 : 0;
}

/* The lock of c was just taken: fence the previous holder if it did not
 * let go cleanly (nothing it still has in flight may land now), then
 * record ourselves.  0 or -errno (the lock is given back then). */
static int
fence_and_record_locked(struct rados_store *rs, struct claim *c)
{
	char prev[256], mine[256] = "";
	own_addr(rs, c->oid, mine, sizeof mine);
	int r = holder_is_us(rs, c, prev, sizeof prev);
	if (r == 0 && *prev && strcmp(prev, mine) != 0)
		(void)rados_blocklist_add(rs->cluster, prev, (uint32_t)(rs->claim_ms / 1000) * 4);
	if (r >= 0) {
		char rec[512];
		snprintf(rec, sizeof rec, "%s %s", rs->cookie, mine);
		r = omap_put(rs, c->oid, "holder", rec, false);
	}
	if (r < 0)
		(void)rados_unlock(rs->io, c->oid, CLAIM_LOCK, rs->cookie);
	return r;
}

/* 0, or a negative errno if the record could not be removed (then the
 * lock is left to lapse too: the cluster did not answer). */
static int
release_claim(struct rados_store *rs, struct claim *c)
{
	/* The record first: a crash between the two leaves a lock that lapses
	 * and nobody to blocklist, which is right (nothing is in flight). */
	int r = omap_put(rs, c->oid, "holder", NULL, true);
	if (r == 0 || r == -ENOENT)
		(void)rados_unlock(rs->io, c->oid, CLAIM_LOCK, rs->cookie);
	c->held = false;
	atomic_store(&c->valid_until, 0); /* no more writes under it */
	return r == -ENOENT ? 0 : r;
}

static int
rados_vol_claim(struct sv_store *st, const char *vol)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (!rs->claimed)
		return 0; /* nothing enforced (a test of the contract) */
	SV_LOCK_SCOPE(&rs->claim_lock);
	struct claim *c = claim_of(rs, vol);
	if (!c)
		return sv_error(ENOMEM, "out of memory");
	if (c->refs && atomic_load(&c->fenced))
		return sv_error(EIO,
				"volume %s: its claim was lost to another node while it was "
				"open here; it is served again once every connection to it is "
				"closed and the server restarted",
				vol);
	if (c->refs && c->held) {
		c->refs++;
		return 0;
	}
	int r;
	char who[600];
	/* A holder whose claim lapses between our attempt and the lookup of
	 * its name leaves no one to name: try again rather than refuse. */
	for (int tries = 0;; tries++) {
		r = take_lock_locked(rs, c, 0);
		if (r == -EEXIST) /* still ours (a release that did not reach the cluster) */
			r = take_lock_locked(rs, c, LIBRADOS_LOCK_FLAG_MUST_RENEW);
		if (!lost_lock(r))
			break;
		if (describe_holder(rs, c->oid, who, sizeof who) || tries == 2)
			return sv_error(EWOULDBLOCK, "volume %s is claimed by %s", vol, who);
	}
	if (r == 0)
		r = fence_and_record_locked(rs, c);
	if (r < 0) {
		fail_ctl(r);
		return sv_error_errno("volume %s: cannot take its claim in pool %s", vol, rs->spec);
	}
	c->held = true;
	c->lapsed = false;
	atomic_store(&c->fenced, false);
	atomic_store(&c->taken_ns, sv_now_ns());
	c->refs = 1;
	/* Another node may have deleted the volume and made it again in the
	 * other mode while it was not ours: read its mode afresh. */
	mode_cache_drop(rs, vol);
	return 0;
}

static void
rados_vol_release(struct sv_store *st, const char *vol)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (!rs->claimed)
		return;
	SV_LOCK_SCOPE(&rs->claim_lock);
	struct claim *c = claim_of(rs, vol);
	if (!c || !c->refs || --c->refs)
		return;
	/* A claim the cluster does not answer for (its last renewal failed,
	 * or the first call here does) is left to lapse by itself, as a crash
	 * leaves it: each call would wait an op timeout (a server stopping
	 * during an outage took 35 s), and the next holder blocklists this
	 * process's address, which is harmless once it is gone. */
	if (c->held && !atomic_load(&c->fenced)) {
		char key[96], *v = NULL;
		snprintf(key, sizeof key, "vol.%s", vol);
		int r = c->lapsed ? -ETIMEDOUT : omap_get(rs, POOL_OID, key, &v, NULL);
		free(v);
		if (r == -ENOENT) {
			/* The volume is gone: so is its claim object. */
			(void)rados_remove(rs->io, c->oid);
		} else if (r < 0 || (r = release_claim(rs, c)) < 0) {
			sv_log_warn("volume %s: its claim is left to lapse (%s): another node can "
				    "take it in %" PRIu64 " s",
				    vol, strerror(-r), rs->claim_ms / 1000);
		}
	}
	c->held = false;
	atomic_store(&c->valid_until, 0);
}

/* Renew c (claim_lock held); after a lapse, take it back only if nobody
 * held it in between.  Logs what changes. */
static void
renew_locked(struct rados_store *rs, struct claim *c)
{
	int r = take_lock_locked(rs, c, LIBRADOS_LOCK_FLAG_MUST_RENEW);
	if (r == -ENOENT) {
		/* It lapsed (the cluster was away longer than the claim, or this
		 * process stalled): ours again if still recorded as ours. */
		r = take_lock_locked(rs, c, 0);
		if (r == 0) {
			char other[256];
			int us = holder_is_us(rs, c, other, sizeof other);
			if (us == 1) {
				sv_log_warn("volume %s: claim lapsed, taken back (nobody held it "
					    "meanwhile): writes go on",
					    c->vol);
				c->lapsed = false;
				return;
			}
			/* Someone else held it (lost), or unknown: let go. */
			(void)rados_unlock(rs->io, c->oid, CLAIM_LOCK, rs->cookie);
			r = us == 0 ? -EBUSY : us;
		}
	}
	if (r == 0) {
		if (c->lapsed)
			sv_log_warn("volume %s: claim renewed again: writes go on", c->vol);
		c->lapsed = false;
	} else if (lost_lock(r) || r == -ESHUTDOWN) {
		atomic_store(&c->fenced, true);
		c->held = false;
		sv_log_error("volume %s: claim lost (%s): its writes fail with EIO until it is "
			     "closed here and opened again",
			     c->vol,
			     r == -ESHUTDOWN ? "this node was blocklisted by another"
					     : "another node holds it");
	} else if (!c->lapsed) {
		c->lapsed = true;
		sv_log_warn("volume %s: cannot renew its claim (%s); writes fail with EIO once "
			    "it runs out, until the cluster answers again",
			    c->vol, strerror(-r));
	}
}

static void *
renew_thread(void *arg)
{
	struct rados_store *rs = arg;
	uint64_t period_ms = rs->claim_ms / 3;
	uint64_t wait_ms = period_ms;
	sv_lock_or_abort(&rs->claim_lock);
	while (!rs->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (time_t)(wait_ms / 1000);
		ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&rs->claim_cond, &rs->claim_lock, &ts);
		if (rs->stopping)
			break;
		bool trouble = false;
		sv_lock_or_abort(&rs->list_lock);
		struct claim *head = rs->claims;
		sv_unlock_or_abort(&rs->list_lock);
		for (struct claim *c = head; c && !rs->stopping; c = c->next) {
			if (!c->refs || !c->held || atomic_load(&c->fenced))
				continue;
			renew_locked(rs, c);
			trouble |= c->lapsed;
			/* Let an open or a release in between: during an outage
			 * each renewal takes an op timeout, a round one per
			 * claim. */
			sv_unlock_or_abort(&rs->claim_lock);
			sched_yield();
			sv_lock_or_abort(&rs->claim_lock);
		}
		/* A failure to reach the cluster: retry soon; valid_until runs
		 * out by itself if it lasts. */
		wait_ms = trouble && period_ms > 1000 ? 1000 : period_ms;
	}
	sv_unlock_or_abort(&rs->claim_lock);
	return NULL;
}

/* Claims are per volume (vol_claim); lock() only names this process and
 * starts the renewals.  Several servers share one pool. */
static int
rados_store_lock(struct sv_store *st)
{
	struct rados_store *rs = (struct rados_store *)st;
	char host[64] = "unknown";
	gethostname(host, sizeof host - 1);
	for (char *p = host; *p; p++)
		if (*p == ':' || *p == ' ')
			*p = '_';
	unsigned rnd = (unsigned)(sv_now_ns() ^ (uint64_t)getpid() * 2654435761u);
	snprintf(rs->cookie, sizeof rs->cookie, "%s:%ld:%" PRIu64 ":%08x", host, (long)getpid(),
		 rs->claim_ms, rnd);
	rs->claimed = true;
	if (pthread_create(&rs->renewer, NULL, renew_thread, rs) != 0) {
		rs->claimed = false;
		return sv_error(EAGAIN, "pool %s: cannot start the claims' renewal thread",
				rs->spec);
	}
	return 0;
}

/* One mon command's JSON answer (the monitor answers these without a
 * manager); NULL if it fails. */
static json_t *
mon_json(struct rados_store *rs, const char *cmd)
{
	const char *cmds[1] = {cmd};
	char *out = NULL, *sts = NULL;
	size_t outlen = 0, stslen = 0;
	json_t *j = NULL;
	if (rados_mon_command(rs->cluster, cmds, 1, "", 0, &out, &outlen, &sts, &stslen) == 0 &&
	    out)
		j = json_loadb(out, outlen, 0, NULL);
	rados_buffer_free(out);
	rados_buffer_free(sts);
	return j;
}

static bool
json_array_has(json_t *arr, const char *a, const char *b)
{
	size_t i;
	json_t *v;
	json_array_foreach(arr, i, v)
	{
		const char *s = json_string_value(v);
		if (s && (!strcmp(s, a) || (b && !strcmp(s, b))))
			return true;
	}
	return false;
}

/* Free space for new data: the cluster's, divided among the pool's
 * replicas, and under the pool's byte quota (all from the OSD map).  A cluster without a manager
 * reports no byte counts; then the OSD map's full and nearfull states (the
 * monitor's own) are all there is: room unless an OSD is nearfull or the
 * pool full.  Asked by rados_space_avail, below. */
static int
rados_space_query(struct rados_store *rs, uint64_t *bytes)
{
	struct rados_cluster_stat_t cs;
	int r = rados_cluster_stat(rs->cluster, &cs);
	if (r < 0)
		return fail_ctl(r);
	uint64_t avail = cs.kb ? cs.kb_avail * 1024 : UINT64_MAX;
	json_t *d = mon_json(rs, "{\"prefix\": \"osd dump\", \"format\": \"json\"}");
	if (!d) {
		errno = EIO;
		return -1;
	}
	size_t i;
	json_t *v;
	json_int_t qmax = 0; /* the pool's byte quota, 0 for none */
	json_array_foreach(json_object_get(d, "osds"), i, v)
	{
		if (json_array_has(json_object_get(v, "state"), "nearfull", "full"))
			avail = 0;
	}
	json_array_foreach(json_object_get(d, "pools"), i, v)
	{
		const char *name = json_string_value(json_object_get(v, "pool_name"));
		if (!name || strcmp(name, rs->spec + 6) != 0)
			continue;
		json_int_t size = json_integer_value(json_object_get(v, "size"));
		if (size > 1 && avail != UINT64_MAX)
			avail /= (uint64_t)size;
		if (json_array_has(json_object_get(v, "flags_names"), "full", "full_quota"))
			avail = 0;
		qmax = json_integer_value(json_object_get(v, "quota_max_bytes"));
	}
	json_decref(d);
	/* What the pool holds: from the manager's statistics (0 without). */
	struct rados_pool_stat_t ps;
	if (qmax > 0 && rados_ioctx_pool_stat(rs->io, &ps) == 0) {
		uint64_t left = (uint64_t)qmax > ps.num_bytes ? (uint64_t)qmax - ps.num_bytes : 0;
		if (left < avail)
			avail = left;
	}
	*bytes = avail;
	return 0;
}

/* Write-behind asks this before every first write it takes (writebehind.c,
 * room_for), so the answer is cached for a second, and a refresh (a statfs
 * and an OSD map dump from the monitor, round trips that take the op
 * timeout when the monitor does not answer) is made by one caller while
 * the others take the last answer, figure or failure, instead of waiting
 * for it: before, every first write queued behind the refresh, and each
 * made its own after a failed one. */
static int
rados_space_avail(struct sv_store *st, uint64_t *bytes)
{
	struct rados_store *rs = (struct rados_store *)st;
	sv_lock_or_abort(&rs->space_lock);
	uint64_t now = sv_now_ns();
	if (rs->space_at && (now - rs->space_at < 1000000000ull || rs->space_busy)) {
		int e = rs->space_err;
		*bytes = rs->space_bytes;
		sv_unlock_or_abort(&rs->space_lock);
		errno = e;
		return e ? -1 : 0;
	}
	rs->space_busy = true;
	sv_unlock_or_abort(&rs->space_lock);
	uint64_t avail;
	int r = rados_space_query(rs, &avail);
	int e = errno;
	sv_lock_or_abort(&rs->space_lock);
	rs->space_busy = false;
	rs->space_at = now;
	rs->space_err = r == 0 ? 0 : e ? e : EIO;
	if (r == 0)
		*bytes = rs->space_bytes = avail;
	sv_unlock_or_abort(&rs->space_lock);
	errno = e;
	return r;
}

static const char *
rados_store_describe(struct sv_store *st)
{
	return ((struct rados_store *)st)->spec;
}

/* ---- native pre-images ----
 *
 * A volume made while SNAPVOL_RADOS_PRE is unset or "native" keeps its
 * pre-images as self-managed RADOS snapshots of its origin's stripes: its
 * header's omap says "pre_mode" = "native" ("copy" with
 * SNAPVOL_RADOS_PRE=copy; volumes made before it have no key and copy).
 * A native pre-image object "pre-N" is a snap id, allocated by the
 * monitor when the object is made and kept in its index entry
 * ("obj.pre-N" = "SIZE snap=ID") before obj_open returns; it has no
 * stripes of its own and reads the origin's stripes as of that snap
 * through an ioctx of its own (rados_ioctx_snap_set_read).  The origin
 * writes through its write context (struct wctx), whose snap context
 * names the snap ids obj_preserve added, and on open every snap id its
 * volume's index holds: the OSD then clones a stripe, inside the
 * cluster, before the first write, zero, truncate or remove that changes
 * it after the snap.  Everything else (blobs, the journal, other objects)
 * goes through rs->io, with no snap context, and is never cloned.
 * Removing pre-N drops its id from the open origin's context, removes the
 * snap (the OSD trims its clones in the background), then the index
 * entry; a crash in between leaves an entry whose snap is gone (it reads
 * as zeros: the OSD answers ENOENT at a removed snap; removing it again
 * finishes), and a crash in obj_open between the snap and the entry a
 * snap id nothing names, which no write context ever held, so it has no
 * clones.  The context's sequence never goes back (as RBD's snap_seq).
 */

static bool
is_pre_name(const char *obj)
{
	if (strncmp(obj, "pre-", 4) != 0 || !obj[4])
		return false;
	for (const char *p = obj + 4; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/* An index entry "SIZE" or "SIZE snap=ID": false if it is neither. */
static bool
parse_obj_entry(const char *v, uint64_t *size, uint64_t *snap)
{
	char *end;
	errno = 0;
	*size = strtoull(v, &end, 10);
	*snap = 0;
	if (end == v || errno)
		return false;
	if (*end == '\0')
		return true;
	if (strncmp(end, " snap=", 6) != 0)
		return false;
	const char *s = end + 6;
	*snap = strtoull(s, &end, 10);
	return end != s && *end == '\0' && *snap != 0 && !errno;
}

/* The mode new volumes get: SNAPVOL_RADOS_PRE, "native" (default) or "copy". */
static int
new_vol_mode(bool *native)
{
	const char *e = getenv("SNAPVOL_RADOS_PRE");
	*native = true;
	if (!e || !*e || !strcmp(e, "native"))
		return 0;
	if (!strcmp(e, "copy")) {
		*native = false;
		return 0;
	}
	return sv_error(EINVAL, "SNAPVOL_RADOS_PRE=%s: native or copy", e);
}

static void
mode_cache_set(struct rados_store *rs, const char *vol, bool native)
{
	SV_LOCK_SCOPE(&rs->native_lock);
	for (struct volmode *m = rs->modes; m; m = m->next)
		if (!strcmp(m->vol, vol)) {
			m->native = native;
			return;
		}
	struct volmode *m = calloc(1, sizeof *m);
	if (!m)
		return; /* asked again next time */
	snprintf(m->vol, sizeof m->vol, "%s", vol);
	m->native = native;
	m->next = rs->modes;
	rs->modes = m;
}

static void
mode_cache_drop(struct rados_store *rs, const char *vol)
{
	SV_LOCK_SCOPE(&rs->native_lock);
	for (struct volmode **pm = &rs->modes; *pm; pm = &(*pm)->next)
		if (!strcmp((*pm)->vol, vol)) {
			struct volmode *m = *pm;
			*pm = m->next;
			free(m);
			return;
		}
}

/* Is vol native?  0, or -1 with errno if its header cannot be read; a
 * volume with no header (none, or not made yet) is not, and not cached. */
static int
vol_mode(struct rados_store *rs, const char *vol, bool *native)
{
	{
		SV_LOCK_SCOPE(&rs->native_lock);
		for (struct volmode *m = rs->modes; m; m = m->next)
			if (!strcmp(m->vol, vol)) {
				*native = m->native;
				return 0;
			}
	}
	char hdr[128], *v = NULL;
	size_t vl = 0;
	vol_oid(hdr, sizeof hdr, vol);
	int r = omap_get(rs, hdr, "pre_mode", &v, &vl);
	*native = r == 0 && vl == 6 && !memcmp(v, "native", 6);
	free(v);
	/* No header, or a volume older than the key (copy): nothing to cache
	 * (omap_get does not tell them apart; asked again at the next open). */
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return fail_ctl(r);
	mode_cache_set(rs, vol, *native);
	return 0;
}

static bool
rados_vol_native_pre(struct sv_store *st, const char *vol)
{
	bool native;
	/* Unreadable: the engine then copies, and a native pre-image refuses
	 * its writes (ENOTSUP), so nothing is lost silently. */
	return vol_mode((struct rados_store *)st, vol, &native) == 0 && native;
}

/* Make the snap context of wc's ioctx say what wc->snaps holds; lock
 * held exclusive (or wc not shared yet). */
static int
wctx_apply_locked(struct wctx *wc)
{
	rados_snap_t seq = wc->n ? wc->snaps[0] : 0;
	/* The sequence never goes back (as RBD's snap_seq): after the newest
	 * snap is removed, an object written since keeps its clones right. */
	if (seq < wc->seq)
		seq = wc->seq;
	wc->seq = seq;
	return rados_ioctx_selfmanaged_snap_set_write_ctx(wc->io, seq, (rados_snap_t *)wc->snaps,
							  (int)wc->n);
}

/* Add (add) or drop snap in wc's descending list; lock held exclusive. */
static int
wctx_change_locked(struct wctx *wc, uint64_t snap, bool add)
{
	size_t i = 0;
	while (i < wc->n && wc->snaps[i] > snap)
		i++;
	bool have = i < wc->n && wc->snaps[i] == snap;
	if (add && !have) {
		uint64_t *ns = realloc(wc->snaps, (wc->n + 1) * sizeof *ns);
		if (!ns)
			return -ENOMEM;
		wc->snaps = ns;
		memmove(ns + i + 1, ns + i, (wc->n - i) * sizeof *ns);
		ns[i] = snap;
		wc->n++;
	} else if (!add && have) {
		memmove(wc->snaps + i, wc->snaps + i + 1, (wc->n - i - 1) * sizeof *wc->snaps);
		wc->n--;
	}
	return wctx_apply_locked(wc);
}

static void
wctx_free(struct wctx *wc)
{
	rados_ioctx_destroy(wc->io);
	pthread_rwlock_destroy(&wc->lock);
	free(wc->snaps);
	free(wc);
}

/* vol's write context, made (an ioctx preserving into every native
 * pre-image its index names) if no handle has it yet; rs->lock held, so
 * the index does not change meanwhile.  0 or -errno. */
static int
wctx_get_locked(struct rados_store *rs, const char *vol, struct wctx **out)
{
	{
		SV_LOCK_SCOPE(&rs->native_lock);
		for (struct wctx *wc = rs->wctxs; wc; wc = wc->next)
			if (!strcmp(wc->vol, vol)) {
				wc->refs++;
				*out = wc;
				return 0;
			}
	}
	struct wctx *wc = calloc(1, sizeof *wc);
	if (!wc)
		return -ENOMEM;
	snprintf(wc->vol, sizeof wc->vol, "%s", vol);
	wc->refs = 1;
	/* Writers first: a preserve must not wait behind a stream of issues. */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&wc->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	int r = rados_ioctx_create(rs->cluster, rs->spec + 6, &wc->io);
	if (r < 0) {
		pthread_rwlock_destroy(&wc->lock);
		free(wc);
		return r;
	}
	char hdr[128], **keys = NULL, **vals = NULL;
	size_t n = 0;
	vol_oid(hdr, sizeof hdr, vol);
	r = omap_list(rs, hdr, "obj.pre-", &keys, &vals, &n);
	if (r == -ENOENT)
		r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		uint64_t size, snap;
		if (parse_obj_entry(vals[i], &size, &snap) && snap)
			r = wctx_change_locked(wc, snap, true);
	}
	if (r == 0)
		r = wctx_apply_locked(wc);
	if (keys) {
		free_names(keys, n);
		free_names(vals, n);
	}
	if (r < 0) {
		wctx_free(wc);
		return r;
	}
	SV_LOCK_SCOPE(&rs->native_lock);
	wc->next = rs->wctxs;
	rs->wctxs = wc;
	*out = wc;
	return 0;
}

static void
wctx_put(struct rados_store *rs, struct wctx *wc)
{
	sv_lock_or_abort(&rs->native_lock);
	if (--wc->refs) {
		sv_unlock_or_abort(&rs->native_lock);
		return;
	}
	for (struct wctx **p = &rs->wctxs; *p; p = &(*p)->next)
		if (*p == wc) {
			*p = wc->next;
			break;
		}
	sv_unlock_or_abort(&rs->native_lock);
	wctx_free(wc);
}

/* Stop preserving into snap in vol's open write context, if any. */
static void
wctx_forget(struct rados_store *rs, const char *vol, uint64_t snap)
{
	struct wctx *wc = NULL;
	sv_lock_or_abort(&rs->native_lock);
	for (struct wctx *w = rs->wctxs; w; w = w->next)
		if (!strcmp(w->vol, vol)) {
			wc = w;
			wc->refs++;
			break;
		}
	sv_unlock_or_abort(&rs->native_lock);
	if (!wc)
		return;
	if (pthread_rwlock_wrlock(&wc->lock) != 0)
		abort();
	(void)wctx_change_locked(wc, snap, false); /* dropping never allocates */
	pthread_rwlock_unlock(&wc->lock);
	wctx_put(rs, wc);
}

static int
rados_obj_preserve(struct sv_obj *origin, struct sv_obj *pre)
{
	struct rados_obj *o = (struct rados_obj *)origin, *p = (struct rados_obj *)pre;
	if (sv_obj_ops_of(pre) != &sv_store_rados_ops || !o->wc || !p->native_pre) {
		errno = EINVAL;
		return -1;
	}
	if (pthread_rwlock_wrlock(&o->wc->lock) != 0)
		abort();
	int r = wctx_change_locked(o->wc, p->snapid, true);
	pthread_rwlock_unlock(&o->wc->lock);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return 0;
}

/* ---- volumes ---- */

static int
rados_vol_list(struct sv_store *st, char ***names, size_t *n)
{
	struct rados_store *rs = (struct rados_store *)st;
	int r = omap_list(rs, POOL_OID, "vol.", names, NULL, n);
	if (r == -ENOENT) { /* no header yet: no volumes */
		*names = NULL;
		*n = 0;
		return 0;
	}
	return r < 0 ? fail_ctl(r) : 0;
}

/* The pool index's key of vol ("vol.NAME", 96 bytes) and its header
 * object's name (128 bytes), and whether the index lists it. */
static int
vol_lookup_locked(struct rados_store *rs, const char *vol, char *key, char *hdr, bool *indexed)
{
	snprintf(key, 96, "vol.%s", vol);
	vol_oid(hdr, 128, vol);
	char *v = NULL;
	int r = omap_get(rs, POOL_OID, key, &v, NULL);
	free(v);
	if (r < 0 && r != -ENOENT)
		return fail_ctl(r);
	*indexed = r == 0;
	return 0;
}

static int
rados_vol_create(struct sv_store *st, const char *vol)
{
	struct rados_store *rs = (struct rados_store *)st;
	char key[96], hdr[128];
	bool indexed;
	if (check_vol_claim(rs, vol) == -1)
		return -1;
	SV_LOCK_SCOPE(&rs->lock);
	if (vol_lookup_locked(rs, vol, key, hdr, &indexed) == -1)
		return -1;
	if (indexed) {
		errno = EEXIST;
		return -1;
	}
	bool native;
	if (new_vol_mode(&native) == -1)
		return -1;
	/* The header (with its pre-image mode, fixed for the volume's life)
	 * first, then the index entry: the entry is the commit. */
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return fail_ctl(-ENOMEM);
	rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
	const char *mk = "pre_mode", *mv = native ? "native" : "copy";
	size_t mkl = strlen(mk), mvl = strlen(mv);
	rados_write_op_omap_set2(op, &mk, &mv, &mkl, &mvl, 1);
	int r = rados_write_op_operate(op, rs->io, hdr, NULL, 0);
	rados_release_write_op(op);
	if (r == 0)
		r = omap_put(rs, POOL_OID, key, "", true);
	if (r < 0)
		return fail_ctl(r);
	mode_cache_set(rs, vol, native);
	return 0;
}

static int
rados_vol_remove(struct sv_store *st, const char *vol)
{
	struct rados_store *rs = (struct rados_store *)st;
	char key[96], hdr[128];
	bool indexed;
	if (check_vol_claim(rs, vol) == -1)
		return -1;
	SV_LOCK_SCOPE(&rs->lock);
	if (vol_lookup_locked(rs, vol, key, hdr, &indexed) == -1)
		return -1;
	char **names, **vals;
	size_t n;
	int r = omap_list(rs, hdr, "obj.", &names, &vals, &n);
	if (r == -ENOENT && !indexed) {
		errno = ENOENT;
		return -1;
	}
	if (r == 0) {
		/* Native pre-images' snaps first (the OSD trims their clones),
		 * then every object's stripes (a native pre-image has none). */
		for (size_t i = 0; i < n && r == 0; i++) {
			uint64_t size, snap;
			if (parse_obj_entry(vals[i], &size, &snap) && snap &&
			    (r = rados_ioctx_selfmanaged_snap_remove(rs->io, snap)) == -ENOENT)
				r = 0;
		}
		for (size_t i = 0; i < n && r == 0; i++) {
			char prefix[300];
			snprintf(prefix, sizeof prefix, "%s/data/%s.", hdr, names[i]);
			r = remove_stripes(rs, NULL, prefix,
					   nstripes_of(rs, strtoull(vals[i], NULL, 10)));
		}
		free_names(names, n);
		free_names(vals, n);
	}
	if (r == 0 && (r = omap_list(rs, hdr, "meta.", &names, NULL, &n)) == 0) {
		for (size_t i = 0; i < n && (r == 0 || r == -ENOENT); i++) {
			char oid[300];
			snprintf(oid, sizeof oid, "%s/meta/%s", hdr, names[i]);
			r = rados_remove(rs->io, oid);
		}
		free_names(names, n);
		if (r == -ENOENT)
			r = 0;
	}
	if (r == -ENOENT)
		r = 0;
	if (r == 0 && (r = rados_remove(rs->io, hdr)) == -ENOENT)
		r = 0;
	if (r == 0 && indexed)
		r = omap_put(rs, POOL_OID, key, NULL, true);
	mode_cache_drop(rs, vol);
	return r < 0 ? fail_ctl(r) : 0;
}

/* ---- metadata blobs ---- */

static int
rados_meta_read(struct sv_store *st, const char *vol, const char *key, char **buf, size_t *len)
{
	struct rados_store *rs = (struct rados_store *)st;
	char hdr[128], oid[256];
	vol_oid(hdr, sizeof hdr, vol);
	snprintf(oid, sizeof oid, "%s/meta/%s", hdr, key);
	/* Size and bytes in one op, so a concurrent write_full is seen whole
	 * or not at all; retry with the right buffer if the first was small. */
	size_t cap = 64 << 10;
	for (;;) {
		char *b = malloc(cap + 1);
		if (!b)
			return fail_ctl(-ENOMEM);
		rados_read_op_t op = rados_create_read_op();
		if (!op) {
			free(b);
			return fail_ctl(-ENOMEM);
		}
		uint64_t size = 0;
		size_t got = 0;
		int pr1 = 0, pr2 = 0;
		rados_read_op_stat(op, &size, NULL, &pr1);
		rados_read_op_read(op, 0, cap, b, &got, &pr2);
		int r = rados_read_op_operate(op, rs->io, oid, 0);
		rados_release_read_op(op);
		if (r == 0)
			r = pr1 ? pr1 : pr2;
		if (r < 0) {
			free(b);
			return fail_ctl(r);
		}
		if (size > META_MAX) {
			free(b);
			errno = EFBIG;
			return -1;
		}
		if (size <= cap && got == size) {
			b[got] = '\0';
			*buf = b;
			*len = got;
			return 0;
		}
		free(b);
		cap = (size_t)size;
	}
}

static int
rados_meta_write(struct sv_store *st, const char *vol, const char *key, const void *buf, size_t len)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (check_vol_claim(rs, vol) == -1)
		return -1;
	char hdr[128], oid[256], mkey[128];
	vol_oid(hdr, sizeof hdr, vol);
	snprintf(oid, sizeof oid, "%s/meta/%s", hdr, key);
	snprintf(mkey, sizeof mkey, "meta.%s", key);
	/* Index first (so vol_remove finds the blob), on an existing volume. */
	int r = omap_put(rs, hdr, mkey, "", true);
	if (r < 0)
		return fail_ctl(r);
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return fail_ctl(-ENOMEM);
	rados_write_op_write_full(op, buf, len);
	r = rados_write_op_operate(op, rs->io, oid, NULL, 0);
	rados_release_write_op(op);
	return r < 0 ? fail_ctl(r) : 0;
}

static int
rados_meta_remove(struct sv_store *st, const char *vol, const char *key)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (check_vol_claim(rs, vol) == -1)
		return -1;
	char hdr[128], oid[256], mkey[128];
	vol_oid(hdr, sizeof hdr, vol);
	snprintf(oid, sizeof oid, "%s/meta/%s", hdr, key);
	snprintf(mkey, sizeof mkey, "meta.%s", key);
	int r = rados_remove(rs->io, oid);
	if (r < 0)
		return fail_ctl(r);
	(void)omap_put(rs, hdr, mkey, NULL, true);
	return 0;
}

/* ---- data objects ---- */

/* ---- spare snap ids ----
 *
 * Making a native pre-image object allocates a self-managed snap id, a
 * monitor round trip (100 ms and more), and the engine makes it before
 * the epoch switch, so a snapshot's create (and a filesystem's freeze
 * window around it) waited for it.  Once this process has taken one, it
 * asks for the next in the background, and the next pre-image takes that
 * spare.  Which spare may be taken: the OSD keeps a stripe's pre-image
 * only for a write whose snap context is newer than every one the stripe
 * has seen, so a volume's ids must grow with time, across nodes too.
 * Ids grow as the monitor hands them out, so a spare is taken only if it
 * was asked for after this process took the volume's claim (every id
 * another node made for it is older) and is above every id this process
 * handed out (a spare and an id asked for without it race at the
 * monitor).  Otherwise the id is asked for at once, as before.  A spare
 * nothing took is removed at close (unless the cluster stopped answering);
 * one a crash leaves behind names nothing and costs nothing. */

static void
refill_done(rados_completion_t c, void *arg)
{
	struct rados_store *rs = arg;
	SV_LOCK_SCOPE(&rs->spare_lock);
	uint64_t last = rs->nspare ? rs->spare[rs->nspare - 1] : rs->hwm;
	bool ok = rados_aio_get_return_value(c) == 0;
	if (ok && rs->nspare < SPARES && rs->refill_id > last && rs->refill_id > rs->hwm) {
		rs->spare[rs->nspare] = rs->refill_id;
		rs->spare_asked[rs->nspare++] = rs->refill_asked;
	}
	rs->refilling = false;
	pthread_cond_broadcast(&rs->spare_cond);
	if (ok)
		refill_locked(rs); /* the next, while there is room */
}

/* Ask for one more spare if there is room, none is asked for, and ids are
 * being taken; refill_done asks for the next.  The completion of the last
 * allocation is released here, never in its own callback (done_c).
 * spare_lock. */
static void
refill_locked(struct rados_store *rs)
{
	if (rs->nspare >= SPARES || rs->refilling || !rs->takes)
		return;
	if (rs->done_c) {
		/* Its callback ran refill_locked under this lock, which is ours
		 * now: at most its return is left. */
		rados_aio_wait_for_complete_and_cb(rs->done_c);
		rados_aio_release(rs->done_c);
		rs->done_c = NULL;
	}
	rs->done_c = rs->refill; /* complete; maybe still in its callback */
	if (rados_aio_create_completion2(rs, refill_done, &rs->refill) < 0) {
		rs->refill = NULL;
		return;
	}
	rs->refilling = true;
	rs->refill_asked = sv_now_ns();
	rados_aio_ioctx_selfmanaged_snap_create(rs->io, &rs->refill_id, rs->refill);
}

/* Take the oldest spare off the stash; spare_lock. */
static uint64_t
spare_pop_locked(struct rados_store *rs)
{
	uint64_t id = rs->spare[0];
	rs->nspare--;
	memmove(rs->spare, rs->spare + 1, rs->nspare * sizeof rs->spare[0]);
	memmove(rs->spare_asked, rs->spare_asked + 1, rs->nspare * sizeof rs->spare_asked[0]);
	return id;
}

/* A new snap id for a native pre-image of vol: a spare if one may be
 * taken (above), else one asked for now.  0, or a negative errno. */
static int
take_snap_id(struct rados_store *rs, const char *vol, uint64_t *snap)
{
	struct claim *c = rs->claimed ? claim_of(rs, vol) : NULL;
	uint64_t taken = c ? atomic_load(&c->taken_ns) : 0;
	uint64_t id = 0;
	sv_lock_or_abort(&rs->spare_lock);
	/* With none left, the one asked for already comes sooner than a new
	 * one (that one only: a failed one is not asked for again). */
	uint64_t asked = rs->refill_asked;
	while (taken && !rs->nspare && rs->refilling && rs->refill_asked == asked && asked > taken)
		pthread_cond_wait(&rs->spare_cond, &rs->spare_lock);
	/* Below an id handed out (it lost a race at the monitor), or asked
	 * for before this volume was ours: left, like a crash's. */
	while (rs->nspare && (rs->spare[0] <= rs->hwm || (taken && rs->spare_asked[0] <= taken)))
		spare_pop_locked(rs);
	if (taken && rs->nspare)
		id = spare_pop_locked(rs);
	sv_unlock_or_abort(&rs->spare_lock);
	if (!id) {
		int r = rados_ioctx_selfmanaged_snap_create(rs->io, &id);
		if (r < 0)
			return r;
	}
	SV_LOCK_SCOPE(&rs->spare_lock);
	if (id > rs->hwm)
		rs->hwm = id;
	/* From the second on: a command that makes one snapshot and exits
	 * would only wait at its close for spares it cannot use. */
	if (taken && rs->takes++)
		refill_locked(rs);
	*snap = id;
	return 0;
}

/* At close: wait for an allocation in flight; remove the spares if asked. */
static void
spare_drop(struct rados_store *rs, bool remove)
{
	sv_lock_or_abort(&rs->spare_lock);
	rs->takes = 0; /* no more refills */
	while (rs->refilling)
		pthread_cond_wait(&rs->spare_cond, &rs->spare_lock);
	rados_completion_t cs[2] = {rs->done_c, rs->refill};
	rs->done_c = rs->refill = NULL;
	sv_unlock_or_abort(&rs->spare_lock); /* a callback may be returning */
	for (int k = 0; k < 2; k++)
		if (cs[k]) {
			rados_aio_wait_for_complete_and_cb(cs[k]);
			rados_aio_release(cs[k]);
		}
	for (unsigned k = 0; remove && k < rs->nspare; k++)
		(void)rados_ioctx_selfmanaged_snap_remove(rs->io, rs->spare[k]);
	rs->nspare = 0;
}

static int
rados_obj_open(struct sv_store *st, const char *vol, const char *obj, uint64_t size, unsigned flags,
	       struct sv_obj **out)
{
	struct rados_store *rs = (struct rados_store *)st;
	char hdr[128], okey[128];
	vol_oid(hdr, sizeof hdr, vol);
	snprintf(okey, sizeof okey, "obj.%s", obj);
	if (rs->objsz == 0) { /* no pool header: nothing exists */
		errno = ENOENT;
		return -1;
	}
	bool pre = is_pre_name(obj), origin = !strcmp(obj, "origin"), native = false;
	if ((pre || origin) && vol_mode(rs, vol, &native) == -1)
		return -1;
	pre = pre && native;
	origin = origin && native;
	SV_LOCK_SCOPE(&rs->lock);
	char *v = NULL;
	uint64_t snap = 0;
	int r = omap_get(rs, hdr, okey, &v, NULL);
	if (r == 0) {
		uint64_t have;
		bool bad = !parse_obj_entry(v, &have, &snap);
		free(v);
		if (flags & SV_OBJ_EXCL) {
			errno = EEXIST;
			return -1;
		}
		/* An object of the wrong size, or a pre-image of the other
		 * mode: a damaged pool. */
		if (bad || have != size || pre != (snap != 0)) {
			errno = EUCLEAN;
			return -1;
		}
	} else if (r == -ENOENT && (flags & SV_OBJ_CREATE)) {
		if (check_vol_claim(rs, vol) == -1)
			return -1;
		char sz[64];
		snprintf(sz, sizeof sz, "%" PRIu64, size);
		if (pre) {
			/* The snap id (a monitor round trip), then the index
			 * entry that names it: a crash between leaves an id
			 * nothing names and nothing preserves into. */
			if ((r = take_snap_id(rs, vol, &snap)) < 0)
				return fail_ctl(r);
			snprintf(sz, sizeof sz, "%" PRIu64 " snap=%" PRIu64, size, snap);
		}
		if ((r = omap_put(rs, hdr, okey, sz, true)) < 0) {
			if (pre)
				(void)rados_ioctx_selfmanaged_snap_remove(rs->io, snap);
			return fail_ctl(r);
		}
	} else {
		return fail_ctl(r);
	}
	struct rados_obj *ro = calloc(1, sizeof *ro);
	/* A native pre-image reads the origin's stripes (at its snap). */
	if (!ro || !(ro->prefix = xasprintf("%s/data/%s.", hdr, pre ? "origin" : obj))) {
		free(ro);
		errno = ENOMEM;
		return -1;
	}
	ro->base.ops = &sv_store_rados_ops;
	ro->st = rs;
	ro->size = size;
	ro->rdonly = (flags & SV_OBJ_RDONLY) != 0;
	ro->claim = claim_of(rs, vol);
	ro->io = rs->io;
	ro->native_pre = pre;
	ro->snapid = snap;
	/* A snap never changes: its full stripes can be remembered too. */
	if (!ro->rdonly || pre)
		ro->full = calloc((nstripes_of(rs, size) + 63) / 64, sizeof *ro->full);
	if (!ro->claim || ((!ro->rdonly || pre) && !ro->full)) {
		r = -ENOMEM;
		goto fail;
	}
	if (pre) {
		if ((r = rados_ioctx_create(rs->cluster, rs->spec + 6, &ro->io)) < 0) {
			ro->io = NULL;
			goto fail;
		}
		rados_ioctx_snap_set_read(ro->io, snap);
	} else if (origin && !ro->rdonly) {
		if ((r = wctx_get_locked(rs, vol, &ro->wc)) < 0)
			goto fail;
		ro->io = ro->wc->io;
	}
	*out = (struct sv_obj *)ro;
	return 0;
fail:
	if (pre && ro->io)
		rados_ioctx_destroy(ro->io);
	free(ro->full);
	free(ro->prefix);
	free(ro);
	return fail_ctl(r);
}

static void
rados_obj_close(struct sv_obj *o)
{
	struct rados_obj *ro = (struct rados_obj *)o;
	if (ro->native_pre)
		rados_ioctx_destroy(ro->io);
	if (ro->wc)
		wctx_put(ro->st, ro->wc);
	free(ro->full);
	free(ro->prefix);
	free(ro);
}

static int
rados_obj_remove(struct sv_store *st, const char *vol, const char *obj)
{
	struct rados_store *rs = (struct rados_store *)st;
	if (check_vol_claim(rs, vol) == -1)
		return -1;
	char hdr[128], okey[128], prefix[300];
	vol_oid(hdr, sizeof hdr, vol);
	snprintf(okey, sizeof okey, "obj.%s", obj);
	snprintf(prefix, sizeof prefix, "%s/data/%s.", hdr, obj);
	bool native = false;
	if (!strcmp(obj, "origin") && vol_mode(rs, vol, &native) == -1)
		return -1;
	SV_LOCK_SCOPE(&rs->lock);
	char *v = NULL;
	int r = omap_get(rs, hdr, okey, &v, NULL);
	if (r < 0)
		return fail_ctl(r);
	uint64_t size, snap;
	if (!parse_obj_entry(v, &size, &snap)) {
		free(v);
		errno = EUCLEAN;
		return -1;
	}
	free(v);
	if (snap) {
		/* A native pre-image: preserve no more into it, let the OSD
		 * trim its clones, then forget it.  A crash between leaves an
		 * entry whose snap is gone: removing it again finishes. */
		wctx_forget(rs, vol, snap);
		if ((r = rados_ioctx_selfmanaged_snap_remove(rs->io, snap)) < 0 && r != -ENOENT)
			return fail_ctl(r);
		if ((r = omap_put(rs, hdr, okey, NULL, true)) < 0)
			return fail_ctl(r);
		return 0;
	}
	/* A native origin's stripes go through its write context, so that
	 * its pre-images keep reading them. */
	struct wctx *wc = NULL;
	if (native && (r = wctx_get_locked(rs, vol, &wc)) < 0)
		return fail_ctl(r);
	/* Stripes first: a crash half-way leaves a listed object with holes
	 * (it was being removed), never stripes nothing lists. */
	r = remove_stripes(rs, wc, prefix, nstripes_of(rs, size));
	if (wc)
		wctx_put(rs, wc);
	if (r < 0 || (r = omap_put(rs, hdr, okey, NULL, true)) < 0)
		return fail_ctl(r);
	return 0;
}

static uint64_t
rados_obj_size(struct sv_obj *o)
{
	return ((struct rados_obj *)o)->size;
}

static void
stripe_oid(const struct rados_obj *ro, uint64_t i, char *buf, size_t len)
{
	snprintf(buf, len, "%s%016" PRIx64, ro->prefix, i);
}

/* One piece of a request: the part of [off, off+len) in one stripe. */
struct piece {
	rados_completion_t c;
	char *p;
	size_t len;
	uint64_t stripe;
	bool to_end; /* reaches the stripe's end (a write makes it full) */
};

/* Run a read (write == false) or write over [off, off+len), one aio op per
 * stripe, all in flight together. */
static int
striped_io(struct rados_obj *ro, char *buf, size_t len, uint64_t off, bool write)
{
	struct rados_store *rs = ro->st;
	if (len == 0)
		return 0;
	if (off > ro->size || len > ro->size - off) {
		errno = EINVAL;
		return -1;
	}
	uint64_t first = off / rs->objsz, last = (off + len - 1) / rs->objsz;
	size_t n = (size_t)(last - first + 1);
	struct piece stack[8];
	struct piece *pc = n <= 8 ? stack : calloc(n, sizeof *pc);
	if (!pc) {
		errno = ENOMEM;
		return -1;
	}
	int err = 0;
	size_t started = 0;
	char *p = buf;
	if (write)
		issue_begin(ro);
	for (uint64_t i = first; i <= last; i++) {
		uint64_t so = i == first ? off % rs->objsz : 0;
		size_t k = (size_t)(rs->objsz - so);
		if (k > len - (size_t)(p - buf))
			k = len - (size_t)(p - buf);
		char oid[320];
		stripe_oid(ro, i, oid, sizeof oid);
		struct piece *x = &pc[started];
		x->p = p;
		x->len = k;
		x->stripe = i;
		x->to_end = so + k == rs->objsz || i * rs->objsz + so + k == ro->size;
		int r = rados_aio_create_completion2(NULL, NULL, &x->c);
		if (r == 0) {
			r = write ? rados_aio_write(ro->io, oid, x->c, p, k, so)
				  : rados_aio_read(ro->io, oid, x->c, p, k, so);
			if (r < 0)
				rados_aio_release(x->c);
		}
		if (r < 0) {
			err = r;
			break;
		}
		started++;
		p += k;
	}
	if (write)
		issue_end(ro);
	for (size_t j = 0; j < started; j++) {
		rados_aio_wait_for_complete(pc[j].c);
		int r = rados_aio_get_return_value(pc[j].c);
		rados_aio_release(pc[j].c);
		if (!write) {
			/* A missing stripe, or the part past its end: zeros. */
			if (r == -ENOENT)
				r = 0;
			if (r >= 0 && (size_t)r < pc[j].len)
				memset(pc[j].p + r, 0, pc[j].len - (size_t)r);
		}
		if (write && r >= 0 && pc[j].to_end)
			mark_full(ro, pc[j].stripe, true);
		if (r < 0 && !err)
			err = r;
	}
	if (pc != stack)
		free(pc);
	return err ? fail_data(err) : 0;
}

static int
rados_obj_pread(struct sv_obj *o, void *buf, size_t len, uint64_t off)
{
	return striped_io((struct rados_obj *)o, buf, len, off, false);
}

/* An asynchronous read (obj_pread_async): one aio op per stripe, each
 * completing in librados's finisher thread; the last one to end calls
 * done.  pending counts the pieces in flight plus one for the caller while
 * it is still starting them, so done cannot run before every piece is
 * issued. */
struct aread {
	atomic_uint pending;
	atomic_int err;
	void (*done)(void *arg, int err);
	void *arg;
};

struct aread_piece {
	struct aread *ar;
	char *p;
	size_t len;
};

static void
aread_put(struct aread *ar)
{
	if (atomic_fetch_sub(&ar->pending, 1) != 1)
		return;
	int e = atomic_load(&ar->err);
	void (*done)(void *, int) = ar->done;
	void *arg = ar->arg;
	free(ar);
	done(arg, e);
}

static void
aread_piece_done(rados_completion_t c, void *arg)
{
	struct aread_piece *x = arg;
	int r = rados_aio_get_return_value(c);
	rados_aio_release(c);
	/* A missing stripe, or the part past its end: zeros (as striped_io). */
	if (r == -ENOENT)
		r = 0;
	if (r >= 0 && (size_t)r < x->len)
		memset(x->p + r, 0, x->len - (size_t)r);
	if (r < 0) {
		int zero = 0;
		atomic_compare_exchange_strong(&x->ar->err, &zero, data_errno(r));
	}
	struct aread *ar = x->ar;
	free(x);
	aread_put(ar);
}

static int
rados_obj_pread_async(struct sv_obj *o, void *buf, size_t len, uint64_t off,
		      void (*done)(void *arg, int err), void *arg)
{
	struct rados_obj *ro = (struct rados_obj *)o;
	struct rados_store *rs = ro->st;
	if (off > ro->size || len > ro->size - off) {
		errno = EINVAL;
		return -1;
	}
	struct aread *ar = malloc(sizeof *ar);
	if (!ar) {
		errno = ENOMEM;
		return -1;
	}
	atomic_init(&ar->pending, 1); /* ours, until every piece is issued */
	atomic_init(&ar->err, 0);
	ar->done = done;
	ar->arg = arg;
	size_t started = 0;
	char *p = buf;
	int err = 0;
	for (uint64_t i = off / rs->objsz; p < (char *)buf + len; i++) {
		uint64_t so = p == (char *)buf ? off % rs->objsz : 0;
		size_t k = (size_t)(rs->objsz - so);
		if (k > len - (size_t)(p - (char *)buf))
			k = len - (size_t)(p - (char *)buf);
		char oid[320];
		stripe_oid(ro, i, oid, sizeof oid);
		struct aread_piece *x = malloc(sizeof *x);
		rados_completion_t c;
		int r = x ? rados_aio_create_completion2(x, aread_piece_done, &c) : -ENOMEM;
		if (r == 0) {
			*x = (struct aread_piece){ar, p, k};
			atomic_fetch_add(&ar->pending, 1);
			r = rados_aio_read(ro->io, oid, c, p, k, so);
			if (r < 0) {
				atomic_fetch_sub(&ar->pending, 1);
				rados_aio_release(c);
			}
		}
		if (r < 0) {
			free(x);
			err = r;
			break;
		}
		started++;
		p += k;
	}
	if (err && started == 0) {
		free(ar);
		return fail_data(err);
	}
	if (err) {
		/* Some pieces are in flight: done reports the failure once
		 * they have ended. */
		int zero = 0;
		atomic_compare_exchange_strong(&ar->err, &zero, data_errno(err));
	}
	aread_put(ar);
	return 0;
}

static int
rados_obj_pwrite(struct sv_obj *o, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	(void)flags; /* every write is durable when it returns: FUA is free */
	struct rados_obj *ro = (struct rados_obj *)o;
	if (ro->native_pre) { /* the OSD fills it, nobody else */
		errno = ENOTSUP;
		return -1;
	}
	if (ro->rdonly) {
		errno = EBADF;
		return -1;
	}
	if (check_claim(ro->st, ro->claim) == -1)
		return -1;
	return striped_io(ro, (char *)buf, len, off, true);
}

static int
rados_obj_sync(struct sv_obj *o)
{
	/* Nothing is ever left in flight (see the top of the file): every
	 * acknowledged write is durable, even while the cluster is away.  A
	 * FLUSH must still not report success once the claim is lost to
	 * another holder, who may have written over it. */
	struct rados_obj *ro = (struct rados_obj *)o;
	if (ro->native_pre)
		return 0; /* nothing of its own is ever written */
	if (ro->st->claimed && atomic_load(&ro->claim->fenced)) {
		errno = EIO;
		return -1;
	}
	return 0;
}

static int
rados_obj_punch(struct sv_obj *o, uint64_t off, uint64_t len)
{
	struct rados_obj *ro = (struct rados_obj *)o;
	struct rados_store *rs = ro->st;
	if (len == 0)
		return 0;
	if (off > ro->size || len > ro->size - off) {
		errno = EINVAL;
		return -1;
	}
	/* Nobody reads a released range of a native pre-image; its space
	 * comes back when its snap goes. */
	if (ro->native_pre)
		return 0;
	if (ro->rdonly) {
		errno = EBADF;
		return -1;
	}
	if (check_claim(rs, ro->claim) == -1)
		return -1;
	uint64_t end = off + len;
	for (uint64_t i = off / rs->objsz; i * rs->objsz < end; i++) {
		uint64_t s0 = i * rs->objsz, s1 = s0 + rs->objsz;
		uint64_t a = off > s0 ? off - s0 : 0;
		uint64_t z = (end < s1 ? end : s1) - s0;
		char oid[320];
		stripe_oid(ro, i, oid, sizeof oid);
		mark_full(ro, i, false);
		rados_completion_t c;
		int r = rados_aio_create_completion2(NULL, NULL, &c);
		if (r < 0)
			return fail_data(r);
		/* Issued asynchronously so that a write context's lock is never
		 * held across a round trip (obj_preserve waits for it). */
		rados_write_op_t op = NULL;
		issue_begin(ro);
		if (a == 0 && (z == rs->objsz || s0 + z >= ro->size)) {
			r = rados_aio_remove(ro->io, oid, c);
		} else if (!(op = rados_create_write_op())) {
			r = -ENOMEM;
		} else {
			/* On an existing stripe only: a missing one is a hole.  An
			 * OSD turns a zero that reaches the stripe's end into a
			 * truncate, and ignores one past it. */
			rados_write_op_assert_exists(op);
			rados_write_op_zero(op, a, z - a);
			r = rados_aio_write_op_operate(op, ro->io, c, oid, NULL, 0);
		}
		issue_end(ro);
		if (r == 0) {
			rados_aio_wait_for_complete(c);
			r = rados_aio_get_return_value(c);
		}
		rados_aio_release(c);
		if (op)
			rados_release_write_op(op);
		mark_full(ro, i, false); /* a write may have raced the op */
		if (r < 0 && r != -ENOENT)
			return fail_data(r);
	}
	return 0;
}

static int
rados_obj_zero(struct sv_obj *o, uint64_t off, uint64_t len, unsigned flags)
{
	/* A RADOS zero is a punch: fast, and gives the space back. */
	(void)flags;
	return rados_obj_punch(o, off, len);
}

static int
rados_obj_extent(struct sv_obj *o, uint64_t off, uint64_t len, struct sv_extent *ext)
{
	struct rados_obj *ro = (struct rados_obj *)o;
	struct rados_store *rs = ro->st;
	uint64_t end = off + len;
	if (end > ro->size || end < off)
		end = ro->size;
	ext->offset = off;
	ext->length = 0;
	ext->hole = true;
	if (off >= end)
		return 0;
	/* Walk stripes while the kind stays the same, 64 at most, stat'ed
	 * together (aio): one round trip, not one per stripe (copy-on-write
	 * asks about the rest of the volume before each batch of copies). */
	uint64_t first = off / rs->objsz, last = (end - 1) / rs->objsz;
	unsigned n = last - first + 1 < BATCH ? (unsigned)(last - first + 1) : BATCH;
	rados_completion_t c[BATCH];
	uint64_t szs[BATCH];
	time_t mt[BATCH];
	int rs_[BATCH];
	unsigned started = 0;
	int err = 0;
	for (; started < n; started++) {
		c[started] = NULL;
		if (stripe_full(ro, first + started))
			continue;
		char oid[320];
		stripe_oid(ro, first + started, oid, sizeof oid);
		int r = rados_aio_create_completion2(NULL, NULL, &c[started]);
		if (r == 0 &&
		    (r = rados_aio_stat(ro->io, oid, c[started], &szs[started], &mt[started])) < 0)
			rados_aio_release(c[started]);
		if (r < 0) {
			err = r;
			break;
		}
	}
	for (unsigned j = 0; j < started; j++) {
		if (!c[j]) {
			rs_[j] = 0;
			szs[j] = rs->objsz;
			continue;
		}
		rados_aio_wait_for_complete(c[j]);
		rs_[j] = rados_aio_get_return_value(c[j]);
		rados_aio_release(c[j]);
		uint64_t s0 = (first + j) * rs->objsz;
		uint64_t want = ro->size - s0 < rs->objsz ? ro->size - s0 : rs->objsz;
		if (rs_[j] == 0 && szs[j] >= want)
			mark_full(ro, first + j, true);
	}
	if (err)
		return fail_data(err);
	uint64_t pos = off;
	for (unsigned k = 0; k < n && pos < end; k++) {
		uint64_t i = pos / rs->objsz, s0 = i * rs->objsz;
		uint64_t s1 = s0 + rs->objsz < end ? s0 + rs->objsz : end;
		int r = rs_[i - first];
		uint64_t sz = szs[i - first];
		if (r < 0 && r != -ENOENT)
			return fail_data(r);
		if (r == -ENOENT)
			sz = 0;
		/* In this stripe: data up to s0+sz, a hole after. */
		uint64_t dend = s0 + sz < s1 ? s0 + sz : s1;
		bool data_here = pos < dend;
		if (pos == off)
			ext->hole = !data_here;
		else if (ext->hole == data_here)
			break;
		if (data_here) {
			ext->length += dend - pos;
			pos = dend;
			if (dend < s1)
				break; /* a hole follows inside this stripe */
		} else {
			ext->length += s1 - pos;
			pos = s1;
		}
	}
	return 0;
}

static int
rados_obj_cache(struct sv_obj *o, uint64_t off, uint64_t len)
{
	(void)o, (void)off, (void)len;
	return 0; /* a hint; the OSDs cache for themselves */
}

static int
rados_obj_fd(struct sv_obj *o)
{
	(void)o;
	return -1; /* no descriptor: the NBD layer copies through memory */
}

static int
rados_obj_allocated(struct sv_obj *o, uint64_t *bytes)
{
	struct rados_obj *ro = (struct rados_obj *)o;
	struct rados_store *rs = ro->st;
	if (ro->native_pre) { /* its clones share extents with the origin's */
		errno = ENOTSUP;
		return -1;
	}
	uint64_t n = nstripes_of(rs, ro->size), total = 0;
	rados_completion_t c[BATCH];
	uint64_t sz[BATCH];
	time_t mt[BATCH];
	int err = 0;
	for (uint64_t base = 0; base < n && !err; base += BATCH) {
		unsigned k = 0;
		for (uint64_t i = base; i < n && k < BATCH; i++, k++) {
			char oid[320];
			stripe_oid(ro, i, oid, sizeof oid);
			sz[k] = 0;
			int r = rados_aio_create_completion2(NULL, NULL, &c[k]);
			if (r == 0 && (r = rados_aio_stat(ro->io, oid, c[k], &sz[k], &mt[k])) < 0)
				rados_aio_release(c[k]);
			if (r < 0) {
				err = r;
				break;
			}
		}
		for (unsigned j = 0; j < k; j++) {
			rados_aio_wait_for_complete(c[j]);
			int r = rados_aio_get_return_value(c[j]);
			rados_aio_release(c[j]);
			if (r == 0)
				total += sz[j];
			else if (r != -ENOENT && !err)
				err = r;
		}
	}
	if (err)
		return fail_data(err);
	*bytes = total;
	return 0;
}

static int
rados_obj_locate(struct sv_store *st, const char *vol, const char *obj, char *buf, size_t len)
{
	(void)st, (void)vol, (void)obj, (void)buf, (void)len;
	errno = ENOTSUP; /* no file: the data is in RADOS objects */
	return -1;
}

static int
rados_obj_list(struct sv_store *st, const char *vol, char ***names, size_t *n)
{
	struct rados_store *rs = (struct rados_store *)st;
	char hdr[128];
	vol_oid(hdr, sizeof hdr, vol);
	int r = omap_list(rs, hdr, "obj.", names, NULL, n);
	return r < 0 ? fail_ctl(r) : 0;
}

const struct sv_store_ops sv_store_rados_ops = {
    .struct_size = sizeof(struct sv_store_ops),
    .name = "rados",
    .open = rados_store_open,
    .close = rados_store_close,
    .lock = rados_store_lock,
    .describe = rados_store_describe,
    .vol_list = rados_vol_list,
    .vol_create = rados_vol_create,
    .vol_remove = rados_vol_remove,
    .meta_read = rados_meta_read,
    .meta_write = rados_meta_write,
    .meta_remove = rados_meta_remove,
    .obj_open = rados_obj_open,
    .obj_close = rados_obj_close,
    .obj_remove = rados_obj_remove,
    .obj_size = rados_obj_size,
    .obj_pread = rados_obj_pread,
    .obj_pwrite = rados_obj_pwrite,
    .obj_sync = rados_obj_sync,
    .obj_punch = rados_obj_punch,
    .obj_zero = rados_obj_zero,
    .obj_extent = rados_obj_extent,
    .obj_cache = rados_obj_cache,
    .obj_fd = rados_obj_fd,
    .obj_allocated = rados_obj_allocated,
    .obj_locate = rados_obj_locate,
    .obj_list = rados_obj_list,
    .vol_claim = rados_vol_claim,
    .vol_release = rados_vol_release,
    .space_avail = rados_space_avail,
    .durable_writes = true, /* no pre-image log: a write is durable when acknowledged */
    .obj_pread_async = rados_obj_pread_async,
    .vol_native_pre = rados_vol_native_pre,
    .obj_preserve = rados_obj_preserve,
};
