/*
 * fsfreeze.c: "snapvol fsfreeze MOUNTPOINT... -- CMD" and
 * "snapvol snapshot create VOL@SNAP --fsfreeze MOUNTPOINT": the filesystem
 * half of DESIGN.md's freeze sequence, on the host that mounts it.
 *
 * The freeze itself is held by the agent's watchdog process (agent/), so it
 * ends if this process dies, is killed or stops; this file only drives it:
 *
 *   snapshot create --fsfreeze (one control connection, opened first):
 *     info (volume size, origin)   watchdog forked, mount points opened, the
 *                                  device checked to hold the volume's bytes
 *     syncfs + journal checkpoint  by the watchdog, while writes go on: FIFREEZE
 *                                  then has little left to write
 *   the window (FIFREEZE to FITHAW):
 *     FIFREEZE (top-down)          the server keeps serving the flushes it causes
 *     GETFSMAP                     free ranges, while nothing can change them
 *     snapshot-create              consistency "crash", quiesce: writes held
 *       ... event SNAPSHOT_TAKEN   around the epoch switch; the server says
 *                                  when the instant has passed
 *     query the watchdog + FITHAW  "frozen without a gap since FIFREEZE?", and
 *       (bottom-up)                the thaw, in one message to the watchdog
 *   after it:
 *       ... snapshot-create reply  the server's syncs and metadata write done:
 *                                  the snapshot is durable
 *     snapshot-release             the free ranges (only if it stayed frozen)
 *     snapshot-set frozen          only if it stayed frozen
 *   The snapshot's content is fixed at the switch, so the thaw need not wait
 *   for it to be durable; the command still succeeds only once it is, and
 *   a failure after the switch leaves no snapshot (nothing falsely "frozen").
 *   Without a server (the pool opened in this process) the thaw follows the
 *   whole create.
 *   So a snapshot is called "frozen" only once the watchdog confirmed it, and
 *   whatever dies half-way (this process, the watchdog, the server) leaves
 *   it "crash": never frozen falsely.  The free ranges are handed over after
 *   the thaw (the window stays short), and only when the watchdog confirmed
 *   the freeze, because a map read before a lost freeze may be stale.
 *
 * The free-space hint names byte ranges of the filesystem's device; they are
 * ranges of the volume only if the filesystem sits on the volume at offset
 * 0 (nbdfuse + loop).  The rule: one volume snapshotted, exactly one frozen
 * filesystem whose device size equals the volume's, and the first 64 KiB of
 * that device (read with O_DIRECT before the freeze, so through the server)
 * equal the first 64 KiB of the volume's origin file.  Anything else, or a
 * volume whose origin is not a local file, gives no hint: releasing a range
 * the filesystem uses would lose data from the snapshot.
 *
 * Nothing is printed while frozen: stdout or stderr may be a file on the
 * frozen filesystem, and a write there would hang this process (the lease
 * would then thaw it, but the snapshot would be "crash").
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "cli.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "log.h"
#include "util.h"

#define DEFAULT_LEASE_NS	    (2 * 1000000000ull)
#define DEFAULT_TIMEOUT_NS	    (60 * 1000000000ull)
#define DEFAULT_SNAPSHOT_TIMEOUT_NS (10 * 1000000000ull)
#define HINT_CHECK_BYTES	    65536
#define RELEASE_BATCH		    10000

/* --lease and --timeout, bounded as the agent bounds them. */
static int
freeze_times(struct cli *cli, uint64_t dflt_timeout, uint64_t *lease, uint64_t *timeout)
{
	*lease = DEFAULT_LEASE_NS;
	*timeout = dflt_timeout;
	if (cli->val[OPT_FREEZE_LEASE] &&
	    sv_parse_duration(cli->val[OPT_FREEZE_LEASE], lease) == -1)
		return cli_usage_error(cli, "--lease: %s", sv_last_error());
	if (cli->val[OPT_FREEZE_TIMEOUT] &&
	    sv_parse_duration(cli->val[OPT_FREEZE_TIMEOUT], timeout) == -1)
		return cli_usage_error(cli, "--timeout: %s", sv_last_error());
	if (*lease < SV_AGENT_LEASE_MIN_NS || *lease > SV_AGENT_LEASE_MAX_NS)
		return cli_usage_error(cli, "--lease: %s is out of range (100ms to 10m)",
				       cli->val[OPT_FREEZE_LEASE]);
	if (*timeout < SV_AGENT_TIMEOUT_MIN_NS || *timeout > SV_AGENT_TIMEOUT_MAX_NS)
		return cli_usage_error(cli, "--timeout: %s is out of range (100ms to 1h)",
				       cli->val[OPT_FREEZE_TIMEOUT]);
	return 0;
}

