/*
 * watchdog.c: the process that holds a filesystem freeze, so that no freeze
 * outlives its owner.
 *
 * Why a process and not a thread: a thread dies with its process, and the
 * whole point is to survive the owner being killed (SIGKILL included) or
 * stopped.  The watchdog is forked before anything is frozen and then:
 *  - calls setsid(), so Ctrl-C at a terminal and signals to the owner's
 *    process group do not reach it, and ignores SIGINT, SIGTERM, SIGHUP,
 *    SIGPIPE, SIGQUIT and the job-control stops;
 *  - points stdin/stdout/stderr at /dev/null and closes every other inherited
 *    descriptor (an inherited control connection would keep a server-side
 *    lease alive after the owner died), so it never writes to any filesystem
 *    and logs nothing: what it has to say goes to the owner over the socket;
 *  - opens every mount point and locks its memory (mlockall, as pages are
 *    touched) before the freeze, so nothing it does while the filesystem is
 *    frozen needs a page from a frozen filesystem (a page-in of its own
 *    binary from a frozen root would be a read, which is fine, but an exec,
 *    a log file or a core dump would not be);
 *  - lowers its OOM score so the kernel kills it last.
 * Just before the freeze it calls syncfs() on every filesystem, and on ext4
 * EXT4_IOC_CHECKPOINT (the journal written home): writes go on meanwhile,
 * and FIFREEZE, which must flush whatever is dirty and checkpoint the
 * journal with every writer blocked, then has little left to do.  All of it
 * is outside the freeze window.  (A second pass when the first took long
 * made no difference 16 events against 16 could show, under fio at 500
 * IOPS: FIFREEZE p50 53 ms with it and 65 without, p90 140 and 133; so
 * one pass.)
 *
 * FIFREEZE with expedited RCU grace periods.  freeze_super() takes the
 * superblock's three freeze levels (writes, page faults, filesystem
 * internals) one after the other with percpu_down_write(), and each of
 * those first waits for a full RCU grace period (rcu_sync_enter ->
 * synchronize_rcu).  With HZ=250 a normal grace period takes several
 * jiffies, more when the CPUs are busy: traced with ftrace (sched_switch
 * stacks of this process, bench/freeze.sh), the three of them took about
 * 40 ms of an idle ext4's FIFREEZE and up to 140 ms of a loaded one, more
 * than all the I/O the freeze does.  So the watchdog sets
 * /sys/kernel/rcu_expedited to 1 for the duration of its FIFREEZE calls
 * (only if it was 0, and back to 0 right after they return: the knob is
 * system-wide, so it is held for tens of milliseconds, unless a FIFREEZE
 * waits for a filesystem below that someone else froze), which makes
 * each grace period take well under a millisecond at the price of an IPI
 * to every CPU.  FITHAW waits for no grace period.  SNAPVOL_FREEZE_EXPEDITE=0
 * in the owner's environment leaves the knob alone.  Should the watchdog be
 * killed (SIGKILL) in the middle of a FIFREEZE, its owner puts the knob
 * back (if it was 0 before and is 1 now).
 *
 * It does the FIFREEZE itself (top-down) when told, then waits in poll() on
 * the socket with a timeout at the earlier of the lease deadline (renewed
 * by each heartbeat) and the hard timeout.  It thaws (FITHAW, bottom-up):
 * when told; on EOF, which is how it learns that the owner exited or was
 * killed, even by SIGKILL; when the lease lapses; at the timeout.  After an
 * early thaw it tells the owner why, answers queries ("not frozen") and
 * exits on the owner's thaw, on EOF, or a minute later.
 *
 * "Still frozen since the freeze?": the watchdog issues FIFREEZE again on
 * each filesystem.  The kernel answers EBUSY while it is frozen; success
 * means someone thawed it in between (`fsfreeze -u`), which the answer then
 * reports (and the filesystem is frozen again until the thaw).  A thaw and
 * refreeze by someone else between two queries cannot be seen this way.
 *
 * Real-time scheduling for the window.  On a loaded 2-core machine the
 * window's outliers were the watchdog (and the owner's thread that runs the
 * steps inside the window) runnable but waiting for a CPU: every step
 * wakes it (the end of FIFREEZE, the thaw message), and a CPU-bound fio or
 * build behind it costs a scheduler slice each time.  So the watchdog runs
 * SCHED_FIFO (SV_AGENT_RT_PRIO) from just before its first FIFREEZE (the
 * syncfs before it is outside the window and stays SCHED_OTHER) until its
 * FITHAW returns, or the FIFREEZE fails; and sv_watchdog_freeze raises its
 * calling thread the same way until the thaw, a failed freeze, an early
 * thaw it learns of, or sv_watchdog_close, whichever comes first.  Both
 * sleep nearly all the time they hold it (in FIFREEZE, in poll()), so
 * they take no CPU from anyone for long; they just get one at once when
 * woken.  Only a thread that was SCHED_OTHER/BATCH/IDLE is raised (one the
 * user put in a real-time class is left alone), with SCHED_RESET_ON_FORK
 * (a command run while frozen, or a thread started then, is not
 * real-time), and the policy and priority it had are put back.  Not root
 * (EPERM): it just runs unraised; the state says which
 * (sv_watchdog_state.realtime).  SNAPVOL_FREEZE_RT=0 in the owner's
 * environment turns it off.  A process killed while raised leaves nothing
 * behind: the policy is the thread's own.
 *
 * The owner keeps its own descriptors on the mount points too: if the
 * watchdog itself is killed while holding a freeze, the owner sees the
 * socket close and thaws.
 *
 * Messages are fixed-size structs over a SOCK_SEQPACKET socketpair (one
 * message per send, EOF when the peer is gone).  Heartbeats have no reply,
 * so the owner's heartbeat thread only ever sends, and only the owner's
 * main thread receives.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "error.h"
#include "util.h"

/* ext4's "write the journal's contents home now" (Linux 5.13; not in the
 * uapi headers of every distribution).  Harmless elsewhere: ENOTTY. */
