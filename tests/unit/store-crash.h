/*
 * store-crash.h: a test store that simulates power loss (see store-crash.c).
 *
 * It wraps the local-file backend behind the same ops table and keeps every
 * data write that has not been followed by a sync of its object in memory,
 * where reads see it, as a disk's volatile cache would.  At a simulated power
 * loss each such write is dropped, applied or torn, and from then on every
 * call fails with EIO, so the engine above can be closed without reaching
 * the disk again.  It can also fail one chosen call and go on (a fault: a
 * full or failing disk), to test the engine's error paths: either the Nth
 * counted call (crash_ctl.fail_at), or, finer, the Nth call of one kind
 * (a read, a write, a sync, a metadata write...), optionally only on
 * objects of a given name, with EIO or ENOSPC, as a short transfer, and
 * "sticky" (every later call of the kind fails too: a dead disk), several
 * such faults at once (crash_store_arm).
 */
#ifndef SV_TEST_STORE_CRASH_H
#define SV_TEST_STORE_CRASH_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

/* A sector that received garbage at the power loss. */
struct crash_garbage {
	char vol[80];
	char obj[32];
	uint64_t sector; /* byte offset / 512 */
};

/* Kinds of store calls, for faults and per-kind counts. */
enum crash_op {
	CRASH_OP_READ,	 /* obj_pread */
	CRASH_OP_WRITE,	 /* obj_pwrite */
	CRASH_OP_SYNC,	 /* obj_sync */
	CRASH_OP_PUNCH,	 /* obj_punch, obj_zero */
	CRASH_OP_META,	 /* meta_write (the atomic replace: write, sync, rename) */
	CRASH_OP_OPEN,	 /* obj_open (creating or not) */
	CRASH_OP_REMOVE, /* obj_remove, meta_remove, vol_remove */
	CRASH_OP_EXTENT, /* obj_extent */
	CRASH_OP_KINDS
};
extern const char *const crash_op_names[CRASH_OP_KINDS]; /* "read", "write", ... */

/* fault flags */
#define CRASH_STICKY 0x1u /* that call and every later matching one fail (a dead disk) */
#define CRASH_SHORT  0x2u /* read/write: the first half is done, then it fails */
#define CRASH_KEEP_DIRTY                                                                           \
	0x4u /* sync: unsynced writes survive the failure (by default a failed
				 sync loses them, as Linux may drop the dirty pages of a file
				 whose writeback failed, and a later sync then succeeds) */
#define CRASH_STALL                                                                                \
	0x8u /* the failing call waits for crash_store_release first (other calls
			    go on meanwhile): lets a test order another thread's calls
			    before the failure */

/* One fault: the nth call of kind op (1: the next one) from when it is
 * armed, counting only calls on objects (or metadata keys) whose name
 * starts with obj, of volumes whose name starts with vol ("" for any),
 * fails with err (EIO if 0). */
struct crash_fault {
	enum crash_op op;
	uint64_t nth;
	int err;
	unsigned flags;
	char obj[32];
	char vol[80];
};
#define CRASH_MAX_FAULTS 4

/* A fault that fired (the first one since the faults were armed). */
struct crash_fired {
	enum crash_op op;
	char vol[80];
	char obj[32]; /* object name or metadata key */
	int err;
};

/* What the test controls and reads back.  It belongs to the test and must
 * outlive the store (the pool that owns the store frees it at close). */
struct crash_ctl {
	/* Power loss at the crash_at-th call from now (counted over the calls
	 * that reach the disk or change state: writes, syncs, punches, zeroes,
	 * metadata writes, creating opens, removes); 0: only when the test says. */
	uint64_t crash_at;
	unsigned seed; /* the power loss's random choices */
	/* A fault, not a crash: the fail_at-th counted call from now fails
	 * with fail_errno (EIO if 0) and does nothing; later calls work.
	 * 0: none. */
	uint64_t fail_at;
	int fail_errno;
	/* Set before crash_store_open: the table says durable_writes (as
	 * RADOS's does), so the engine commits records only, syncing pre-image
	 * objects at commit, without its pre-image log (engine/journal.c). */
	bool records_only;

	/* filled in by the store */
	bool crashed;
	uint64_t faults;		 /* faults injected so far */
	uint64_t calls;			 /* counted calls so far */
	uint64_t dropped, applied, torn; /* pending writes at the power loss */
	struct crash_garbage *garbage;	 /* malloc'd; the test frees it */
	size_t n_garbage;
	/* kind faults (crash_store_arm): how many fired, the first one, and
	 * the distinct (kind, object) pairs that fired */
	uint64_t fired;
	struct crash_fired first;
	struct crash_fired fired_list[8];
	size_t n_fired_list;
};

/* ctl->crashed and ctl->faults as another thread than the store's caller
 * reads them: the engine's own threads (journal.c's early checkpoint) make
 * store calls too, so the store sets them atomically. */
static inline bool
crash_ctl_crashed(const struct crash_ctl *ctl)
{
	return __atomic_load_n(&ctl->crashed, __ATOMIC_ACQUIRE);
}
static inline uint64_t
crash_ctl_faults(const struct crash_ctl *ctl)
{
	return __atomic_load_n(&ctl->faults, __ATOMIC_ACQUIRE);
}

/* Open the file backend's pool at dir (creating it if create) and wrap it.
 * 0, or -1 with errno. */
int crash_store_open(const char *dir, bool create, struct crash_ctl *ctl, struct sv_store **out);

/* Lose power now: every write not yet synced is dropped, applied, or torn
 * (a random subset of its sectors applied, sometimes garbage in one of
 * them); then every call fails with EIO. */
void crash_store_powerloss(struct sv_store *st);

/* Arm a fault of a kind (up to CRASH_MAX_FAULTS at once; EBUSY past that),
 * or clear them all (crash_store_disarm: the faults "clear", the disk works
 * again).  Arming resets ctl->fired and the list; disarming keeps them for the
 * test to read.  Safe while other threads use the store. */
int crash_store_arm(struct sv_store *st, const struct crash_fault *f);
void crash_store_disarm(struct sv_store *st);
/* Wait until a CRASH_STALL fault holds a call; let it go on (and fail). */
void crash_store_wait_stalled(struct sv_store *st);
void crash_store_release(struct sv_store *st);
/* Calls of each kind so far (every call, failed ones included). */
void crash_store_counts(struct sv_store *st, uint64_t counts[CRASH_OP_KINDS]);
/* ctl->fired and ctl->first, read under the store's lock. */
uint64_t crash_store_fired(struct sv_store *st, struct crash_fired *first);
/* Did a fault of kind op fire on an object whose name starts with prefix?
 * The first such object's name goes to name (if not NULL). */
bool crash_store_fired_on(struct sv_store *st, enum crash_op op, const char *prefix, char name[32]);

/* Did sector (byte offset off / 512) of vol/obj get garbage at the crash? */
bool crash_ctl_garbage(const struct crash_ctl *ctl, const char *vol, const char *obj, uint64_t off);

#endif
