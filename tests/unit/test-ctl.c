/*
 * test-ctl.c: unit tests for the control protocol.
 *
 * First the command table through sv_ctl_execute on a real pool in a
 * temporary directory: every command with good arguments, and the bad
 * arguments a control client can send (missing or unknown keys, wrong
 * types, sizes that are not sizes, names with '/', "..", '@' or control
 * characters, size 0, unknown commands), checking reply objects exactly
 * where ctl/ writes the message, and class and errno where the engine does.
 * Then the server over a real unix socket: the greeting, commands with ids,
 * malformed lines (the connection stays usable), the 1 MiB line limit on
 * both sides of the boundary, the client cap, stale and live socket files,
 * and the client API.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "ctl-private.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"

struct fixture {
	char dir[64];
	char sock[96];
	struct sv_pool *pool;
	struct sv_ctl_context ctx;
	struct sv_ctl_server *srv;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	strcpy(f->dir, "/tmp/snapvol-test-ctl-XXXXXX");
	if (!mkdtemp(f->dir) || sv_pool_open(f->dir, SV_POOL_CREATE, &f->pool) == -1) {
		free(f);
		return -1;
	}
	snprintf(f->sock, sizeof f->sock, "%s/control.sock", f->dir);
	f->ctx.pool = f->pool;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	sv_ctl_server_stop(f->srv);
	sv_pool_close(f->pool);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f);
	return 0;
}

/* ---- helpers ---- */

static json_t *
parse(const char *text)
{
	json_error_t jerr;
	json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
	if (!j)
		fail_msg("test JSON does not parse: %s: %s", text, jerr.text);
	return j;
}

/* Run command with arguments given as JSON text (NULL: none). */
static json_t *
run(struct fixture *f, const char *command, const char *args_json)
{
	json_t *args = args_json ? parse(args_json) : NULL;
	json_t *reply = sv_ctl_execute(&f->ctx, command, args);
	json_decref(args);
	assert_non_null(reply);
	return reply;
}

static void
assert_json_equal(json_t *got, json_t *want)
{
	if (!json_equal(got, want)) {
		char *g = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
		char *w = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
		fail_msg("JSON differs\n  got:  %s\n  want: %s", g, w);
	}
}

/* The reply is exactly {"error": {"class": cls, "errno": e, "desc": desc}}. */
static void
expect_error(json_t *reply, const char *cls, int e, const char *desc)
{
	json_t *want =
	    json_pack("{s:{s:s, s:i, s:s}}", "error", "class", cls, "errno", e, "desc", desc);
	assert_json_equal(reply, want);
	json_decref(want);
	json_decref(reply);
}

/* An error written by the engine: class and errno exactly, and the message
 * mentions what it is about. */
static void
expect_engine_error(json_t *reply, const char *cls, int e, const char *mentions)
{
	json_t *err = json_object_get(reply, "error");
	assert_non_null(err);
	assert_int_equal(json_object_size(reply), 1);
	assert_int_equal(json_object_size(err), 3);
	assert_string_equal(json_string_value(json_object_get(err, "class")), cls);
	assert_int_equal(json_integer_value(json_object_get(err, "errno")), e);
	const char *desc = json_string_value(json_object_get(err, "desc"));
	assert_non_null(desc);
	if (!strstr(desc, mentions))
		fail_msg("error '%s' does not mention '%s'", desc, mentions);
	json_decref(reply);
}

/* The "return" value of a successful reply (borrowed from reply). */
static json_t *
ret_of(json_t *reply)
{
	json_t *r = json_object_get(reply, "return");
	if (!r) {
		char *s = json_dumps(reply, JSON_COMPACT);
		fail_msg("expected success, got %s", s);
	}
	assert_int_equal(json_object_size(reply), 1);
	return r;
}

