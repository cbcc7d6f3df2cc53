/*
 * engine.h: the engine's API, the only thing nbd/ and ctl/ see of volumes.
 *
 * A pool holds volumes.  A volume is served through views: a view is what an
 * NBD export reads and writes.  Today a view is the live volume; the snapshot
 * engine adds read-only views of snapshots ("VOL@SNAP") behind the same calls,
 * and copy-on-write inside sv_view_pwrite and friends, so nbd/ never changes
 * for it.  nbd/ knows nothing of copy-on-write; the engine knows nothing of
 * sockets.
 *
 * Two error conventions (see common/error.h):
 *  - control path (pools, volumes, opening views): return -1 with the
 *    thread's last error set (sv_last_error(), sv_last_errno());
 *  - data path (sv_view_* I/O): return -1 and store an errno value in *err
 *    (EIO, ENOSPC, EINVAL, EPERM, ENOTSUP...), which nbd/ maps to the NBD
 *    error codes.  Data-path calls log nothing for client mistakes.
 *
 * All calls are thread-safe.  Data-path calls on one view (or on several
 * views of one volume, e.g. NBD multi-conn) may run concurrently.
 */
#ifndef SV_ENGINE_H
#define SV_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"
#include "store.h"

#define SV_CHUNK_MIN	 4096u
#define SV_CHUNK_MAX	 (1024u * 1024u)
#define SV_CHUNK_DEFAULT 4096u
/* Largest volume: offsets and lengths stay far from INT64_MAX, so off+len
 * never overflows an off_t anywhere below. */
#define SV_VOLUME_MAX_SIZE (UINT64_C(1) << 60)

/* ---- pools ---- */

struct sv_pool;

#define SV_POOL_CREATE 0x1u /* create the pool if it does not exist */

/* Open a pool ("DIR", later "rados:NAME") and take its exclusive lock.  If
 * another process holds it, fails with EWOULDBLOCK and a message saying so. */
int sv_pool_open(const char *spec, unsigned flags, struct sv_pool **out);
/* The same over a store the caller opened (tests wrap the file backend in
 * one that injects faults or simulates power loss).  The pool owns st. */
int sv_pool_open_store(struct sv_store *st, const char *spec, struct sv_pool **out);
/* Sync and close every open volume, release the lock. */
void sv_pool_close(struct sv_pool *pool);
const char *sv_pool_describe(struct sv_pool *pool);

/* ---- volumes ---- */

struct sv_volume_info {
	char name[SV_NAME_MAX + 1];
	uint64_t size;		 /* bytes */
	uint32_t chunk_size;	 /* bytes, power of 2 in [SV_CHUNK_MIN, SV_CHUNK_MAX] */
	uint64_t created;	 /* seconds since the Unix epoch */
	uint64_t allocated;	 /* bytes of space the volume's data holds */
	unsigned open_views;	 /* views open now (NBD connections) */
	char origin_path[512];	 /* where the raw image lives, if it is a local file ("" else) */
	char full_policy[16];	 /* "fail-writes" or "drop-snapshot" */
	unsigned snapshots;	 /* live snapshots */
	uint64_t snapshot_space; /* bytes the snapshots' pre-images hold */
	bool held;		 /* open in this process (on a RADOS pool: its claim is ours) */
};

/* size must be > 0, a multiple of 512 and <= SV_VOLUME_MAX_SIZE; chunk_size
 * 0 means SV_CHUNK_DEFAULT.  EEXIST, EINVAL with a clear message. */
int sv_volume_create(struct sv_pool *pool, const char *name, uint64_t size, uint32_t chunk_size);
/* EBUSY while any view of it is open; ENOENT if there is none. */
int sv_volume_delete(struct sv_pool *pool, const char *name);
int sv_volume_info(struct sv_pool *pool, const char *name, struct sv_volume_info *info);
/* What happens when the store is full and a write needs a copy:
 * "fail-writes" (the write gets ENOSPC; the default) or "drop-snapshot"
 * (the oldest snapshot is invalidated, logged and marked so in listings,
 * and the write goes on).  Either way the origin is never corrupted. */
int sv_volume_set_policy(struct sv_pool *pool, const char *name, const char *policy);
/* All volumes, sorted by name; *infos is malloc'd (free it). */
int sv_volume_list(struct sv_pool *pool, struct sv_volume_info **infos, size_t *n);

/* ---- snapshots ---- */

