/*
 * internal.h: what the engine's files share and nobody else sees.
 *
 * Lock order (take them in this order, never the reverse):
 *
 *   pool->lock -> vol->admin_lock (sorted by volume name for groups)
 *              -> vol->cow_lock   (sorted by volume name for groups)
 *              -> vol->journal.lock
 *
 *   freezer->lock (freeze.c) -> vol->cow_lock   (listing freezes only)
 *
 * pool->lock guards the list of open volumes and their reference counts.
 * admin_lock serialises snapshot create/delete/rollback and metadata
 * rewrites of one volume; it is held across syncs, never on the data path.
 * cow_lock guards all copy-on-write state of a volume (epochs, their
 * bitmaps, snapshots, the in-flight set) and is held only for bitmap work,
 * never across I/O.  journal.lock guards the commit queue.
 */
#ifndef SV_ENGINE_INTERNAL_H
#define SV_ENGINE_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <roaring/roaring.h>

#include "engine.h"

/* An epoch: the interval between two snapshots (see cow.c). */
struct sv_epoch {
	uint64_t id;
	/* Chunks whose pre-image (contents just before their first write in
	 * this epoch) this epoch's object holds, durably.  cow_lock. */
	roaring_bitmap_t *changed;
	/* Chunks that writes stamped with this epoch need not copy: NULL
	 * means "same as changed" (the epoch starts at the newest snapshot);
	 * after that snapshot is deleted, the union of the epochs back to the
	 * newest live one.  cow_lock. */
	roaring_bitmap_t *nocopy;
	/* Chunks whose first write in this epoch records its changed bit but
	 * copies nothing: every snapshot that would read that pre-image
	 * released the chunk (snapshot.c), so none reads it, but the write
	 * must still show in every diff (DESIGN invariant 8).  Only the
	 * current epoch has one; cow_lock; NULL when none. */
	roaring_bitmap_t *bitonly;
	/* The pre-image object, opened (created) on first need.  vol->pre_lock
	 * for the pointer (never nested with cow_lock); the object itself is
	 * thread-safe. */
	struct sv_obj *pre;
	unsigned writes;	     /* writes stamped with this epoch in flight; cow_lock */
	struct sv_epoch *grave_next; /* retired epochs: vol->graveyard; pre_lock */
	bool cow;		     /* a live snapshot needed copies when stamped; cow_lock */
	/* Native pre-images (vol->native_pre): the store keeps the origin's
	 * bytes for pre since obj_preserve (cow.c).  cow_lock. */
	bool preserved;
};

struct sv_snap {
	char name[SV_NAME_MAX + 1];
	uint64_t epoch;	     /* the snapshot was taken at the start of this epoch */
	uint64_t created;    /* seconds since the Unix epoch */
	char consistency[8]; /* "crash" or "frozen" */
	bool pending;	     /* being created: not listed, not exportable */
	bool invalid;	     /* its pre-images could not be kept: unreadable */
	unsigned refs;	     /* open views; cow_lock */
	/* Chunks a reader trimmed on the snapshot's export: they read as
	 * zeros and their pre-images are given up (snapshot.c).  cow_lock;
	 * NULL when none. */
	roaring_bitmap_t *released;
};

/* The change journal (journal.c): durable records of committed copies,
 * and (pre-image log mode) the copies' bytes. */