static double
ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

/* b..a in microseconds for JSON; 0 if either end was never reached. */
static json_int_t
us(uint64_t a, uint64_t b)
{
	return a >= b && a ? (json_int_t)((a - b) / 1000) : 0;
}

/* ---- snapvol fsfreeze ---- */

int
cli_run_fsfreeze(struct cli *cli)
{
	uint64_t lease, timeout;
	int r;
	if (!cli->dashdash || cli->dashdash_pos == 0 || cli->dashdash_pos >= cli->npos)
		return cli_usage_error(cli, "'fsfreeze' needs MOUNTPOINT... -- CMD [ARGS...]");
	if ((r = freeze_times(cli, DEFAULT_TIMEOUT_NS, &lease, &timeout)))
		return r;
	unsigned nfs = cli->dashdash_pos;
	struct sv_fs fs[SV_AGENT_MAX_FS];
	if (nfs > SV_AGENT_MAX_FS)
		return cli_usage_error(cli, "at most %d mount points", SV_AGENT_MAX_FS);
	if (sv_fs_resolve(cli->pos, nfs, fs) == -1)
		return cli_fail("%s", sv_last_error());
	char *argv[CLI_MAX_POS + 1];
	unsigned argc = 0;
	for (unsigned i = cli->dashdash_pos; i < cli->npos; i++)
		argv[argc++] = (char *)cli->pos[i];
	argv[argc] = NULL;

	struct sv_watchdog *wd;
	if (sv_watchdog_start(fs, nfs, lease, timeout, &wd) == -1)
		return cli_fail("%s", sv_last_error());
	if (sv_watchdog_freeze(wd) == -1) {
		r = cli_fail("%s", sv_last_error());
		sv_watchdog_close(wd);
		return r;
	}
	if (sv_watchdog_start_heartbeats(wd) == -1) {
		r = cli_fail("%s", sv_last_error());
		sv_watchdog_close(wd);
		return r;
	}
	pid_t pid = fork();
	if (pid == 0) {
		execvp(argv[0], argv);
		_exit(127); /* said after the thaw, from the status */
	}
	int pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
	int status = 0;
	bool told = false;
	if (pid > 0) {
		for (;;) {
			struct pollfd p[2] = {{.fd = pidfd, .events = POLLIN},
					      {.fd = sv_watchdog_fd(wd), .events = POLLIN}};
			int n = poll(p, told ? 1 : 2, pidfd >= 0 ? -1 : 100);
			if (n == -1 && errno != EINTR)
				break;
			if (!told && n > 0 && p[1].revents) {
				struct sv_watchdog_state st;
				int gone = sv_watchdog_poll(wd);
				sv_watchdog_get_state(wd, &st);
				if (!st.frozen) {
					/* thawed: printing is safe now */
					fprintf(
					    stderr,
					    "snapvol: fsfreeze: thawed after %.1f ms, before %s "
					    "ended: %s\n",
					    ms(st.thawed_ns - st.freeze_start_ns), argv[0],
					    sv_thaw_reason_str(st.reason));
					told = true;
				} else if (gone == -1) {
					told = true;
				}
			}
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid)
				break;
		}
	}
	int thaw_r = sv_watchdog_thaw(wd);
	struct sv_watchdog_state st;
	sv_watchdog_get_state(wd, &st);
	sv_watchdog_close(wd);
	if (pidfd >= 0)
		close(pidfd);
	if (thaw_r == -1)
		cli_fail("thaw: %s", sv_last_error());
	if (pid == -1)
		return cli_fail("cannot run %s: %s", argv[0], strerror(errno));
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	if (WIFEXITED(status) && code == 127)
		fprintf(stderr, "snapvol: fsfreeze: %s exited 127 (not found or not executable?)\n",
			argv[0]);
	if (cli->json) {
		json_t *order = json_array();
		for (unsigned i = 0; i < nfs; i++)
			json_array_append_new(order, json_string(fs[i].path));
		json_t *o = json_pack(
		    "{s:i, s:o, s:I, s:I, s:b, s:b, s:b, s:s}", "status", code, "order", order,
		    "window_us", (json_int_t)((st.thawed_ns - st.freeze_start_ns) / 1000),
		    "fifreeze_us", (json_int_t)((st.frozen_ns - st.freeze_start_ns) / 1000),
		    "rcu_expedited", st.rcu_expedited, "realtime", st.realtime, "thawed_early",
		    told, "reason", sv_thaw_reason_str(st.reason));
		char *txt = json_dumps(o, JSON_COMPACT);
		if (txt)
			puts(txt);
		free(txt);
		json_decref(o);
	} else if (sv_verbose)
		fprintf(stderr, "snapvol: fsfreeze: frozen for %.1f ms (FIFREEZE %.1f ms)\n",
			ms(st.thawed_ns - st.freeze_start_ns),
			ms(st.frozen_ns - st.freeze_start_ns));
	return code;
}

