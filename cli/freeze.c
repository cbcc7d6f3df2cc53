/*
 * freeze.c: `snapvol freeze` and `snapvol thaw`, and the freezes in
 * `snapvol status`.
 *
 * A block-level freeze is a lease held by a running server for one control
 * connection (ctl-server.c): it ends when the connection closes.  So
 * `snapvol freeze` keeps its connection open for as long as it holds the
 * freeze and renews the lease with a heartbeat every lease/3; if it dies,
 * however it dies (kill -9 included), the kernel closes the socket and the
 * server thaws at once, and if it is merely stopped (SIGSTOP, a hung
 * machine) the lease lapses.  Without a server there is nobody to hold a
 * freeze, and that is said plainly rather than faked.
 *
 * Signals are blocked and taken with sigtimedwait(2), which is also the
 * heartbeat timer: no handlers, no races between a signal and the loop.
 * With a command, it runs in a child (signals unblocked again) and the
 * exit status is the command's; SIGINT/SIGTERM sent to snapvol alone are
 * passed on to it (one from the terminal reached it already).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "ctl.h"
#include "error.h"
#include "log.h"
#include "names.h"
#include "util.h"

#define DEFAULT_LEASE "5s"

static int
no_server(const char *control)
{
	return cli_fail("a freeze is held by a running server; start `snapvol serve` (no server "
			"answers on %s)",
			control);
}

/* Call a command; the "return" value (new reference), or NULL with *err
 * the error's errno and desc its text (or the connection's failure). */
static json_t *
call(int fd, const char *command, json_t *args, int *err, char *desc, size_t len)
{
	json_t *reply = sv_ctl_client_call(fd, command, args);
	json_decref(args);
	*err = 0;
	if (!reply) {
		*err = sv_last_errno() ? sv_last_errno() : EPIPE;
		snprintf(desc, len, "the server did not answer: %s", sv_last_error());
		return NULL;
	}
	json_t *e = json_object_get(reply, "error");
	if (e) {
		*err = (int)json_integer_value(json_object_get(e, "errno"));
		if (*err <= 0)
			*err = EIO;
		const char *d = json_string_value(json_object_get(e, "desc"));
		snprintf(desc, len, "%s", d ? d : "unknown error");
		json_decref(reply);
		return NULL;
	}
	json_t *ret = json_incref(json_object_get(reply, "return"));
	json_decref(reply);
	if (!ret) {
		*err = EPROTO;
		snprintf(desc, len, "the reply to '%s' has no result", command);
	}
	return ret;
}

static uint64_t
jnum(json_t *o, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(o, key));
	return v > 0 ? (uint64_t)v : 0;
}

static const char *
fmt_ms(uint64_t ms, char *buf, size_t len)
{
	if (ms < 1000)
		snprintf(buf, len, "%" PRIu64 " ms", ms);
	else if (ms % 1000 == 0 || ms >= 10000)
		snprintf(buf, len, "%" PRIu64 " s", (ms + 500) / 1000);
	else
		snprintf(buf, len, "%.1f s", (double)ms / 1000);
	return buf;
}

static const char *
fmt_clock(uint64_t unix_ms, char *buf, size_t len)
{
	time_t t = (time_t)(unix_ms / 1000);
	struct tm tm;
	if (!localtime_r(&t, &tm) || !strftime(buf, len, "%H:%M:%S", &tm))
		snprintf(buf, len, "-");
	return buf;
}

void
cli_print_freezes(json_t *freezes)
{
	printf("freezes:     %zu\n", json_array_size(freezes));
	size_t i;
	json_t *f;
	json_array_foreach(freezes, i, f)
	{
		char vols[1024] = "";
		size_t k, used = 0;
		json_t *v;
		json_array_foreach(json_object_get(f, "volumes"), k, v)
		{
			int n = snprintf(vols + used, sizeof vols - used, "%s%s", k ? "," : "",
					 json_string_value(v));
			if (n < 0 || (size_t)n >= sizeof vols - used)
				break;
			used += (size_t)n;
		}
		char a[32], b[32], c[32];
		const char *holder = json_string_value(json_object_get(f, "holder"));
		printf("  freeze %" PRIu64 ": %s, held by %s, lease %s, until %s unless renewed "
		       "(at most %s more)\n",
		       jnum(f, "id"), vols, holder && *holder ? holder : "-",
		       fmt_ms(jnum(f, "lease_ms"), a, sizeof a),
		       fmt_clock(jnum(f, "until_ms"), b, sizeof b),
		       fmt_ms(jnum(f, "max_ms"), c, sizeof c));
	}
}