struct sv_journal {
	struct sv_obj *obj;
	bool log;		 /* pre-image log mode: obj is SV_OBJ_LOG (see journal.c) */
	bool readonly;		 /* opened for "snapvol check": replay writes nothing */
	struct sv_obj *legacy;	 /* log mode: an older snapvol's journal, replayed once */
	uint64_t gen;		 /* generation of the records being written */
	uint64_t next;		 /* next record slot (log mode: byte offset) */
	uint64_t capacity;	 /* slots (log mode: bytes) */
	uint64_t replayed;	 /* records replayed at open (for check) */
	uint64_t replayed_bytes; /* pre-image bytes among them (log mode) */
	uint64_t checkpoints;	 /* taken since open; the leader's (statistics) */
	uint64_t logged_bytes;	 /* pre-image bytes appended since open; the leader's */
	uint64_t used_end;	 /* log mode: bytes from 0 that may be allocated,
				 punched at a checkpoint; UINT64_MAX until a scan */
	bool must_checkpoint;	 /* the checkpoint at open failed (full store): the
				 leader takes one before the next record */
	/* Threads that sync pre-image objects without the leader role
	 * (pre_users), and sv_journal_pause calls that keep them
	 * out (pre_closing): journal.c, "The pre-image guard".  lock. */
	unsigned pre_users, pre_closing;
	pthread_cond_t pre_cond;   /* pre_users or pre_closing fell; lock */
	pthread_mutex_t sync_lock; /* each sync of a pre-image object (journal.c) */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct pending_rec *pending; /* queued records and their waiters; lock */
	size_t n_pending, cap_pending;
	uint64_t batch_open; /* number of the batch new records join; lock */
	uint64_t batch_done; /* batches completed; lock */
	bool leader;	     /* a thread is committing a batch; lock */
	uint64_t syncs;	     /* journal syncs done (for status); lock */
	/* The early checkpoint (journal.c): once the log holds early_at
	 * bytes, a thread of its own presyncs and checkpoints, so that the
	 * log seldom fills.  early_* flags: lock. */
	uint64_t early_at, early_max; /* log mode: the mark (0: never), its top; the leader's */
	bool early_due, early_stop, early_failed, early_started;
	pthread_t early_thread;
	pthread_cond_t early_cond; /* early_due or early_stop set; lock */
};

/* A run of a volume's bytes (a pre-image's place in its object). */
struct sv_jseg {
	uint64_t off, len;
};

/* A queued journal record: the pre-images of chunks [first, first+count)
 * of epoch ep are in its object.  In log mode (journal.c) the copier hands
 * the bytes it copied too: nseg runs (holes are not copied), their bytes
 * back to back in data; the commit appends them to the log, so the
 * object need not be synced.  A record without them (data NULL: too large
 * to log) has its object synced at commit instead; a bit-only record
 * (nodata, cow.c) needs neither. */
struct sv_jrec {
	struct sv_epoch *ep;
	uint32_t first, count;
	bool nodata;
	uint32_t nseg;
	const struct sv_jseg *seg;
	const unsigned char *data;
};

/* Early writeback of a volume's origin, and the writers' pace
 * (writeback.c). */
struct sv_wback {
	uint64_t threshold; /* bytes written between kicks; 0: off; __atomic */
	uint64_t written;   /* bytes written since the volume opened; __atomic */
	/* A writer whose add takes written to this or past it takes the slow
	 * path: a kick is due or the volume is past the pacing setpoint;
	 * lock, read __atomic. */
	uint64_t slow_at;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* kick or stop; lock */
	pthread_cond_t done; /* a pass ended, or stop; lock */
	pthread_t thread;
	bool started, stop, kick, warned; /* lock */
	uint64_t kick_at;		  /* written at which the next kick is due; lock */
	uint64_t taken;			  /* written when the last finished pass started; lock */
	uint64_t rate;	  /* bytes/s the disk took in busy passes (average); 0: none yet; lock */
	uint64_t slot_ns; /* pacing clock: when the next paced write may go on; lock */
	/* The running pass: written when it started, and when; lock. */
	uint64_t pass_start, pass_ns;
	bool running;				/* lock */
	uint64_t kicks, kick_ns, kick_ns_max;	/* lock (statistics) */
	uint64_t waits, wait_ns;		/* lock: writers held at the hard stop */
	uint64_t paced, paced_ns, pause_ns_max; /* lock: writers paused */
};

struct sv_volume {
	struct sv_pool *pool;
	char name[SV_NAME_MAX + 1];
	uint64_t size;
	uint32_t chunk_size;
	unsigned chunk_shift;
	uint64_t nchunks;
	uint64_t created;
	struct sv_obj *origin; /* the live data */
	const struct sv_store_ops *ops;
	/* The store keeps the pre-images itself (store.h, vol_native_pre:
	 * RADOS self-managed snapshots): a copy records its chunks and copies
	 * no bytes.  Fixed for the volume's life. */
	bool native_pre;
	unsigned refs;		/* open views; pool->lock */
	struct sv_volume *next; /* pool->open list; pool->lock */

	pthread_mutex_t admin_lock;
	pthread_mutex_t pre_lock; /* epochs' pre pointers, graveyard; a leaf lock */
	/* Dropped epochs: their objects are gone and their bitmaps freed, but
	 * the small structs live until the volume closes, so a pointer taken
	 * under cow_lock (by info, or a reader) never dangles.  pre_lock. */
	struct sv_epoch *graveyard;

