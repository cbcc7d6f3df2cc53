/*
 * store-crash.h: a test store that simulates power loss (see store-crash.c).
 *
 * It wraps the local-file backend behind the same ops table and keeps every
 * data write that has not been followed by a sync of its object in memory,
 * where reads see it, as a disk's volatile cache would.  At a simulated power
 * loss each such write is dropped, applied or torn, and from then on every
 * call fails with EIO, so the engine above can be closed without reaching
 * the disk again.  It can also fail one chosen call and go on (a fault: a
 * full or failing disk), to test the engine's error paths.
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

	/* filled in by the store */
	bool crashed;
	uint64_t faults;		 /* faults injected so far */
	uint64_t calls;			 /* counted calls so far */
	uint64_t dropped, applied, torn; /* pending writes at the power loss */
	struct crash_garbage *garbage;	 /* malloc'd; the test frees it */
	size_t n_garbage;
};

/* Open the file backend's pool at dir (creating it if create) and wrap it.
 * 0, or -1 with errno. */
int crash_store_open(const char *dir, bool create, struct crash_ctl *ctl, struct sv_store **out);

/* Lose power now: every write not yet synced is dropped, applied, or torn
 * (a random subset of its sectors applied, sometimes garbage in one of
 * them); then every call fails with EIO. */
void crash_store_powerloss(struct sv_store *st);

/* Did sector (byte offset off / 512) of vol/obj get garbage at the crash? */
bool crash_ctl_garbage(const struct crash_ctl *ctl, const char *vol, const char *obj, uint64_t off);

#endif
