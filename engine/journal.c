/*
 * journal.c: making copy-on-write records durable, with group commit, and
 * the pre-image log.
 *
 * When a write first touches a chunk after a snapshot, cow.c copies the
 * chunk's old contents into the epoch's pre-image object and then calls
 * sv_journal_commit() with a record "epoch E holds chunks [a, a+n)".  The
 * origin may be written only after the record and the pre-image bytes are
 * both durable (DESIGN invariant 1): else a crash could leave a record
 * pointing at data that never reached the disk, while the origin already
 * holds the new contents, and the snapshot would read garbage.
 *
 * Where writes need a sync to be durable (the file backend), syncing the
 * pre-image object at every commit was the cost of a first write: a commit
 * of ~430 copies spent ~25 ms in fdatasync of 430 scattered 4 KiB pages of
 * a sparse file, against ~5 ms for the journal; the same bytes appended to
 * one file sync 2.5x faster.  So a commit appends the pre-images to a log
 * with their records, and the pre-image objects are synced only at
 * checkpoints.  One commit ("pre-image log mode") is:
 *
 *   1. (the copier wrote the pre-images to their objects, unsynced, and
 *      hands their bytes along with its records;)
 *   2. append one block to the log object: a header, the batch's records,
 *      where each copied run lies, and the pre-image bytes, CRC-checked;
 *   3. fdatasync the log: one sequential write and one sync;
 *   4. set the bits in the in-memory bitmaps, clear the in-flight marks,
 *      wake the writers (they then write the origin).
 *
 * A checkpoint syncs every pre-image object (in both modes: a freeze relies
 * on it), then writes every bitmap into changed.meta (atomically replaced
 * by the store) under a new generation, and the log starts again at offset
 * 0; the old blocks, stale now, are punched (give_back_log) by the
 * checkpoints of an open and a close only: the others (log full, freeze,
 * snapshot delete, rollback, drop-snapshot) have commits waiting on them,
 * and punching 128 MiB can take hundreds of ms.  It is taken when the log is full
 * (the leader takes it inline: commits wait for it), when a volume is
 * opened or closed, and when bits are cleared or space is given up
 * (snapshot delete, rollback, drop-snapshot): a later replay must not set
 * those bits again, nor copy pre-images back over punched space.  A failed
 * sync of a pre-image object at a checkpoint is handled as a failed sync
 * was at commit before (the sticky rule, snapshot.c): every snapshot that
 * reads that epoch is invalidated and recorded so (if that record fails,
 * writes fail until the volume is reopened), and the checkpoint fails with
 * the error, as the commit did: the log, which still holds the pre-images,
 * is kept, and the next checkpoint tries again (a later open replays it).
 *
 * Syncing up to 128 MiB of scattered 4 KiB pages takes 1-2 s, and commits
 * (so first writes, and writes waiting for a landing) waited that long
 * behind a checkpoint's sync_all_pre.  So a checkpoint that is not urgent
 * (sv_journal_checkpoint*: snapshot delete, rollback, drop-snapshot,
 * freeze, open, close) first syncs every pre-image object without the
 * leader role (presync_pre), while commits go on, as a snapshot's presync
 * does for the origin (snapshot.c); the checkpoint's own sync then finds
 * only what was copied meanwhile.  It changes nothing in what is durable
 * when: only the checkpoint's sync counts.  (Starting the writeback of the
 * pre-image objects early, from a thread of their own, once the log was
 * 5/8 full, was measured in session 8 and not kept: the log-full
 * checkpoint still waited, and no run was better for it.)
 *
 * The early checkpoint.  Under sustained first writes the log fills every
 * second or two, and the checkpoint that takes (the leader's, inline)
 * holds every commit while it syncs up to the log's worth of scattered
 * pre-image pages: 0.34-1.04 s here.  So once the log holds early_at bytes
 * (SNAPVOL_PRELOG_EARLY percent of it, EARLY_PCT by default; 0 turns it
 * off) the leader wakes a thread of the volume's own, which takes a
 * checkpoint that is not urgent: the presync without the leader role,
 * while commits go on (again, up to EARLY_ROUNDS times, while a round
 * saw more than 1/EARLY_LEFT of the log copied meanwhile, so the leader's
 * part finds little), then the leader role for the rest; the log then
 * starts again at 0 before it is full.  It is the checkpoint a delete
 * takes, at another time: what is durable when does not change.  It is
 * skipped if another checkpoint restarted the log meanwhile; a failed
 * one is logged and not retried before a checkpoint succeeds (the log-full
 * one then reports the error to the write that needs it).  The mark is
 * 5/8, not lower, so that a burst shorter than half the log (bench/cow.sh's
 * 64 MiB first-write pass) pays no sync while it runs.  Where the writers
 * copy faster than the disk syncs the pre-images, the log still fills
 * during the presync, and the leader's checkpoint then syncs only what
 * the presync has not (session 9: 0.2-0.75 s instead of 0.34-1.04 s).
 * So the mark adapts: a log-full checkpoint while an early one is due
 * (it lost the race) moves the next mark 1/8 of the log sooner, not
 * below 1/4; an early checkpoint taken with the log under 3/4 moves it
 * back 1/16, not above the configured mark.  Pacing the commits by the
 * presync's rate while one ran was measured and not kept (no run was
 * better for it).
 *
 * The pre-image guard.  sync_all_pre and a commit's sync use an epoch's
 * object under the leader role, which sv_epoch_retire takes (through
 * sv_journal_pause) before it takes the object away.  The presync above
 * runs without it, so it registers instead: pre_hold waits while a pause
 * is under way (pre_closing) and counts the thread in pre_users for the
 * use of one object; sv_journal_pause keeps new users out, waits for
 * pre_users to fall to 0, and then takes the leader role.  In that order,
 * so a pause never holds commits while it waits for a presync's sync, and
 * a user never waits for the leader role while counted.
 *
 * The sync lock.  On Linux a failed fdatasync reports a write-back error
 * once per open file: the next sync of the same object returns 0 although
 * pages were lost.  A checkpoint or commit must not succeed on such a 0
 * while the sync that saw the error has not yet applied the sticky rule
 * (invalidated the snapshots reading that epoch, or set pre_untrusted),
 * which the leader role alone ensured when only the leader synced.  So
 * every sync of a pre-image object and, on failure, the sticky rule run
 * under journal.sync_lock (a leaf but for the rule's cow_lock and
 * volume.meta write; taken after pre_hold and the leader role, never
 * held while waiting for either).
 *
 * Replay (at open, before anyone sees the volume) reads the log's blocks
 * from offset 0 while they are whole (header CRC, then payload CRC) and of
 * the checkpoint's generation: a torn or stale block ends it.  It sets the
 * bits and copies the logged pre-images into their objects (idempotent:
 * the same bytes at the same places), and the open then checkpoints, which
 * syncs them.  Logged bytes of epochs no live snapshot needs any more (a
 * delete whose checkpoint a crash cut short) are not copied back: the open
 * drops those epochs.  Generations are random 64-bit numbers, not a count:
 * the log holds guest data, and stale bytes past the end of the log must
 * never parse as a block of the current generation, even if a guest wrote
 * a forged header into a chunk (DESIGN invariant 9).
 *
 * Copies too large to log (more than LOG_COPY_MAX bytes from one copier,
 * or more than the log holds) keep the old order instead: their objects
 * are synced before the block is written.  So does a whole batch whose
 * block meets ENOSPC (a full store: what the failed write took is punched
 * back first).  Bit-only records need neither.
 *
 * Where writes are durable when acknowledged (RADOS: store.h's
 * durable_writes, obj_sync is a no-op) logging the bytes would only cost:
 * the journal object keeps 32-byte records, and a commit is "sync the
 * pre-image objects, append the records, sync the journal" as before.
 *
 * Group commit (DESIGN invariant 5): writers queue their records; one of
 * them becomes the leader, takes everything queued, and commits it as one
 * block while new records queue for the next batch.  Many writers pay one
 * sync, not one each.
 *
 * On disk (little-endian):
 *  - prelog: blocks, each starting at a multiple of 4096: a 64-byte header
 *    (magic "SVJB", CRC-32 of header bytes 8..63, generation, record
 *    count, run count, header area size, data size, CRC-32 of the rest of
 *    the header area and the data), per record 24 bytes (epoch, first
 *    chunk, count, runs, flags), per run 16 bytes (byte offset in the
 *    volume, length), zeros to a multiple of 4096, then the runs' bytes,
 *    zeros to a multiple of 4096.
 *  - journal (RADOS, and an older snapvol's): a ring of 32-byte records:
 *    magic "SVJR", CRC-32 of the rest, generation, epoch, first chunk,
 *    count.  A log-mode volume replays an older snapvol's journal once and
 *    removes it at its first checkpoint.
 *  - changed.meta: one header line
 *    "snapvol-changed 1 gen=G epochs=N len=L crc32=0xXXXXXXXX\n"
 *    then per epoch: u64 id, u64 length, the bitmap in CRoaring's portable
 *    format (the format other Roaring implementations read, too).
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zlib.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define JREC_SIZE     32
#define JREC_MAGIC    0x524a5653u	  /* the bytes "SVJR" on disk */
#define JOURNAL_SLOTS (UINT64_C(1) << 20) /* 32 MiB of records, sparse */