	pthread_mutex_t cow_lock;
	pthread_cond_t cow_cond;  /* any copy, drain or gate change completed */
	struct sv_epoch **epochs; /* ascending ids; the last is current; cow_lock */
	size_t n_epochs;
	struct sv_snap **snaps; /* live (valid) snapshots, ascending epoch; cow_lock */
	size_t n_snaps;
	struct sv_snap **dead; /* invalidated snapshots, kept to be listed; cow_lock */
	size_t n_dead;
	bool drop_when_full;	    /* full policy drop-snapshot (else fail-writes); cow_lock */
	pthread_mutex_t meta_lock;  /* serialises rewrites of volume.meta */
	uint64_t rel_made;	    /* releases made in memory (snapshot.c); cow_lock */
	uint64_t rel_saved;	    /* the first rel_saved are in released.meta; meta_lock */
	roaring_bitmap_t *inflight; /* chunks being copied now; cow_lock */
	unsigned gate_holds;	    /* writes held while > 0 (freezes, rollback); cow_lock */
	unsigned freezes;	    /* lease freezes (freeze.c) among gate_holds; cow_lock */
	unsigned snap_readers;	    /* snapshot reads holding epoch pointers; cow_lock */
	unsigned setting_up;	    /* snapshots being set up: new views wait; cow_lock */
	/* Chunks of acknowledged write-behinds not yet on the origin
	 * (writebehind.c): reads of them wait, and later writes of the same
	 * bytes.  cow_lock; n_landing (the number of such writes) is also
	 * read without it.  lcount: how many land on each such chunk (an
	 * open-addressing table, cow.c), lcount_n used of lcount_cap slots. */
	roaring_bitmap_t *landing;
	unsigned n_landing;
	struct sv_lcount *lcount;
	size_t lcount_n, lcount_cap;
	/* This volume's write-behinds in the order they were acknowledged,
	 * the sequence number of the last; the last error that may have lost
	 * acknowledged writes (a landing's, a failed origin sync), counted in
	 * wb_err_seq, and the count last reported by some flush: like Linux's
	 * errseq, every view (connection) reports each error once at its next
	 * flush (sv_wb_flush).  pool->wb.lock. */
	struct sv_wb_entry *wb_oldest, *wb_newest;
	uint64_t wb_seq;
	int wb_error;
	uint64_t wb_err_seq, wb_err_told;
	char rollback_to[SV_NAME_MAX + 1]; /* persisted rollback in progress */
	/* A pre-image sync failed and the snapshots reading those pre-images
	 * could not be recorded invalid (sv_snap_invalidate_epoch): writes
	 * fail until the volume is reopened.  __atomic loads and stores. */
	bool pre_untrusted;
	/* Odd while a snapshot's origin sync runs (snapshot.c; bumped at its
	 * start and end): commit tracing tells the commits that met one.
	 * __atomic. */
	unsigned snap_sync_seq;

	struct sv_journal journal;

	/* counters (cow_lock) */
	uint64_t stat_copies, stat_copied_bytes, stat_hole_copies;

	struct sv_wback wback; /* early writeback of the origin (writeback.c) */

	/* Not NULL: a read-only follower of a snapshot of a volume another
	 * node holds (follow.c): not in pool->open, never written. */
	struct sv_follow *follow;
};

/* Write-behind of first writes after a snapshot (writebehind.c). */
struct sv_wb {
	pthread_mutex_t lock;
	pthread_cond_t work;		 /* queued, or stopping */
	pthread_cond_t landed;		 /* a write-behind landed */
	struct sv_wb_entry *head, *tail; /* queued, oldest first */
	size_t bytes, max_bytes;	 /* held in entries; 0 max: disabled */
	pthread_t *threads;
	unsigned nthreads;
	bool stop;
};

/* Giving removed objects' space back in the background (reclaim.c). */
struct sv_reclaim_item;
struct sv_reclaim {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct sv_reclaim_item *head, *tail; /* handles to close */
	pthread_t thread;
	bool started, stop, busy; /* busy: closing one or freeing a step now */
	bool trash;		  /* the store's trash may hold something */
	unsigned trash_gen;	  /* counts objects put into the trash */
};