static int
parse_duration_opt(struct cli *cli, const char *opt, const char *s, uint64_t *ms)
{
	uint64_t ns;
	if (sv_parse_duration(s, &ns) == -1)
		return cli_usage_error(cli, "--%s: %s", opt, sv_last_error());
	*ms = ns / 1000000u;
	return 0;
}

/* Wait up to ms for SIGINT, SIGTERM or SIGCHLD (blocked); the signal, or
 * 0.  *from_tty: it came from the terminal (the whole process group got
 * it, CMD included). */
static int
wait_signal(const sigset_t *set, uint64_t ms, bool *from_tty)
{
	struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
			      .tv_nsec = (long)(ms % 1000) * 1000000};
	for (;;) {
		siginfo_t si;
		int s = sigtimedwait(set, &si, &ts);
		*from_tty = s > 0 && si.si_code == SI_KERNEL;
		if (s > 0)
			return s;
		if (errno == EAGAIN)
			return 0;
		if (errno != EINTR)
			return 0;
	}
}

int
cli_run_freeze(struct cli *cli)
{
	unsigned nvol = cli->dashdash ? cli->dashdash_pos : cli->npos;
	unsigned ncmd = cli->npos - nvol;
	if (nvol == 0)
		return cli_usage_error(cli, "'freeze' needs VOLUME");
	if (cli->dashdash && ncmd == 0)
		return cli_usage_error(cli,
				       "'--' must be followed by a command to run while frozen");
	for (unsigned i = 0; i < nvol; i++)
		if (sv_check_name(cli->pos[i], "volume") == -1)
			return cli_usage_error(cli, "%s", sv_last_error());
	uint64_t lease_ms = 0, max_ms = 0;
	int r = parse_duration_opt(
	    cli, "lease", cli->val[OPT_FREEZE_LEASE] ? cli->val[OPT_FREEZE_LEASE] : DEFAULT_LEASE,
	    &lease_ms);
	if (r == 0 && cli->val[OPT_FREEZE_MAX])
		r = parse_duration_opt(cli, "max", cli->val[OPT_FREEZE_MAX], &max_ms);
	if (r)
		return r;

	char *control = cli_control_path(cli);
	int fd = sv_ctl_client_connect(control);
	if (fd < 0) {
		r = no_server(control);
		free(control);
		return r;
	}
	free(control);

	/* Signals are taken synchronously from here on (see the top). */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);

	json_t *names = json_array();
	for (unsigned i = 0; i < nvol; i++)
		json_array_append_new(names, json_string(cli->pos[i]));
	json_t *args = json_pack("{s:o, s:I}", "names", names, "lease", (json_int_t)lease_ms);
	if (max_ms)
		json_object_set_new(args, "max", json_integer((json_int_t)max_ms));
	int err;
	char desc[1024];
	json_t *ret = call(fd, "freeze", args, &err, desc, sizeof desc);
	if (!ret) {
		close(fd);
		return cli_fail("%s", desc);
	}
	uint64_t id = jnum(ret, "id");
	uint64_t lease = jnum(ret, "lease_ms");
	if (cli->json) {
		char *s = json_dumps(ret, JSON_COMPACT);
		if (s)
			puts(s);
		free(s);
	} else {
		char a[32], b[32];
		printf("frozen: ");
		for (unsigned i = 0; i < nvol; i++)
			printf("%s%s", i ? " " : "", cli->pos[i]);
		printf(" (freeze %" PRIu64 ", lease %s, at most %s)%s\n", id,
		       fmt_ms(lease, a, sizeof a), fmt_ms(jnum(ret, "max_ms"), b, sizeof b),
		       ncmd ? "" : "; SIGINT or SIGTERM thaws");
	}
	fflush(stdout);
	json_decref(ret);

	pid_t child = -1;
	if (ncmd) {
		child = fork();
		if (child == -1) {
			int e = errno;
			call(fd, "thaw", json_pack("{s:I}", "id", (json_int_t)id), &err, desc,
			     sizeof desc);
			close(fd);
			return cli_fail("cannot start %s: %s; thawed", cli->pos[nvol], strerror(e));
		}
		if (child == 0) {
			close(fd);
			sigprocmask(SIG_SETMASK, &old, NULL);
			execvp(cli->pos[nvol], (char *const *)&cli->pos[nvol]);
			fprintf(stderr, "snapvol: error: cannot run %s: %s\n", cli->pos[nvol],
				strerror(errno));
			_exit(127);
		}
	}

	uint64_t beat = lease / 3 > 30 ? lease / 3 : 30;
	bool frozen = true;
	int status = EXIT_OK;
	for (;;) {
		bool from_tty;
		int sig = wait_signal(&set, beat, &from_tty);
		if (sig == SIGCHLD && child > 0) {
			int ws;
			pid_t p = waitpid(child, &ws, WNOHANG);
			if (p == child) {
				status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
				break;
			}
			continue;
		}
		if (sig == SIGINT || sig == SIGTERM) {
			if (child > 0) {
				/* The command decides what to do; we wait for it. */
				if (!from_tty)
					kill(child, sig);
				continue;
			}
			break;
		}
		if (!frozen)
			continue; /* a command still runs; the freeze is over */
		ret = call(fd, "heartbeat", json_pack("{s:I}", "id", (json_int_t)id), &err, desc,
			   sizeof desc);
		if (ret) {
			json_decref(ret);
			continue;
		}
		frozen = false;
		if (err == ENOENT) {
			/* Thawed from elsewhere, or it reached its maximum. */
			if (child > 0)
				fprintf(stderr, "snapvol: warning: thawed before %s ended: %s\n",
					cli->pos[nvol], desc);
			else
				printf("thawed: %s\n", desc);
		} else {
			fprintf(stderr, "snapvol: error: heartbeat: %s\n", desc);
			if (child <= 0)
				status = EXIT_FAIL;
		}
		if (child <= 0)
			break;
	}
	if (frozen) {
		ret = call(fd, "thaw", json_pack("{s:I}", "id", (json_int_t)id), &err, desc,
			   sizeof desc);
		if (ret) {
			if (!cli->json && child <= 0)
				printf("thawed\n");
			json_decref(ret);
		} else if (err == ENOENT) {
			if (child <= 0)
				printf("thawed: %s\n", desc);
		} else {
			/* The connection closes below, which thaws it too. */
			fprintf(stderr, "snapvol: warning: thaw: %s\n", desc);
		}
	}
	close(fd);
	return status;
}