/* A volume object is exactly these keys, with created set to now-ish. */
static void
check_volume(struct fixture *f, json_t *v, const char *name, uint64_t size, uint64_t chunk)
{
	uint64_t now = (uint64_t)time(NULL);
	json_int_t created = json_integer_value(json_object_get(v, "created"));
	assert_true(created > 0 && (uint64_t)created <= now && (uint64_t)created + 60 >= now);
	char origin[256];
	snprintf(origin, sizeof origin, "/volumes/%s/origin.raw", name);
	const char *o = json_string_value(json_object_get(v, "origin"));
	assert_non_null(o);
	assert_non_null(strstr(o, origin));
	struct stat st;
	assert_int_equal(stat(o, &st), 0);
	assert_int_equal(st.st_size, size);

	json_t *want =
	    json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:I, s:I}", "name", name, "size",
		      (json_int_t)size, "chunk_size", (json_int_t)chunk, "allocated", (json_int_t)0,
		      "created", created, "open_views", (json_int_t)0, "origin", o, "full_policy",
		      "fail-writes", "snapshots", (json_int_t)0, "snapshot_space", (json_int_t)0);
	/* "info" adds the copy-on-write counters: a fresh volume has made none */
	json_t *cow = json_object_get(v, "cow");
	if (cow) {
		json_t *zero = json_pack("{s:I, s:I, s:I, s:I}", "epoch", (json_int_t)0, "copies",
					 (json_int_t)0, "copied_bytes", (json_int_t)0,
					 "journal_commits", (json_int_t)0);
		assert_json_equal(cow, zero);
		json_decref(zero);
		json_object_set(want, "cow", cow);
	}
	assert_json_equal(v, want);
	json_decref(want);
	(void)f;
}

/* ---- the command table ---- */

static void
test_version_and_commands(void **state)
{
	struct fixture *f = *state;
	json_t *reply = run(f, "version", NULL);
	json_t *want = json_pack("{s:{s:s, s:i}}", "return", "version", SNAPVOL_VERSION, "protocol",
				 SV_CTL_PROTOCOL);
	assert_json_equal(reply, want);
	json_decref(want);
	json_decref(reply);

	reply = run(f, "commands", "{}");
	json_t *cmds = json_object_get(ret_of(reply), "commands");
	size_t n = 0;
	while (sv_ctl_command_names[n])
		n++;
	assert_int_equal(json_array_size(cmds), n);
	for (size_t i = 0; i < n; i++) {
		json_t *c = json_array_get(cmds, i);
		assert_string_equal(json_string_value(json_object_get(c, "name")),
				    sv_ctl_command_names[i]);
		assert_true(json_is_string(json_object_get(c, "description")));
		assert_true(json_is_array(json_object_get(c, "arguments")));
		if (!strcmp(sv_ctl_command_names[i], "create")) {
			json_t *want_args = parse(
			    "[{\"name\":\"name\",\"type\":\"volume-name\",\"required\":true},"
			    "{\"name\":\"size\",\"type\":\"size\",\"required\":true},"
			    "{\"name\":\"chunk_size\",\"type\":\"size\",\"required\":false},"
			    "{\"name\":\"full_policy\",\"type\":\"string\",\"required\":false}]");
			json_t *args = json_deep_copy(json_object_get(c, "arguments"));
			size_t j;
			json_t *a;
			json_array_foreach(args, j, a)
			{
				assert_true(json_is_string(json_object_get(a, "description")));
				json_object_del(a, "description");
			}
			assert_json_equal(args, want_args);
			json_decref(args);
			json_decref(want_args);
		}
	}
	json_decref(reply);

	/* Every command named in the list runs (no row without a handler):
	 * those without required arguments succeed, the others say which
	 * argument is missing. */
	static const char *const needs_args[] = {"create",
						 "delete",
						 "info",
						 "set",
						 "snapshot-create",
						 "snapshot-list",
						 "snapshot-delete",
						 "snapshot-rollback",
						 "diff",
						 "snapshot-set",
						 "snapshot-release",
						 "freeze",
						 "heartbeat",
						 "window-begin",
						 "window-end",
						 "diff",
						 NULL};
	for (size_t i = 0; i < n; i++) {
		bool needs = false;
		for (int k = 0; needs_args[k]; k++)
			needs |= !strcmp(sv_ctl_command_names[i], needs_args[k]);
		reply = run(f, sv_ctl_command_names[i], NULL);
		if (!strcmp(sv_ctl_command_names[i], "thaw")) {
			/* two optional arguments, exactly one of which is needed */
			expect_engine_error(reply, "EINVAL", EINVAL, "either");
			continue;
		}
		if (needs) {
			expect_engine_error(reply, "EINVAL", EINVAL, "missing argument");
			continue;
		}
		ret_of(reply);
		json_decref(reply);
	}
}