/* ---- snapshot create --fsfreeze ---- */

/* The server's threads serving the volumes run SCHED_FIFO for the window
 * (window-begin; they serve the FLUSHes FIFREEZE and FITHAW send).  0 when
 * not done: no server, SNAPVOL_FREEZE_RT=0, a server without the command;
 * *raised: how many threads the server raised (0 without the privilege). */
static uint64_t
window_begin(struct cli_session *s, json_t *snapshots, uint64_t timeout, json_int_t *raised)
{
	const char *e = getenv("SNAPVOL_FREEZE_RT");
	*raised = 0;
	if (s->fd < 0 || (e && !strcmp(e, "0")))
		return 0;
	json_t *names = json_array();
	size_t i;
	json_t *v;
	json_array_foreach(snapshots, i, v)
	{
		char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
		bool has;
		const char *spec = json_string_value(v);
		if (spec && sv_split_export_name(spec, strlen(spec), vol, snap, &has) == 0)
			json_array_append_new(names, json_string(vol));
	}
	/* The bound: the freeze's own timeout, and a second for the rest. */
	json_t *args =
	    json_pack("{s:o, s:I}", "names", names, "max", (json_int_t)(timeout / 1000000 + 1000));
	json_t *ret = cli_session_call(s, "window-begin", args);
	json_decref(args);
	uint64_t id = (uint64_t)json_integer_value(json_object_get(ret, "id"));
	*raised = json_integer_value(json_object_get(ret, "raised"));
	json_decref(ret);
	sv_clear_error();
	return id;
}

static void
window_end(struct cli_session *s, uint64_t id)
{
	if (!id)
		return;
	json_t *args = json_pack("{s:I}", "id", (json_int_t)id);
	json_decref(cli_session_call(s, "window-end", args));
	json_decref(args);
	sv_clear_error();
}

/* snapshot-create with "notify": sends the request and returns once the
 * server says the instant has passed (*taken set) or replied (*reply set,
 * the result: an error or a failure before the instant); NULL reply and
 * !*taken: the connection failed (error set). */