#define LBLK_MAGIC    0x424a5653u	  /* the bytes "SVJB" on disk */
#define LOG_OBJ_SIZE  (UINT64_C(1) << 30) /* the log object's (sparse) size */
#define LOG_DEFAULT   (UINT64_C(128) << 20)
#define LOG_MIN	      (UINT64_C(64) << 10)
#define LOG_ALIGN     UINT64_C(4096)
#define EARLY_PCT     62 /* the early checkpoint's mark, % of the log (5/8) */
#define EARLY_ROUNDS  4	 /* its presync rounds at most */
#define EARLY_LEFT    16 /* another round if a round saw 1/16 of the log copied */
#define LHDR_SIZE     64
#define LREC_SIZE     24
#define LSEG_SIZE     16
#define LREC_UNLOGGED 0x1u /* flags: its bytes were synced in the object instead */

struct waiter {
	int err;
};

struct pending_rec {
	struct sv_jrec rec;
	struct waiter *w;
};

static inline uint64_t
align_up(uint64_t v)
{
	return (v + LOG_ALIGN - 1) & ~(LOG_ALIGN - 1);
}

static void
put32(unsigned char *b, uint32_t v)
{
	v = htole32(v);
	memcpy(b, &v, 4);
}

static void
put64(unsigned char *b, uint64_t v)
{
	v = htole64(v);
	memcpy(b, &v, 8);
}

static uint32_t
get32(const unsigned char *b)
{
	uint32_t v;
	memcpy(&v, b, 4);
	return le32toh(v);
}

static uint64_t
get64(const unsigned char *b)
{
	uint64_t v;
	memcpy(&v, b, 8);
	return le64toh(v);
}

/* A new generation: random, never the current one (see the top). */
static uint64_t
new_gen(uint64_t old)
{
	uint64_t g = 0;
	if (getrandom(&g, sizeof g, 0) != (ssize_t)sizeof g)
		g = (old * 6364136223846793005ull + 1442695040888963407ull) ^ sv_now_ns();
	return g == old || g == 0 ? old + 1 : g;
}

static void
encode_rec(unsigned char *b, uint64_t gen, uint64_t epoch, uint32_t first, uint32_t count)
{
	put32(b, JREC_MAGIC);
	put64(b + 8, gen);
	put64(b + 16, epoch);
	put32(b + 24, first);
	put32(b + 28, count);
	put32(b + 4, (uint32_t)crc32(0, b + 8, JREC_SIZE - 8));
}

static bool
decode_rec(const unsigned char *b, uint64_t *gen, uint64_t *epoch, uint32_t *first, uint32_t *count)
{
	if (get32(b) != JREC_MAGIC || get32(b + 4) != (uint32_t)crc32(0, b + 8, JREC_SIZE - 8))
		return false;
	*gen = get64(b + 8);
	*epoch = get64(b + 16);
	*first = get32(b + 24);
	*count = get32(b + 28);
	return true;
}

/* The log's capacity: SNAPVOL_PRELOG_KB (KiB), else LOG_DEFAULT. */
static uint64_t
log_capacity(void)
{
	const char *env = getenv("SNAPVOL_PRELOG_KB");
	if (!env || !*env)
		return LOG_DEFAULT;
	char *end;
	unsigned long long kb = strtoull(env, &end, 10);
	if (*end || kb == 0) {
		sv_log_warn("SNAPVOL_PRELOG_KB=%s: not a number; using %" PRIu64 " KiB", env,
			    LOG_DEFAULT >> 10);
		return LOG_DEFAULT;
	}
	uint64_t b = (uint64_t)kb << 10;
	return b < LOG_MIN ? LOG_MIN : b > LOG_OBJ_SIZE ? LOG_OBJ_SIZE : align_up(b);
}

static bool
log_mode(const struct sv_store_ops *ops)
{
	return !sv_store_durable(ops);
}

/* The early checkpoint's mark: SNAPVOL_PRELOG_EARLY (percent of the
 * log; 0: none), else EARLY_PCT. */
static unsigned
early_pct(void)
{
	const char *env = getenv("SNAPVOL_PRELOG_EARLY");
	if (!env || !*env)
		return EARLY_PCT;
	char *end;
	unsigned long v = strtoul(env, &end, 10);
	if (*end || v > 100) {
		sv_log_warn("SNAPVOL_PRELOG_EARLY=%s: not a percentage; using %d", env, EARLY_PCT);
		return EARLY_PCT;
	}
	return (unsigned)v;
}

static int
journal_open(struct sv_volume *vol, unsigned flags)
{
	struct sv_journal *j = &vol->journal;
	memset(j, 0, sizeof *j);
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	pthread_cond_init(&j->pre_cond, NULL);
	pthread_mutex_init(&j->sync_lock, NULL);
	j->batch_open = 1;
	j->used_end = UINT64_MAX; /* not known: the first checkpoint scans */
	j->log = log_mode(vol->ops);
	j->readonly = (flags & SV_OBJ_RDONLY) != 0;
	const char *name = j->log ? SV_OBJ_LOG : SV_OBJ_JOURNAL;
	uint64_t size = j->log ? LOG_OBJ_SIZE : JOURNAL_SLOTS * JREC_SIZE;
	j->capacity = j->log ? log_capacity() : JOURNAL_SLOTS;
	pthread_cond_init(&j->early_cond, NULL);
	if (j->log && !j->readonly)
		j->early_at = j->early_max = j->capacity / 100 * early_pct();
	if (vol->ops->obj_open(vol->pool->st, vol->name, name, size, flags, &j->obj) == -1) {
		j->obj = NULL;
		if (!(flags & SV_OBJ_CREATE) && errno == ENOENT)
			return 0; /* never opened by a server: nothing to replay */
		return sv_error_errno("volume %s: cannot open its %s", vol->name, name);
	}
	if (j->log &&
	    vol->ops->obj_open(vol->pool->st, vol->name, SV_OBJ_JOURNAL, JOURNAL_SLOTS * JREC_SIZE,
			       SV_OBJ_RDONLY, &j->legacy) == -1) {
		j->legacy = NULL;
		if (errno != ENOENT)
			return sv_error_errno("volume %s: cannot open its old journal", vol->name);
	}
	return 0;
}