static void
test_create_good(void **state)
{
	struct fixture *f = *state;
	json_t *reply = run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\"}");
	check_volume(f, ret_of(reply), "vm1", 1 << 20, 4096);
	json_decref(reply);

	/* size as a number, chunk size as a string; JSON null arguments ok elsewhere */
	reply = run(f, "create",
		    "{\"name\": \"a-0.b_c+d:e\", \"size\": 8388608, \"chunk_size\": \"64K\"}");
	check_volume(f, ret_of(reply), "a-0.b_c+d:e", 8 << 20, 65536);
	json_decref(reply);

	reply =
	    run(f, "create", "{\"size\": \"4KiB\", \"chunk_size\": 1048576, \"name\": \"big\"}");
	check_volume(f, ret_of(reply), "big", 4096, 1048576);
	json_decref(reply);

	expect_engine_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"2M\"}"), "EEXIST",
			    EEXIST, "vm1");
}

static void
test_create_bad_arguments(void **state)
{
	struct fixture *f = *state;
	const int E = EINVAL;

	expect_error(run(f, "create", "{\"size\": \"1M\"}"), "EINVAL", E,
		     "missing argument 'name' for 'create'");
	expect_error(run(f, "create", "{\"name\": \"vm1\"}"), "EINVAL", E,
		     "missing argument 'size' for 'create'");
	expect_error(run(f, "create", NULL), "EINVAL", E, "missing argument 'name' for 'create'");
	expect_error(run(f, "create", "null"), "EINVAL", E, "missing argument 'name' for 'create'");
	expect_error(run(f, "create", "[\"vm1\", \"1M\"]"), "EINVAL", E,
		     "arguments of 'create' must be a JSON object");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\", \"colour\": 1}"),
		     "EINVAL", E,
		     "unknown argument 'colour' for 'create' (expected: name, size, chunk_size, "
		     "full_policy)");

	/* sizes */
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"12X\"}"), "EINVAL", E,
		     "argument 'size' of 'create': '12X' is not a size: unknown suffix 'X' (use "
		     "K, M, G, T, P)");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"1.5M\"}"), "EINVAL", E,
		     "argument 'size' of 'create': '1.5M' is not a size: unknown suffix '.5M' "
		     "(use K, M, G, T, P)");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"\"}"), "EINVAL", E,
		     "argument 'size' of 'create': '' is not a size (expected a number like 512, "
		     "4K or 20G)");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": -512}"), "EINVAL", E,
		     "argument 'size' of 'create' must not be negative");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": 1.5}"), "EINVAL", E,
		     "argument 'size' of 'create' must be a number of bytes or a size string "
		     "like \"20G\"");
	expect_error(run(f, "create", "{\"name\": \"vm1\", \"size\": true}"), "EINVAL", E,
		     "argument 'size' of 'create' must be a number of bytes or a size string "
		     "like \"20G\"");
	expect_engine_error(run(f, "create", "{\"name\": \"vm1\", \"size\": 0}"), "EINVAL", E,
			    "size");
	expect_engine_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"0\"}"), "EINVAL", E,
			    "size");
	expect_engine_error(run(f, "create", "{\"name\": \"vm1\", \"size\": 1000}"), "EINVAL", E,
			    "512");
	expect_engine_error(run(f, "create", "{\"name\": \"vm1\", \"size\": \"2E\"}"), "EINVAL", E,
			    "maximum");
	expect_engine_error(
	    run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\", \"chunk_size\": 3000}"),
	    "EINVAL", E, "chunk size");
	expect_engine_error(
	    run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\", \"chunk_size\": \"2M\"}"),
	    "EINVAL", E, "chunk size");
	expect_error(
	    run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\", \"chunk_size\": 8589934592}"),
	    "EINVAL", E, "chunk size 8589934592 is too large (at most 1048576)");

	/* names */
	expect_error(run(f, "create", "{\"name\": \"a/b\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not contain '/'");
	expect_error(run(f, "create", "{\"name\": \"..\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not start with '.'");
	expect_error(run(f, "create", "{\"name\": \"../etc\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not start with '.'");
	expect_error(run(f, "create", "{\"name\": \"vm@snap\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not contain '@' (it separates volume and snapshot)");
	expect_error(run(f, "create", "{\"name\": \"vm\\u0001\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not contain control character 0x01");
	expect_error(run(f, "create", "{\"name\": \"vm\\n\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not contain control character 0x0a");
	expect_error(run(f, "create", "{\"name\": \"\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name is empty");
	expect_error(run(f, "create", "{\"name\": \"-rf\", \"size\": \"1M\"}"), "EINVAL", E,
		     "volume name may not start with '-'");
	expect_error(run(f, "create", "{\"name\": 7, \"size\": \"1M\"}"), "EINVAL", E,
		     "argument 'name' of 'create' must be a string");

	/* A name built in-process with a NUL inside (jansson refuses \u0000
	 * when parsing, so only a caller in this process can make one). */
	json_t *args = json_pack("{s:s%, s:s}", "name", "vm\0x", (size_t)4, "size", "1M");
	expect_error(sv_ctl_execute(&f->ctx, "create", args), "EINVAL", E,
		     "argument 'name' of 'create' contains a NUL byte");
	json_decref(args);

	/* Nothing of the above created anything. */
	json_t *reply = run(f, "list", NULL);
	assert_int_equal(json_array_size(json_object_get(ret_of(reply), "volumes")), 0);
	json_decref(reply);
}

static void
test_unknown_command(void **state)
{
	struct fixture *f = *state;
	expect_error(run(f, "frobnicate", "{}"), "CommandNotFound", ENOSYS,
		     "unknown command 'frobnicate' (the command 'commands' lists them)");
	expect_error(run(f, "", NULL), "CommandNotFound", ENOSYS,
		     "unknown command '' (the command 'commands' lists them)");
	expect_error(sv_ctl_execute(&f->ctx, NULL, NULL), "CommandNotFound", ENOSYS,
		     "unknown command '' (the command 'commands' lists them)");
	expect_error(run(f, "CREATE", "{}"), "CommandNotFound", ENOSYS,
		     "unknown command 'CREATE' (the command 'commands' lists them)");
	char longname[300];
	memset(longname, 'x', sizeof longname - 1);
	longname[sizeof longname - 1] = '\0';
	json_t *reply = run(f, longname, NULL);
	const char *desc =
	    json_string_value(json_object_get(json_object_get(reply, "error"), "desc"));
	assert_non_null(desc);
	assert_true(strlen(desc) < 200); /* clipped, not echoed whole */
	json_decref(reply);
}

static void
test_list_info_delete(void **state)
{
	struct fixture *f = *state;
	json_t *reply = run(f, "list", NULL);
	json_t *want = parse("{\"return\": {\"volumes\": []}}");
	assert_json_equal(reply, want);
	json_decref(want);
	json_decref(reply);

	json_decref(run(f, "create", "{\"name\": \"vm2\", \"size\": \"2M\"}"));
	json_decref(run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\"}"));

	reply = run(f, "list", "{}");
	json_t *vols = json_object_get(ret_of(reply), "volumes");
	assert_int_equal(json_object_size(ret_of(reply)), 1);
	assert_int_equal(json_array_size(vols), 2);
	check_volume(f, json_array_get(vols, 0), "vm1", 1 << 20, 4096); /* sorted */
	check_volume(f, json_array_get(vols, 1), "vm2", 2 << 20, 4096);
	json_decref(reply);
	expect_error(run(f, "list", "{\"all\": true}"), "EINVAL", EINVAL,
		     "unknown argument 'all' for 'list' (expected: none)");

	reply = run(f, "info", "{\"name\": \"vm2\"}");
	check_volume(f, ret_of(reply), "vm2", 2 << 20, 4096);
	json_decref(reply);
	expect_error(run(f, "info", "{}"), "EINVAL", EINVAL, "missing argument 'name' for 'info'");
	expect_error(run(f, "info", "{\"name\": \"a/../b\"}"), "EINVAL", EINVAL,
		     "volume name may not contain '/'");
	expect_engine_error(run(f, "info", "{\"name\": \"nope\"}"), "ENOENT", ENOENT, "nope");

	/* delete: refused while a view (an NBD connection) is open */
	struct sv_view *view;
	assert_int_equal(sv_view_open(f->pool, "vm1", 3, &view), 0);
	expect_engine_error(run(f, "delete", "{\"name\": \"vm1\"}"), "EBUSY", EBUSY, "vm1");
	reply = run(f, "info", "{\"name\": \"vm1\"}");
	assert_int_equal(json_integer_value(json_object_get(ret_of(reply), "open_views")), 1);
	json_decref(reply);
	sv_view_close(view);

	reply = run(f, "delete", "{\"name\": \"vm1\"}");
	want = parse("{\"return\": {}}");
	assert_json_equal(reply, want);
	json_decref(want);
	json_decref(reply);
	expect_engine_error(run(f, "info", "{\"name\": \"vm1\"}"), "ENOENT", ENOENT, "vm1");
	expect_engine_error(run(f, "delete", "{\"name\": \"vm1\"}"), "ENOENT", ENOENT, "vm1");
	expect_error(run(f, "delete", "{\"name\": \"vm2\", \"force\": true}"), "EINVAL", EINVAL,
		     "unknown argument 'force' for 'delete' (expected: name)");
	expect_error(run(f, "delete", "{\"name\": \"..\"}"), "EINVAL", EINVAL,
		     "volume name may not start with '.'");

	reply = run(f, "list", NULL);
	vols = json_object_get(ret_of(reply), "volumes");
	assert_int_equal(json_array_size(vols), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(vols, 0), "name")),
			    "vm2");
	json_decref(reply);
}

static void
test_status_without_server(void **state)
{
	struct fixture *f = *state;
	json_decref(run(f, "create", "{\"name\": \"vm1\", \"size\": \"1M\"}"));
	json_t *reply = run(f, "status", NULL);
	json_t *r = ret_of(reply);
	assert_int_equal(json_object_size(r), 5);
	assert_true(json_is_false(json_object_get(r, "running")));
	/* no server, no freezes: they live in a server, for its connections */
	assert_int_equal(json_array_size(json_object_get(r, "freezes")), 0);
	expect_engine_error(run(f, "freeze", "{\"names\": [\"vm1\"]}"), "ENOTCONN", ENOTCONN,
			    "start `snapvol serve`");
	assert_string_equal(json_string_value(json_object_get(r, "message")), "no server running");
	assert_string_equal(json_string_value(json_object_get(r, "pool")),
			    sv_pool_describe(f->pool));
	json_t *vols = json_object_get(r, "volumes");
	assert_int_equal(json_array_size(vols), 1);
	check_volume(f, json_array_get(vols, 0), "vm1", 1 << 20, 4096);
	json_decref(reply);
	expect_error(run(f, "status", "{\"verbose\": 1}"), "EINVAL", EINVAL,
		     "unknown argument 'verbose' for 'status' (expected: none)");
}

/* ---- the server over a unix socket ---- */

static int
connect_raw(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	struct timeval tv = {.tv_sec = 20};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

static void
send_str(int fd, const char *s, size_t len)
{
	while (len > 0) {
		ssize_t r = send(fd, s, len, MSG_NOSIGNAL);
		assert_true(r > 0);
		s += r;
		len -= (size_t)r;
	}
}

/* One line from the server, parsed; NULL at end of file. */
static json_t *
recv_json(int fd)
{
	char line[65536];
	size_t len = 0;
	for (;;) {
		char c;
		ssize_t r = recv(fd, &c, 1, 0);
		if (r == 0) {
			assert_int_equal(len, 0);
			return NULL;
		}
		if (r != 1)
			fail_msg("recv: %s", strerror(errno));
		if (c == '\n')
			break;
		assert_true(len < sizeof line - 1);
		line[len++] = c;
	}
	line[len] = '\0';
	return parse(line);
}

static void
start_server(struct fixture *f)
{
	if (sv_ctl_server_start(&f->ctx, f->sock, &f->srv) == -1)
		fail_msg("sv_ctl_server_start: %s", sv_last_error());
	struct stat st;
	assert_int_equal(stat(f->sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
}

static void
expect_greeting(struct fixture *f, int fd)
{
	json_t *g = recv_json(fd);
	json_t *want =
	    json_pack("{s:{s:s, s:i, s:s, s:i}}", "snapvol", "version", SNAPVOL_VERSION, "protocol",
		      SV_CTL_PROTOCOL, "pool", sv_pool_describe(f->pool), "pid", (int)getpid());
	assert_json_equal(g, want);
	json_decref(want);
	json_decref(g);
}

static void
expect_line_error(int fd, const char *cls, int e, const char *desc_prefix)
{
	json_t *r = recv_json(fd);
	assert_non_null(r);
	json_t *err = json_object_get(r, "error");
	assert_non_null(err);
	assert_int_equal(json_object_size(r), 1); /* no id: there was none to echo */
	assert_string_equal(json_string_value(json_object_get(err, "class")), cls);
	assert_int_equal(json_integer_value(json_object_get(err, "errno")), e);
	const char *desc = json_string_value(json_object_get(err, "desc"));
	if (strncmp(desc, desc_prefix, strlen(desc_prefix)))
		fail_msg("desc '%s' does not start with '%s'", desc, desc_prefix);
	json_decref(r);
}

#define SEND(fd, lit) send_str(fd, lit, strlen(lit))

static void
test_server_protocol(void **state)
{
	struct fixture *f = *state;
	start_server(f);
	int fd = connect_raw(f->sock);
	expect_greeting(f, fd);

	/* a command, with an id echoed whatever its type */
	SEND(fd, "{\"execute\": \"version\", \"id\": 7}\n");
	json_t *r = recv_json(fd);
	json_t *want = json_pack("{s:{s:s, s:i}, s:i}", "return", "version", SNAPVOL_VERSION,
				 "protocol", SV_CTL_PROTOCOL, "id", 7);
	assert_json_equal(r, want);
	json_decref(want);
	json_decref(r);

	SEND(fd, "{\"id\": {\"x\": [1]}, \"execute\": \"create\", \"arguments\": {\"name\": "
		 "\"vm1\", \"size\": \"1M\"}}\r\n");
	r = recv_json(fd);
	check_volume(f, json_object_get(r, "return"), "vm1", 1 << 20, 4096);
	want = parse("{\"x\": [1]}");
	assert_json_equal(json_object_get(r, "id"), want);
	json_decref(want);
	json_decref(r);

	/* a command error keeps its id */
	SEND(fd, "{\"execute\": \"create\", \"arguments\": {\"name\": \"a@b\", \"size\": 512}, "
		 "\"id\": \"q\"}\n");
	r = recv_json(fd);
	want = json_pack(
	    "{s:{s:s, s:i, s:s}, s:s}", "error", "class", "EINVAL", "errno", EINVAL, "desc",
	    "volume name may not contain '@' (it separates volume and snapshot)", "id", "q");
	assert_json_equal(r, want);
	json_decref(want);
	json_decref(r);

	/* malformed lines: an error each, and the connection stays usable */
	SEND(fd, "{\"execute\": \n");
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "not json at all\n");
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "{\"execute\": \"list\"} trailing\n");
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "{\"execute\": \"list\", \"execute\": \"status\"}\n");
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "\"\\u00ff\xff\"\n"); /* invalid UTF-8 */
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "{\"execute\": \"list\\u0000x\"}\n"); /* NUL inside a string */
	expect_line_error(fd, "JSONError", EINVAL, "malformed JSON at column ");
	SEND(fd, "[\"list\"]\n");
	expect_line_error(fd, "JSONError", EINVAL,
			  "a request must be a JSON object, like {\"execute\": \"list\"}");
	SEND(fd, "{\"arguments\": {}}\n");
	expect_line_error(fd, "JSONError", EINVAL,
			  "request has no \"execute\" (the command's name)");
	SEND(fd, "{\"execute\": 5}\n");
	expect_line_error(fd, "JSONError", EINVAL, "\"execute\" must be a string");
	SEND(fd, "{\"execute\": \"list\", \"arguments\": [1]}\n");
	expect_line_error(fd, "JSONError", EINVAL, "\"arguments\" must be a JSON object");
	SEND(fd, "{\"execute\": \"list\", \"argument\": {}}\n");
	expect_line_error(fd, "JSONError", EINVAL,
			  "unknown key 'argument' in request (expected execute, arguments, id)");
	SEND(fd, "{\"execute\": \"nope\"}\n");
	expect_line_error(fd, "CommandNotFound", ENOSYS, "unknown command 'nope'");

	/* blank lines get no reply; two requests in one packet get two replies */
	SEND(fd, "\n   \r\n{\"execute\": \"list\", \"id\": 1}\n{\"execute\": \"info\", "
		 "\"arguments\": {\"name\": \"vm1\"}, \"id\": 2}\n");
	r = recv_json(fd);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
	assert_int_equal(json_array_size(json_object_get(json_object_get(r, "return"), "volumes")),
			 1);
	json_decref(r);
	r = recv_json(fd);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
	check_volume(f, json_object_get(r, "return"), "vm1", 1 << 20, 4096);
	json_decref(r);

	/* a request split across many writes */
	const char *req = "{\"execute\": \"version\", \"id\": 3}\n";
	for (const char *p = req; *p; p++) {
		send_str(fd, p, 1);
		if ((p - req) % 7 == 0)
			usleep(1000);
	}
	r = recv_json(fd);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
	json_decref(r);

	close(fd);
}

static void
test_server_line_limit(void **state)
{
	struct fixture *f = *state;
	start_server(f);

	/* Exactly SV_CTL_LINE_MAX bytes before the newline: accepted. */
	size_t max = SV_CTL_LINE_MAX;
	char *buf = malloc(max + 2);
	assert_non_null(buf);
	const char *head = "{\"execute\": \"version\", \"id\": \"";
	const char *tail = "\"}";
	size_t pad = max - strlen(head) - strlen(tail);
	memcpy(buf, head, strlen(head));
	memset(buf + strlen(head), 'a', pad);
	memcpy(buf + strlen(head) + pad, tail, strlen(tail));
	buf[max] = '\n';
	int fd = connect_raw(f->sock);
	expect_greeting(f, fd);
	send_str(fd, buf, max + 1);
	/* The reply echoes the 1 MiB id: read it without the 64K helper. */
	size_t got = 0;
	char *rbuf = malloc(2 * max);
	assert_non_null(rbuf);
	while (got == 0 || rbuf[got - 1] != '\n') {
		ssize_t n = recv(fd, rbuf + got, 2 * max - got, 0);
		assert_true(n > 0);
		got += (size_t)n;
	}
	assert_true(got > max);
	assert_memory_equal(rbuf, "{\"return\":", 10);
	free(rbuf);
	SEND(fd, "{\"execute\": \"version\", \"id\": 9}\n");
	json_t *r = recv_json(fd);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 9);
	json_decref(r);
	close(fd);

	/* One byte more, and no newline in sight: error reply, then EOF. */
	fd = connect_raw(f->sock);
	expect_greeting(f, fd);
	memset(buf, 'a', max + 1);
	send_str(fd, buf, max + 1);
	expect_line_error(fd, "LineTooLong", EMSGSIZE, "request line longer than 1048576 bytes");
	assert_null(recv_json(fd));
	close(fd);
	free(buf);

	/* The server still serves others. */
	fd = connect_raw(f->sock);
	expect_greeting(f, fd);
	SEND(fd, "{\"execute\": \"list\"}\n");
	r = recv_json(fd);
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	close(fd);
}