#ifndef EXT4_IOC_CHECKPOINT
#define EXT4_IOC_CHECKPOINT _IOW('f', 43, uint32_t)
#endif

/* Pages are locked as they are touched (MCL_ONFAULT), not all at once: the
 * watchdog inherits its owner's whole address space (with the libraries
 * snapvol links, librados among them, some 200 MB; under ASan/TSan
 * terabytes of shadow), and populating and locking all of it took hundreds
 * of milliseconds at the start and as long again at the exit (measured: a
 * 316 ms exit with 200 MB locked).  What matters is that the pages it uses
 * stay resident, and it has used them by the time it freezes; a page it
 * never touched is anonymous (zero-filled, no filesystem) or file-backed
 * (a read, which a frozen filesystem serves). */
#define SV_MLOCK_FLAGS (MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)

enum msg_type {
	M_READY = 1, /* watchdog -> owner: set up (err, index if not) */
	M_FREEZE,    /* owner -> watchdog; reply R_FREEZE */
	M_HEARTBEAT, /* owner -> watchdog; no reply */
	M_QUERY,     /* owner -> watchdog; reply R_QUERY */
	M_THAW,	     /* owner -> watchdog; reply R_THAW, then it exits */
	R_FREEZE,
	R_QUERY,
	R_THAW,
	E_THAWED,     /* watchdog -> owner, unsolicited: the freeze ended early */
	M_QUERY_THAW, /* owner -> watchdog: M_QUERY then M_THAW in one message;
			 reply R_THAW with the query's flag, then it exits */
};

struct wd_msg {
	uint32_t type;
	int32_t err;	 /* an errno value, 0 for success */
	int32_t index;	 /* the filesystem it concerns, or -1 */
	uint32_t reason; /* enum sv_thaw_reason */
	uint32_t flag;	 /* R_QUERY: frozen throughout */
	uint32_t pad;
	uint64_t t[4];	     /* freeze start, frozen, thaw start, thawed (CLOCK_MONOTONIC ns) */
	uint64_t presync_ns; /* R_FREEZE: the syncfs before the freeze took this long */
	uint64_t ckpt_ns;    /* R_FREEZE: of which the journal checkpoint */
	uint32_t expedited;  /* R_FREEZE: FIFREEZE ran with rcu_expedited set by us */
	uint32_t rt;	     /* R_FREEZE: the watchdog ran FIFREEZE SCHED_FIFO */
};

#define RCU_EXPEDITED "/sys/kernel/rcu_expedited"

/* SNAPVOL_FREEZE_EXPEDITE=0: leave the RCU knob alone. */
static bool
expedite_wanted(void)
{
	const char *e = getenv("SNAPVOL_FREEZE_EXPEDITE");
	return !e || strcmp(e, "0") != 0;
}

