/*
 * store.h: the storage backend, behind an ops table.
 *
 * The engine keeps everything a volume has in a store: its data objects
 * (the live "origin", and later one pre-image object per epoch) and small
 * metadata blobs (the volume's description, later snapshot lists and
 * change bitmaps).  The engine never calls open(2) or a librados function
 * itself: it calls these ops, as dm-snapshot calls its exception store, so
 * that a Ceph RADOS backend (and test backends that inject faults or
 * simulate a crash by dropping unsynced writes) slot in without the engine
 * knowing.
 *
 * The contract each backend keeps:
 *  - meta_write replaces a blob atomically and durably: after it returns,
 *    a crash leaves the new contents; if it fails or the machine crashes
 *    during it, the old contents.
 *  - obj_pwrite is durable only after obj_sync (or with SV_STORE_FUA).
 *  - obj_punch and obj_zero make a range read back as zeros; punch also
 *    gives the space back.
 *  - Every call returns 0 (or a count) on success, -1 with errno set on
 *    failure.  Backends never print: the caller decides what to tell whom.
 *  - Calls on one object may come from many threads at once.
 *
 * New ops are only ever appended, and each backend's table carries its
 * struct size, so an older backend built against a shorter table is
 * detected (nbdkit's plugin ABI does the same).
 */
#ifndef SV_STORE_H
#define SV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sv_store; /* an open pool in some backend */
struct sv_obj;	 /* an open data object */

/* obj_open flags */
#define SV_OBJ_CREATE 0x1u /* create it (of the given size) if missing */
#define SV_OBJ_EXCL   0x2u /* with CREATE: fail with EEXIST if it exists */
#define SV_OBJ_RDONLY 0x4u

/* obj_pwrite flags */
#define SV_STORE_FUA 0x1u /* durable when the call returns */

/* obj_zero flags */
#define SV_ZERO_MAY_TRIM  0x1u /* punching a hole is fine */
#define SV_ZERO_FAST_ONLY 0x2u /* fail with ENOTSUP rather than write zeros */

/* One run of an object, from obj_extent. */
struct sv_extent {
	uint64_t offset;
	uint64_t length;
	bool hole; /* reads as zeros and holds no space */
};

struct sv_store_ops {
	size_t struct_size; /* sizeof(struct sv_store_ops) when built */
	const char *name;   /* "file", ... */

	/* Pool.  location is backend-specific (a directory for "file"). */
	int (*open)(const char *location, bool create, struct sv_store **out);
	void (*close)(struct sv_store *st);
	/* Take the pool's exclusive lock (one server, or one CLI working
	 * directly, at a time).  EWOULDBLOCK if someone else holds it.  Held
	 * until close. */
	int (*lock)(struct sv_store *st);
	/* A human-readable location, for messages ("./data"). */
	const char *(*describe)(struct sv_store *st);

	/* Volume namespaces. */
	int (*vol_list)(struct sv_store *st, char ***names, size_t *n); /* free each, then array */
	int (*vol_create)(struct sv_store *st, const char *vol);	/* EEXIST if present */
	int (*vol_remove)(struct sv_store *st, const char *vol); /* removes every object and blob */

	/* Metadata blobs: small (< 64 MiB), replaced atomically. */
	int (*meta_read)(struct sv_store *st, const char *vol, const char *key, char **buf,
			 size_t *len); /* ENOENT if none; *buf is malloc'd */
	int (*meta_write)(struct sv_store *st, const char *vol, const char *key, const void *buf,
			  size_t len);
	int (*meta_remove)(struct sv_store *st, const char *vol, const char *key);