static int
create_start(struct cli_session *s, json_t *args, bool *taken, json_t **reply)
{
	*taken = false;
	*reply = NULL;
	if (sv_ctl_client_send(s->fd, "snapshot-create", args) == -1)
		return -1;
	for (;;) {
		json_t *m = sv_ctl_client_read(s->fd);
		if (!m)
			return -1;
		const char *ev = json_string_value(json_object_get(m, "event"));
		if (ev && !strcmp(ev, "SNAPSHOT_TAKEN")) {
			json_decref(m);
			*taken = true;
			return 0;
		}
		if (json_object_get(m, "return") || json_object_get(m, "error")) {
			*reply = m;
			return 0;
		}
		json_decref(m); /* another event */
	}
}

/* The reply that follows SNAPSHOT_TAKEN. */
static json_t *
create_finish(struct cli_session *s)
{
	for (;;) {
		json_t *m = sv_ctl_client_read(s->fd);
		if (!m)
			return NULL;
		if (json_object_get(m, "return") || json_object_get(m, "error"))
			return cli_reply_result(m, "snapshot-create");
		json_decref(m);
	}
}

/* What the free-space hint needs, opened before the freeze. */
struct hint {
	int fs;		/* index of the filesystem, or -1: no hint */
	char why[1024]; /* why not */
	int dir_fd;	/* on the filesystem, for GETFSMAP */
	int dev_fd;	/* its device, O_DIRECT */
	int origin_fd;	/* the volume's origin file */
	struct sv_range *ranges;
	size_t n;
	uint64_t bytes;
};

/* Does the device hold the volume's bytes?  Checked before the freeze (it
 * is a question of identity, and the window stays shorter): a write between
 * the two reads can make them differ, so a few tries; a false "no" only
 * costs the hint. */
static bool
same_bytes(struct hint *h)
{
	void *a = NULL, *b = malloc(HINT_CHECK_BYTES);
	bool same = false;
	if (b && posix_memalign(&a, 4096, HINT_CHECK_BYTES) == 0)
		for (int i = 0; i < 3 && !same; i++)
			same = pread(h->dev_fd, a, HINT_CHECK_BYTES, 0) == HINT_CHECK_BYTES &&
			       pread(h->origin_fd, b, HINT_CHECK_BYTES, 0) == HINT_CHECK_BYTES &&
			       !memcmp(a, b, HINT_CHECK_BYTES);
	free(a);
	free(b);
	return same;
}