/* SNAPVOL_FREEZE_RT=0: no real-time scheduling for the window. */
static bool
rt_wanted(void)
{
	const char *e = getenv("SNAPVOL_FREEZE_RT");
	return !e || strcmp(e, "0") != 0;
}

/* A thread raised to SCHED_FIFO, and what to put back. */
struct rt_hold {
	bool on;
	pid_t tid;
	int policy;
	struct sched_param param;
};

/* Raise the calling thread to SCHED_FIFO SV_AGENT_RT_PRIO (above), if it
 * is in a normal class; false if not done (EPERM, already real-time). */
static bool
rt_raise(struct rt_hold *h)
{
	h->on = false;
	h->tid = gettid();
	h->policy = sched_getscheduler(h->tid);
	if (h->policy == -1 || sched_getparam(h->tid, &h->param) == -1)
		return false;
	int base = h->policy & ~SCHED_RESET_ON_FORK;
	if (base != SCHED_OTHER && base != SCHED_BATCH && base != SCHED_IDLE)
		return false;
	struct sched_param p = {.sched_priority = SV_AGENT_RT_PRIO};
	if (sched_setscheduler(h->tid, SCHED_FIFO | SCHED_RESET_ON_FORK, &p) == -1)
		return false;
	h->on = true;
	return true;
}

/* Put back what rt_raise found (any thread may call it). */
static void
rt_drop(struct rt_hold *h)
{
	if (!h->on)
		return;
	(void)sched_setscheduler(h->tid, h->policy, &h->param);
	h->on = false;
}

/* The knob's value ('0', '1'), or 0 if it cannot be read. */
static char
rcu_knob_get(int fd)
{
	char c;
	return fd >= 0 && pread(fd, &c, 1, 0) == 1 ? c : 0;
}

static bool
rcu_knob_set(int fd, char c)
{
	return fd >= 0 && pwrite(fd, &c, 1, 0) == 1;
}

const char *
sv_thaw_reason_str(enum sv_thaw_reason r)
{
	switch (r) {
	case SV_THAW_NONE:
		return "still frozen";
	case SV_THAW_REQUESTED:
		return "thawed on request";
	case SV_THAW_OWNER_GONE:
		return "the freezing process went away";
	case SV_THAW_LEASE:
		return "the lease lapsed (no heartbeat in time)";
	case SV_THAW_TIMEOUT:
		return "the timeout was reached";
	case SV_THAW_FREEZE_LOST:
		return "someone else thawed the filesystem";
	case SV_THAW_WATCHDOG_GONE:
		return "the watchdog died";
	}
	return "unknown";
}

/* ---- the watchdog process ---- */

#define LINGER_NS (60 * 1000000000ull)

struct wd {
	int sock;
	size_t n;
	int fds[SV_AGENT_MAX_FS];
	uint64_t lease_ns, timeout_ns;
	enum { IDLE, FROZEN, THAWED } state;
	uint64_t lease_dl, hard_dl;
	bool lost;  /* a query found a filesystem thawed by someone else */
	int rcu_fd; /* RCU_EXPEDITED, or -1: not expedited */
	bool rt;    /* may run the window SCHED_FIFO */
	struct rt_hold rth;
	enum sv_thaw_reason reason;
	uint64_t t[4];
};

static void
wd_send(struct wd *w, struct wd_msg *m)
{
	m->reason = w->reason;
	memcpy(m->t, w->t, sizeof m->t);
	/* If the owner is gone the next recv sees EOF; nothing to do here. */
	(void)send(w->sock, m, sizeof *m, MSG_NOSIGNAL);
}

static void
wd_thaw(struct wd *w, enum sv_thaw_reason why)
{
	if (w->state != FROZEN)
		return;
	w->t[2] = sv_now_ns();
	for (size_t i = w->n; i-- > 0;)
		(void)ioctl(w->fds[i], FITHAW, 0); /* EINVAL: someone thawed it already */
	w->t[3] = sv_now_ns();
	rt_drop(&w->rth);
	w->state = THAWED;
	w->reason = why;
}

