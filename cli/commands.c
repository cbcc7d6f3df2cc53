/*
 * commands.c: the subcommands that are control commands (create, delete,
 * list, info, status, call), and how the CLI decides where they run.
 *
 * A subcommand turns its command line into a control command and its
 * arguments, then runs it in a session (session.c): on the server whose
 * control socket answers, else on the pool opened here.  Either way the
 * result is the same JSON reply, printed as JSON (--json: the "return"
 * value) or for people (tables, "key: value" lines).  When the pool's lock
 * is held by someone whose socket does not answer, the message says who
 * (cli_pool_in_use_message, here).
 *
 * Arguments the CLI can check itself (a name, a size) are checked before
 * anything is contacted, so a typo is a usage error (exit 2) whether or not
 * a server runs; the command table checks them again for other clients.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "log.h"
#include "names.h"
#include "util.h"

/* ---- where a command runs ---- */

void
cli_pool_in_use_message(const struct cli *cli, const char *control, const char *why, char *buf,
			size_t len)
{
	/* A RADOS pool's claim names its holder (host, pid, Ceph client) in the
	 * error sv_pool_open just left. */
	if (!strncmp(cli->pool, "rados:", 6) && sv_last_errno() == EWOULDBLOCK) {
		snprintf(buf, len, "%s; its control socket %s does not answer here (%s)",
			 sv_last_error(), control, why);
		return;
	}
	/* The file backend writes its pid into pool.lock (a hint: the flock
	 * is the lock).  Name it only if that process exists. */
	char pidinfo[48] = "";
	char *lockfile = cli_pool_file(cli, "pool.lock");
	FILE *f = fopen(lockfile, "r");
	long pid;
	if (f) {
		if (fscanf(f, "%ld", &pid) == 1 && pid > 0) {
			char proc[64];
			struct stat st;
			snprintf(proc, sizeof proc, "/proc/%ld", pid);
			if (stat(proc, &st) == 0)
				snprintf(pidinfo, sizeof pidinfo, " (pid %ld)", pid);
		}
		fclose(f);
	}
	free(lockfile);
	snprintf(buf, len,
		 "pool %s is in use by another process%s and its control socket %s does not "
		 "answer (%s)%s",
		 cli->pool, pidinfo, control, why,
		 !cli->control && access(control, F_OK) == -1
		     ? "; if that server was started with --control PATH, give the same "
		       "--control"
		     : "");
}

struct outcome {
	json_t *ret;   /* the "return" value */
	char why[512]; /* without a server: why the control socket did not do */
};

/* Run command (taking args) and fill out; returns an exit status, having
 * printed the error if it is not EXIT_OK. */
static int
execute(struct cli *cli, const char *command, json_t *args, unsigned pool_flags,
	struct outcome *out)
{
	memset(out, 0, sizeof *out);
	struct cli_session s;
	if (cli_session_open(cli, &s, pool_flags) == -1)
		return cli_fail("%s", sv_last_error());
	snprintf(out->why, sizeof out->why, "%s", s.why);
	out->ret = cli_session_call(&s, command, args);
	cli_session_close(&s);
	return out->ret ? EXIT_OK : cli_fail("%s", sv_last_error());
}

static void
print_json(json_t *v)
{
	char *s = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
	if (s) {
		puts(s);
		free(s);
	}
}

/* ---- formatting ---- */

static uint64_t
jnum(json_t *obj, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(obj, key));
	return v > 0 ? (uint64_t)v : 0;
}

static const char *
jstr(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s ? s : "-";
}

static const char *
fmt_size(uint64_t bytes, char *buf, size_t len)
{
	return sv_format_size(bytes, buf, len);
}

static const char *
fmt_time(uint64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!t || !localtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, len, "-");
	return buf;
}

static const char *
fmt_duration(uint64_t s, char *buf, size_t len)
{
	if (s >= 86400)
		snprintf(buf, len, "%" PRIu64 "d %" PRIu64 "h %" PRIu64 "m", s / 86400,
			 s % 86400 / 3600, s % 3600 / 60);
	else if (s >= 3600)
		snprintf(buf, len, "%" PRIu64 "h %" PRIu64 "m %" PRIu64 "s", s / 3600,
			 s % 3600 / 60, s % 60);
	else if (s >= 60)
		snprintf(buf, len, "%" PRIu64 "m %" PRIu64 "s", s / 60, s % 60);
	else
		snprintf(buf, len, "%" PRIu64 "s", s);
	return buf;
}