struct sv_pool {
	struct sv_store *st;
	const struct sv_store_ops *ops;
	/* Protects the list of open volumes and serialises create/delete
	 * against opening views, so a volume is never deleted under a client. */
	pthread_mutex_t lock;
	struct sv_volume *open;
	struct sv_freezer *freezer; /* freeze leases and their reaper (freeze.c) */
	struct sv_wb wb;
	struct sv_reclaim reclaim;
};

/* reclaim.c: obj, already removed from the store, is closed by a pool
 * thread (the close frees its space, which can take seconds); or, with a
 * store that has a trash, sv_reclaim_trashed says an object went there and
 * the thread empties it in steps.  Init picks up an earlier run's trash. */
void sv_reclaim_init(struct sv_pool *pool);
void sv_reclaim_close(struct sv_pool *pool, struct sv_obj *obj);
void sv_reclaim_trashed(struct sv_pool *pool);
/* Wait until everything queued so far is closed and the trash is empty
 * (space needed now). */
void sv_reclaim_wait(struct sv_pool *pool);
/* Stop between two steps, closing the handles still queued (pool close);
 * the trash stays for the next run. */
void sv_reclaim_shutdown(struct sv_pool *pool);

/* A volume's data objects (the store names them; pre-images are "pre-E"). */
#define SV_OBJ_ORIGIN  "origin"
#define SV_OBJ_JOURNAL "journal"
#define SV_OBJ_LOG     "prelog" /* the pre-image log (journal.c) */

/* meta.c: checksummed, versioned JSON blobs */
#define SV_META_VOLUME	"volume.meta"
#define SV_META_CHANGED "changed.meta"
int sv_meta_encode(json_t *body, char **buf, size_t *len);
int sv_meta_decode(const char *buf, size_t len, json_t **body);
int sv_meta_load(struct sv_pool *pool, const char *vol, const char *key, json_t **body);
int sv_meta_store(struct sv_pool *pool, const char *vol, const char *key, json_t *body);
/* A bitmap from its portable form, checked: NULL if it is malformed, does
 * not fill len exactly, or names a chunk >= nchunks. */
roaring_bitmap_t *sv_bitmap_load(const char *buf, size_t len, uint64_t nchunks);

/* volume.c */
struct sv_volume_meta {
	uint64_t size;
	uint32_t chunk_size;
	uint64_t created;
};
int sv_volume_meta_parse(json_t *body, const char *name, struct sv_volume_meta *m);
void sv_volume_fini_struct(struct sv_volume *v);
void sv_volume_init_struct(struct sv_volume *v, struct sv_pool *pool, const char *name,
			   const struct sv_volume_meta *m);
/* Open (or find open) a volume and take a reference; pool->lock held. */
int sv_volume_get_locked(struct sv_pool *pool, const char *name, struct sv_volume **out);
void sv_volume_put_locked(struct sv_volume *vol);
/* Close every open volume (pool close); pool->lock held. */
void sv_volume_close_all_locked(struct sv_pool *pool);
/* Rewrite volume.meta from the in-memory state; admin_lock held. */
int sv_volume_save_meta(struct sv_volume *vol);

/* journal.c */
int sv_journal_open(struct sv_volume *vol);
/* For "snapvol check": open it without creating or writing it (no journal
 * is not an error: the object is then NULL and there is nothing to replay). */
int sv_journal_open_readonly(struct sv_volume *vol);
void sv_journal_close(struct sv_volume *vol);
/* Replay into the epochs (at open, before anyone else sees vol). */
int sv_journal_load(struct sv_volume *vol, json_t *volmeta);
/* Queue records, wait until they (and the pre-image data written before
 * the call) are durable and their bits set.  0, or -1 with errno. */
int sv_journal_commit(struct sv_volume *vol, const struct sv_jrec *recs, size_t n);
/* Keep commits and checkpoints out (wait for the one running), and the
 * early syncs of pre-image objects (journal.c, "The pre-image guard"):
 * they use an epoch's object, so sv_epoch_retire takes it away only
 * between them. */
void sv_journal_pause(struct sv_volume *vol);
void sv_journal_resume(struct sv_volume *vol);
/* Write all bitmaps as a new checkpoint and start a new generation (in
 * log mode after syncing every pre-image object: the log is then empty).
 * Callers hold no cow_lock. */