struct sv_snapshot_info {
	char volume[SV_NAME_MAX + 1];
	char name[SV_NAME_MAX + 1];
	uint64_t epoch;	     /* taken at the start of this epoch */
	uint64_t created;    /* seconds since the Unix epoch */
	char consistency[8]; /* "crash" or "frozen" */
	bool invalid;	     /* its pre-images could not be kept */
	uint64_t space;	     /* bytes of pre-images held for it */
	unsigned open_views;
};

/* Take snapshots "VOL@SNAP" of one or more volumes at one instant (a
 * consistency group).  O(1) in the volumes' sizes, blocks no I/O; returns
 * once the snapshots are durable.  consistency is "crash" (NULL) or
 * "frozen" (the caller froze the filesystem on top).  EEXIST, ENOENT,
 * EINVAL (bad names, a volume twice) with a message; nothing is taken
 * unless all are. */
int sv_snapshot_create(struct sv_pool *pool, const char *const *specs, size_t n,
		       const char *consistency);
/* The same with flags: SV_SNAP_QUIESCE holds the group's writes (a
 * block-level freeze: writes queued, those in flight drained) around the
 * epoch switch, and releases them before the durability wait. */
#define SV_SNAP_QUIESCE 0x1u
int sv_snapshot_create_ex(struct sv_pool *pool, const char *const *specs, size_t n,
			  const char *consistency, unsigned flags);
/* The same, calling taken(arg) once the instant has passed (every volume
 * switched, held writes released) and before the durability wait: an
 * fsfreeze agent thaws then, so the syncs are outside its freeze window.
 * The snapshots exist only if this then returns 0.  taken may be NULL. */
int sv_snapshot_create_cb(struct sv_pool *pool, const char *const *specs, size_t n,
			  const char *consistency, unsigned flags, void (*taken)(void *arg),
			  void *arg);
/* Record a snapshot as "crash" or "frozen" (an fsfreeze agent upgrades it
 * once it knows the filesystem stayed frozen through the switch). */
int sv_snapshot_set_consistency(struct sv_pool *pool, const char *volume, const char *snap,
				const char *consistency);
/* Live snapshots of a volume, oldest first; *infos is malloc'd. */
int sv_snapshot_list(struct sv_pool *pool, const char *volume, struct sv_snapshot_info **infos,
		     size_t *n);
/* EBUSY while exported. */
int sv_snapshot_delete(struct sv_pool *pool, const char *volume, const char *snap);
/* Make the volume's contents the snapshot's again (crash-safely: an
 * interrupted rollback is finished when the volume is next opened).  Writes
 * are held while it runs; see snapshot.c for what readers see. */
int sv_snapshot_rollback(struct sv_pool *pool, const char *volume, const char *snap);

/* Copy-on-write counters of a volume, for status and tests. */
struct sv_cow_stats {
	uint64_t epoch;		  /* current epoch */
	uint64_t snapshots;	  /* live snapshots */
	uint64_t copies;	  /* copy runs committed since open */
	uint64_t copied_bytes;	  /* bytes of data copied (holes are not) */
	uint64_t journal_commits; /* group commits (each one pair of syncs) */
};
int sv_volume_cow_stats(struct sv_pool *pool, const char *name, struct sv_cow_stats *st);

/* ---- views: what an export serves ---- */

struct sv_view;

/* Open the view an NBD export name names: "VOL" (the live volume,
 * read-write) or "VOL@SNAP" (a snapshot, read-only).  The name need not be
 * NUL-terminated and may hold any bytes (it comes from the network): it is
 * validated here.  ENOENT for no such volume/snapshot, EINVAL for a malformed
 * name, both with a message fit to send to the client. */
int sv_view_open(struct sv_pool *pool, const char *export_name, size_t len, struct sv_view **out);
void sv_view_close(struct sv_view *v);

uint64_t sv_view_size(struct sv_view *v);
bool sv_view_readonly(struct sv_view *v);
uint32_t sv_view_chunk_size(struct sv_view *v);
/* One line for NBD_INFO_DESCRIPTION and listings. */
const char *sv_view_description(struct sv_view *v);

/* I/O flags */
#define SV_FUA	     0x1u /* durable before the call returns */
#define SV_NO_HOLE   0x2u /* zero: leave the range allocated */
#define SV_FAST_ZERO 0x4u /* zero: fail with ENOTSUP unless it is cheap */
/* write/trim/zero: fail with EAGAIN instead of waiting while the volume's
 * writes are held (a freeze, a rollback); nothing was done then. */
#define SV_NOWAIT 0x8u

/* Callers have checked off+len <= size and that the view is writable for
 * writes; the engine asserts it.  len may be 0 only where NBD allows it. */
