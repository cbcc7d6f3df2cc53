/*
 * agent.h: the freeze agent, the layer that runs on the host that mounts the
 * filesystem (not in the server): FIFREEZE/FITHAW of mount points, a
 * watchdog process that makes sure no freeze outlives its owner, and the
 * free-space map (GETFSMAP) read while frozen.
 *
 * Linux's FIFREEZE has no timeout: a freezer killed while it holds a freeze
 * leaves the filesystem frozen, and every writer on it hung, until someone
 * runs FITHAW by hand.  So the freeze itself is done by a watchdog: a
 * separate process forked before the freeze, in its own session, ignoring
 * the signals a terminal or a process group gets, with its memory locked and
 * every mount point opened before anything is frozen, writing nothing to any
 * filesystem.  Its owner talks to it over a socketpair; it thaws (FITHAW,
 * bottom-up) when told, when the owner goes away (even SIGKILL: the socket
 * reads EOF), when the owner's heartbeats stop for longer than the lease, or
 * at the timeout, whichever comes first, then exits.
 *
 * Errors follow the control path's convention (common/error.h): -1 and the
 * thread's last error, with a message that names the mount point.
 */
#ifndef SV_AGENT_H
#define SV_AGENT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SV_AGENT_MAX_FS 16

/* Bounds of a lease (heartbeats must come at least this often) and of the
 * timeout (the longest a freeze may last). */
#define SV_AGENT_LEASE_MIN_NS	(100 * 1000000ull)     /* 100 ms */
#define SV_AGENT_LEASE_MAX_NS	(600 * 1000000000ull)  /* 10 min */
#define SV_AGENT_TIMEOUT_MIN_NS (100 * 1000000ull)     /* 100 ms */
#define SV_AGENT_TIMEOUT_MAX_NS (3600 * 1000000000ull) /* 1 h */

/* The SCHED_FIFO priority of the watchdog and of the owner's thread during
 * the freeze window: a low one, below the kernel's interrupt threads (50). */
#define SV_AGENT_RT_PRIO 10

/* One filesystem to freeze. */
struct sv_fs {
	char path[PATH_MAX]; /* its mount point, canonical */
	char fstype[32];
	char source[256];  /* the mount source (a device) */
	dev_t dev;	   /* the filesystem's st_dev */
	uint64_t dev_size; /* bytes of the block device it is on, 0 if not a block device */
	int below;	   /* index of the filesystem of the set that holds its image (through loop
			      devices), or -1 */
};

/* Check that every path is a mount point (EINVAL "... is not a mount point",
 * ENOENT), that no filesystem is named twice, and fill fs[0..n) in freeze
 * order: top-down, i.e. a filesystem whose image file lives, through one or
 * more loop devices, on another of the set comes before that one; the
 * user's order otherwise.  Thaw in the reverse order. */
int sv_fs_resolve(const char *const *paths, size_t n, struct sv_fs *fs);

/* A byte range on a filesystem's device. */
struct sv_range {
	uint64_t off, len;
};

/* The free ranges of the filesystem open at fd (any fd on it), in bytes on
 * its device, sorted and merged, from GETFSMAP (ext4, xfs): the complement of
 * every extent it reports that is not free space, within the span it reports.
 * *out is malloc'd.  A filesystem without GETFSMAP: -1 with EOPNOTSUPP (no
 * hint). */
int sv_fs_free_ranges(int fd, dev_t dev, struct sv_range **out, size_t *n);

/* ---- the watchdog ---- */

/* Why a freeze ended. */
enum sv_thaw_reason {
	SV_THAW_NONE = 0,      /* not thawed (yet) */
	SV_THAW_REQUESTED,     /* the owner asked */
	SV_THAW_OWNER_GONE,    /* the owner exited or was killed */
	SV_THAW_LEASE,	       /* heartbeats stopped for longer than the lease */
	SV_THAW_TIMEOUT,       /* the timeout was reached */
	SV_THAW_FREEZE_LOST,   /* someone else thawed a filesystem (seen by a query) */
	SV_THAW_WATCHDOG_GONE, /* the watchdog was killed; the owner thawed */
};
const char *sv_thaw_reason_str(enum sv_thaw_reason r);