int sv_journal_checkpoint(struct sv_volume *vol);
/* The same, but the log's dead space stays allocated until the next
 * sv_journal_checkpoint (open and close): every other checkpoint has
 * writers waiting on it (a freeze's hold, a snapshot delete's commits),
 * and punching can take hundreds of ms on a filesystem mounted with
 * discard. */
int sv_journal_checkpoint_keep(struct sv_volume *vol);
/* For a follower (follow.c), which reads the records-only journal of a
 * volume another process holds: its size in 32-byte slots
 * (SV_JOURNAL_REC_SIZE), one record decoded (false: not a whole record),
 * and changed.meta's bitmaps ORed into vol's epochs (no lock: vol is the
 * caller's own scratch volume). */
#define SV_JOURNAL_REC_SIZE 32
uint64_t sv_journal_slots(void);
bool sv_journal_decode(const unsigned char *b, uint64_t *gen, uint64_t *epoch, uint32_t *first,
		       uint32_t *count);
int sv_journal_parse_checkpoint(struct sv_volume *vol, const char *buf, size_t len, uint64_t *gen);

/* cow.c */
struct sv_write_ticket {
	struct sv_epoch *ep;
	bool landing;	   /* a write-behind holding its chunks (cow.c "Landing") */
	uint64_t off, len; /* its range, while landing */
};
/* gate: SV_GATE_NONE (rollback's own writes), SV_GATE_WAIT (wait while
 * writes are held), SV_GATE_TRY (EAGAIN then). */
#define SV_GATE_NONE 0
#define SV_GATE_WAIT 1
#define SV_GATE_TRY  2
int sv_cow_write_begin(struct sv_volume *vol, uint64_t off, uint64_t len, int gate,
		       struct sv_write_ticket *t, int *err);
void sv_cow_write_end(struct sv_volume *vol, struct sv_write_ticket *t);
/* Write-behind (writebehind.c): admit and stamp a write, after any
 * landing write-behind of its bytes has landed; *behind says whether it
 * needs copies.  If so its chunks are landing until sv_cow_write_landed,
 * after sv_cow_write_copy and the origin write (or in place). */
int sv_cow_write_begin_behind(struct sv_volume *vol, uint64_t off, uint64_t len, int gate,
			      struct sv_write_ticket *t, bool *behind, int *err);
/* A byte range of a write. */
struct sv_range {
	uint64_t off, len;
};
/* Copy what writes of the ranges, all stamped with ep, need (one journal
 * commit for all of them). */
int sv_cow_write_copy(struct sv_volume *vol, struct sv_epoch *ep, const struct sv_range *rg,
		      size_t n, int *err);
void sv_cow_write_landed(struct sv_volume *vol, struct sv_write_ticket *t);
/* Readers of the live volume: wait until no write-behind of the range is
 * landing; or only ask. */
void sv_cow_wait_landed(struct sv_volume *vol, uint64_t off, uint64_t len);
bool sv_cow_landing(struct sv_volume *vol, uint64_t off, uint64_t len);
int sv_cow_snap_pread(struct sv_volume *vol, struct sv_snap *s, void *buf, uint64_t len,
		      uint64_t off, int *err);
int sv_cow_snap_extents(struct sv_volume *vol, struct sv_snap *s, uint64_t len, uint64_t off,
			struct sv_extent *ext, size_t max, size_t *n, int *err);
/* Epoch helpers; cow_lock held. */
/* Are writes stamped with an epoch older than id still in flight? */
bool sv_older_writes_locked(struct sv_volume *vol, uint64_t id);
struct sv_epoch *sv_epoch_new_locked(struct sv_volume *vol, uint64_t id);
struct sv_epoch *sv_epoch_find_locked(struct sv_volume *vol, uint64_t id);
/* The name of the epoch's pre-image object ("pre-E"). */
void sv_epoch_pre_name(const struct sv_epoch *ep, char *buf, size_t len);
/* Give a dropped epoch's space back and move it to the graveyard; no
 * cow_lock held. */
void sv_epoch_retire(struct sv_volume *vol, struct sv_epoch *ep);
/* Free an epoch outright (volume close). */
void sv_epoch_free(struct sv_volume *vol, struct sv_epoch *ep);
/* The epoch's pre-image object (takes pre_lock; no cow_lock held).  With
 * create false, *out is NULL if it does not exist (only holes copied). */