static void
wd_freeze(struct wd *w)
{
	struct wd_msg m = {.type = R_FREEZE, .index = -1};
	if (w->state != IDLE) {
		m.err = EALREADY;
		wd_send(w, &m);
		return;
	}
	/* Outside the window: flush what is dirty while writes go on, so
	 * FIFREEZE has little left to flush with every writer blocked. */
	uint64_t s = sv_now_ns();
	for (size_t i = 0; i < w->n; i++) {
		uint32_t flags = 0;
		(void)syncfs(w->fds[i]);
		/* ext4's freeze checkpoints the whole journal (every journaled
		 * block written in place) with writers blocked; do most of it
		 * now, with writers running. */
		uint64_t c = sv_now_ns();
		(void)ioctl(w->fds[i], EXT4_IOC_CHECKPOINT, &flags);
		m.ckpt_ns += sv_now_ns() - c;
	}
	/* SCHED_FIFO from here to the thaw (above). */
	m.rt = w->rt && rt_raise(&w->rth);
	/* Expedited grace periods for the FIFREEZE calls only (above). */
	m.expedited = rcu_knob_get(w->rcu_fd) == '0' && rcu_knob_set(w->rcu_fd, '1');
	w->t[0] = sv_now_ns();
	m.presync_ns = w->t[0] - s;
	for (size_t i = 0; i < w->n; i++) {
		if (ioctl(w->fds[i], FIFREEZE, 0) == -1) {
			m.err = errno;
			m.index = (int)i;
			if (m.expedited)
				(void)rcu_knob_set(w->rcu_fd, '0');
			for (size_t j = i; j-- > 0;)
				(void)ioctl(w->fds[j], FITHAW, 0);
			rt_drop(&w->rth);
			wd_send(w, &m);
			return;
		}
	}
	w->t[1] = sv_now_ns();
	if (m.expedited)
		(void)rcu_knob_set(w->rcu_fd, '0');
	w->state = FROZEN;
	w->lease_dl = w->t[1] + w->lease_ns;
	w->hard_dl = w->t[0] + w->timeout_ns;
	wd_send(w, &m);
}

/* "Frozen without a gap?" into m (flag, index). */
static void
wd_check(struct wd *w, struct wd_msg *m)
{
	if (w->state == FROZEN) {
		for (size_t i = 0; i < w->n; i++) {
			if (ioctl(w->fds[i], FIFREEZE, 0) == 0 || errno != EBUSY) {
				w->lost = true; /* it had been thawed: frozen again now */
				if (m->index < 0)
					m->index = (int)i;
			}
		}
	}
	m->flag = w->state == FROZEN && !w->lost;
}

static void
wd_query(struct wd *w)
{
	struct wd_msg m = {.type = R_QUERY, .index = -1};
	wd_check(w, &m);
	wd_send(w, &m);
}

static int
wd_timeout_ms(uint64_t deadline, uint64_t now)
{
	uint64_t ms = (deadline - now + 999999) / 1000000;
	return ms > 60000 ? 60000 : (int)ms;
}

static void __attribute__((noreturn)) wd_loop(struct wd *w)
{
	for (;;) {
		uint64_t now = sv_now_ns();
		int timeout = -1;
		if (w->state == FROZEN) {
			uint64_t dl = w->lease_dl < w->hard_dl ? w->lease_dl : w->hard_dl;
			if (now >= dl) {
				wd_thaw(w, now >= w->hard_dl ? SV_THAW_TIMEOUT : SV_THAW_LEASE);
				struct wd_msg ev = {.type = E_THAWED, .index = -1};
				wd_send(w, &ev);
				continue;
			}
			timeout = wd_timeout_ms(dl, now);
		} else if (w->state == THAWED) {
			if (now >= w->t[3] + LINGER_NS)
				_exit(0);
			timeout = wd_timeout_ms(w->t[3] + LINGER_NS, now);
		}
		struct pollfd p = {.fd = w->sock, .events = POLLIN};
		int r = poll(&p, 1, timeout);
		if (r == 0 || (r == -1 && errno == EINTR))
			continue;
		struct wd_msg m;
		ssize_t k = r > 0 ? recv(w->sock, &m, sizeof m, 0) : -1;
		if (k == -1 && errno == EINTR)
			continue;
		if (k != (ssize_t)sizeof m) {
			/* EOF: the owner exited or was killed */
			wd_thaw(w, SV_THAW_OWNER_GONE);
			_exit(0);
		}
		switch (m.type) {
		case M_FREEZE:
			wd_freeze(w);
			break;
		case M_HEARTBEAT:
			if (w->state == FROZEN)
				w->lease_dl = sv_now_ns() + w->lease_ns;
			break;
		case M_QUERY:
			wd_query(w);
			break;
		case M_THAW:
		case M_QUERY_THAW: {
			/* One message for both saves the window a round trip
			 * between the two processes. */
			struct wd_msg rep = {.type = R_THAW, .index = -1};
			if (m.type == M_QUERY_THAW)
				wd_check(w, &rep);
			wd_thaw(w, SV_THAW_REQUESTED);
			wd_send(w, &rep);
			_exit(0);
		}
		default:
			break;
		}
	}
}