/* A table of strings printed with aligned columns. */
#define MAX_COLS 8
struct table {
	unsigned ncols;
	const char *const *heads;
	const bool *right; /* right-aligned columns (numbers) */
	char **cells;	   /* row-major, malloc'd strings */
	size_t nrows;
};

static void
table_add(struct table *t, char **row)
{
	t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *t->cells);
	if (!t->cells) {
		cli_fail("out of memory");
		exit(EXIT_FAIL);
	}
	for (unsigned c = 0; c < t->ncols; c++)
		t->cells[t->nrows * t->ncols + c] = strdup(row[c]);
	t->nrows++;
}

static void
table_print(struct table *t, const char *indent)
{
	size_t w[MAX_COLS];
	for (unsigned c = 0; c < t->ncols; c++) {
		w[c] = strlen(t->heads[c]);
		for (size_t r = 0; r < t->nrows; r++) {
			size_t l = strlen(t->cells[r * t->ncols + c]);
			if (l > w[c])
				w[c] = l;
		}
	}
	for (size_t r = 0; r <= t->nrows; r++) {
		fputs(indent, stdout);
		for (unsigned c = 0; c < t->ncols; c++) {
			const char *s = r == 0 ? t->heads[c] : t->cells[(r - 1) * t->ncols + c];
			bool last = c + 1 == t->ncols;
			if (t->right[c])
				printf("%*s", (int)w[c], s);
			else if (last)
				fputs(s, stdout); /* no trailing blanks */
			else
				printf("%-*s", (int)w[c], s);
			if (!last)
				fputs("  ", stdout);
		}
		fputc('\n', stdout);
	}
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
}

static void
print_volume_table(json_t *vols, const char *indent)
{
	static const char *const heads[] = {"NAME", "SIZE", "CHUNK", "ALLOCATED", "CREATED"};
	static const bool right[] = {false, true, true, true, false};
	struct table t = {.ncols = 5, .heads = heads, .right = right};
	size_t i;
	json_t *v;
	json_array_foreach(vols, i, v)
	{
		char size[32], chunk[32], alloc[32], created[32];
		char *row[] = {
		    (char *)jstr(v, "name"),
		    (char *)fmt_size(jnum(v, "size"), size, sizeof size),
		    (char *)fmt_size(jnum(v, "chunk_size"), chunk, sizeof chunk),
		    (char *)fmt_size(jnum(v, "allocated"), alloc, sizeof alloc),
		    (char *)fmt_time(jnum(v, "created"), created, sizeof created),
		};
		table_add(&t, row);
	}
	table_print(&t, indent);
}

static void
print_volume_info(json_t *v)
{
	char a[32], b[32];
	printf("name:        %s\n", jstr(v, "name"));
	printf("size:        %s (%" PRIu64 " bytes)\n", fmt_size(jnum(v, "size"), a, sizeof a),
	       jnum(v, "size"));
	printf("chunk size:  %s\n", fmt_size(jnum(v, "chunk_size"), a, sizeof a));
	printf("allocated:   %s\n", fmt_size(jnum(v, "allocated"), a, sizeof a));
	printf("created:     %s\n", fmt_time(jnum(v, "created"), b, sizeof b));
	printf("open views:  %" PRIu64 "\n", jnum(v, "open_views"));
	printf("origin:      %s\n", jstr(v, "origin"));
	printf("full policy: %s\n", jstr(v, "full_policy"));
	printf("snapshots:   %" PRIu64 " (holding %s)\n", jnum(v, "snapshots"),
	       fmt_size(jnum(v, "snapshot_space"), a, sizeof a));
	json_t *cow = json_object_get(v, "cow");
	if (cow)
		printf("cow:         epoch %" PRIu64 ", %" PRIu64 " copies, %s copied, %" PRIu64
		       " journal commits (since the volume was opened)\n",
		       jnum(cow, "epoch"), jnum(cow, "copies"),
		       fmt_size(jnum(cow, "copied_bytes"), a, sizeof a),
		       jnum(cow, "journal_commits"));
}