int sv_epoch_pre(struct sv_volume *vol, struct sv_epoch *ep, bool create, struct sv_obj **out);
/* Is a write durable when acknowledged (store.h, durable_writes: RADOS)?
 * False for a store built before the flag was appended. */
static inline bool
sv_store_durable(const struct sv_store_ops *ops)
{
	return ops->struct_size >= offsetof(struct sv_store_ops, durable_writes) + sizeof(bool) &&
	       ops->durable_writes;
}
/* Does the store keep vol's pre-images itself (store.h, vol_native_pre)?
 * False for a store built before the op was appended. */
static inline bool
sv_store_native_pre(const struct sv_store_ops *ops, struct sv_store *st, const char *vol)
{
	return ops->struct_size >=
		   offsetof(struct sv_store_ops, obj_preserve) + sizeof ops->obj_preserve &&
	       ops->vol_native_pre && ops->obj_preserve && ops->vol_native_pre(st, vol);
}
/* Native pre-images: start preserving the origin's bytes for ep (once,
 * after the older epochs' writes have drained and before any of ep's
 * reaches the origin).  cow_lock held; -1 with errno. */
int sv_epoch_preserve_locked(struct sv_volume *vol, struct sv_epoch *ep);
static inline struct sv_epoch *
sv_current_epoch_locked(struct sv_volume *vol)
{
	return vol->epochs[vol->n_epochs - 1];
}

/* follow.c: a snapshot view of a volume another node holds (claim
 * refused with EWOULDBLOCK, whose message claim_msg names the holder).
 * sv_follow_open makes a follower volume whose only snapshot is snap, the
 * calling view's alone (sv_follow_close ends it); pool->lock NOT held. */
int sv_follow_open(struct sv_pool *pool, const char *volume, const char *snap,
		   const char *claim_msg, struct sv_volume **out);
void sv_follow_close(struct sv_volume *vol);
/* The snapshots volume.meta lists (no space figures), for NBD_OPT_LIST on
 * a node that does not hold the volume; EOPNOTSUPP off durable_writes. */
int sv_follow_snapshot_list(struct sv_pool *pool, const char *volume,
			    struct sv_snapshot_info **infos, size_t *n);
int sv_follow_pread(struct sv_volume *vol, void *buf, uint64_t len, uint64_t off, int *err);
int sv_follow_extents(struct sv_volume *vol, uint64_t len, uint64_t off, struct sv_extent *ext,
		      size_t max, size_t *n, int *err);

/* freeze.c */
int sv_freezer_init(struct sv_pool *pool);
/* End every freeze and stop the reaper (pool close, before the volumes). */
void sv_freezer_shutdown(struct sv_pool *pool);
/* The write gate; cow_lock held.  close: one more holder; open: one
 * fewer (writes flow at 0); drain: wait until no write is in flight. */
void sv_gate_close_locked(struct sv_volume *vol);
void sv_gate_open_locked(struct sv_volume *vol);
void sv_gate_drain_locked(struct sv_volume *vol);
/* SNAPVOL_TRACE_FREEZE=1 in the server's environment: log where the time
 * of quiesced snapshots and freezes goes (read once). */
bool sv_freeze_tracing(void);

/* view.c: what a view is of (diff.c answers dirty-bitmap queries). */
struct sv_volume *sv_view_volume(struct sv_view *v);
struct sv_snap *sv_view_snap(struct sv_view *v); /* NULL: the live volume */
/* writeback.c: start writeback of the origin every SNAPVOL_WRITEBACK_MB
 * written, and pace writers that get ahead of the disk (init before the
 * volume is used, stop before the origin closes; note never does I/O, but
 * may sleep: a short pause, or at the hard stop until a pass ends). */
void sv_writeback_init(struct sv_volume *vol);
void sv_writeback_note(struct sv_volume *vol, uint64_t bytes);
void sv_writeback_stop(struct sv_volume *vol);
uint64_t sv_writeback_threshold(void); /* bytes; 0: off */
/* A snapshot create's presync: start writeback of the origin one slice of
 * the address range at a time, then obj_sync it; -1 with errno as obj_sync. */
int sv_writeback_presync(struct sv_volume *vol);
/* Tracing a snapshot's durability sync: the kernel's dirty and writeback
 * KiB at its start, and write-behind's fill (max bytes; 2 ms samples, and
 * how many found it within 64 KiB of full) while it runs. */