static void __attribute__((noreturn))
wd_main(int sock, const struct sv_fs *fs, size_t n, uint64_t lease_ns, uint64_t timeout_ns,
	bool expedite, bool rt)
{
	static const int ignored[] = {SIGINT,  SIGTERM, SIGHUP,	 SIGPIPE, SIGQUIT,
				      SIGTSTP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2};
	struct wd w = {
	    .n = n, .lease_ns = lease_ns, .timeout_ns = timeout_ns, .state = IDLE, .rt = rt};
	struct wd_msg ready = {.type = M_READY, .index = -1};

	setsid();
	for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
		signal(ignored[i], SIG_IGN);
	prctl(PR_SET_NAME, "snapvol-wdog", 0, 0, 0);
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	if (dup2(sock, 3) == -1)
		_exit(1);
	w.sock = 3;
	close_range(4, ~0u, 0);
	int adj = open("/proc/self/oom_score_adj", O_WRONLY);
	if (adj >= 0) {
		(void)!write(adj, "-1000", 5);
		close(adj);
	}
	for (size_t i = 0; i < n; i++) {
		w.fds[i] = open(fs[i].path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (w.fds[i] == -1) {
			ready.err = errno;
			ready.index = (int)i;
			wd_send(&w, &ready);
			_exit(1);
		}
	}
	/* sysfs, opened now: nothing is opened once frozen.  Not writable
	 * (not root, a read-only /sys): FIFREEZE just is not expedited. */
	w.rcu_fd = expedite ? open(RCU_EXPEDITED, O_RDWR | O_CLOEXEC) : -1;
	if (chdir("/") == -1 || mlockall(SV_MLOCK_FLAGS) == -1) {
		ready.err = errno;
		wd_send(&w, &ready);
		_exit(1);
	}
	wd_send(&w, &ready);
	wd_loop(&w);
}

/* ---- the owner's side ---- */

struct sv_watchdog {
	int sock;
	bool gone;   /* the watchdog process has closed its end */
	bool reaped; /* and waitpid() has collected it */
	bool stuck;  /* its FIFREEZE did not return: do not wait for it */
	size_t n;
	struct sv_fs *fs;
	int fds[SV_AGENT_MAX_FS]; /* the owner's own, for a thaw if the watchdog dies */
	uint64_t lease_ns, timeout_ns;
	bool expedite;	    /* the watchdog may set RCU_EXPEDITED around FIFREEZE */
	char rcu_before;    /* its value before the freeze ('0', '1', 0: unknown) */
	bool rt;	    /* run the window SCHED_FIFO (SNAPVOL_FREEZE_RT) */
	struct rt_hold rth; /* the owner's thread that called sv_watchdog_freeze */
	struct sv_watchdog_state st;

	pthread_mutex_t lock; /* protects hb_stop */
	pthread_cond_t cond;
	bool hb_stop;
	bool hb_running;
	pthread_t hb;
};

/* What a message from the watchdog tells about the freeze. */
static void
note(struct sv_watchdog *wd, const struct wd_msg *m)
{
	if (m->t[0]) {
		wd->st.freeze_start_ns = m->t[0];
		wd->st.frozen_ns = m->t[1];
	}
	if (m->t[3]) {
		rt_drop(&wd->rth); /* thawed: the window is over */
		wd->st.thaw_start_ns = m->t[2];
		wd->st.thawed_ns = m->t[3];
		wd->st.frozen = false;
		wd->st.reason = m->reason;
	}
}

/* The watchdog is gone.  If it still held the freeze (killed itself),
 * thaw from here. */
static void
lost_watchdog(struct sv_watchdog *wd)
{
	wd->gone = true;
	rt_drop(&wd->rth);
	if (wd->st.frozen) {
		wd->st.thaw_start_ns = sv_now_ns();
		for (size_t i = wd->n; i-- > 0;)
			(void)ioctl(wd->fds[i], FITHAW, 0);
		wd->st.thawed_ns = sv_now_ns();
		wd->st.frozen = false;
		wd->st.reason = SV_THAW_WATCHDOG_GONE;
	}
}

static int
send_msg(struct sv_watchdog *wd, uint32_t type)
{
	struct wd_msg m = {.type = type, .index = -1};
	if (wd->gone)
		return sv_error(EPIPE, "the watchdog has exited (%s)",
				sv_thaw_reason_str(wd->st.reason));
	if (send(wd->sock, &m, sizeof m, MSG_NOSIGNAL) != (ssize_t)sizeof m) {
		lost_watchdog(wd);
		return sv_error(EPIPE, "the watchdog has exited (%s)",
				sv_thaw_reason_str(wd->st.reason));
	}
	return 0;
}

/* Wait for a reply of type want, noting events on the way. */
static int
recv_reply(struct sv_watchdog *wd, uint32_t want, struct wd_msg *m)
{
	for (;;) {
		ssize_t k = recv(wd->sock, m, sizeof *m, 0);
		if (k == -1 && errno == EINTR)
			continue;
		if (k != (ssize_t)sizeof *m) {
			lost_watchdog(wd);
			return sv_error(EPIPE, "the watchdog has exited (%s)",
					sv_thaw_reason_str(wd->st.reason));
		}
		note(wd, m);
		if (m->type == want)
			return 0;
	}
}

int
sv_watchdog_start(const struct sv_fs *fs, size_t n, uint64_t lease_ns, uint64_t timeout_ns,
		  struct sv_watchdog **out)
{
	if (n == 0 || n > SV_AGENT_MAX_FS)
		return sv_error(EINVAL, "between 1 and %d filesystems", SV_AGENT_MAX_FS);
	if (lease_ns < SV_AGENT_LEASE_MIN_NS || lease_ns > SV_AGENT_LEASE_MAX_NS)
		return sv_error(EINVAL, "a lease of %.3f s is out of range (100 ms to 10 min)",
				lease_ns / 1e9);
	if (timeout_ns < SV_AGENT_TIMEOUT_MIN_NS || timeout_ns > SV_AGENT_TIMEOUT_MAX_NS)
		return sv_error(EINVAL, "a timeout of %.3f s is out of range (100 ms to 1 h)",
				timeout_ns / 1e9);
	struct sv_watchdog *wd = calloc(1, sizeof *wd);
	if (!wd || !(wd->fs = calloc(n, sizeof *wd->fs))) {
		free(wd);
		return sv_error(ENOMEM, "out of memory");
	}
	memcpy(wd->fs, fs, n * sizeof *fs);
	wd->n = n;
	wd->lease_ns = lease_ns;
	wd->timeout_ns = timeout_ns;
	for (size_t i = 0; i < n; i++)
		wd->fds[i] = -1;
	for (size_t i = 0; i < n; i++) {
		wd->fds[i] = open(fs[i].path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (wd->fds[i] == -1) {
			sv_error_errno("%s", fs[i].path);
			goto fail;
		}
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
		sv_error_errno("socketpair");
		goto fail;
	}
	wd->expedite = expedite_wanted();
	wd->rt = rt_wanted();
	fflush(NULL); /* nothing buffered is written twice */
	pid_t pid = fork();
	if (pid == -1) {
		sv_error_errno("fork");
		close(sv[0]);
		close(sv[1]);
		goto fail;
	}
	if (pid == 0) {
		close(sv[0]);
		wd_main(sv[1], fs, n, lease_ns, timeout_ns, wd->expedite, wd->rt);
	}
	close(sv[1]);
	wd->sock = sv[0];
	wd->st.pid = pid;
	struct wd_msg m;
	if (recv_reply(wd, M_READY, &m) == -1) {
		sv_error(EIO, "the watchdog did not start");
		goto fail_child;
	}
	if (m.err) {
		if (m.index >= 0)
			sv_error(m.err, "watchdog: %s: %s", fs[m.index].path, strerror(m.err));
		else
			sv_error(m.err, "watchdog: cannot lock its memory: %s", strerror(m.err));
		goto fail_child;
	}
	pthread_mutex_init(&wd->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&wd->cond, &ca);
	pthread_condattr_destroy(&ca);
	*out = wd;
	return 0;

fail_child:
	close(wd->sock);
	waitpid(pid, NULL, 0);
fail:
	for (size_t i = 0; i < n; i++)
		if (wd->fds[i] >= 0)
			close(wd->fds[i]);
	free(wd->fs);
	free(wd);
	return -1;
}

/* The watchdog died during its FIFREEZE (SIGKILL: the ioctl itself cannot
 * be interrupted, so it died right after): put the RCU knob back if it was
 * 0 before and is 1 now. */
static void
rcu_knob_restore(struct sv_watchdog *wd)
{
	if (!wd->expedite || wd->rcu_before != '0')
		return;
	int fd = open(RCU_EXPEDITED, O_RDWR | O_CLOEXEC);
	if (rcu_knob_get(fd) == '1')
		(void)rcu_knob_set(fd, '0');
	if (fd >= 0)
		close(fd);
}

int
sv_watchdog_freeze(struct sv_watchdog *wd)
{
	struct wd_msg m;
	if (wd->expedite) {
		int fd = open(RCU_EXPEDITED, O_RDONLY | O_CLOEXEC);
		wd->rcu_before = rcu_knob_get(fd);
		if (fd >= 0)
			close(fd);
	}
	/* Raised before the request, so that the wake-up at its reply is
	 * served at once; dropped on every way out but success. */
	bool raised = wd->rt && rt_raise(&wd->rth);
	if (send_msg(wd, M_FREEZE) == -1) {
		rt_drop(&wd->rth);
		return -1;
	}
	/* syncfs and FIFREEZE can block: on a filesystem whose image lives on
	 * one frozen by someone else, they wait for that thaw.  Give up after
	 * the timeout; the watchdog finishes, sees we are gone and thaws. */
	struct pollfd p = {.fd = wd->sock, .events = POLLIN};
	int r;
	do
		r = poll(&p, 1, (int)(wd->timeout_ns / 1000000));
	while (r == -1 && errno == EINTR);
	if (r == 0) {
		rt_drop(&wd->rth);
		wd->stuck = true;
		return sv_error(ETIMEDOUT,
				"FIFREEZE did not return within %.1f s (is a filesystem below "
				"one of them frozen?); it will be thawed once it does",
				wd->timeout_ns / 1e9);
	}
	if (recv_reply(wd, R_FREEZE, &m) == -1) {
		rt_drop(&wd->rth);
		rcu_knob_restore(wd);
		return -1;
	}
	wd->st.presync_ns = m.presync_ns;
	wd->st.checkpoint_ns = m.ckpt_ns;
	wd->st.rcu_expedited = m.expedited != 0;
	wd->st.realtime = raised && m.rt != 0;
	if (!wd->st.realtime)
		rt_drop(&wd->rth); /* both or neither: the state says which */
	if (m.err == 0) {
		wd->st.frozen = true;
		wd->st.reason = SV_THAW_NONE;
		return 0;
	}
	rt_drop(&wd->rth);
	wd->st.realtime = false;
	const char *path = m.index >= 0 && (size_t)m.index < wd->n ? wd->fs[m.index].path : "?";
	const char *type = m.index >= 0 && (size_t)m.index < wd->n ? wd->fs[m.index].fstype : "?";
	switch (m.err) {
	case EOPNOTSUPP:
		return sv_error(m.err,
				"%s (%s) cannot be frozen: the filesystem does not support it",
				path, type);
	case EBUSY:
		return sv_error(m.err, "%s is already frozen (by someone else); left as it was",
				path);
	case EPERM:
		return sv_error(m.err, "freezing %s needs CAP_SYS_ADMIN (run as root)", path);
	case EALREADY:
		return sv_error(m.err, "already frozen by this watchdog");
	default:
		return sv_error(m.err, "FIFREEZE %s: %s", path, strerror(m.err));
	}
}

int
sv_watchdog_heartbeat(struct sv_watchdog *wd)
{
	struct wd_msg m = {.type = M_HEARTBEAT, .index = -1};
	/* Called from the heartbeat thread too: touch nothing but the socket. */
	if (send(wd->sock, &m, sizeof m, MSG_NOSIGNAL) != (ssize_t)sizeof m)
		return sv_error_errno("heartbeat to the watchdog");
	return 0;
}

static void *
heartbeat_thread(void *arg)
{
	struct sv_watchdog *wd = arg;
	pthread_mutex_lock(&wd->lock);
	while (!wd->hb_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t t =
		    (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + wd->lease_ns / 4;
		ts.tv_sec = (time_t)(t / 1000000000ull);
		ts.tv_nsec = (long)(t % 1000000000ull);
		int r = 0;
		while (!wd->hb_stop && r != ETIMEDOUT)
			r = pthread_cond_timedwait(&wd->cond, &wd->lock, &ts);
		if (!wd->hb_stop)
			(void)sv_watchdog_heartbeat(wd);
	}
	pthread_mutex_unlock(&wd->lock);
	return NULL;
}

int
sv_watchdog_start_heartbeats(struct sv_watchdog *wd)
{
	if (wd->hb_running)
		return 0;
	int e = pthread_create(&wd->hb, NULL, heartbeat_thread, wd);
	if (e)
		return sv_error(e, "cannot start the heartbeat thread: %s", strerror(e));
	wd->hb_running = true;
	return 0;
}

static void
stop_heartbeats(struct sv_watchdog *wd)
{
	if (!wd->hb_running)
		return;
	pthread_mutex_lock(&wd->lock);
	wd->hb_stop = true;
	pthread_cond_signal(&wd->cond);
	pthread_mutex_unlock(&wd->lock);
	pthread_join(wd->hb, NULL);
	wd->hb_running = false;
}

int
sv_watchdog_query(struct sv_watchdog *wd, bool *frozen_throughout)
{
	struct wd_msg m;
	*frozen_throughout = false;
	if (send_msg(wd, M_QUERY) == -1 || recv_reply(wd, R_QUERY, &m) == -1)
		return -1;
	if (!m.flag && wd->st.reason == SV_THAW_NONE && m.index >= 0)
		wd->st.reason = SV_THAW_FREEZE_LOST; /* frozen again now; thawed in between */
	*frozen_throughout = m.flag != 0 && wd->st.reason == SV_THAW_NONE;
	return 0;
}

/* M_THAW, or M_QUERY_THAW with throughout set.  The heartbeat thread
 * stops after the reply (it only ever sends; one sent after the thaw finds
 * the socket closed), so joining it is not in the window. */
static int
thaw(struct sv_watchdog *wd, bool *throughout)
{
	struct wd_msg m;
	if (throughout)
		*throughout = false;
	if (wd->gone) {
		rt_drop(&wd->rth);
		stop_heartbeats(wd);
		return 0;
	}
	enum sv_thaw_reason early = wd->st.reason;
	if (send_msg(wd, throughout ? M_QUERY_THAW : M_THAW) == -1 ||
	    recv_reply(wd, R_THAW, &m) == -1) {
		rt_drop(&wd->rth);
		stop_heartbeats(wd);
		return wd->st.frozen ? -1 : 0;
	}
	rt_drop(&wd->rth); /* after the reply: the window is over */
	stop_heartbeats(wd);
	if (early == SV_THAW_FREEZE_LOST)
		wd->st.reason = early;
	if (throughout) {
		/* as sv_watchdog_query: thawed by someone else in between */
		if (!m.flag && early == SV_THAW_NONE && m.index >= 0)
			wd->st.reason = early = SV_THAW_FREEZE_LOST;
		*throughout = m.flag != 0 && early == SV_THAW_NONE;
	}
	wd->st.frozen = false;
	waitpid(wd->st.pid, NULL, 0);
	wd->reaped = true;
	wd->gone = true;
	return 0;
}

int
sv_watchdog_thaw(struct sv_watchdog *wd)
{
	return thaw(wd, NULL);
}

int
sv_watchdog_query_thaw(struct sv_watchdog *wd, bool *frozen_throughout)
{
	return thaw(wd, frozen_throughout);
}

int
sv_watchdog_fd(struct sv_watchdog *wd)
{
	return wd->sock;
}

int
sv_watchdog_poll(struct sv_watchdog *wd)
{
	if (wd->gone)
		return -1;
	for (;;) {
		struct wd_msg m;
		ssize_t k = recv(wd->sock, &m, sizeof m, MSG_DONTWAIT);
		if (k == -1 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (k != (ssize_t)sizeof m) {
			lost_watchdog(wd);
			return -1;
		}
		note(wd, &m);
	}
}

void
sv_watchdog_get_state(struct sv_watchdog *wd, struct sv_watchdog_state *st)
{
	*st = wd->st;
}

void
sv_watchdog_close(struct sv_watchdog *wd)
{
	if (!wd)
		return;
	rt_drop(&wd->rth);
	stop_heartbeats(wd);
	close(wd->sock); /* a watchdog still holding the freeze thaws on this EOF */
	if (!wd->reaped && !wd->stuck)
		waitpid(wd->st.pid, NULL, 0);
	for (size_t i = 0; i < wd->n; i++)
		close(wd->fds[i]);
	pthread_cond_destroy(&wd->cond);
	pthread_mutex_destroy(&wd->lock);
	free(wd->fs);
	free(wd);
}