/* ---- the subcommands ---- */

/* A volume name from the command line: a usage error if malformed. */
static int
check_name_arg(struct cli *cli, const char *name)
{
	if (sv_check_name(name, "volume") == -1)
		return cli_usage_error(cli, "%s", sv_last_error());
	return 0;
}

static int
check_policy_arg(struct cli *cli, const char *policy)
{
	if (strcmp(policy, "fail-writes") && strcmp(policy, "drop-snapshot"))
		return cli_usage_error(
		    cli, "--full-policy: '%s' is not fail-writes or drop-snapshot", policy);
	return 0;
}

int
cli_run_create(struct cli *cli)
{
	const char *name = cli->pos[0];
	uint64_t size, chunk = 0;
	int r;
	if ((r = check_name_arg(cli, name)))
		return r;
	if (!cli->val[OPT_SIZE])
		return cli_usage_error(cli, "'create' needs --size SIZE");
	if ((r = cli_parse_size_opt(cli, OPT_SIZE, &size)))
		return r;
	if (cli->val[OPT_CHUNK_SIZE] && (r = cli_parse_size_opt(cli, OPT_CHUNK_SIZE, &chunk)))
		return r;
	/* The engine checks these too; on the command line they are usage errors. */
	if (size == 0 || size % 512)
		return cli_usage_error(cli, "--size: %s is not a positive multiple of 512 bytes",
				       cli->val[OPT_SIZE]);
	if (size > SV_VOLUME_MAX_SIZE)
		return cli_usage_error(cli, "--size: %s is larger than the maximum (1E)",
				       cli->val[OPT_SIZE]);
	if (cli->val[OPT_CHUNK_SIZE] &&
	    (!sv_is_power_of_2(chunk) || chunk < SV_CHUNK_MIN || chunk > SV_CHUNK_MAX))
		return cli_usage_error(cli, "--chunk-size: %s is not a power of 2 from 4K to 1M",
				       cli->val[OPT_CHUNK_SIZE]);

	const char *policy = cli->val[OPT_FULL_POLICY];
	if (policy && (r = check_policy_arg(cli, policy)))
		return r;
	json_t *args = json_pack("{s:s, s:I}", "name", name, "size", (json_int_t)size);
	if (chunk)
		json_object_set_new(args, "chunk_size", json_integer((json_int_t)chunk));
	if (policy)
		json_object_set_new(args, "full_policy", json_string(policy));
	struct outcome out;
	r = execute(cli, "create", args, SV_POOL_CREATE, &out);
	json_decref(args);
	if (r)
		return r;
	if (cli->json) {
		print_json(out.ret);
	} else {
		char a[32], b[32];
		printf("created volume %s: %s, chunk size %s\n", jstr(out.ret, "name"),
		       fmt_size(jnum(out.ret, "size"), a, sizeof a),
		       fmt_size(jnum(out.ret, "chunk_size"), b, sizeof b));
	}
	json_decref(out.ret);
	return EXIT_OK;
}

/* Run a command whose one argument is the volume named on the command line. */
static int
execute_on_volume(struct cli *cli, const char *command, struct outcome *out)
{
	int r;
	if ((r = check_name_arg(cli, cli->pos[0])))
		return r;
	json_t *args = json_pack("{s:s}", "name", cli->pos[0]);
	r = execute(cli, command, args, 0, out);
	json_decref(args);
	return r;
}

int
cli_run_delete(struct cli *cli)
{
	struct outcome out;
	int r = execute_on_volume(cli, "delete", &out);
	if (r)
		return r;
	if (cli->json)
		print_json(out.ret);
	else
		printf("deleted volume %s\n", cli->pos[0]);
	json_decref(out.ret);
	return EXIT_OK;
}