static void
test_server_client_cap(void **state)
{
	struct fixture *f = *state;
	start_server(f);
	int fds[64];
	for (int i = 0; i < 64; i++) {
		fds[i] = connect_raw(f->sock);
		expect_greeting(f, fds[i]);
	}
	int extra = connect_raw(f->sock);
	expect_line_error(extra, "EAGAIN", EAGAIN, "too many control connections (at most 64)");
	assert_null(recv_json(extra));
	close(extra);

	/* Once one leaves, a new one is let in (reaped on the next accept). */
	close(fds[0]);
	usleep(100000);
	fds[0] = connect_raw(f->sock);
	expect_greeting(f, fds[0]);
	for (int i = 0; i < 64; i++)
		close(fds[i]);
}

static void
test_server_sockets_and_stop(void **state)
{
	struct fixture *f = *state;

	/* A stale socket file (nobody listening) is replaced. */
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, f->sock);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
	close(s);
	start_server(f);

	/* A live one is refused. */
	struct sv_ctl_server *second;
	assert_int_equal(sv_ctl_server_start(&f->ctx, f->sock, &second), -1);
	assert_int_equal(sv_last_errno(), EADDRINUSE);

	/* A regular file is never removed. */
	char other[128];
	snprintf(other, sizeof other, "%s/not-a-socket", f->dir);
	int fd = open(other, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(sv_ctl_server_start(&f->ctx, other, &second), -1);
	assert_int_equal(sv_last_errno(), EEXIST);
	assert_int_equal(access(other, F_OK), 0);

	/* Stop with an idle client and one mid-line: returns, removes the file. */
	int idle = connect_raw(f->sock);
	expect_greeting(f, idle);
	int partial = connect_raw(f->sock);
	expect_greeting(f, partial);
	SEND(partial, "{\"execute\": ");
	sv_ctl_server_stop(f->srv);
	f->srv = NULL;
	assert_int_equal(access(f->sock, F_OK), -1);
	assert_int_equal(errno, ENOENT);
	assert_null(recv_json(idle));
	close(idle);
	close(partial);
}