int
sv_journal_open(struct sv_volume *vol)
{
	return journal_open(vol, SV_OBJ_CREATE);
}

int
sv_journal_open_readonly(struct sv_volume *vol)
{
	return journal_open(vol, SV_OBJ_RDONLY);
}

static void early_stop(struct sv_journal *j);

void
sv_journal_close(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	early_stop(j);
	if (j->obj)
		vol->ops->obj_close(j->obj);
	j->obj = NULL;
	if (j->legacy)
		vol->ops->obj_close(j->legacy);
	j->legacy = NULL;
	free(j->pending);
	j->pending = NULL;
	pthread_cond_destroy(&j->cond);
	pthread_cond_destroy(&j->pre_cond);
	pthread_cond_destroy(&j->early_cond);
	pthread_mutex_destroy(&j->sync_lock);
	pthread_mutex_destroy(&j->lock);
}

/* ---- checkpoints ---- */

static int
parse_checkpoint(struct sv_volume *vol, const char *buf, size_t len, uint64_t *gen)
{
	const char *nl = memchr(buf, '\n', len < 160 ? len : 160);
	uint64_t g;
	size_t nep, blen;
	uint32_t crc;
	if (!nl ||
	    sscanf(buf, "snapvol-changed 1 gen=%" SCNu64 " epochs=%zu len=%zu crc32=0x%" SCNx32, &g,
		   &nep, &blen, &crc) != 4)
		return sv_error(EUCLEAN, "volume %s: changed.meta has a bad header", vol->name);
	const unsigned char *p = (const unsigned char *)nl + 1;
	size_t have = len - (size_t)((const char *)p - buf);
	if (have != blen)
		return sv_error(EUCLEAN, "volume %s: changed.meta is %zu bytes, header says %zu",
				vol->name, have, blen);
	if ((uint32_t)crc32(0, p, (uInt)blen) != crc)
		return sv_error(EUCLEAN, "volume %s: changed.meta checksum mismatch", vol->name);
	for (size_t i = 0; i < nep; i++) {
		uint64_t id, n;
		if (have < 16)
			return sv_error(EUCLEAN, "volume %s: changed.meta is truncated", vol->name);
		id = get64(p);
		n = get64(p + 8);
		p += 16;
		have -= 16;
		if (n > have)
			return sv_error(EUCLEAN, "volume %s: changed.meta is truncated", vol->name);
		roaring_bitmap_t *bm = sv_bitmap_load((const char *)p, n, vol->nchunks);
		if (!bm)
			return sv_error(EUCLEAN,
					"volume %s: changed.meta has a bad bitmap (malformed, or "
					"naming chunks past the end)",
					vol->name);
		struct sv_epoch *ep = sv_epoch_find_locked(vol, id);
		if (!ep && !(ep = sv_epoch_new_locked(vol, id))) {
			roaring_bitmap_free(bm);
			return -1;
		}
		roaring_bitmap_or_inplace(ep->changed, bm);
		roaring_bitmap_free(bm);
		p += n;
		have -= n;
	}
	*gen = g;
	return 0;
}

/* Serialise every epoch's bitmap; cow_lock held. */
static int
encode_checkpoint_locked(struct sv_volume *vol, uint64_t gen, char **out, size_t *outlen)
{
	size_t blen = 0;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		roaring_bitmap_run_optimize(vol->epochs[i]->changed);
		blen += 16 + roaring_bitmap_portable_size_in_bytes(vol->epochs[i]->changed);
	}
	char hdr[160];
	char *body = malloc(blen ? blen : 1);
	if (!body)
		return sv_error(ENOMEM, "out of memory");
	char *p = body;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		uint64_t n = roaring_bitmap_portable_size_in_bytes(vol->epochs[i]->changed);
		put64((unsigned char *)p, vol->epochs[i]->id);
		put64((unsigned char *)p + 8, n);
		roaring_bitmap_portable_serialize(vol->epochs[i]->changed, p + 16);
		p += 16 + n;
	}
	uint32_t crc = (uint32_t)crc32(0, (const Bytef *)body, (uInt)blen);
	int hl =
	    snprintf(hdr, sizeof hdr,
		     "snapvol-changed 1 gen=%" PRIu64 " epochs=%zu len=%zu crc32=0x%08" PRIx32 "\n",
		     gen, vol->n_epochs, blen, crc);
	char *buf = malloc((size_t)hl + blen);
	if (!buf) {
		free(body);
		return sv_error(ENOMEM, "out of memory");
	}
	memcpy(buf, hdr, (size_t)hl);
	memcpy(buf + hl, body, blen);
	free(body);
	*out = buf;
	*outlen = (size_t)hl + blen;
	return 0;
}

/* A sync of epoch's pre-image object failed with err: the sticky rule
 * (snapshot.c), then the checkpoint fails (the log is kept). */
static int
pre_sync_failed(struct sv_volume *vol, uint64_t epoch, int err)
{
	sv_lock_or_abort(&vol->cow_lock);
	bool readers = vol->n_snaps && vol->snaps[0]->epoch <= epoch;
	sv_unlock_or_abort(&vol->cow_lock);
	if (!readers) /* else sv_snap_invalidate_epoch says which it invalidates */
		sv_log_error("volume %s: a sync of the pre-images of epoch %" PRIu64
			     " failed (%s): they can no longer be trusted; no valid snapshot "
			     "reads them",
			     vol->name, epoch, strerror(err));
	(void)sv_snap_invalidate_epoch(vol, epoch, err);
	return sv_error(err, "volume %s: cannot sync the pre-images of epoch %" PRIu64 ": %s",
			vol->name, epoch, strerror(err));
}

/* The epochs now (their structs outlive a retire: the graveyard); NULL
 * with no memory (the caller then does without). */
static struct sv_epoch **
epochs_now(struct sv_volume *vol, size_t *n)
{
	sv_lock_or_abort(&vol->cow_lock);
	*n = vol->n_epochs;
	struct sv_epoch **eps = malloc((*n ? *n : 1) * sizeof *eps);
	if (eps)
		memcpy(eps, vol->epochs, *n * sizeof *eps);
	sv_unlock_or_abort(&vol->cow_lock);
	return eps;
}

/* Sync one pre-image object of ep; a failure is sticky (pre_sync_failed),
 * and both happen under sync_lock (see "The sync lock" at the top). */
static int
sync_one_pre(struct sv_volume *vol, struct sv_epoch *ep, struct sv_obj *o)
{
	sv_lock_or_abort(&vol->journal.sync_lock);
	int r = vol->ops->obj_sync(o) == -1 ? pre_sync_failed(vol, ep->id, errno ? errno : EIO) : 0;
	sv_unlock_or_abort(&vol->journal.sync_lock);
	return r;
}

/* Before a checkpoint (both modes): make every pre-image object durable.
 * The leader role keeps sv_epoch_retire from closing one under us (it
 * takes the role through sv_journal_pause). */