int
cli_run_check(struct cli *cli)
{
	json_t *args = json_object();
	int r;
	if (cli->npos && (r = check_name_arg(cli, cli->pos[0]))) {
		json_decref(args);
		return r;
	}
	if (cli->npos)
		json_object_set_new(args, "name", json_string(cli->pos[0]));
	if (cli->val[OPT_REPAIR])
		json_object_set_new(args, "repair", json_true());
	struct outcome out;
	r = execute(cli, "check", args, 0, &out);
	json_decref(args);
	if (r)
		return r;
	json_int_t errors = json_integer_value(json_object_get(out.ret, "errors"));
	if (cli->json) {
		print_json(out.ret);
	} else {
		json_t *findings = json_object_get(out.ret, "findings"), *f;
		size_t i;
		json_array_foreach(findings, i, f)
		{
			printf("%s: %s: %s%s\n", json_string_value(json_object_get(f, "volume")),
			       json_string_value(json_object_get(f, "severity")),
			       json_string_value(json_object_get(f, "what")),
			       json_is_true(json_object_get(f, "repaired")) ? " [repaired]" : "");
		}
		if (json_array_size(findings) == 0)
			printf("pool %s: no problems found\n", cli->pool);
		else
			printf("%zu finding%s, %" JSON_INTEGER_FORMAT " error%s left\n",
			       json_array_size(findings), json_array_size(findings) == 1 ? "" : "s",
			       errors, errors == 1 ? "" : "s");
	}
	json_decref(out.ret);
	return errors ? EXIT_FAIL : EXIT_OK;
}

int
cli_run_list(struct cli *cli)
{
	struct outcome out;
	int r = execute(cli, "list", NULL, 0, &out);
	if (r)
		return r;
	json_t *vols = json_object_get(out.ret, "volumes");
	if (cli->json)
		print_json(out.ret);
	else if (json_array_size(vols) == 0)
		printf("no volumes in pool %s\n", cli->pool);
	else
		print_volume_table(vols, "");
	json_decref(out.ret);
	return EXIT_OK;
}

int
cli_run_info(struct cli *cli)
{
	struct outcome out;
	int r = execute_on_volume(cli, "info", &out);
	if (r)
		return r;
	if (cli->json)
		print_json(out.ret);
	else
		print_volume_info(out.ret);
	json_decref(out.ret);
	return EXIT_OK;
}

static void
print_connections(json_t *conns)
{
	static const char *const heads[] = {"ID",   "PEER",    "EXPORT", "REQUESTS",
					    "READ", "WRITTEN", "SINCE",	 "TLS"};
	static const bool right[] = {true, false, false, true, true, true, false, false};
	struct table t = {.ncols = 8, .heads = heads, .right = right};
	size_t i;
	json_t *c;
	json_array_foreach(conns, i, c)
	{
		char id[24], reqs[24], rd[32], wr[32], since[32], tls[32] = "-";
		snprintf(id, sizeof id, "%" PRIu64, jnum(c, "id"));
		snprintf(reqs, sizeof reqs, "%" PRIu64, jnum(c, "requests"));
		/* the protocol version, the first part of "(TLS1.3)-(ECDHE-...)-(...)" */
		const char *desc = json_string_value(json_object_get(c, "tls"));
		if (desc)
			snprintf(tls, sizeof tls, "%.*s", (int)strcspn(desc + (*desc == '('), ")"),
				 desc + (*desc == '('));
		char *row[] = {
		    id,
		    (char *)jstr(c, "peer"),
		    (char *)jstr(c, "export"),
		    reqs,
		    (char *)fmt_size(jnum(c, "bytes_read"), rd, sizeof rd),
		    (char *)fmt_size(jnum(c, "bytes_written"), wr, sizeof wr),
		    (char *)fmt_time(jnum(c, "started"), since, sizeof since),
		    tls,
		};
		table_add(&t, row);
	}
	table_print(&t, "  ");
}