struct sv_wb_probe {
	struct sv_pool *pool;
	pthread_t thread;
	bool running, stop;
	long dirty_kib, wback_kib;
	size_t wb_max;
	unsigned samples, full_samples;
};
void sv_wb_probe_start(struct sv_pool *pool, struct sv_wb_probe *p);
void sv_wb_probe_stop(struct sv_wb_probe *p);
/* writebehind.c */
void sv_wb_init(struct sv_pool *pool);
/* Land everything queued and stop the threads (pool close). */
void sv_wb_shutdown(struct sv_pool *pool);
void sv_wb_free(struct sv_pool *pool); /* after every volume is closed */
/* A write of the live volume, without FUA: 1 if it is done (taken behind,
 * to land later, in order, or landed now when write-behind is full); 0 if
 * it is admitted and stamped in *t and needs no copy (or write-behind is
 * off and its copies are made): the caller writes it in place and calls
 * sv_cow_write_end; -1 with *err. */
int sv_wb_write(struct sv_volume *vol, const void *buf, uint32_t len, uint64_t off, int gate,
		struct sv_write_ticket *t, int *err);
/* Does a write-behind of the volume that is acknowledged and not yet on
 * the origin overlap [off, off+len)?  Called with cow_lock held (the lock
 * order is cow_lock, then pool->wb.lock). */
bool sv_wb_overlaps(struct sv_volume *vol, uint64_t off, uint64_t len);
/* Wait for the volume's write-behinds acknowledged so far to land; an
 * error noted after *seen (a view's last sample) fails it, once per view. */
int sv_wb_flush(struct sv_volume *vol, uint64_t *seen, int *err);
/* The error count now, for a view that opens. */
uint64_t sv_wb_error_sample(struct sv_volume *vol);
/* Wait until the volume has none (volume close). */
void sv_wb_drain(struct sv_volume *vol);
/* A sync of the origin failed outside a flush (a snapshot, a rollback):
 * the file may have lost acknowledged writes and a later sync succeed, so
 * every view's next flush reports err, as it does a landing's error.
 * Returns the new error count (for the view that reports it at once). */
uint64_t sv_wb_note_error(struct sv_volume *vol, int err);

/* snapshot.c */
int sv_snap_state_load(struct sv_volume *vol, json_t *volmeta);
json_t *sv_snap_state_json_locked(struct sv_volume *vol);
void sv_snap_state_free(struct sv_volume *vol);
/* Take out the epochs no live snapshot needs (the caller frees them with
 * sv_epoch_retire after unlocking); cow_lock held.  Waits for snapshot
 * readers; with wait_writes, also for writes stamped with those epochs,
 * else it leaves busy epochs for a later pass (a writer calls it). */
void sv_snap_gc_locked(struct sv_volume *vol, bool wait_writes, struct sv_epoch ***dropped,
		       size_t *n_dropped);
/* Live or invalidated. */
struct sv_snap *sv_snap_find_locked(struct sv_volume *vol, const char *name);
/* Recompute the current epoch's copy decision from the live snapshots. */
void sv_snap_refresh_current_locked(struct sv_volume *vol);
/* The store is full and the policy says drop-snapshot: invalidate the
 * oldest live snapshot, durably, and free what it alone held.  No locks
 * held.  -1 if there is none or it could not be recorded. */
int sv_snap_invalidate_oldest(struct sv_volume *vol);
int sv_snap_finish_rollback(struct sv_volume *vol);
/* A sync of epoch's pre-image object failed (cause: its errno): the file
 * may have lost dirty pages, other chunks' pre-images among them, and a
 * later sync may still succeed.  Every snapshot that reads that epoch's
 * pre-images (taken at or before it) is marked invalid, logged, and
 * recorded in volume.meta; if that record fails, pre_untrusted is set and
 * writes fail.  No locks held (the journal leader calls it).  0 or -1. */
int sv_snap_invalidate_epoch(struct sv_volume *vol, uint64_t epoch, int cause);
/* Trim on a snapshot's export: release whole chunks of [off, off+len). */
int sv_snap_release(struct sv_volume *vol, struct sv_snap *s, uint64_t off, uint64_t len, int *err);
int sv_snap_released_load(struct sv_volume *vol);
int sv_snap_released_save(struct sv_volume *vol);
#define SV_META_RELEASED "released.meta"

#endif