static int
sync_all_pre(struct sv_volume *vol)
{
	size_t n;
	struct sv_epoch **eps = epochs_now(vol, &n);
	if (!eps)
		return sv_error(ENOMEM, "out of memory");
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		sv_lock_or_abort(&vol->pre_lock);
		struct sv_obj *o = eps[i]->pre;
		sv_unlock_or_abort(&vol->pre_lock);
		if (o)
			r = sync_one_pre(vol, eps[i], o);
	}
	free(eps);
	return r;
}

/* ---- the pre-image guard (see the top) ---- */

/* Count the caller as a user of ep's object and return it (NULL: none,
 * and not counted); pre_unhold when done.  No lock held, not the leader. */
static struct sv_obj *
pre_hold(struct sv_volume *vol, struct sv_epoch *ep)
{
	struct sv_journal *j = &vol->journal;
	sv_lock_or_abort(&j->lock);
	while (j->pre_closing)
		pthread_cond_wait(&j->pre_cond, &j->lock);
	j->pre_users++;
	sv_unlock_or_abort(&j->lock);
	sv_lock_or_abort(&vol->pre_lock);
	struct sv_obj *o = ep->pre;
	sv_unlock_or_abort(&vol->pre_lock);
	if (!o) {
		sv_lock_or_abort(&j->lock);
		if (--j->pre_users == 0)
			pthread_cond_broadcast(&j->pre_cond);
		sv_unlock_or_abort(&j->lock);
	}
	return o;
}

static void
pre_unhold(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	sv_lock_or_abort(&j->lock);
	if (--j->pre_users == 0)
		pthread_cond_broadcast(&j->pre_cond);
	sv_unlock_or_abort(&j->lock);
}

/* Before a checkpoint that is not urgent: sync every pre-image object
 * without the leader role, while commits go on (see the top).  A failed
 * sync is handled as the checkpoint's own (pre_sync_failed): on Linux an
 * fdatasync reports a write-back error once per open file, so the
 * checkpoint's sync of the same object would not see it again. */
static int
presync_pre(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	if (!j->log || !j->obj || j->readonly ||
	    __atomic_load_n(&vol->pre_untrusted, __ATOMIC_ACQUIRE))
		return 0; /* records mode synced at commit; untrusted: the checkpoint refuses */
	size_t n;
	struct sv_epoch **eps = epochs_now(vol, &n);
	if (!eps)
		return 0; /* the checkpoint's sync does it all */
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct sv_obj *o = pre_hold(vol, eps[i]);
		if (!o)
			continue;
		r = sync_one_pre(vol, eps[i], o);
		pre_unhold(vol);
	}
	free(eps);
	return r;
}

/* The end of what the log object may have allocated: past the last
 * extent holding data (a few lseeks on the file backend). */
static int
log_allocated_end(struct sv_volume *vol, uint64_t *end)
{
	struct sv_obj *o = vol->journal.obj;
	uint64_t off = 0;
	*end = 0;
	while (off < LOG_OBJ_SIZE) {
		struct sv_extent ext;
		if (vol->ops->obj_extent(o, off, LOG_OBJ_SIZE - off, &ext) == -1)
			return -1;
		if (ext.length == 0)
			break;
		off += ext.length;
		if (!ext.hole)
			*end = off;
	}
	return 0;
}

/* Log mode, just after a checkpoint: every block in the log is of an old
 * generation now, dead, so its space is given back (up to the capacity,
 * 128 MiB, per volume).  Crash-safe in any order: a block the punch has
 * not reached (not yet durable, or torn) is stale, and replay stops at a
 * stale block as at a hole; the leader role keeps new blocks out until
 * the punch is done.  A failed punch costs only space: the next
 * checkpoint tries again. */
static void
give_back_log(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	if (!j->obj || j->readonly)
		return;
	if (j->used_end == UINT64_MAX && log_allocated_end(vol, &j->used_end) == -1) {
		j->used_end = UINT64_MAX;
		return;
	}
	if (j->used_end && vol->ops->obj_punch(j->obj, 0, j->used_end) == -1)
		return;
	j->used_end = 0;
}

/* Write a checkpoint; the caller holds the leader role.  give_back: punch
 * the log's dead blocks after it (not when the log is full and about to be
 * refilled: overwriting allocated blocks syncs cheaper than allocating
 * them again, and on a filesystem mounted with discard punching 128 MiB
 * took 250 ms here, which the commits waiting on the leader would pay). */
static int
checkpoint_as_leader(struct sv_volume *vol, bool give_back)
{
	struct sv_journal *j = &vol->journal;
	/* The log may hold the only copy of pre-images a failed sync lost:
	 * never forget it then (sv_snap_invalidate_epoch). */
	if (j->log && __atomic_load_n(&vol->pre_untrusted, __ATOMIC_ACQUIRE))
		return sv_error(EIO,
				"volume %s: its pre-images cannot be trusted until it is "
				"reopened",
				vol->name);
	/* Both modes.  In records mode each commit synced its objects, but
	 * what came after (a copy whose record failed, a release's punches)
	 * may be dirty still; on RADOS obj_sync costs nothing.  A freeze
	 * relies on this: after the checkpoint every pre-image is durable. */
	if (sync_all_pre(vol) == -1)
		return -1;
	char *buf = NULL;
	size_t len = 0;
	uint64_t gen = new_gen(j->gen);
	sv_lock_or_abort(&vol->cow_lock);
	int r = encode_checkpoint_locked(vol, gen, &buf, &len);
	sv_unlock_or_abort(&vol->cow_lock);
	if (r == -1)
		return -1;
	r = vol->ops->meta_write(vol->pool->st, vol->name, SV_META_CHANGED, buf, len);
	free(buf);
	if (r == -1)
		return sv_error_errno("volume %s: cannot write changed.meta", vol->name);
	j->gen = gen;
	j->next = 0;
	j->must_checkpoint = false;
	j->checkpoints++;
	sv_lock_or_abort(&j->lock);
	j->early_failed = false;
	sv_unlock_or_abort(&j->lock);
	if (j->log && give_back)
		give_back_log(vol);
	if (j->legacy) {
		/* An older snapvol's journal, replayed: now in the checkpoint. */
		vol->ops->obj_close(j->legacy);
		j->legacy = NULL;
		if (vol->ops->obj_remove(vol->pool->st, vol->name, SV_OBJ_JOURNAL) == -1 &&
		    errno != ENOENT)
			sv_log_warn("volume %s: cannot remove its old journal: %m", vol->name);
	}
	return 0;
}

static void
become_leader(struct sv_journal *j)
{
	sv_lock_or_abort(&j->lock);
	while (j->leader)
		pthread_cond_wait(&j->cond, &j->lock);
	j->leader = true;
	sv_unlock_or_abort(&j->lock);
}

static void
resign_leader(struct sv_journal *j)
{
	sv_lock_or_abort(&j->lock);
	j->leader = false;
	pthread_cond_broadcast(&j->cond);
	sv_unlock_or_abort(&j->lock);
}

/* The early users of pre-image objects first, then the leader role (see
 * "The pre-image guard" at the top). */
void
sv_journal_pause(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	sv_lock_or_abort(&j->lock);
	j->pre_closing++;
	while (j->pre_users)
		pthread_cond_wait(&j->pre_cond, &j->lock);
	while (j->leader)
		pthread_cond_wait(&j->cond, &j->lock);
	j->leader = true;
	sv_unlock_or_abort(&j->lock);
}

void
sv_journal_resume(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	sv_lock_or_abort(&j->lock);
	j->pre_closing--;
	j->leader = false;
	pthread_cond_broadcast(&j->cond);
	pthread_cond_broadcast(&j->pre_cond);
	sv_unlock_or_abort(&j->lock);
}