static void
hint_prepare(struct cli *cli, struct cli_session *s, const struct sv_fs *fs, size_t nfs,
	     json_t *snapshots, struct hint *h)
{
	memset(h, 0, sizeof *h);
	h->fs = h->dir_fd = h->dev_fd = h->origin_fd = -1;
	if (cli->val[OPT_NO_FS_HINT]) {
		snprintf(h->why, sizeof h->why, "--no-fs-hint");
		return;
	}
	if (json_array_size(snapshots) != 1) {
		snprintf(h->why, sizeof h->why, "more than one volume");
		return;
	}
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	bool has;
	const char *spec = json_string_value(json_array_get(snapshots, 0));
	if (sv_split_export_name(spec, strlen(spec), vol, snap, &has) == -1)
		return;
	json_t *args = json_pack("{s:s}", "name", vol);
	json_t *info = cli_session_call(s, "info", args);
	json_decref(args);
	if (!info) {
		snprintf(h->why, sizeof h->why, "%s", sv_last_error());
		return;
	}
	uint64_t size = (uint64_t)json_integer_value(json_object_get(info, "size"));
	const char *origin = json_string_value(json_object_get(info, "origin"));
	int match = -1, matches = 0;
	for (size_t i = 0; i < nfs; i++)
		if (fs[i].dev_size == size) {
			match = (int)i;
			matches++;
		}
	if (matches != 1) {
		snprintf(h->why, sizeof h->why,
			 "%s frozen filesystem's device has the volume's size",
			 matches ? "more than one" : "no");
	} else if (!origin) {
		snprintf(h->why, sizeof h->why, "the volume's origin is not a local file");
	} else {
		struct stat st;
		h->dir_fd = open(fs[match].path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		h->dev_fd = open(fs[match].source, O_RDONLY | O_DIRECT | O_CLOEXEC);
		h->origin_fd = open(origin, O_RDONLY | O_CLOEXEC);
		if (h->dir_fd < 0 || h->dev_fd < 0 || h->origin_fd < 0)
			snprintf(h->why, sizeof h->why, "cannot open %.200s, %.200s or %.200s",
				 fs[match].path, fs[match].source, origin);
		else if (fstat(h->dev_fd, &st) == -1 || !S_ISBLK(st.st_mode) ||
			 st.st_rdev != fs[match].dev)
			snprintf(h->why, sizeof h->why, "%.200s is not the device of %.200s",
				 fs[match].source, fs[match].path);
		else if (!same_bytes(h))
			snprintf(h->why, sizeof h->why, "%.200s does not hold the volume's bytes",
				 fs[match].source);
		else
			h->fs = match;
	}
	json_decref(info);
}

/* While frozen: GETFSMAP. */
static void
hint_read(const struct sv_fs *fs, struct hint *h)
{
	if (h->fs < 0)
		return;
	if (sv_fs_free_ranges(h->dir_fd, fs[h->fs].dev, &h->ranges, &h->n) == -1) {
		snprintf(h->why, sizeof h->why, "%s", sv_last_error());
		h->fs = -1;
		return;
	}
	for (size_t i = 0; i < h->n; i++)
		h->bytes += h->ranges[i].len;
}

static void
hint_close(struct hint *h)
{
	if (h->dir_fd >= 0)
		close(h->dir_fd);
	if (h->dev_fd >= 0)
		close(h->dev_fd);
	if (h->origin_fd >= 0)
		close(h->origin_fd);
	free(h->ranges);
}

/* Hand the free ranges to the server, in batches; the bytes it released. */
static int
hint_release(struct cli_session *s, const char *spec, struct hint *h, uint64_t *released)
{
	*released = 0;
	for (size_t i = 0; i < h->n; i += RELEASE_BATCH) {
		json_t *arr = json_array();
		for (size_t k = i; k < h->n && k < i + RELEASE_BATCH; k++)
			json_array_append_new(arr, json_pack("[I, I]", (json_int_t)h->ranges[k].off,
							     (json_int_t)h->ranges[k].len));
		json_t *args = json_pack("{s:s, s:o}", "snapshot", spec, "ranges", arr);
		json_t *ret = cli_session_call(s, "snapshot-release", args);
		json_decref(args);
		if (!ret)
			return -1;
		*released += (uint64_t)json_integer_value(json_object_get(ret, "bytes"));
		json_decref(ret);
	}
	return 0;
}

int
cli_snapshot_create_fsfreeze(struct cli *cli, json_t *snapshots)
{
	uint64_t lease, timeout;
	int r;
	struct sv_fs fs[SV_AGENT_MAX_FS];
	struct cli_session s;
	struct hint h;
	struct sv_watchdog *wd = NULL;
	uint64_t win = 0;
	json_int_t win_raised = 0;

	if ((r = freeze_times(cli, DEFAULT_SNAPSHOT_TIMEOUT_NS, &lease, &timeout))) {
		json_decref(snapshots);
		return r;
	}
	if (sv_fs_resolve(cli->fsfreeze, cli->nfsfreeze, fs) == -1) {
		json_decref(snapshots);
		return cli_fail("%s", sv_last_error());
	}
	if (cli_session_open(cli, &s, 0) == -1) {
		json_decref(snapshots);
		return cli_fail("%s", sv_last_error());
	}
	hint_prepare(cli, &s, fs, cli->nfsfreeze, snapshots, &h);

	if (sv_watchdog_start(fs, cli->nfsfreeze, lease, timeout, &wd) == -1) {
		r = cli_fail("%s", sv_last_error());
		goto out;
	}
	/* Begins before the syncfs that precedes FIFREEZE (inside
	 * sv_watchdog_freeze); ends after the create's reply, or at close. */
	win = window_begin(&s, snapshots, timeout, &win_raised);
	if (sv_watchdog_freeze(wd) == -1) {
		r = cli_fail("%s", sv_last_error());
		goto out;
	}
	/* Frozen: nothing printed from here to the thaw. */
	uint64_t t_seen = sv_now_ns();		/* the owner learnt it is frozen */
	(void)sv_watchdog_start_heartbeats(wd); /* without: the lease alone decides */
	hint_read(fs, &h);
	uint64_t t_fsmap = sv_now_ns();
	/* With a server: it says when the instant has passed, and the thaw
	 * comes then, before the server's syncs and metadata write (the reply,
	 * once they are durable, comes after).  Run in this process: the
	 * reply comes at the end, and the thaw after it. */
	json_t *args = json_pack("{s:O, s:s, s:b, s:b}", "snapshots", snapshots, "consistency",
				 "crash", "quiesce", 1, "notify", s.fd >= 0);
	json_t *created = NULL;
	bool taken = false;
	if (s.fd >= 0) {
		json_t *reply;
		if (create_start(&s, args, &taken, &reply) == 0 && reply)
			created = cli_reply_result(reply, "snapshot-create");
		taken |= created != NULL; /* replied without the event: taken too */
	} else {
		created = cli_session_call(&s, "snapshot-create", args);
		taken = created != NULL;
	}
	json_decref(args);
	uint64_t t_created = sv_now_ns();
	char create_err[1024] = "";
	if (!taken)
		snprintf(create_err, sizeof create_err, "%s", sv_last_error());
	/* "Frozen throughout?" and the thaw: one message to the watchdog. */
	bool throughout = false;
	int thaw_r = taken ? sv_watchdog_query_thaw(wd, &throughout) : sv_watchdog_thaw(wd);
	struct sv_watchdog_state st;
	sv_watchdog_get_state(wd, &st);
	/* Thawed: the rest may print. */
	if (thaw_r == -1)
		cli_fail("thaw: %s", sv_last_error());
	uint64_t t_durable = t_created;
	if (taken && !created) {
		created = create_finish(&s);
		t_durable = sv_now_ns();
		if (!created)
			snprintf(create_err, sizeof create_err, "%s", sv_last_error());
	}
	window_end(&s, win);
	win = 0;
	if (!created) {
		r = cli_fail("%s", create_err);
		goto out;
	}

	uint64_t released = 0;
	bool hinted = false;
	char hint_err[512] = "";
	if (throughout && h.fs >= 0) {
		const char *spec = json_string_value(json_array_get(snapshots, 0));
		if (hint_release(&s, spec, &h, &released) == 0)
			hinted = true;
		else
			snprintf(hint_err, sizeof hint_err, "%s", sv_last_error());
	} else if (h.fs >= 0) {
		snprintf(h.why, sizeof h.why, "the freeze did not last");
	}
	const char *consistency = "crash";
	if (throughout) {
		consistency = "frozen";
		size_t i;
		json_t *v;
		json_array_foreach(snapshots, i, v)
		{
			json_t *a = json_pack("{s:O, s:s}", "snapshot", v, "consistency", "frozen");
			json_t *ret = cli_session_call(&s, "snapshot-set", a);
			json_decref(a);
			if (!ret) {
				consistency = "crash";
				cli_fail("%s (the snapshots stay \"crash\")", sv_last_error());
				break;
			}
			json_decref(ret);
		}
	}
	uint64_t window = st.thawed_ns - st.freeze_start_ns;
	uint64_t fifreeze = st.frozen_ns - st.freeze_start_ns;
	if (!throughout)
		fprintf(stderr,
			"snapvol: warning: the filesystems did not stay frozen through the "
			"snapshot (%s): recorded as crash-consistent\n",
			sv_thaw_reason_str(st.reason != SV_THAW_REQUESTED ? st.reason
									  : SV_THAW_FREEZE_LOST));
	if (hint_err[0])
		fprintf(stderr, "snapvol: warning: free-space hint not applied: %s\n", hint_err);
	if (cli->json) {
		json_t *mps = json_array();
		for (unsigned i = 0; i < cli->nfsfreeze; i++)
			json_array_append_new(mps, json_string(fs[i].path));
		json_object_set_new(created, "consistency", json_string(consistency));
		/* Where the window went, in order (all one clock, CLOCK_MONOTONIC,
		 * in both processes); the phases add up to window_us.  "to_thaw"
		 * holds the watchdog's check that the freeze lasted (its
		 * FIFREEZE answering EBUSY), sent with the thaw. */
		json_t *ph = json_pack(
		    "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "presync",
		    us(st.presync_ns, 0), "checkpoint", us(st.checkpoint_ns, 0), "fifreeze",
		    us(st.frozen_ns, st.freeze_start_ns), "to_owner", us(t_seen, st.frozen_ns),
		    "fsmap", us(t_fsmap, t_seen), "create", us(t_created, t_fsmap), "to_thaw",
		    us(st.thaw_start_ns, t_created), "fithaw", us(st.thawed_ns, st.thaw_start_ns),
		    "durable_after_thaw", us(t_durable, st.thawed_ns));
		json_object_set_new(
		    created, "freeze",
		    json_pack("{s:o, s:I, s:I, s:I, s:I, s:b, s:b, s:I, s:b, s:s, s:o}",
			      "mountpoints", mps, "start_ns", (json_int_t)st.freeze_start_ns,
			      "window_us", (json_int_t)(window / 1000), "fifreeze_us",
			      (json_int_t)(fifreeze / 1000), "presync_us",
			      (json_int_t)(st.presync_ns / 1000), "rcu_expedited", st.rcu_expedited,
			      "realtime", st.realtime, "server_realtime_threads", win_raised,
			      "frozen_throughout", throughout, "thaw",
			      sv_thaw_reason_str(st.reason), "phases_us", ph));
		json_object_set_new(created, "fs_hint",
				    json_pack("{s:b, s:I, s:I, s:I, s:s}", "applied", hinted,
					      "ranges", (json_int_t)(hinted ? h.n : 0),
					      "free_bytes", (json_int_t)(hinted ? h.bytes : 0),
					      "released_bytes", (json_int_t)released, "reason",
					      hinted ? "" : (hint_err[0] ? hint_err : h.why)));
		char *txt = json_dumps(created, JSON_INDENT(2));
		if (txt)
			puts(txt);
		free(txt);
	} else {
		size_t i;
		json_t *v;
		json_array_foreach(snapshots, i, v)
		    printf("created snapshot %s (%s)\n", json_string_value(v), consistency);
		printf("freeze window: %.1f ms (FIFREEZE %.1f ms)\n", ms(window), ms(fifreeze));
		if (hinted) {
			char a[32], b[32];
			printf("free-space hint: %zu free ranges (%s), %s released\n", h.n,
			       sv_format_size(h.bytes, a, sizeof a),
			       sv_format_size(released, b, sizeof b));
		} else if (!hint_err[0]) {
			printf("free-space hint: none (%s)\n", h.why);
		}
	}
	json_decref(created);
	r = EXIT_OK;
out:
	sv_watchdog_close(wd);
	window_end(&s, win);
	hint_close(&h);
	cli_session_close(&s);
	json_decref(snapshots);
	return r;
}