	/* Data objects: sparse byte arrays of fixed size. */
	int (*obj_open)(struct sv_store *st, const char *vol, const char *obj, uint64_t size,
			unsigned flags, struct sv_obj **out);
	void (*obj_close)(struct sv_obj *o);
	int (*obj_remove)(struct sv_store *st, const char *vol, const char *obj);
	uint64_t (*obj_size)(struct sv_obj *o);
	int (*obj_pread)(struct sv_obj *o, void *buf, size_t len, uint64_t off);
	int (*obj_pwrite)(struct sv_obj *o, const void *buf, size_t len, uint64_t off,
			  unsigned flags);
	int (*obj_sync)(struct sv_obj *o);
	int (*obj_punch)(struct sv_obj *o, uint64_t off, uint64_t len);
	int (*obj_zero)(struct sv_obj *o, uint64_t off, uint64_t len, unsigned flags);
	/* Describe the run that starts at off (at most len bytes of it). */
	int (*obj_extent)(struct sv_obj *o, uint64_t off, uint64_t len, struct sv_extent *ext);
	int (*obj_cache)(struct sv_obj *o, uint64_t off, uint64_t len); /* prefetch hint */
	/* A file descriptor whose bytes at the same offsets are the object's,
	 * for zero-copy sends (sendfile); -1 if the backend has none. */
	int (*obj_fd)(struct sv_obj *o);
	/* Bytes of space the object holds (allocated, not apparent). */
	int (*obj_allocated)(struct sv_obj *o, uint64_t *bytes);
	/* Where a user finds the object outside snapvol (a file path), for
	 * "snapvol info"; ENOTSUP if it has no such place. */
	int (*obj_locate)(struct sv_store *st, const char *vol, const char *obj, char *buf,
			  size_t len);
	/* Names of a volume's data objects (for "snapvol check": objects no
	 * metadata names); free each, then the array. */
	int (*obj_list)(struct sv_store *st, const char *vol, char ***names, size_t *n);

	/* Per-volume claims, for a pool several servers share (RADOS): take the
	 * volume's exclusive, fenced claim before writing anything of it
	 * (counted: each vol_claim needs its vol_release).  EWOULDBLOCK, with
	 * sv_error naming the holder, if another process holds it.  While a
	 * backend enforces claims, writes to a volume without one fail with
	 * EIO.  NULL where the pool's lock already covers every volume (file). */
	int (*vol_claim)(struct sv_store *st, const char *vol);
	void (*vol_release)(struct sv_store *st, const char *vol);
	/* Bytes new data may still take in the pool (for write-behind's room
	 * check where obj_fd gives no file system to ask).  NULL: use obj_fd. */
	int (*space_avail)(struct sv_store *st, uint64_t *bytes);
	/* Start writing the object's unsynced data to the device, waiting for
	 * none of it.  Durability still comes only from obj_sync (no device
	 * cache flush, no metadata): this bounds what an obj_sync has left to
	 * do.  May block while the device's queue is full: the engine calls it
	 * off the write path.  NULL where writes are durable when acknowledged
	 * (RADOS). */
	int (*obj_writeback)(struct sv_obj *o);
	/* Not an op: true where a write is durable when acknowledged (obj_sync
	 * is a no-op: RADOS).  The engine then commits copies with records
	 * alone; elsewhere it appends the pre-images to a log with their
	 * records and syncs the pre-image objects only at checkpoints
	 * (engine/journal.c). */
	bool durable_writes;
	/* Start reading [off, off+len) into buf and return without waiting
	 * for it: 0, and done(arg, 0) or done(arg, errno) is then called
	 * exactly once when the read has ended, from a thread of the
	 * backend's or, if it ends at once, before this returns; done must
	 * not block for long.  -1 with errno if nothing was started (done is
	 * not called).  Holes read as zeros, as with obj_pread.  NULL where
	 * a read is quick enough to wait for (file): the engine uses
	 * obj_pread. */
	int (*obj_pread_async)(struct sv_obj *o, void *buf, size_t len, uint64_t off,
			       void (*done)(void *arg, int err), void *arg);
	/* Remove the object's name now and free its space later: move it,
	 * durably, into the pool's trash, which trash_step empties.  Open
	 * handles of it stay valid and are quick to close.  ENOENT if there
	 * is no such object.  NULL where obj_remove is quick (RADOS). */
	int (*obj_trash)(struct sv_store *st, const char *vol, const char *obj);
	/* Free a bounded step of the trash (a few ms to ~0.1 s of work; none
	 * if !work, which only looks).  1 if anything is left, 0 if the trash
	 * is empty, -1 with errno.  If bytes_left, the space the trash still
	 * holds.  One caller at a time may work; NULL with obj_trash. */
	int (*trash_step)(struct sv_store *st, bool work, uint64_t *bytes_left);
	/* Remove a whole volume now and free its objects later: move its
	 * namespace (every object and blob), atomically and durably, into the
	 * pool's trash, which trash_step empties.  A crash leaves either the
	 * volume as it was or its remains in the trash, never a part of it
	 * under its name.  No handle of it may be open.  ENOENT if there is no
	 * such volume.  NULL where vol_remove is quick (RADOS). */
	int (*vol_trash)(struct sv_store *st, const char *vol);