struct sv_watchdog;

struct sv_watchdog_state {
	bool frozen;		    /* all filesystems frozen now, as far as the owner knows */
	enum sv_thaw_reason reason; /* set once the freeze ended */
	uint64_t presync_ns;	    /* how long the syncfs() before the freeze took */
	uint64_t checkpoint_ns;	    /* of which the ext4 journal checkpoint */
	uint64_t freeze_start_ns;   /* CLOCK_MONOTONIC: before the first FIFREEZE */
	uint64_t frozen_ns;	    /* after the last FIFREEZE returned */
	uint64_t thaw_start_ns;	    /* before the first FITHAW */
	uint64_t thawed_ns;	    /* after the last FITHAW */
	bool rcu_expedited;	    /* FIFREEZE ran with expedited RCU grace periods */
	bool realtime;		    /* the watchdog and the owner's thread ran the window
				       SCHED_FIFO (SNAPVOL_FREEZE_RT, watchdog.c) */
	pid_t pid;		    /* the watchdog process */
};

/* Fork the watchdog for fs[0..n) (in freeze order, from sv_fs_resolve).
 * lease_ns and timeout_ns are bounded as above (EINVAL with a clear message
 * otherwise).  Nothing is frozen yet. */
int sv_watchdog_start(const struct sv_fs *fs, size_t n, uint64_t lease_ns, uint64_t timeout_ns,
		      struct sv_watchdog **out);
/* syncfs() every filesystem (writes go on meanwhile, so FIFREEZE has less
 * to flush and the window is shorter), then FIFREEZE every one, top-down,
 * with RCU grace periods expedited for the duration of the FIFREEZE calls
 * (see watchdog.c; SNAPVOL_FREEZE_EXPEDITE=0 in the environment turns that
 * off); the lease and timeout start now.  The watchdog, and the calling
 * thread until the thaw, run SCHED_FIFO meanwhile when allowed
 * (SNAPVOL_FREEZE_RT=0 turns it off; see watchdog.c).  If
 * one fails (EOPNOTSUPP: cannot freeze, EBUSY: already frozen, EPERM), the
 * ones already frozen are thawed and the error names the mount point. */
int sv_watchdog_freeze(struct sv_watchdog *wd);
/* Renew the lease (fire and forget).  A heartbeat thread does it every
 * lease/4 between start_heartbeats and thaw/close. */
int sv_watchdog_heartbeat(struct sv_watchdog *wd);
int sv_watchdog_start_heartbeats(struct sv_watchdog *wd);
/* Has every filesystem stayed frozen, without a gap, since the freeze?  The
 * watchdog checks each one again (FIFREEZE answers EBUSY only while it is
 * still frozen); false if the freeze ended or someone thawed it. */
int sv_watchdog_query(struct sv_watchdog *wd, bool *frozen_throughout);
/* FITHAW every filesystem, bottom-up; the watchdog then exits.  Fine to
 * call when the freeze already ended (the state says why). */
int sv_watchdog_thaw(struct sv_watchdog *wd);
/* sv_watchdog_query, then sv_watchdog_thaw, in one message to the watchdog
 * (one round trip between the processes less inside the window).  On -1,
 * *frozen_throughout is false. */
int sv_watchdog_query_thaw(struct sv_watchdog *wd, bool *frozen_throughout);
/* A descriptor that turns readable when the watchdog reports something
 * (an early thaw): call sv_watchdog_poll then. */
int sv_watchdog_fd(struct sv_watchdog *wd);
/* Read what the watchdog reported, without blocking; 0, or -1 if it is gone
 * (then the state's reason is set). */
int sv_watchdog_poll(struct sv_watchdog *wd);
void sv_watchdog_get_state(struct sv_watchdog *wd, struct sv_watchdog_state *st);
/* Close the connection (a watchdog still holding a freeze thaws at once),
 * reap the process, free. */
void sv_watchdog_close(struct sv_watchdog *wd);

#endif