int
cli_run_thaw(struct cli *cli)
{
	const char *idstr = cli->val[OPT_THAW_ID];
	if (idstr && cli->npos == 1)
		return cli_usage_error(cli, "'thaw' takes a VOLUME or --id N, not both");
	if (!idstr && cli->npos == 0)
		return cli_usage_error(cli, "'thaw' needs a VOLUME or --id N");
	json_t *args;
	if (idstr) {
		uint64_t id;
		int r = cli_parse_uint_opt(cli, OPT_THAW_ID, 1, UINT64_MAX >> 1, &id);
		if (r)
			return r;
		args = json_pack("{s:I}", "id", (json_int_t)id);
	} else {
		if (sv_check_name(cli->pos[0], "volume") == -1)
			return cli_usage_error(cli, "%s", sv_last_error());
		args = json_pack("{s:s}", "name", cli->pos[0]);
	}
	char *control = cli_control_path(cli);
	int fd = sv_ctl_client_connect(control);
	if (fd < 0) {
		json_decref(args);
		int r = cli_fail("nothing is frozen: no server answers on %s (freezes live in a "
				 "running server)",
				 control);
		free(control);
		return r;
	}
	free(control);
	int err;
	char desc[1024];
	json_t *ret = call(fd, "thaw", args, &err, desc, sizeof desc);
	close(fd);
	if (!ret)
		return cli_fail("%s", desc);
	if (cli->json) {
		char *s = json_dumps(ret, JSON_COMPACT);
		if (s)
			puts(s);
		free(s);
	} else if (idstr) {
		printf("thawed freeze %s\n", idstr);
	} else {
		uint64_t k = jnum(ret, "thawed");
		printf("thawed %s (%" PRIu64 " freeze%s)\n", cli->pos[0], k, k == 1 ? "" : "s");
	}
	json_decref(ret);
	return EXIT_OK;
}