int sv_view_pread(struct sv_view *v, void *buf, uint32_t len, uint64_t off, int *err);
/* Start a read without waiting for it, where the backend reads that way
 * (RADOS: obj_pread_async): 1, and done(arg, 0) or done(arg, errno) then
 * follows exactly once, from another thread or before this returns.  0 if
 * it was not started (a snapshot view, chunks still landing from
 * write-behind, a backend without it, a failure to start): then use
 * sv_view_pread. */
int sv_view_pread_async(struct sv_view *v, void *buf, uint32_t len, uint64_t off,
			void (*done)(void *arg, int err), void *arg);
/* Whether sv_view_pread_async can start reads of this view at all. */
bool sv_view_reads_async(struct sv_view *v);
/* If the whole range can be read straight from one file descriptor (for
 * sendfile), return 0 and that fd and offset; else -1 (use sv_view_pread). */
int sv_view_read_fd(struct sv_view *v, uint32_t len, uint64_t off, int *fd, uint64_t *fd_off);
int sv_view_pwrite(struct sv_view *v, const void *buf, uint32_t len, uint64_t off, unsigned flags,
		   int *err);
/* On a snapshot's (otherwise read-only) view, a trim releases the whole
 * chunks of the range: they read as zeros from then on, their pre-images
 * are dropped where no older snapshot needs them, and no more copies are
 * made for them: a backup reader frees the space behind itself. */
int sv_view_trim(struct sv_view *v, uint32_t len, uint64_t off, unsigned flags, int *err);
int sv_view_zero(struct sv_view *v, uint32_t len, uint64_t off, unsigned flags, int *err);
/* Makes every write completed on any view of the volume durable. */
int sv_view_flush(struct sv_view *v, int *err);
int sv_view_cache(struct sv_view *v, uint32_t len, uint64_t off, int *err);
/* base:allocation: fill up to max extents covering [off, off+len) from the
 * start, in order, merged, never past off+len; at least one if len > 0. */
int sv_view_extents(struct sv_view *v, uint32_t len, uint64_t off, struct sv_extent *ext,
		    size_t max, size_t *n, int *err);

/* ---- freeze ---- */

/* A block-level freeze of one or more volumes (the XFS sequence): new
 * writes, trims and zeroings are held (queued, never failed), those in
 * flight finish, origin and pre-images are synced, the change journal is
 * checkpointed (the volume is clean: nothing to replay); the origin is
 * synced first while writes still flow, so the hold is short.  Reads are
 * never held.  Freezes nest: writes flow again when the last freeze of a volume
 * ends.  Each freeze is a lease: it ends at sv_freeze_end, when it is not
 * renewed within lease_ms, or max_ms after it began, whichever comes first
 * (a reaper thread ends lapsed ones and logs it). */
#define SV_FREEZE_LEASE_MIN_MS	 100u
#define SV_FREEZE_MAX_LIMIT_MS	 (3600u * 1000u)
#define SV_FREEZE_MAX_DEFAULT_MS (60u * 1000u)
#define SV_FREEZE_MAX_VOLUMES	 32u
#define SV_FREEZE_HOLDER_MAX	 96u

/* lease_ms in [SV_FREEZE_LEASE_MIN_MS, max]; max_ms 0 = the pool's default
 * (sv_freeze_set_default_max), at most SV_FREEZE_MAX_LIMIT_MS.  EINVAL
 * (bounds, a volume twice), ENOENT, EBUSY (being rolled back) with a
 * message; nothing stays frozen on failure. */
int sv_freeze_begin(struct sv_pool *pool, const char *const *names, size_t n, uint64_t lease_ms,
		    uint64_t max_ms, uint64_t *id);
/* A free-form tag for listings: who holds it ("pid 1234"). */
int sv_freeze_set_holder(struct sv_pool *pool, uint64_t id, const char *holder);
/* Extend the lease by its length from now (never past the maximum).
 * ENOENT "freeze N has ended (...)" once it ended, for whatever reason. */
int sv_freeze_renew(struct sv_pool *pool, uint64_t id);
int sv_freeze_end(struct sv_pool *pool, uint64_t id);
/* End every freeze that covers the volume (a freeze of a group ends whole);
 * *ended counts them.  ENOENT if the volume is not frozen. */
int sv_freeze_thaw_volume(struct sv_pool *pool, const char *name, unsigned *ended);
/* The default and bound for max_ms of later freezes (serve --freeze-max). */
int sv_freeze_set_default_max(struct sv_pool *pool, uint64_t max_ms);