int
cli_run_status(struct cli *cli)
{
	struct outcome out;
	int r = execute(cli, "status", NULL, 0, &out);
	if (r)
		return r;
	if (cli->json) {
		print_json(out.ret);
		json_decref(out.ret);
		return EXIT_OK;
	}
	json_t *ret = out.ret;
	json_t *vols = json_object_get(ret, "volumes");
	char a[32], b[32];
	if (!json_is_true(json_object_get(ret, "running"))) {
		printf("server:      %s (%s)\n", jstr(ret, "message"),
		       out.why[0] ? out.why : "no server answered");
		printf("pool:        %s\n", jstr(ret, "pool"));
	} else {
		printf("server:      running, pid %" PRIu64 ", snapvol %s, up %s (since %s)\n",
		       jnum(ret, "pid"), jstr(ret, "version"),
		       fmt_duration(jnum(ret, "uptime"), a, sizeof a),
		       fmt_time(jnum(ret, "started"), b, sizeof b));
		printf("pool:        %s\n", jstr(ret, "pool"));
		printf("nbd socket:  %s\n", jstr(ret, "nbd_socket"));
		size_t i;
		json_t *t;
		json_array_foreach(json_object_get(ret, "nbd_tcp"), i, t)
		    printf("nbd tcp:     %s\n", json_string_value(t));
		json_t *tls = json_object_get(ret, "tls");
		bool psk = json_is_true(json_object_get(tls, "psk"));
		bool x509 = json_is_true(json_object_get(tls, "x509"));
		printf("tls:         unix %s, tcp %s; credentials: %s%s%s%s\n", jstr(tls, "unix"),
		       jstr(tls, "tcp"), psk ? "psk" : "", psk && x509 ? " and " : "",
		       x509 ? "x509" : "", !psk && !x509 ? "none" : "");
		if (json_is_true(json_object_get(tls, "verify_peer")))
			printf("             client certificates required and verified\n");
		printf("control:     %s\n", jstr(ret, "control_socket"));
		json_t *conns = json_object_get(ret, "connections");
		printf("connections: %zu\n", json_array_size(conns));
		if (json_array_size(conns))
			print_connections(conns);
		json_t *fw;
		json_array_foreach(json_object_get(ret, "followed"), i, fw)
		{
			uint64_t nv = jnum(fw, "views");
			printf("follows:     %s@%s, %s, claim held by %s (%" PRIu64 " view%s)\n",
			       jstr(fw, "volume"), jstr(fw, "snapshot"), jstr(fw, "mode"),
			       jstr(fw, "holder"), nv, nv == 1 ? "" : "s");
		}
	}
	printf("volumes:     %zu\n", json_array_size(vols));
	if (json_array_size(vols))
		print_volume_table(vols, "  ");
	if (json_is_true(json_object_get(ret, "running")))
		cli_print_freezes(json_object_get(ret, "freezes"));
	json_decref(ret);
	return EXIT_OK;
}

int
cli_run_call(struct cli *cli)
{
	json_t *args = NULL;
	if (cli->npos > 1) {
		json_error_t jerr;
		args = json_loads(cli->pos[1], JSON_REJECT_DUPLICATES, &jerr);
		if (!args)
			return cli_usage_error(cli, "ARGUMENTS is not valid JSON: %s (column %d)",
					       jerr.text, jerr.column);
		if (!json_is_object(args)) {
			json_decref(args);
			return cli_usage_error(cli, "ARGUMENTS must be a JSON object, like "
						    "'{\"name\": \"vm1\"}'");
		}
	}
	/* Only "create" may bring a pool into existence, as the subcommand does. */
	unsigned flags = !strcmp(cli->pos[0], "create") ? SV_POOL_CREATE : 0;
	struct outcome out;
	int r = execute(cli, cli->pos[0], args, flags, &out);
	json_decref(args);
	if (r)
		return r;
	print_json(out.ret);
	json_decref(out.ret);
	return EXIT_OK;
}

int
cli_run_set(struct cli *cli)
{
	int r;
	if ((r = check_name_arg(cli, cli->pos[0])))
		return r;
	const char *policy = cli->val[OPT_FULL_POLICY];
	if (!policy)
		return cli_usage_error(cli, "'set' needs --full-policy POLICY");
	if ((r = check_policy_arg(cli, policy)))
		return r;
	json_t *args = json_pack("{s:s, s:s}", "name", cli->pos[0], "full_policy", policy);
	struct outcome out;
	r = execute(cli, "set", args, 0, &out);
	json_decref(args);
	if (r)
		return r;
	if (cli->json)
		print_json(out.ret);
	else
		print_volume_info(out.ret);
	json_decref(out.ret);
	return EXIT_OK;
}

