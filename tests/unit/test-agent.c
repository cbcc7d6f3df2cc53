/*
 * test-agent.c: the freeze agent's checks and the watchdog's protocol, with
 * no filesystem frozen (the integration tests test-fsfreeze-*.sh freeze real
 * ext4 and xfs).  Mount points are resolved from /proc/self/mountinfo ("/"
 * and "/proc" always exist); procfs cannot be frozen, so a freeze of /proc
 * exercises the whole round trip to the watchdog process and back, and its
 * clean exit, without touching a real filesystem.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent.h"
#include "error.h"

#define S (1000000000ull)

static void
test_resolve(void **state)
{
	(void)state;
	struct sv_fs fs[SV_AGENT_MAX_FS];
	const char *ok[] = {"/proc", "/"};
	assert_int_equal(sv_fs_resolve(ok, 2, fs), 0);
	assert_string_equal(fs[0].path, "/proc");
	assert_string_equal(fs[0].fstype, "proc");
	assert_string_equal(fs[1].path, "/");
	assert_int_equal(fs[0].below, -1);
	assert_int_equal(fs[0].dev_size, 0); /* not a block device */

	const char *notmnt[] = {"/proc/self/fd"};
	assert_int_equal(sv_fs_resolve(notmnt, 1, fs), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_non_null(strstr(sv_last_error(), "is not a mount point"));

	const char *twice[] = {"/proc", "/proc/."};
	assert_int_equal(sv_fs_resolve(twice, 2, fs), -1);
	assert_non_null(strstr(sv_last_error(), "the same filesystem"));

	const char *missing[] = {"/nonexistent-snapvol-path"};
	assert_int_equal(sv_fs_resolve(missing, 1, fs), -1);
	assert_int_equal(sv_last_errno(), ENOENT);

	const char *file[] = {"/proc/self/status"};
	assert_int_equal(sv_fs_resolve(file, 1, fs), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_fs_resolve(ok, 0, fs), -1);
}