static void
test_client_api(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(sv_ctl_client_connect(f->sock), -1);
	assert_int_equal(sv_last_errno(), ENOENT);

	start_server(f);
	int fd = sv_ctl_client_connect(f->sock);
	assert_true(fd >= 0);
	json_t *args = parse("{\"name\": \"vm1\", \"size\": 1048576}");
	json_t *reply = sv_ctl_client_call(fd, "create", args);
	json_decref(args);
	assert_non_null(reply);
	check_volume(f, json_object_get(reply, "return"), "vm1", 1 << 20, 4096);
	json_decref(reply);

	reply = sv_ctl_client_call(fd, "delete", NULL);
	assert_non_null(reply);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(reply, "error"), "desc")),
	    "missing argument 'name' for 'delete'");
	json_decref(reply);

	reply = sv_ctl_client_call(fd, "list", NULL);
	assert_int_equal(
	    json_array_size(json_object_get(json_object_get(reply, "return"), "volumes")), 1);
	json_decref(reply);
	close(fd);

	/* A socket that accepts but never greets counts as no server, in time. */
	char mute[128];
	snprintf(mute, sizeof mute, "%s/mute.sock", f->dir);
	int m = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, mute);
	assert_int_equal(bind(m, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(m, 1), 0);
	time_t t0 = time(NULL);
	assert_int_equal(sv_ctl_client_connect(mute), -1);
	assert_int_equal(sv_last_errno(), ETIMEDOUT);
	assert_true(time(NULL) - t0 <= SV_CTL_GREETING_TIMEOUT_S + 2);
	close(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_version_and_commands, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_create_good, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_create_bad_arguments, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unknown_command, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_list_info_delete, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_status_without_server, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_protocol, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_line_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_client_cap, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_sockets_and_stop, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_api, setup, teardown),
	};
	return cmocka_run_group_tests_name("ctl", tests, NULL, NULL);
}