/* "VOL@SNAP", checked as the engine will check it. */
static int
check_snapshot_arg(struct cli *cli, const char *spec)
{
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	return cli_snapshot_arg(cli, spec, vol, snap);
}

static void
print_snapshot_table(json_t *snaps)
{
	static const char *const heads[] = {"NAME",	   "EPOCH", "CREATED",
					    "CONSISTENCY", "SPACE", "STATE"};
	static const bool right[] = {false, true, false, false, true, false};
	struct table t = {.ncols = 6, .heads = heads, .right = right};
	size_t i;
	json_t *v;
	json_array_foreach(snaps, i, v)
	{
		char name[160], epoch[32], created[32], space[32];
		snprintf(name, sizeof name, "%s@%s", jstr(v, "volume"), jstr(v, "name"));
		snprintf(epoch, sizeof epoch, "%" PRIu64, jnum(v, "epoch"));
		char *row[] = {
		    name,
		    epoch,
		    (char *)fmt_time(jnum(v, "created"), created, sizeof created),
		    (char *)jstr(v, "consistency"),
		    (char *)fmt_size(jnum(v, "space"), space, sizeof space),
		    json_is_true(json_object_get(v, "invalid")) ? "INVALID" : "valid",
		};
		table_add(&t, row);
	}
	table_print(&t, "");
}

int
cli_run_snapshot(struct cli *cli)
{
	const char *action = cli->pos[0];
	const char *command;
	json_t *args;
	int r;
	if (!strcmp(action, "create")) {
		json_t *list = json_array();
		for (unsigned i = 1; i < cli->npos; i++) {
			if ((r = check_snapshot_arg(cli, cli->pos[i]))) {
				json_decref(list);
				return r;
			}
			json_array_append_new(list, json_string(cli->pos[i]));
		}
		if (cli->nfsfreeze) /* the freeze sequence: cli/fsfreeze.c */
			return cli_snapshot_create_fsfreeze(cli, list);
		command = "snapshot-create";
		args = json_pack("{s:o}", "snapshots", list);
	} else if (!strcmp(action, "list") || !strcmp(action, "delete") ||
		   !strcmp(action, "rollback")) {
		if (cli->npos != 2)
			return cli_usage_error(cli, "'snapshot %s' takes one %s", action,
					       strcmp(action, "list") ? "VOL@SNAP" : "VOL");
		if (!strcmp(action, "list")) {
			if ((r = check_name_arg(cli, cli->pos[1])))
				return r;
			command = "snapshot-list";
			args = json_pack("{s:s}", "name", cli->pos[1]);
		} else {
			if ((r = check_snapshot_arg(cli, cli->pos[1])))
				return r;
			command =
			    !strcmp(action, "delete") ? "snapshot-delete" : "snapshot-rollback";
			args = json_pack("{s:s}", "snapshot", cli->pos[1]);
		}
	} else {
		return cli_usage_error(
		    cli, "unknown snapshot action '%s' (create, list, delete, rollback)", action);
	}
	if (cli->nfsfreeze || cli->val[OPT_NO_FS_HINT] || cli->val[OPT_FREEZE_TIMEOUT] ||
	    cli->val[OPT_FREEZE_LEASE]) {
		json_decref(args);
		return cli_usage_error(cli, "--fsfreeze and its options go with 'snapshot create'");
	}
	struct outcome out;
	r = execute(cli, command, args, 0, &out);
	json_decref(args);
	if (r)
		return r;
	if (cli->json) {
		print_json(out.ret);
	} else if (!strcmp(action, "create")) {
		for (unsigned i = 1; i < cli->npos; i++)
			printf("created snapshot %s\n", cli->pos[i]);
	} else if (!strcmp(action, "list")) {
		json_t *snaps = json_object_get(out.ret, "snapshots");
		if (json_array_size(snaps) == 0)
			printf("volume %s has no snapshots\n", cli->pos[1]);
		else
			print_snapshot_table(snaps);
	} else {
		printf("%s snapshot %s\n", !strcmp(action, "delete") ? "deleted" : "rolled back to",
		       cli->pos[1]);
	}
	json_decref(out.ret);
	return EXIT_OK;
}