static void
test_bounds(void **state)
{
	(void)state;
	struct sv_fs fs[1];
	const char *p[] = {"/proc"};
	struct sv_watchdog *wd = NULL;
	assert_int_equal(sv_fs_resolve(p, 1, fs), 0);
	assert_int_equal(sv_watchdog_start(fs, 1, 0, 10 * S, &wd), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_non_null(strstr(sv_last_error(), "lease"));
	assert_int_equal(sv_watchdog_start(fs, 1, 365ull * 86400 * S, 10 * S, &wd), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_watchdog_start(fs, 1, S, 0, &wd), -1);
	assert_non_null(strstr(sv_last_error(), "timeout"));
	assert_int_equal(sv_watchdog_start(fs, 1, S, 365ull * 86400 * S, &wd), -1);
	assert_int_equal(sv_watchdog_start(fs, 0, S, S, &wd), -1);
	assert_null(wd);
}

/* /sys/kernel/rcu_expedited ('0' or '1'), or 0 if it cannot be read. */
static char
rcu_knob(void)
{
	char c = 0;
	int fd = open("/sys/kernel/rcu_expedited", O_RDONLY);
	if (fd >= 0 && read(fd, &c, 1) != 1)
		c = 0;
	if (fd >= 0)
		close(fd);
	return c;
}

/* The knob reads want again within a second (another process's freeze on
 * this machine may hold it at '1' for some milliseconds). */
static bool
rcu_knob_settles(char want)
{
	for (int i = 0; i < 100; i++) {
		if (rcu_knob() == want)
			return true;
		usleep(10000);
	}
	return false;
}

/* procfs cannot be frozen: the watchdog answers with the error (EOPNOTSUPP
 * as root, EPERM otherwise), holds nothing, and exits when closed.  The
 * RCU knob it sets for the FIFREEZE (watchdog.c) is put back after the
 * failure too. */
static void
test_watchdog_round_trip(void **state)
{
	(void)state;
	struct sv_fs fs[1];
	const char *p[] = {"/proc"};
	struct sv_watchdog *wd;
	struct sv_watchdog_state st;
	bool throughout = true;
	char knob = rcu_knob();
	if (knob == '1' && rcu_knob_settles('0'))
		knob = '0'; /* it was someone else's freeze */
	assert_int_equal(sv_fs_resolve(p, 1, fs), 0);
	assert_int_equal(sv_watchdog_start(fs, 1, S, 10 * S, &wd), 0);
	sv_watchdog_get_state(wd, &st);
	assert_true(st.pid > 0);
	assert_false(st.frozen);
	assert_int_equal(sv_watchdog_query(wd, &throughout), 0);
	assert_false(throughout); /* nothing frozen yet */
	assert_int_equal(sv_watchdog_freeze(wd), -1);
	assert_true(sv_last_errno() == EOPNOTSUPP || sv_last_errno() == EPERM);
	assert_non_null(strstr(sv_last_error(), "/proc"));
	sv_watchdog_get_state(wd, &st);
	assert_false(st.frozen);
	if (knob)
		assert_true(rcu_knob_settles(knob));
	assert_int_equal(sv_watchdog_heartbeat(wd), 0);
	assert_int_equal(sv_watchdog_poll(wd), 0);
	pid_t pid = st.pid;
	sv_watchdog_close(wd);
	/* reaped by close: no such child any more */
	assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

/* Query and thaw in one message, on a watchdog that froze nothing: not
 * frozen throughout, and the watchdog is gone and reaped. */
static void
test_query_thaw(void **state)
{
	(void)state;
	struct sv_fs fs[1];
	const char *p[] = {"/proc"};
	struct sv_watchdog *wd;
	struct sv_watchdog_state st;
	bool throughout = true;
	assert_int_equal(sv_fs_resolve(p, 1, fs), 0);
	assert_int_equal(sv_watchdog_start(fs, 1, S, 10 * S, &wd), 0);
	assert_int_equal(sv_watchdog_freeze(wd), -1);
	assert_int_equal(sv_watchdog_start_heartbeats(wd), 0);
	assert_int_equal(sv_watchdog_query_thaw(wd, &throughout), 0);
	assert_false(throughout);
	sv_watchdog_get_state(wd, &st);
	assert_false(st.frozen);
	assert_int_equal(waitpid(st.pid, NULL, WNOHANG), -1); /* reaped */
	assert_int_equal(errno, ECHILD);
	assert_int_equal(sv_watchdog_poll(wd), -1); /* gone */
	sv_watchdog_close(wd);
}

/* The scheduling policy of thread tid without the reset-on-fork flag. */
static int
policy_of(pid_t tid)
{
	int p = sched_getscheduler(tid);
	assert_true(p >= 0);
	return p & ~SCHED_RESET_ON_FORK;
}

/* Real-time scheduling for the window (watchdog.c): the watchdog and the
 * calling thread are raised to SCHED_FIFO just before FIFREEZE; after a
 * failed freeze (procfs) both are back in their class, with their
 * priority and nice value, and the state does not claim real time.  A
 * thread already real-time is left as it was.  (The raise itself, while
 * frozen, is checked on a real filesystem in test-fsfreeze-watchdog.sh.) */
static void
test_sched_restored(void **state)
{
	(void)state;
	struct sv_fs fs[1];
	const char *p[] = {"/proc"};
	struct sv_watchdog *wd;
	struct sv_watchdog_state st;
	struct sched_param sp = {0}, now;
	pid_t me = gettid();
	assert_int_equal(sv_fs_resolve(p, 1, fs), 0);

	/* SCHED_BATCH at nice 5: put back exactly. */
	assert_int_equal(sched_setscheduler(me, SCHED_BATCH, &sp), 0);
	errno = 0;
	int nice_before = getpriority(PRIO_PROCESS, (id_t)me);
	assert_int_equal(setpriority(PRIO_PROCESS, (id_t)me, nice_before + 5), 0);
	assert_int_equal(sv_watchdog_start(fs, 1, S, 10 * S, &wd), 0);
	assert_int_equal(sv_watchdog_freeze(wd), -1);
	sv_watchdog_get_state(wd, &st);
	assert_false(st.realtime);
	assert_int_equal(policy_of(st.pid), SCHED_BATCH); /* the watchdog, inherited */
	assert_int_equal(policy_of(me), SCHED_BATCH);
	assert_int_equal(getpriority(PRIO_PROCESS, (id_t)me), nice_before + 5);
	sv_watchdog_close(wd);
	assert_int_equal(policy_of(me), SCHED_BATCH);
	sp.sched_priority = 0;
	assert_int_equal(sched_setscheduler(me, SCHED_OTHER, &sp), 0);
	(void)setpriority(PRIO_PROCESS, (id_t)me, nice_before); /* EACCES unless root */

	/* Already real-time (root only): left alone. */
	sp.sched_priority = 3;
	if (sched_setscheduler(me, SCHED_FIFO, &sp) == 0) {
		assert_int_equal(sv_watchdog_start(fs, 1, S, 10 * S, &wd), 0);
		/* the watchdog inherited FIFO 3: not raised either */
		assert_int_equal(sv_watchdog_freeze(wd), -1);
		sv_watchdog_get_state(wd, &st);
		assert_false(st.realtime);
		assert_int_equal(policy_of(me), SCHED_FIFO);
		assert_int_equal(sched_getparam(me, &now), 0);
		assert_int_equal(now.sched_priority, 3);
		sv_watchdog_close(wd);
		sp.sched_priority = 0;
		assert_int_equal(sched_setscheduler(me, SCHED_OTHER, &sp), 0);
	}
	assert_int_equal(policy_of(me), SCHED_OTHER);
}

static void
test_no_fsmap(void **state)
{
	(void)state;
	int fd = open("/proc", O_RDONLY | O_DIRECTORY);
	struct sv_range *r = NULL;
	size_t n = 0;
	assert_true(fd >= 0);
	assert_int_equal(sv_fs_free_ranges(fd, 0, &r, &n), -1);
	assert_int_equal(sv_last_errno(), EOPNOTSUPP);
	close(fd);
}

static void
test_reasons(void **state)
{
	(void)state;
	for (int r = SV_THAW_NONE; r <= SV_THAW_WATCHDOG_GONE; r++)
		assert_string_not_equal(sv_thaw_reason_str((enum sv_thaw_reason)r), "unknown");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_resolve),
	    cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_watchdog_round_trip),
	    cmocka_unit_test(test_query_thaw),
	    cmocka_unit_test(test_sched_restored),
	    cmocka_unit_test(test_no_fsmap),
	    cmocka_unit_test(test_reasons),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