static int
checkpoint(struct sv_volume *vol, bool give_back)
{
	struct sv_journal *j = &vol->journal;
	uint64_t t0 = sv_freeze_tracing() ? sv_now_ns() : 0;
	if (presync_pre(vol) == -1)
		return -1; /* as the checkpoint would have: the log is kept */
	uint64_t t1 = t0 ? sv_now_ns() : 0;
	become_leader(j);
	int r = checkpoint_as_leader(vol, give_back);
	resign_leader(j);
	if (t0)
		sv_log_info("trace: volume %s: checkpoint: presync %" PRIu64 " us, then %" PRIu64
			    " us as the leader",
			    vol->name, (t1 - t0) / 1000, (sv_now_ns() - t1) / 1000);
	return r;
}

int
sv_journal_checkpoint(struct sv_volume *vol)
{
	return checkpoint(vol, true);
}

int
sv_journal_checkpoint_keep(struct sv_volume *vol)
{
	return checkpoint(vol, false);
}

/* ---- the early checkpoint (see the top) ---- */

static void *
early_thread(void *arg)
{
	struct sv_volume *vol = arg;
	struct sv_journal *j = &vol->journal;
	sv_lock_or_abort(&j->lock);
	for (;;) {
		while (!j->early_due && !j->early_stop)
			pthread_cond_wait(&j->early_cond, &j->lock);
		if (j->early_stop)
			break;
		sv_unlock_or_abort(&j->lock);
		uint64_t t0 = sv_freeze_tracing() ? sv_now_ns() : 0;
		/* Presync rounds while the copies made during one come to more
		 * than the leader should sync (EARLY_ROUNDS at most). */
		int r = 0;
		unsigned rounds = 0;
		uint64_t mark = __atomic_load_n(&j->logged_bytes, __ATOMIC_RELAXED);
		while (r == 0 && rounds++ < EARLY_ROUNDS) {
			r = presync_pre(vol);
			uint64_t now = __atomic_load_n(&j->logged_bytes, __ATOMIC_RELAXED);
			if (now - mark < j->capacity / EARLY_LEFT)
				break;
			mark = now;
		}
		uint64_t t1 = t0 ? sv_now_ns() : 0;
		bool took = false;
		uint64_t mark_kib = 0;
		if (r == 0) {
			become_leader(j);
			/* Not if another checkpoint restarted the log meanwhile. */
			uint64_t at = j->next;
			if (at >= j->early_at && (r = checkpoint_as_leader(vol, false)) == 0) {
				took = true;
				/* Won with room to spare: the mark back up a step. */
				if (at < j->capacity / 4 * 3)
					j->early_at = j->early_at + j->capacity / 16 < j->early_max
							  ? j->early_at + j->capacity / 16
							  : j->early_max;
			}
			mark_kib = j->early_at >> 10;
			resign_leader(j);
		}
		if (r == -1)
			sv_log_warn("volume %s: early checkpoint: %s", vol->name, sv_last_error());
		if (t0)
			sv_log_info("trace: volume %s: early checkpoint%s: presync %" PRIu64
				    " us in %u round(s), then %" PRIu64
				    " us as the leader; mark %" PRIu64 " KiB",
				    vol->name, took ? "" : " (not needed)", (t1 - t0) / 1000,
				    rounds > EARLY_ROUNDS ? EARLY_ROUNDS : rounds,
				    (sv_now_ns() - t1) / 1000, mark_kib);
		sv_lock_or_abort(&j->lock);
		j->early_due = false;
		if (r == -1)
			j->early_failed = true;
	}
	sv_unlock_or_abort(&j->lock);
	return NULL;
}

/* The leader, after a block: is the log past the mark?  Then wake the
 * early thread (started at the first need). */
static void
early_kick(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	if (!j->early_at || j->next < j->early_at)
		return;
	sv_lock_or_abort(&j->lock);
	if (!j->early_due && !j->early_failed && !j->early_stop) {
		if (!j->early_started) {
			if (pthread_create(&j->early_thread, NULL, early_thread, vol) != 0) {
				sv_log_warn(
				    "volume %s: no early checkpoints: cannot start a thread",
				    vol->name);
				j->early_at = 0; /* the leader's: the log-full one does it */
				sv_unlock_or_abort(&j->lock);
				return;
			}
			j->early_started = true;
		}
		j->early_due = true;
		pthread_cond_signal(&j->early_cond);
	}
	sv_unlock_or_abort(&j->lock);
}

static void
early_stop(struct sv_journal *j)
{
	sv_lock_or_abort(&j->lock);
	j->early_stop = true;
	pthread_cond_signal(&j->early_cond);
	bool started = j->early_started;
	j->early_started = false;
	sv_unlock_or_abort(&j->lock);
	if (started)
		pthread_join(j->early_thread, NULL);
}

/* ---- followers (follow.c): a process that reads a volume another one holds ---- */

_Static_assert(JREC_SIZE == SV_JOURNAL_REC_SIZE, "internal.h's record size is the journal's");

uint64_t
sv_journal_slots(void)
{
	return JOURNAL_SLOTS;
}

bool
sv_journal_decode(const unsigned char *b, uint64_t *gen, uint64_t *epoch, uint32_t *first,
		  uint32_t *count)
{
	return decode_rec(b, gen, epoch, first, count);
}

int
sv_journal_parse_checkpoint(struct sv_volume *vol, const char *buf, size_t len, uint64_t *gen)
{
	return parse_checkpoint(vol, buf, len, gen);
}

/* ---- replay ---- */

static struct sv_epoch *
replay_epoch(struct sv_volume *vol, uint64_t id)
{
	struct sv_epoch *ep = sv_epoch_find_locked(vol, id);
	return ep ? ep : sv_epoch_new_locked(vol, id);
}

/* The 32-byte records of a journal object (RADOS, or an older snapvol's). */
static int
replay_slots(struct sv_volume *vol, struct sv_obj *obj, uint64_t capacity, uint64_t *next)
{
	struct sv_journal *j = &vol->journal;
	const size_t piece = 1 << 20;
	unsigned char *p = malloc(piece);
	if (!p)
		return sv_error(ENOMEM, "out of memory");
	uint64_t slot = 0;
	bool end = false;
	int rc = 0;
	while (!end && slot < capacity) {
		struct sv_extent ext;
		uint64_t off = slot * JREC_SIZE;
		if (vol->ops->obj_extent(obj, off, JREC_SIZE, &ext) == -1) {
			rc = sv_error_errno("volume %s: reading its journal", vol->name);
			break;
		}
		if (ext.hole)
			break; /* never written: the end */
		size_t n = piece;
		if (n > (capacity - slot) * JREC_SIZE)
			n = (size_t)((capacity - slot) * JREC_SIZE);
		if (vol->ops->obj_pread(obj, p, n, off) == -1) {
			rc = sv_error_errno("volume %s: reading its journal", vol->name);
			break;
		}
		for (size_t i = 0; i + JREC_SIZE <= n; i += JREC_SIZE, slot++) {
			uint64_t g, e;
			uint32_t first, count;
			if (!decode_rec(p + i, &g, &e, &first, &count) || g != j->gen) {
				end = true;
				break;
			}
			if (count == 0 || (uint64_t)first + count > vol->nchunks) {
				rc = sv_error(EUCLEAN,
					      "volume %s: journal record %" PRIu64
					      " names chunks past the end",
					      vol->name, slot);
				end = true;
				break;
			}
			struct sv_epoch *ep = replay_epoch(vol, e);
			if (!ep) {
				rc = -1;
				end = true;
				break;
			}
			roaring_bitmap_add_range(ep->changed, first, (uint64_t)first + count);
			j->replayed++;
		}
	}
	free(p);
	*next = slot;
	return rc;
}