struct sv_freeze_info {
	uint64_t id;
	size_t n_volumes;
	char volumes[SV_FREEZE_MAX_VOLUMES][SV_NAME_MAX + 1];
	unsigned holds;		/* freezes holding these volumes now (nesting; max over them) */
	uint64_t created_ms;	/* Unix time in ms */
	uint64_t lease_ms;	/* lease length */
	uint64_t expires_in_ms; /* until the lease lapses unless renewed */
	uint64_t max_in_ms;	/* until the hard maximum */
	uint64_t ends_ms;	/* Unix time in ms when it ends unless renewed */
	char holder[SV_FREEZE_HOLDER_MAX];
};
/* One freeze, or all (oldest first; *infos malloc'd). */
int sv_freeze_get(struct sv_pool *pool, uint64_t id, struct sv_freeze_info *info);
int sv_freeze_list(struct sv_pool *pool, struct sv_freeze_info **infos, size_t *n);

/* ---- change tracking (diff.c) ---- */

/* Chunks of VOLUME that changed between snapshot FROM and snapshot TO (TO NULL or "" = the live
 * volume now), within [off, off+len): fn is called once per maximal run of changed chunks, in
 * ascending order, clipped to the range, in bytes.  A nonzero return from fn stops the walk and is
 * returned.  ENOENT (no such volume or snapshot), EINVAL (FROM not older than TO, invalid
 * snapshot) with a message. */
int sv_volume_diff(struct sv_pool *pool, const char *volume, const char *from, const char *to,
		   uint64_t off, uint64_t len, int (*fn)(void *opaque, uint64_t off, uint64_t len),
		   void *opaque);
/* VOLUME's size and chunk size as sv_volume_diff sees them (it gets the volume the same way, and
 * an open volume stays open): for a diff's paging, without sv_volume_info's store reads (on RADOS
 * it stats every object).  ENOENT with a message. */
int sv_volume_geometry(struct sv_pool *pool, const char *volume, uint64_t *size,
		       uint32_t *chunk_size);

/* The NBD meta context qemu:dirty-bitmap:SNAP of a view: on the live
 * volume's view, chunks changed since snapshot SNAP; on the view of snapshot
 * B, chunks changed between SNAP and B (SNAP older than B).
 * sv_view_dirty_check: 0 if the view has the context for SNAP (len bytes,
 * from the network, validated here), else -1 with the last error set.
 * sv_view_dirty_names: fn for every SNAP the view has a context for (the
 * valid snapshots older than the view's), oldest first; stops at nonzero.
 * sv_view_dirty_extents: like sv_view_extents, with ext[i].hole false for a
 * run of changed ("dirty") chunks and true for an unchanged one; EINVAL if
 * SNAP went away since it was checked. */
int sv_view_dirty_check(struct sv_view *v, const char *snap, size_t len);
int sv_view_dirty_names(struct sv_view *v, int (*fn)(void *opaque, const char *snap), void *opaque);
int sv_view_dirty_extents(struct sv_view *v, const char *snap, uint32_t len, uint64_t off,
			  struct sv_extent *ext, size_t max, size_t *n, int *err);

/* Snapshot exports of volumes another node holds (RADOS: its claim), served
 * read-only here without a claim (follow.c), one per volume and snapshot,
 * sorted; *infos is malloc'd. */
struct sv_follow_info {
	char volume[SV_NAME_MAX + 1];
	char snapshot[SV_NAME_MAX + 1];
	char holder[512]; /* who holds the volume, as its claim says */
	unsigned views;	  /* open views (NBD connections) */
};
int sv_follow_list(struct sv_pool *pool, struct sv_follow_info **infos, size_t *n);

/* For NBD_OPT_LIST: call fn for every export (volumes, and later snapshots). */
int sv_pool_list_exports(struct sv_pool *pool,
			 int (*fn)(void *opaque, const char *name, const char *description),
			 void *opaque);

/* ---- checking a pool offline ("snapvol check", check.c) ---- */

struct sv_check_finding {
	char volume[256];     /* the volume's directory name */
	const char *severity; /* "error", "warning" or "info" */
	bool repaired;	      /* with repair: it was fixed */
	char what[512];	      /* what is wrong, in words */
};
typedef void sv_check_fn(void *opaque, const struct sv_check_finding *f);
/* Verify one volume (or all, volume NULL) of a pool no server is serving:
 * metadata checksums and contents, the journal, pre-image space against
 * the records, objects nothing names, work a crash left pending.  fn is
 * called per finding.  With repair, what can be fixed safely is (wasted
 * space punched, stray objects removed, the journal replayed and
 * checkpointed, a rollback finished); damaged metadata never is.  Returns
 * the number of errors left, or -1 with the last error set. */
int sv_pool_check(struct sv_pool *pool, const char *volume, bool repair, sv_check_fn *fn,
		  void *opaque);

#endif