/* ---- diff ---- */

int
cli_run_diff(struct cli *cli)
{
	int r;
	if ((r = check_snapshot_arg(cli, cli->pos[0])))
		return r;
	char fvol[SV_NAME_MAX + 1], tvol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	bool has;
	if (sv_split_export_name(cli->pos[0], strlen(cli->pos[0]), fvol, snap, &has) == -1)
		return cli_usage_error(cli, "'%s': %s", cli->pos[0], sv_last_error());
	const char *to = cli->npos > 1 ? cli->pos[1] : fvol;
	if (sv_split_export_name(to, strlen(to), tvol, snap, &has) == -1)
		return cli_usage_error(cli, "'%s': %s", to, sv_last_error());
	if (strcmp(fvol, tvol))
		return cli_usage_error(cli, "'%s' and '%s' are of different volumes", cli->pos[0],
				       to);

	/* one session for every page: opening the pool here checkpoints the volume */
	struct cli_session src;
	if (cli_session_open(cli, &src, 0) == -1)
		return cli_fail("%s", sv_last_error());
	/* Printed page by page as the pages come: a 1 TiB volume can have
	 * hundreds of thousands of extents.  The table's columns are as wide
	 * as the volume's size needs. */
	uint64_t total = 0, size = 0, chunk = 0, next = 0, count = 0;
	int w = 6;
	bool more = true;
	r = EXIT_OK;
	while (more) {
		json_t *args = json_pack("{s:s, s:s, s:I}", "from", cli->pos[0], "to", to, "offset",
					 (json_int_t)next);
		json_t *ret = cli_session_call(&src, "diff", args);
		json_decref(args);
		if (!ret) {
			r = cli_fail("%s", sv_last_error());
			break;
		}
		if (count == 0 && next == 0) {
			size = jnum(ret, "size");
			chunk = jnum(ret, "chunk_size");
			char b[32];
			w = snprintf(b, sizeof b, "%" PRIu64, size);
			if (w < 6)
				w = 6;
			if (cli->json)
				printf("{\"from\":\"%s\",\"to\":\"%s\",\"size\":%" PRIu64
				       ",\"chunk_size\":%" PRIu64 ",\"extents\":[",
				       cli->pos[0], to, size, chunk);
		}
		size_t i;
		json_t *e;
		json_array_foreach(json_object_get(ret, "extents"), i, e)
		{
			uint64_t off = (uint64_t)json_integer_value(json_array_get(e, 0));
			uint64_t len = (uint64_t)json_integer_value(json_array_get(e, 1));
			if (cli->json) {
				printf("%s[%" PRIu64 ",%" PRIu64 "]", count ? "," : "", off, len);
			} else {
				char sz[32];
				if (count == 0)
					printf("%*s  %*s  %*s  %9s\n", w, "OFFSET", w, "LENGTH", w,
					       "END", "SIZE");
				printf("%*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %9s\n", w, off, w,
				       len, w, off + len, fmt_size(len, sz, sizeof sz));
			}
			count++;
		}
		total += jnum(ret, "changed_bytes");
		json_t *jn = json_object_get(ret, "next");
		more = json_is_integer(jn) && (uint64_t)json_integer_value(jn) > next;
		if (more)
			next = (uint64_t)json_integer_value(jn);
		json_decref(ret);
	}
	cli_session_close(&src);
	if (r) {
		if (cli->json && (count || next))
			printf("]}\n"); /* keep what was printed well-formed */
		return r;
	}
	if (cli->json) {
		printf("],\"changed_bytes\":%" PRIu64 ",\"extent_count\":%" PRIu64 "}\n", total,
		       count);
		return EXIT_OK;
	}
	char b1[32], b2[32];
	printf("%s%" PRIu64 " extent%s, %s changed of %s (%.2f%%) from %s to %s\n",
	       count ? "\n" : "", count, count == 1 ? "" : "s", fmt_size(total, b1, sizeof b1),
	       fmt_size(size, b2, sizeof b2), size ? 100.0 * (double)total / (double)size : 0.0,
	       cli->pos[0], to);
	return EXIT_OK;
}