struct lhdr {
	uint64_t gen, hsize, dlen;
	uint32_t nrec, nseg, pcrc;
};

/* A block's header, if it is one of generation gen at a sane size. */
static bool
parse_lhdr(const unsigned char *b, uint64_t gen, struct lhdr *h)
{
	if (get32(b) != LBLK_MAGIC || get32(b + 4) != (uint32_t)crc32(0, b + 8, LHDR_SIZE - 8))
		return false;
	h->gen = get64(b + 8);
	h->nrec = get32(b + 16);
	h->nseg = get32(b + 20);
	h->hsize = get64(b + 24);
	h->dlen = get64(b + 32);
	h->pcrc = get32(b + 40);
	return h->gen == gen;
}

/* Is a logged run [off, off+len) of the volume inside chunks [first,
 * first+count) and whole sectors? */
static bool
seg_ok(const struct sv_volume *vol, uint64_t first, uint64_t count, uint64_t off, uint64_t len)
{
	uint64_t a = first << vol->chunk_shift, z = (first + count) << vol->chunk_shift;
	if (z > vol->size)
		z = vol->size;
	return len > 0 && off % 512 == 0 && len % 512 == 0 && off >= a && off <= z &&
	       len <= z - off;
}

/* Copy a logged run into its pre-image object, in pieces. */
static int
replay_data(struct sv_volume *vol, struct sv_epoch *ep, uint64_t from, uint64_t off, uint64_t len,
	    unsigned char *buf, size_t piece)
{
	struct sv_obj *pre;
	if (sv_epoch_pre(vol, ep, true, &pre) == -1 || !pre)
		return sv_error_errno("volume %s: replaying its log into epoch %" PRIu64, vol->name,
				      ep->id);
	while (len > 0) {
		size_t n = len < piece ? (size_t)len : piece;
		if (vol->ops->obj_pread(vol->journal.obj, buf, n, from) == -1 ||
		    vol->ops->obj_pwrite(pre, buf, n, off, 0) == -1)
			return sv_error_errno("volume %s: replaying its log into epoch %" PRIu64,
					      vol->name, ep->id);
		from += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Apply one whole block at off (its CRCs checked); hdr: its header area. */
static int
apply_block(struct sv_volume *vol, uint64_t off, const struct lhdr *h, const unsigned char *hdr,
	    bool readonly, unsigned char *buf, size_t piece)
{
	struct sv_journal *j = &vol->journal;
	/* Check everything first: a block that passes its CRCs but names
	 * nonsense is damage, not a torn write. */
	const unsigned char *rec = hdr + LHDR_SIZE, *seg = rec + (size_t)h->nrec * LREC_SIZE;
	uint64_t segs = 0, bytes = 0;
	for (uint32_t r = 0; r < h->nrec; r++) {
		const unsigned char *q = rec + (size_t)r * LREC_SIZE;
		uint64_t first = get32(q + 8), count = get32(q + 12), ns = get32(q + 16);
		if (count == 0 || first + count > vol->nchunks || ns > h->nseg - segs)
			goto bad;
		for (uint64_t k = 0; k < ns; k++, segs++) {
			uint64_t so = get64(seg + segs * LSEG_SIZE),
				 sl = get64(seg + segs * LSEG_SIZE + 8);
			if (!seg_ok(vol, first, count, so, sl) || sl > h->dlen - bytes)
				goto bad;
			bytes += sl;
		}
	}
	if (segs != h->nseg || bytes != h->dlen)
		goto bad;
	uint64_t oldest = vol->n_snaps ? vol->snaps[0]->epoch : UINT64_MAX;
	uint64_t cur = sv_current_epoch_locked(vol)->id;
	uint64_t from = off + h->hsize;
	segs = 0;
	for (uint32_t r = 0; r < h->nrec; r++) {
		const unsigned char *q = rec + (size_t)r * LREC_SIZE;
		uint64_t id = get64(q), first = get32(q + 8), count = get32(q + 12);
		uint32_t ns = get32(q + 16);
		struct sv_epoch *ep = replay_epoch(vol, id);
		if (!ep)
			return -1;
		roaring_bitmap_add_range(ep->changed, first, first + count);
		j->replayed++;
		/* An epoch no live snapshot needs is dropped by the open (a
		 * delete whose checkpoint a crash cut short): do not bring its
		 * object back. */
		bool want = !readonly && (id >= oldest || id >= cur);
		for (uint32_t k = 0; k < ns; k++, segs++) {
			uint64_t so = get64(seg + segs * LSEG_SIZE),
				 sl = get64(seg + segs * LSEG_SIZE + 8);
			if (want && replay_data(vol, ep, from, so, sl, buf, piece) == -1)
				return -1;
			from += sl;
			j->replayed_bytes += sl;
		}
	}
	return 0;
bad:
	return sv_error(EUCLEAN,
			"volume %s: pre-image log block at %" PRIu64 " names chunks or "
			"runs it cannot hold",
			vol->name, off);
}

/* The blocks of the pre-image log. */
static int
replay_log(struct sv_volume *vol, bool readonly)
{
	struct sv_journal *j = &vol->journal;
	const size_t piece = 1 << 20;
	unsigned char *buf = malloc(piece);
	if (!buf)
		return sv_error(ENOMEM, "out of memory");
	uint64_t off = 0;
	int rc = 0;
	while (off + LOG_ALIGN <= LOG_OBJ_SIZE) {
		struct sv_extent ext;
		if (vol->ops->obj_extent(j->obj, off, LOG_ALIGN, &ext) == -1) {
			rc = sv_error_errno("volume %s: reading its pre-image log", vol->name);
			break;
		}
		if (ext.hole)
			break; /* never written: the end */
		unsigned char h0[LHDR_SIZE];
		struct lhdr h;
		if (vol->ops->obj_pread(j->obj, h0, LHDR_SIZE, off) == -1) {
			rc = sv_error_errno("volume %s: reading its pre-image log", vol->name);
			break;
		}
		if (!parse_lhdr(h0, j->gen, &h))
			break; /* torn, or stale: the end */
		uint64_t need =
		    LHDR_SIZE + (uint64_t)h.nrec * LREC_SIZE + (uint64_t)h.nseg * LSEG_SIZE;
		if (h.nrec == 0 || h.hsize != align_up(need) || h.dlen % 512 ||
		    h.hsize > LOG_OBJ_SIZE - off || h.dlen > LOG_OBJ_SIZE - off - h.hsize) {
			rc = sv_error(EUCLEAN,
				      "volume %s: pre-image log block at %" PRIu64
				      " has a bad header",
				      vol->name, off);
			break;
		}
		unsigned char *hdr = malloc(h.hsize);
		if (!hdr) {
			rc = sv_error(ENOMEM, "out of memory");
			break;
		}
		/* The payload's CRC: the rest of the header area, then the data. */
		uLong crc = 0;
		bool ok = vol->ops->obj_pread(j->obj, hdr, h.hsize, off) == 0;
		if (ok)
			crc = crc32(0, hdr + LHDR_SIZE, (uInt)(h.hsize - LHDR_SIZE));
		for (uint64_t d = 0; ok && d < h.dlen;) {
			size_t n = h.dlen - d < piece ? (size_t)(h.dlen - d) : piece;
			ok = vol->ops->obj_pread(j->obj, buf, n, off + h.hsize + d) == 0;
			crc = crc32(crc, buf, (uInt)n);
			d += n;
		}
		if (!ok) {
			free(hdr);
			rc = sv_error_errno("volume %s: reading its pre-image log", vol->name);
			break;
		}
		if ((uint32_t)crc != h.pcrc) {
			free(hdr);
			break; /* torn: the end */
		}
		rc = apply_block(vol, off, &h, hdr, readonly, buf, piece);
		free(hdr);
		if (rc == -1)
			break;
		off += h.hsize + align_up(h.dlen);
	}
	free(buf);
	j->next = off;
	return rc;
}

int
sv_journal_load(struct sv_volume *vol, json_t *volmeta)
{
	(void)volmeta;
	struct sv_journal *j = &vol->journal;
	char *buf;
	size_t len;
	uint64_t gen = 0;
	if (vol->ops->meta_read(vol->pool->st, vol->name, SV_META_CHANGED, &buf, &len) == 0) {
		int r = parse_checkpoint(vol, buf, len, &gen);
		free(buf);
		if (r == -1)
			return -1;
	} else if (errno != ENOENT) {
		return sv_error_errno("volume %s: reading changed.meta", vol->name);
	}
	j->gen = gen;
	j->replayed = j->replayed_bytes = 0;
	uint64_t next = 0;
	if (!j->log) {
		if (j->obj && replay_slots(vol, j->obj, j->capacity, &next) == -1)
			return -1;
		j->next = next;
	} else {
		if (j->legacy && replay_slots(vol, j->legacy, JOURNAL_SLOTS, &next) == -1)
			return -1;
		if (j->obj && replay_log(vol, j->readonly) == -1)
			return -1;
	}
	if (j->replayed)
		sv_log_info("volume %s: replayed %" PRIu64 " journal records (%" PRIu64
			    " bytes of pre-images)",
			    vol->name, j->replayed, j->replayed_bytes);
	return 0;
}

/* ---- commit ---- */

/* Sync the objects of the batch's records (with only_unlogged, of those
 * whose bytes are not in the log); a failure invalidates the epoch's
 * snapshots (sticky) before it returns. */
static int
sync_pre_objects(struct sv_volume *vol, struct pending_rec *b, size_t n, bool only_unlogged)
{
	for (size_t i = 0; i < n; i++) {
		if (only_unlogged && (b[i].rec.nodata || b[i].rec.data))
			continue;
		struct sv_epoch *ep = b[i].rec.ep;
		bool seen = false;
		for (size_t k = 0; k < i && !seen; k++)
			seen = b[k].rec.ep == ep &&
			       !(only_unlogged && (b[k].rec.nodata || b[k].rec.data));
		if (seen)
			continue;
		sv_lock_or_abort(&vol->pre_lock);
		struct sv_obj *o = ep->pre;
		sv_unlock_or_abort(&vol->pre_lock);
		if (!o)
			continue;
		sv_lock_or_abort(&vol->journal.sync_lock);
		if (vol->ops->obj_sync(o) == -1) {
			/* Sticky: the file may have lost other pre-images
			 * (snapshot.c); under sync_lock (see the top). */
			int e = errno ? errno : EIO;
			(void)sv_snap_invalidate_epoch(vol, ep->id, e);
			sv_unlock_or_abort(&vol->journal.sync_lock);
			errno = e;
			return -1;
		}
		sv_unlock_or_abort(&vol->journal.sync_lock);
	}
	return 0;
}

static uint64_t
rec_bytes(const struct sv_jrec *r)
{
	uint64_t n = 0;
	for (uint32_t k = 0; k < r->nseg; k++)
		n += r->seg[k].len;
	return n;
}

/* Log mode: append the batch as one block and sync it.  0 or an errno. */
static int
write_block(struct sv_volume *vol, struct pending_rec *b, size_t n)
{
	struct sv_journal *j = &vol->journal;
	uint64_t dlen = 0, nseg = 0;
	for (size_t i = 0; i < n; i++) {
		if (!b[i].rec.data)
			continue;
		dlen += rec_bytes(&b[i].rec);
		nseg += b[i].rec.nseg;
	}
#define BLOCK_SIZE() (align_up(LHDR_SIZE + n * LREC_SIZE + nseg * LSEG_SIZE) + align_up(dlen))
	if (j->must_checkpoint || j->next + BLOCK_SIZE() > j->capacity) {
		uint64_t t0 = sv_freeze_tracing() ? sv_now_ns() : 0;
		if (checkpoint_as_leader(vol, false) == -1)
			return sv_last_errno();
		sv_lock_or_abort(&j->lock);
		bool lost = j->early_due;
		sv_unlock_or_abort(&j->lock);
		if (lost && j->early_at) {
			/* The early checkpoint lost the race: start the next
			 * one a step sooner (not below a quarter of the log). */
			uint64_t low =
			    j->capacity / 4 < j->early_max ? j->capacity / 4 : j->early_max;
			uint64_t step = j->capacity / 8;
			j->early_at = j->early_at > low + step ? j->early_at - step : low;
		}
		if (t0)
			sv_log_info("trace: volume %s: the log is full: a checkpoint took %" PRIu64
				    " us; early mark %" PRIu64 " KiB",
				    vol->name, (sv_now_ns() - t0) / 1000, j->early_at >> 10);
	}
	/* What the log cannot hold keeps the old order: its object is synced
	 * before the block is written. */
	for (size_t i = n; i-- > 0 && j->next + BLOCK_SIZE() > j->capacity;) {
		if (!b[i].rec.data)
			continue;
		dlen -= rec_bytes(&b[i].rec);
		nseg -= b[i].rec.nseg;
		b[i].rec.data = NULL;
		b[i].rec.nseg = 0;
	}
	uint64_t hsize = align_up(LHDR_SIZE + n * LREC_SIZE + nseg * LSEG_SIZE);
	uint64_t total = BLOCK_SIZE();
#undef BLOCK_SIZE
	if (j->next + total > j->capacity)
		return ENOSPC; /* cannot be: records alone fit a checkpointed log */
	if (sync_pre_objects(vol, b, n, true) == -1)
		return errno ? errno : EIO; /* the epoch is invalidated */
	/* The header area is built here; the bytes are written from the
	 * copiers' buffers (each copier's runs lie back to back in one), so a
	 * batch's pre-images are not copied again: a few writes, one sync. */
	unsigned char *blk = calloc(1, hsize);
	if (!blk)
		return ENOMEM;
	unsigned char *rec = blk + LHDR_SIZE, *seg = rec + n * LREC_SIZE;
	for (size_t i = 0; i < n; i++) {
		const struct sv_jrec *r = &b[i].rec;
		unsigned char *q = rec + i * LREC_SIZE;
		put64(q, r->ep->id);
		put32(q + 8, r->first);
		put32(q + 12, r->count);
		put32(q + 16, r->data ? r->nseg : 0);
		put32(q + 20, !r->data && !r->nodata ? LREC_UNLOGGED : 0);
		for (uint32_t k = 0; r->data && k < r->nseg; k++) {
			put64(seg, r->seg[k].off);
			put64(seg + 8, r->seg[k].len);
			seg += LSEG_SIZE;
		}
	}
	uLong crc = crc32(0, blk + LHDR_SIZE, (uInt)(hsize - LHDR_SIZE));
	for (size_t i = 0; i < n; i++)
		if (b[i].rec.data && b[i].rec.nseg)
			crc = crc32(crc, b[i].rec.data, (uInt)rec_bytes(&b[i].rec));
	put32(blk, LBLK_MAGIC);
	put64(blk + 8, j->gen);
	put32(blk + 16, (uint32_t)n);
	put32(blk + 20, (uint32_t)nseg);
	put64(blk + 24, hsize);
	put64(blk + 32, dlen);
	put32(blk + 40, (uint32_t)crc);
	put32(blk + 4, (uint32_t)crc32(0, blk + 8, LHDR_SIZE - 8));
	int r = vol->ops->obj_pwrite(j->obj, blk, hsize, j->next, 0);
	free(blk);
	uint64_t at = j->next + hsize;
	for (size_t i = 0; r == 0 && i < n;) {
		if (!b[i].rec.data || !b[i].rec.nseg) {
			i++;
			continue;
		}
		/* consecutive records whose bytes are consecutive: one write */
		const unsigned char *p = b[i].rec.data;
		uint64_t len = rec_bytes(&b[i].rec);
		for (i++; i < n && b[i].rec.data && b[i].rec.nseg && b[i].rec.data == p + len; i++)
			len += rec_bytes(&b[i].rec);
		r = vol->ops->obj_pwrite(j->obj, p, len, at, 0);
		at += len;
	}
	static const unsigned char zeros[LOG_ALIGN];
	if (r == 0 && align_up(dlen) > dlen)
		r = vol->ops->obj_pwrite(j->obj, zeros, align_up(dlen) - dlen, at, 0);
	if (r == 0)
		r = vol->ops->obj_sync(j->obj);
	if (r == -1) {
		/* Past j->next nothing is live: give back what the failed write
		 * took (on a full store, the next metadata write needs it). */
		int e = errno ? errno : EIO;
		if (vol->ops->obj_punch(j->obj, j->next, total) == -1 &&
		    j->used_end != UINT64_MAX && j->next + total > j->used_end)
			j->used_end = j->next + total; /* the checkpoint's punch tries again */
		return e;
	}
	j->next += total;
	__atomic_add_fetch(&j->logged_bytes, dlen, __ATOMIC_RELAXED); /* early_thread reads it */
	if (j->used_end != UINT64_MAX && j->next > j->used_end)
		j->used_end = j->next;
	early_kick(vol);
	return 0;
}

/* Log mode.  On a full store the bytes may not fit where the records
 * would: then the batch keeps the old order (its objects synced, records
 * only), so a nearly full store costs what it did before the log. */
static int
append_block(struct sv_volume *vol, struct pending_rec *b, size_t n)
{
	int e = write_block(vol, b, n);
	bool logged = false;
	for (size_t i = 0; i < n; i++)
		logged |= b[i].rec.data && b[i].rec.nseg;
	if ((e != ENOSPC && e != EDQUOT) || !logged)
		return e;
	for (size_t i = 0; i < n; i++) {
		b[i].rec.data = NULL;
		b[i].rec.nseg = 0;
	}
	return write_block(vol, b, n);
}

/* Records only (durable_writes): sync the pre-image objects, append the
 * records, sync the journal.  0 or an errno. */
static int
append_records(struct sv_volume *vol, struct pending_rec *b, size_t n)
{
	struct sv_journal *j = &vol->journal;
	if (sync_pre_objects(vol, b, n, false) == -1)
		return errno ? errno : EIO; /* the epoch is invalidated (sticky) */
	if ((j->must_checkpoint || j->next + n > j->capacity) &&
	    checkpoint_as_leader(vol, false) == -1)
		return sv_last_errno();
	unsigned char *recs = malloc(n * JREC_SIZE);
	if (!recs)
		return ENOMEM;
	for (size_t i = 0; i < n; i++)
		encode_rec(recs + i * JREC_SIZE, j->gen, b[i].rec.ep->id, b[i].rec.first,
			   b[i].rec.count);
	int r = vol->ops->obj_pwrite(j->obj, recs, n * JREC_SIZE, j->next * JREC_SIZE, 0);
	if (r == 0)
		r = vol->ops->obj_sync(j->obj);
	free(recs);
	if (r == -1)
		return errno ? errno : EIO;
	j->next += n;
	return 0;
}

static int
commit_batch(struct sv_volume *vol, struct pending_rec *b, size_t n)
{
	if (__atomic_load_n(&vol->pre_untrusted, __ATOMIC_ACQUIRE))
		return EIO; /* see sv_snap_invalidate_epoch */
	int e = vol->journal.log ? append_block(vol, b, n) : append_records(vol, b, n);
	if (e)
		return e;
	sv_lock_or_abort(&vol->cow_lock);
	for (size_t i = 0; i < n; i++) {
		struct sv_epoch *ep = b[i].rec.ep;
		uint64_t a = b[i].rec.first, z = a + b[i].rec.count;
		roaring_bitmap_add_range(ep->changed, a, z);
		if (ep->nocopy)
			roaring_bitmap_add_range(ep->nocopy, a, z);
		roaring_bitmap_remove_range(vol->inflight, a, z);
	}
	pthread_cond_broadcast(&vol->cow_cond);
	sv_unlock_or_abort(&vol->cow_lock);
	return 0;
}

int
sv_journal_commit(struct sv_volume *vol, const struct sv_jrec *recs, size_t n)
{
	struct sv_journal *j = &vol->journal;
	struct waiter me = {.err = 0};
	uint64_t t0 = sv_freeze_tracing() ? sv_now_ns() : 0;
	unsigned seq0 = __atomic_load_n(&vol->snap_sync_seq, __ATOMIC_RELAXED);
	sv_lock_or_abort(&j->lock);
	if (j->n_pending + n > j->cap_pending) {
		size_t cap = j->cap_pending ? j->cap_pending : 64;
		while (cap < j->n_pending + n)
			cap *= 2;
		struct pending_rec *np = realloc(j->pending, cap * sizeof *np);
		if (!np) {
			sv_unlock_or_abort(&j->lock);
			errno = ENOMEM;
			return -1;
		}
		j->pending = np;
		j->cap_pending = cap;
	}
	for (size_t i = 0; i < n; i++)
		j->pending[j->n_pending++] = (struct pending_rec){.rec = recs[i], .w = &me};
	uint64_t mine = j->batch_open;
	while (j->batch_done < mine) {
		if (j->leader) {
			pthread_cond_wait(&j->cond, &j->lock);
			continue;
		}
		/* Lead: take everything queued as one batch. */
		j->leader = true;
		struct pending_rec *batch = j->pending;
		size_t nb = j->n_pending;
		j->pending = NULL;
		j->n_pending = j->cap_pending = 0;
		uint64_t bno = j->batch_open++;
		sv_unlock_or_abort(&j->lock);

		int err = commit_batch(vol, batch, nb);
		for (size_t i = 0; i < nb; i++)
			batch[i].w->err = err;

		sv_lock_or_abort(&j->lock);
		free(batch);
		j->syncs++;
		j->batch_done = bno;
		j->leader = false;
		pthread_cond_broadcast(&j->cond);
	}
	sv_unlock_or_abort(&j->lock);
	if (t0) {
		/* What a first write waits for (bench/cow.sh TRACE=1): over
		 * 1 ms, and whether a snapshot's origin sync ran meanwhile. */
		uint64_t ns = sv_now_ns() - t0;
		unsigned seq1 = __atomic_load_n(&vol->snap_sync_seq, __ATOMIC_RELAXED);
		if (ns > 1000000)
			sv_log_info("trace: volume %s: a commit took %" PRIu64 " us%s", vol->name,
				    ns / 1000,
				    (seq0 & 1) || seq1 != seq0 ? " during a snapshot's origin sync"
							       : "");
	}
	if (me.err) {
		errno = me.err;
		return -1;
	}
	return 0;
}