	/* Native pre-images: a store that keeps the origin's old bytes itself
	 * (RADOS: self-managed snapshots; the OSD clones a stripe on its first
	 * write after a snapshot, inside the cluster) instead of the engine
	 * copying them.  NULL where there are none (file): the engine copies.
	 *
	 * vol_native_pre: are vol's pre-image objects ("pre-N") native?  Fixed
	 * for the volume's life (decided when it was created).  A native
	 * pre-image object:
	 *  - is made by obj_open with SV_OBJ_CREATE (may take a round trip to
	 *    the cluster; SV_OBJ_EXCL: EEXIST if it exists), opened without;
	 *  - reads (obj_pread, obj_pread_async, obj_extent) the origin's bytes
	 *    as they were when obj_preserve(origin, it) returned (zeros where
	 *    the origin had nothing);
	 *  - is never written: obj_pwrite fails with ENOTSUP; obj_punch and
	 *    obj_zero succeed and do nothing (nobody reads a released range;
	 *    the space comes back when the object is removed); obj_sync does
	 *    nothing; obj_allocated may fail with ENOTSUP;
	 *  - obj_remove (and vol_remove) also ends the preservation into it.
	 * obj_preserve: from its return on, every write, zero and punch of the
	 * origin keeps the bytes it changes readable through pre.  No I/O:
	 * quick enough to call under the engine's cow_lock.  Lasting: once it
	 * returned it holds across restarts and takeovers (opening the origin
	 * preserves into every native pre-image object of the volume) until
	 * pre is removed.  The engine calls it once per epoch, after every
	 * write of an older epoch has reached the origin and before any write
	 * of the new epoch does. */
	bool (*vol_native_pre)(struct sv_store *st, const char *vol);
	int (*obj_preserve)(struct sv_obj *origin, struct sv_obj *pre);
};

/* The local-file backend: a pool is a directory (see store-file.c). */
extern const struct sv_store_ops sv_store_file_ops;
/* The Ceph RADOS backend, "rados:POOL" (store-rados.c; built when librados
 * is found: SV_HAVE_RADOS in config.h). */
extern const struct sv_store_ops sv_store_rados_ops;

/* Every open store starts with this header so the engine can find its ops. */
struct sv_store_base {
	const struct sv_store_ops *ops;
};
struct sv_obj_base {
	const struct sv_store_ops *ops;
};

/* Pick the backend from a pool spec ("DIR", later "rados:POOL") and open it. */
int sv_store_open(const char *spec, bool create, struct sv_store **out);

static inline const struct sv_store_ops *
sv_store_ops_of(struct sv_store *st)
{
	return ((struct sv_store_base *)st)->ops;
}
static inline const struct sv_store_ops *
sv_obj_ops_of(struct sv_obj *o)
{
	return ((struct sv_obj_base *)o)->ops;
}

#endif
