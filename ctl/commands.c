/*
 * commands.c: the control commands, as one table.
 *
 * Every CLI subcommand that works on a pool is a row here, and the same row
 * runs in the server (a control client sent it) and in the CLI itself (no
 * server holds the pool).  A row names its arguments with their types; the
 * arguments are checked here, once, before any handler runs, because a
 * control client can be any program: a missing required argument, a wrong
 * type, a key the command does not know, a malformed volume name or a size
 * that is not a size all get an error reply that says which argument is
 * wrong, and nothing is changed.  Handlers then read arguments that are
 * known to be present and well formed.
 *
 * Adding a command (snapshot create, freeze, diff...) means writing its
 * handler and argument list and adding one line to COMMANDS below; the
 * "commands" introspection command, the name list and the checks follow.
 *
 * Replies: a handler returns the "return" value (a new JSON object) or NULL
 * with the thread's last error set (common/error.h), which becomes an
 * {"error": {"class": "EEXIST", "errno": 17, "desc": "..."}} reply.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "ctl-private.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "names.h"
#include "nbd-server.h"
#include "util.h"

/* ---- replies ---- */

const char *
sv_ctl_errno_class(int errnum)
{
	const char *n = strerrorname_np(errnum);
	return n ? n : "GenericError";
}

json_t *
sv_ctl_error_reply(const char *cls, int errnum, const char *desc)
{
	if (errnum <= 0)
		errnum = EIO;
	return json_pack("{s:{s:s, s:i, s:s}}", "error", "class",
			 cls ? cls : sv_ctl_errno_class(errnum), "errno", errnum, "desc", desc);
}

static json_t *
error_from_last(void)
{
	return sv_ctl_error_reply(NULL, sv_last_errno(), sv_last_error());
}

/* ---- argument descriptions ---- */

enum arg_type {
	ARG_STRING, /* any string */
	ARG_VOLUME, /* a volume name, checked by sv_check_name */
	ARG_SIZE,   /* a byte count: a non-negative integer, or a string "20G" */
	ARG_UINT,   /* a non-negative integer */
	ARG_BOOL,
	ARG_STRINGS,  /* a non-empty array of strings */
	ARG_DURATION, /* milliseconds: an integer, or a string "500ms", "5s", "2m" */
	ARG_RANGES,   /* an array of [offset, length] pairs of non-negative integers */
};

static const char *const arg_type_names[] = {
    [ARG_STRING] = "string",	 [ARG_VOLUME] = "volume-name", [ARG_SIZE] = "size",
    [ARG_UINT] = "uint",	 [ARG_BOOL] = "bool",	       [ARG_STRINGS] = "string-array",
    [ARG_DURATION] = "duration", [ARG_RANGES] = "range-array",
};

struct arg_spec {
	const char *name;
	enum arg_type type;
	bool required;
	const char *help;
};

#define MAX_ARGS 8

/* One call: the context and the checked arguments, by their index in the
 * command's arg_spec list. */
struct call {
	struct sv_ctl_context *ctx;
	const struct command *cmd;
	const char *name; /* the command's wire name */
	bool present[MAX_ARGS];
	const char *str[MAX_ARGS]; /* ARG_STRING, ARG_VOLUME (borrowed from the JSON) */
	json_t *list[MAX_ARGS];	   /* ARG_STRINGS, ARG_RANGES (borrowed) */
	uint64_t num[MAX_ARGS];	   /* ARG_SIZE, ARG_UINT, ARG_BOOL */
};

struct command {
	const char *help;
	const struct arg_spec *args; /* terminated by a NULL name */
	json_t *(*run)(struct call *c);
};

static int
arg_index(const struct command *cmd, const char *name)
{
	for (int i = 0; cmd->args[i].name; i++)
		if (!strcmp(cmd->args[i].name, name))
			return i;
	return -1;
}

/* The argument named name; it must be in the command's list (a handler
 * asking for an argument it did not declare is a bug). */
static int
arg_must(struct call *c, const char *name)
{
	int i = arg_index(c->cmd, name);
	if (i < 0)
		abort();
	return i;
}

static const char *
arg_str(struct call *c, const char *name)
{
	int i = arg_must(c, name);
	return c->present[i] ? c->str[i] : NULL;
}

static uint64_t
arg_num(struct call *c, const char *name, uint64_t dflt)
{
	int i = arg_must(c, name);
	return c->present[i] ? c->num[i] : dflt;
}

static void
expected_list(const struct command *cmd, char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = '\0';
	for (int i = 0; cmd->args[i].name && used < len; i++) {
		int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", cmd->args[i].name);
		if (n < 0)
			break;
		used += (size_t)n;
	}
	if (!cmd->args[0].name)
		snprintf(buf, len, "none");
}

static int
check_one(struct call *c, int i, json_t *v)
{
	const struct arg_spec *a = &c->cmd->args[i];
	const char *cmdname = c->name;

	switch (a->type) {
	case ARG_STRING:
	case ARG_VOLUME:
		if (!json_is_string(v))
			return sv_error(EINVAL, "argument '%s' of '%s' must be a string", a->name,
					cmdname);
		c->str[i] = json_string_value(v);
		/* Jansson refuses \u0000 when parsing, but a caller in this
		 * process could have built one: a name is exactly its bytes. */
		if (strlen(c->str[i]) != json_string_length(v))
			return sv_error(EINVAL, "argument '%s' of '%s' contains a NUL byte",
					a->name, cmdname);
		if (a->type == ARG_VOLUME && sv_check_name(c->str[i], "volume") == -1)
			return -1;
		break;
	case ARG_SIZE:
		if (json_is_string(v)) {
			if (sv_parse_size(json_string_value(v), &c->num[i]) == -1) {
				sv_error_prefix("argument '%s' of '%s'", a->name, cmdname);
				return -1;
			}
			break;
		}
		__attribute__((fallthrough)); /* an integer byte count */
	case ARG_UINT:
		if (!json_is_integer(v))
			return sv_error(
			    EINVAL, "argument '%s' of '%s' must be %s", a->name, cmdname,
			    a->type == ARG_SIZE ? "a number of bytes or a size string like \"20G\""
						: "a non-negative integer");
		if (json_integer_value(v) < 0)
			return sv_error(EINVAL, "argument '%s' of '%s' must not be negative",
					a->name, cmdname);
		c->num[i] = (uint64_t)json_integer_value(v);
		break;
	case ARG_STRINGS: {
		size_t k;
		json_t *e;
		if (!json_is_array(v) || json_array_size(v) == 0)
			return sv_error(
			    EINVAL, "argument '%s' of '%s' must be a non-empty array of strings",
			    a->name, cmdname);
		json_array_foreach(
		    v, k,
		    e) if (!json_is_string(e) ||
			   strlen(json_string_value(e)) !=
			       json_string_length(e)) return sv_error(EINVAL,
								      "argument '%s' of '%s': "
								      "element %zu is not a string",
								      a->name, cmdname, k);
		c->list[i] = v;
		break;
	}
	case ARG_RANGES: {
		size_t k;
		json_t *e;
		if (!json_is_array(v))
			return sv_error(
			    EINVAL,
			    "argument '%s' of '%s' must be an array of [offset, length] "
			    "pairs",
			    a->name, cmdname);
		json_array_foreach(v, k, e)
		{
			json_t *o = json_array_get(e, 0), *l = json_array_get(e, 1);
			if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(o) ||
			    !json_is_integer(l) || json_integer_value(o) < 0 ||
			    json_integer_value(l) < 0)
				return sv_error(EINVAL,
						"argument '%s' of '%s': element %zu is not an "
						"[offset, length] pair of non-negative integers",
						a->name, cmdname, k);
		}
		c->list[i] = v;
		break;
	}
	case ARG_DURATION:
		if (json_is_string(v)) {
			uint64_t ns;
			if (sv_parse_duration(json_string_value(v), &ns) == -1) {
				sv_error_prefix("argument '%s' of '%s'", a->name, cmdname);
				return -1;
			}
			c->num[i] = ns / 1000000u;
			break;
		}
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return sv_error(EINVAL,
					"argument '%s' of '%s' must be a number of milliseconds or "
					"a duration string like \"5s\"",
					a->name, cmdname);
		c->num[i] = (uint64_t)json_integer_value(v);
		break;
	case ARG_BOOL:
		if (!json_is_boolean(v))
			return sv_error(EINVAL, "argument '%s' of '%s' must be true or false",
					a->name, cmdname);
		c->num[i] = json_is_true(v);
		break;
	}
	c->present[i] = true;
	return 0;
}

/* Fill c from arguments (an object, JSON null or NULL), or set the error. */
static int
check_args(struct call *c, json_t *arguments)
{
	const struct command *cmd = c->cmd;
	const char *cmdname = c->name;
	char expected[256];

	if (arguments && !json_is_null(arguments)) {
		if (!json_is_object(arguments))
			return sv_error(EINVAL, "arguments of '%s' must be a JSON object", cmdname);
		const char *key;
		json_t *v;
		json_object_foreach(arguments, key, v)
		{
			int i = arg_index(cmd, key);
			if (i < 0) {
				expected_list(cmd, expected, sizeof expected);
				return sv_error(EINVAL,
						"unknown argument '%s' for '%s' (expected: %s)",
						key, cmdname, expected);
			}
			if (check_one(c, i, v) == -1)
				return -1;
		}
	}
	for (int i = 0; cmd->args[i].name; i++)
		if (cmd->args[i].required && !c->present[i])
			return sv_error(EINVAL, "missing argument '%s' for '%s'", cmd->args[i].name,
					cmdname);
	return 0;
}

/* ---- JSON of engine objects ---- */

static json_t *
volume_json(const struct sv_volume_info *vi)
{
	json_t *o =
	    json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:I}", "name", vi->name, "size",
		      (json_int_t)vi->size, "chunk_size", (json_int_t)vi->chunk_size, "allocated",
		      (json_int_t)vi->allocated, "created", (json_int_t)vi->created, "open_views",
		      (json_int_t)vi->open_views, "full_policy", vi->full_policy, "snapshots",
		      (json_int_t)vi->snapshots, "snapshot_space", (json_int_t)vi->snapshot_space);
	if (o)
		json_object_set_new(
		    o, "origin", vi->origin_path[0] ? json_string(vi->origin_path) : json_null());
	return o;
}

/* The volumes; and, if held is not NULL, the names of those this process
 * holds (open here; on a RADOS pool, their claims are its own) into it. */
static json_t *
volumes_json_held(struct sv_pool *pool, json_t *held)
{
	struct sv_volume_info *infos;
	size_t n;
	if (sv_volume_list(pool, &infos, &n) == -1)
		return NULL;
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(arr, volume_json(&infos[i]));
		if (held && infos[i].held)
			json_array_append_new(held, json_string(infos[i].name));
	}
	free(infos);
	return arr;
}

static json_t *
volumes_json(struct sv_pool *pool)
{
	return volumes_json_held(pool, NULL);
}

/* ---- the commands ---- */

static const struct arg_spec no_args[] = {{NULL}};

static json_t *
cmd_version_run(struct call *c)
{
	(void)c;
	return json_pack("{s:s, s:i}", "version", SNAPVOL_VERSION, "protocol", SV_CTL_PROTOCOL);
}

static const struct command cmd_version = {
    "The server's version and control protocol version.",
    no_args,
    cmd_version_run,
};

static json_t *cmd_commands_run(struct call *c);

static const struct command cmd_commands = {
    "Every command with its arguments (introspection).",
    no_args,
    cmd_commands_run,
};

static const struct arg_spec create_args[] = {
    {"name", ARG_VOLUME, true, "volume name: 1-64 of [A-Za-z0-9._+:-], not starting with . or -"},
    {"size", ARG_SIZE, true, "size in bytes, or a string like \"20G\"; a multiple of 512"},
    {"chunk_size", ARG_SIZE, false, "chunk size, a power of 2 from 4K to 1M (default 4K)"},
    {"full_policy", ARG_STRING, false,
     "when the store is full: \"fail-writes\" (default) or \"drop-snapshot\""},
    {NULL},
};

static json_t *
cmd_create_run(struct call *c)
{
	const char *name = arg_str(c, "name");
	uint64_t size = arg_num(c, "size", 0);
	uint64_t chunk = arg_num(c, "chunk_size", 0);
	if (chunk > UINT32_MAX)
		return sv_error(EINVAL, "chunk size %" PRIu64 " is too large (at most %u)", chunk,
				SV_CHUNK_MAX),
		       NULL;
	const char *policy = arg_str(c, "full_policy");
	if (policy && strcmp(policy, "fail-writes") && strcmp(policy, "drop-snapshot"))
		return sv_error(EINVAL,
				"full policy must be 'fail-writes' or 'drop-snapshot', not '%s'",
				policy),
		       NULL;
	if (sv_volume_create(c->ctx->pool, name, size, (uint32_t)chunk) == -1)
		return NULL;
	if (policy && sv_volume_set_policy(c->ctx->pool, name, policy) == -1) {
		/* all or nothing */
		char msg[1024];
		int e = sv_last_errno();
		snprintf(msg, sizeof msg, "%s", sv_last_error());
		sv_volume_delete(c->ctx->pool, name);
		return sv_error(e, "%s", msg), NULL;
	}
	struct sv_volume_info vi;
	if (sv_volume_info(c->ctx->pool, name, &vi) == -1)
		return NULL;
	return volume_json(&vi);
}

static const struct command cmd_create = {
    "Create a volume (an empty, sparse raw image).",
    create_args,
    cmd_create_run,
};

static const struct arg_spec name_arg[] = {
    {"name", ARG_VOLUME, true, "volume name"},
    {NULL},
};

static json_t *
cmd_delete_run(struct call *c)
{
	if (sv_volume_delete(c->ctx->pool, arg_str(c, "name")) == -1)
		return NULL;
	return json_object();
}

static const struct command cmd_delete = {
    "Delete a volume and its data.  Refused while an NBD client has it open.",
    name_arg,
    cmd_delete_run,
};

static json_t *
cmd_list_run(struct call *c)
{
	json_t *vols = volumes_json(c->ctx->pool);
	if (!vols)
		return NULL;
	return json_pack("{s:o}", "volumes", vols);
}

static const struct command cmd_list = {
    "All volumes of the pool, sorted by name.",
    no_args,
    cmd_list_run,
};

static json_t *
cmd_info_run(struct call *c)
{
	struct sv_volume_info vi;
	struct sv_cow_stats st;
	if (sv_volume_info(c->ctx->pool, arg_str(c, "name"), &vi) == -1 ||
	    sv_volume_cow_stats(c->ctx->pool, arg_str(c, "name"), &st) == -1)
		return NULL;
	json_t *o = volume_json(&vi);
	json_object_set_new(o, "cow",
			    json_pack("{s:I, s:I, s:I, s:I}", "epoch", (json_int_t)st.epoch,
				      "copies", (json_int_t)st.copies, "copied_bytes",
				      (json_int_t)st.copied_bytes, "journal_commits",
				      (json_int_t)st.journal_commits));
	return o;
}

static const struct arg_spec set_args[] = {
    {"name", ARG_VOLUME, true, "volume name"},
    {"full_policy", ARG_STRING, true,
     "when the store is full: \"fail-writes\" or \"drop-snapshot\""},
    {NULL},
};

static json_t *
cmd_set_run(struct call *c)
{
	if (sv_volume_set_policy(c->ctx->pool, arg_str(c, "name"), arg_str(c, "full_policy")) == -1)
		return NULL;
	struct sv_volume_info vi;
	if (sv_volume_info(c->ctx->pool, arg_str(c, "name"), &vi) == -1)
		return NULL;
	return volume_json(&vi);
}

static const struct command cmd_set = {
    "Change a volume's properties (its full-store policy).",
    set_args,
    cmd_set_run,
};

/* ---- snapshots ---- */

/* "VOL@SNAP" into its parts, or the error. */
static int
split_snapshot(const char *spec, char *vol, char *snap)
{
	bool has;
	if (sv_split_export_name(spec, strlen(spec), vol, snap, &has) == -1)
		return -1;
	if (!has)
		return sv_error(EINVAL, "'%s' names no snapshot: write VOLUME@SNAPSHOT", spec);
	return 0;
}

static json_t *
snapshot_json(const struct sv_snapshot_info *si)
{
	return json_pack("{s:s, s:s, s:I, s:I, s:s, s:b, s:I, s:I}", "volume", si->volume, "name",
			 si->name, "epoch", (json_int_t)si->epoch, "created",
			 (json_int_t)si->created, "consistency", si->consistency, "invalid",
			 si->invalid, "space", (json_int_t)si->space, "open_views",
			 (json_int_t)si->open_views);
}

static const struct arg_spec snapshot_create_args[] = {
    {"snapshots", ARG_STRINGS, true,
     "\"VOLUME@SNAPSHOT\" names, taken at one instant (a consistency group)"},
    {"consistency", ARG_STRING, false,
     "\"crash\" (default) or \"frozen\" (the caller froze the filesystem on top)"},
    {"quiesce", ARG_BOOL, false,
     "hold the volumes' writes (a block-level freeze) around the instant; default false"},
    {"notify", ARG_BOOL, false,
     "send the event SNAPSHOT_TAKEN on this connection at the instant, before the wait for "
     "durability (an fsfreeze agent thaws then); the reply still comes once durable"},
    {NULL},
};

/* The instant has passed: tell the client (sv_snapshot_create_cb). */
struct taken_note {
	struct sv_ctl_session *ses;
	json_t *list;
	uint64_t t0;
};

static void
snapshot_taken(void *arg)
{
	struct taken_note *tn = arg;
	json_t *data = json_pack("{s:O, s:I}", "snapshots", tn->list, "after_us",
				 (json_int_t)((sv_now_ns() - tn->t0) / 1000));
	/* A client that went away learns nothing; the snapshot goes on. */
	(void)sv_ctl_session_event(tn->ses, "SNAPSHOT_TAKEN", data);
}

static json_t *
cmd_snapshot_create_run(struct call *c)
{
	json_t *list = c->list[arg_must(c, "snapshots")];
	size_t n = json_array_size(list);
	const char **specs = calloc(n, sizeof *specs);
	if (!specs)
		return sv_error(ENOMEM, "out of memory"), NULL;
	for (size_t i = 0; i < n; i++)
		specs[i] = json_string_value(json_array_get(list, i));
	uint64_t t0 = sv_now_ns();
	unsigned flags = arg_num(c, "quiesce", 0) ? SV_SNAP_QUIESCE : 0;
	struct taken_note tn = {c->ctx->session, list, t0};
	bool notify = arg_num(c, "notify", 0) && tn.ses; /* no connection when run in the CLI */
	int r = sv_snapshot_create_cb(c->ctx->pool, specs, n, arg_str(c, "consistency"), flags,
				      notify ? snapshot_taken : NULL, &tn);
	uint64_t t1 = sv_now_ns();
	free(specs);
	if (r == -1)
		return NULL;
	return json_pack("{s:O, s:I}", "snapshots", list, "duration_us",
			 (json_int_t)((t1 - t0) / 1000));
}

static const struct command cmd_snapshot_create = {
    "Take snapshots of one or more volumes at one instant.  Blocks no I/O; returns when they "
    "are durable.",
    snapshot_create_args,
    cmd_snapshot_create_run,
};

static json_t *
cmd_snapshot_list_run(struct call *c)
{
	struct sv_snapshot_info *infos;
	size_t n;
	if (sv_snapshot_list(c->ctx->pool, arg_str(c, "name"), &infos, &n) == -1)
		return NULL;
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, snapshot_json(&infos[i]));
	free(infos);
	return json_pack("{s:o}", "snapshots", arr);
}

static const struct command cmd_snapshot_list = {
    "A volume's snapshots, oldest first: epoch, time, consistency, validity, space held.",
    name_arg,
    cmd_snapshot_list_run,
};

static const struct arg_spec snapshot_arg[] = {
    {"snapshot", ARG_STRING, true, "\"VOLUME@SNAPSHOT\""},
    {NULL},
};

static json_t *
cmd_snapshot_delete_run(struct call *c)
{
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	if (split_snapshot(arg_str(c, "snapshot"), vol, snap) == -1 ||
	    sv_snapshot_delete(c->ctx->pool, vol, snap) == -1)
		return NULL;
	return json_object();
}

static const struct command cmd_snapshot_delete = {
    "Delete a snapshot and give back the space only it needed.  Refused while exported.",
    snapshot_arg,
    cmd_snapshot_delete_run,
};

static json_t *
cmd_snapshot_rollback_run(struct call *c)
{
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	if (split_snapshot(arg_str(c, "snapshot"), vol, snap) == -1 ||
	    sv_snapshot_rollback(c->ctx->pool, vol, snap) == -1)
		return NULL;
	return json_object();
}

static const struct command cmd_snapshot_rollback = {
    "Make the volume's contents the snapshot's again (writes are held meanwhile; crash-safe).",
    snapshot_arg,
    cmd_snapshot_rollback_run,
};

static const struct arg_spec snapshot_set_args[] = {
    {"snapshot", ARG_STRING, true, "\"VOLUME@SNAPSHOT\""},
    {"consistency", ARG_STRING, true, "\"crash\" or \"frozen\""},
    {NULL},
};

static json_t *
cmd_snapshot_set_run(struct call *c)
{
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	if (split_snapshot(arg_str(c, "snapshot"), vol, snap) == -1 ||
	    sv_snapshot_set_consistency(c->ctx->pool, vol, snap, arg_str(c, "consistency")) == -1)
		return NULL;
	return json_pack("{s:s, s:s}", "snapshot", arg_str(c, "snapshot"), "consistency",
			 arg_str(c, "consistency"));
}

static const struct command cmd_snapshot_set = {
    "Record a snapshot as crash- or filesystem-consistent (an fsfreeze agent upgrades it to "
    "\"frozen\" once it knows the filesystem stayed frozen through the snapshot).",
    snapshot_set_args,
    cmd_snapshot_set_run,
};

/* Most ranges one snapshot-release takes (a line of them stays under the
 * 1 MiB line limit); an agent with more sends several. */
#define RELEASE_MAX_RANGES 20000u

static const struct arg_spec snapshot_release_args[] = {
    {"snapshot", ARG_STRING, true, "\"VOLUME@SNAPSHOT\""},
    {"ranges", ARG_RANGES, true,
     "[[offset, length], ...] in bytes, inside the volume, at most 20000: the whole chunks "
     "inside them are released"},
    {NULL},
};

static json_t *
cmd_snapshot_release_run(struct call *c)
{
	const char *spec = arg_str(c, "snapshot");
	json_t *ranges = c->list[arg_must(c, "ranges")];
	size_t n = json_array_size(ranges);
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	if (split_snapshot(spec, vol, snap) == -1)
		return NULL;
	if (n > RELEASE_MAX_RANGES)
		return sv_error(EINVAL, "%zu ranges in one call; at most %u", n,
				RELEASE_MAX_RANGES),
		       NULL;
	struct sv_view *v;
	if (sv_view_open(c->ctx->pool, spec, strlen(spec), &v) == -1)
		return NULL;
	uint64_t size = sv_view_size(v), cs = sv_view_chunk_size(v), whole = 0;
	size_t k;
	json_t *e;
	/* Every range is checked before anything is released. */
	json_array_foreach(ranges, k, e)
	{
		uint64_t off = (uint64_t)json_integer_value(json_array_get(e, 0));
		uint64_t len = (uint64_t)json_integer_value(json_array_get(e, 1));
		if (off > size || len > size - off) {
			sv_view_close(v);
			return sv_error(EINVAL,
					"range %zu [%" PRIu64 ", %" PRIu64
					"] is outside the volume "
					"(%" PRIu64 " bytes)",
					k, off, len, size),
			       NULL;
		}
		uint64_t a = (off + cs - 1) / cs,
			 z = off + len == size ? (size + cs - 1) / cs : (off + len) / cs;
		whole += z > a ? (z - a) * cs : 0;
	}
	json_array_foreach(ranges, k, e)
	{
		uint64_t off = (uint64_t)json_integer_value(json_array_get(e, 0));
		uint64_t end = off + (uint64_t)json_integer_value(json_array_get(e, 1));
		/* In pieces that end on 1 GiB boundaries (chunk-aligned), so no
		 * chunk is lost at a cut. */
		while (off < end) {
			uint64_t cut = (off / SV_CHUNK_MAX / 1024 + 1) * SV_CHUNK_MAX * 1024;
			uint64_t piece_end = cut < end ? cut : end;
			int err = 0;
			if (sv_view_trim(v, (uint32_t)(piece_end - off), off, 0, &err) == -1) {
				sv_view_close(v);
				return sv_error(err,
						"releasing [%" PRIu64 ", %" PRIu64 ") of %s: %s",
						off, piece_end, spec, strerror(err)),
				       NULL;
			}
			off = piece_end;
		}
	}
	sv_view_close(v);
	return json_pack("{s:s, s:I, s:I}", "snapshot", spec, "ranges", (json_int_t)n, "bytes",
			 (json_int_t)whole);
}

static const struct command cmd_snapshot_release = {
    "Release the whole chunks inside byte ranges of a snapshot (free at the snapshot point, "
    "e.g. from the filesystem's free-space map, or already backed up): they read as zeros, "
    "their pre-images are dropped where no other snapshot needs them, and they are never "
    "copied again.",
    snapshot_release_args,
    cmd_snapshot_release_run,
};

/* ---- freeze ---- */

/* A lease the holder renews every few seconds; the maximum ends it anyway. */
#define FREEZE_DEFAULT_LEASE_MS 10000u

static json_t *
freeze_json(const struct sv_freeze_info *fi)
{
	json_t *vols = json_array();
	for (size_t i = 0; i < fi->n_volumes; i++)
		json_array_append_new(vols, json_string(fi->volumes[i]));
	return json_pack(
	    "{s:I, s:o, s:i, s:I, s:I, s:I, s:I, s:I, s:s}", "id", (json_int_t)fi->id, "volumes",
	    vols, "holds", (int)fi->holds, "created_ms", (json_int_t)fi->created_ms, "lease_ms",
	    (json_int_t)fi->lease_ms, "expires_ms", (json_int_t)fi->expires_in_ms, "max_ms",
	    (json_int_t)fi->max_in_ms, "until_ms", (json_int_t)fi->ends_ms, "holder", fi->holder);
}

static json_t *
freezes_json(struct sv_pool *pool)
{
	struct sv_freeze_info *fi;
	size_t n;
	if (sv_freeze_list(pool, &fi, &n) == -1)
		return NULL;
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, freeze_json(&fi[i]));
	free(fi);
	return arr;
}

static const struct arg_spec freeze_args[] = {
    {"names", ARG_STRINGS, true, "the volumes to freeze together"},
    {"lease", ARG_DURATION, false,
     "ms or \"5s\": the freeze ends unless renewed (heartbeat) within this time; 100 ms to the "
     "maximum (default 10 s, or the maximum if shorter)"},
    {"max", ARG_DURATION, false,
     "ms or \"60s\": the freeze ends this long after it began whatever happens; at most 1 h "
     "(default: serve --freeze-max, 60 s)"},
    {NULL},
};

static json_t *
cmd_freeze_run(struct call *c)
{
	struct sv_ctl_session *ses = c->ctx->session;
	if (!ses)
		return sv_error(ENOTCONN,
				"a freeze is held by a running server; start `snapvol serve`"),
		       NULL;
	json_t *list = c->list[arg_must(c, "names")];
	size_t n = json_array_size(list);
	const char *names[SV_FREEZE_MAX_VOLUMES];
	if (n > SV_FREEZE_MAX_VOLUMES)
		return sv_error(EINVAL, "at most %u volumes in one freeze", SV_FREEZE_MAX_VOLUMES),
		       NULL;
	for (size_t i = 0; i < n; i++)
		names[i] = json_string_value(json_array_get(list, i));
	uint64_t max = arg_num(c, "max", 0);
	uint64_t lease = arg_num(c, "lease", 0);
	int li = arg_must(c, "lease");
	if (!c->present[li]) {
		lease = FREEZE_DEFAULT_LEASE_MS;
		if (max && max < lease)
			lease = max;
	}
	uint64_t id;
	if (sv_freeze_begin(c->ctx->pool, names, n, lease, max, &id) == -1)
		return NULL;
	char holder[SV_FREEZE_HOLDER_MAX];
	snprintf(holder, sizeof holder, "pid %d (uid %u, control connection)", ses->pid, ses->uid);
	struct sv_freeze_info fi;
	if (sv_freeze_set_holder(c->ctx->pool, id, holder) == -1 ||
	    sv_ctl_session_hold_freeze(ses, id) == -1 ||
	    sv_freeze_get(c->ctx->pool, id, &fi) == -1) {
		int e = sv_last_errno();
		sv_freeze_end(c->ctx->pool, id);
		return sv_error(e ? e : ENOMEM, "the freeze could not be recorded; thawed"), NULL;
	}
	return freeze_json(&fi);
}

static const struct command cmd_freeze = {
    "Block-level freeze of one or more volumes: writes are held (queued, never failed), those "
    "in flight finish, data and metadata are synced; reads go on.  A lease: it ends at thaw, "
    "when not renewed in time, when this control connection closes, or at the maximum.",
    freeze_args,
    cmd_freeze_run,
};

static const struct arg_spec heartbeat_args[] = {
    {"id", ARG_UINT, true, "the freeze's id"},
    {NULL},
};

static json_t *
cmd_heartbeat_run(struct call *c)
{
	uint64_t id = arg_num(c, "id", 0);
	struct sv_freeze_info fi;
	if (sv_freeze_renew(c->ctx->pool, id) == -1 || sv_freeze_get(c->ctx->pool, id, &fi) == -1)
		return NULL;
	return json_pack("{s:I, s:I, s:I}", "id", (json_int_t)id, "expires_ms",
			 (json_int_t)fi.expires_in_ms, "max_ms", (json_int_t)fi.max_in_ms);
}

static const struct command cmd_heartbeat = {
    "Renew a freeze's lease (ENOENT once it has ended, saying why).",
    heartbeat_args,
    cmd_heartbeat_run,
};

static const struct arg_spec thaw_args[] = {
    {"id", ARG_UINT, false, "end this freeze"},
    {"name", ARG_VOLUME, false, "end every freeze of this volume"},
    {NULL},
};

static json_t *
cmd_thaw_run(struct call *c)
{
	bool has_id = c->present[arg_must(c, "id")];
	const char *name = arg_str(c, "name");
	if (has_id == (name != NULL))
		return sv_error(EINVAL,
				"thaw takes either \"id\" (a freeze) or \"name\" (a volume)"),
		       NULL;
	if (has_id) {
		uint64_t id = arg_num(c, "id", 0);
		if (sv_freeze_end(c->ctx->pool, id) == -1)
			return NULL;
		return json_pack("{s:I}", "thawed", (json_int_t)1);
	}
	unsigned k;
	if (sv_freeze_thaw_volume(c->ctx->pool, name, &k) == -1)
		return NULL;
	return json_pack("{s:I}", "thawed", (json_int_t)k);
}

static const struct command cmd_thaw = {
    "End a freeze by its id, or every freeze of a volume by its name.",
    thaw_args,
    cmd_thaw_run,
};

static const struct arg_spec window_begin_args[] = {
    {"names", ARG_STRINGS, true, "the volumes whose NBD connections serve the frozen filesystems"},
    {"max", ARG_DURATION, false,
     "ms or \"10s\": the window ends this long after it began whatever happens; at most 1 h "
     "(default 60 s)"},
    {NULL},
};

/* The window of a filesystem freeze (FIFREEZE to FITHAW): the threads
 * serving the volumes' NBD connections run SCHED_FIFO meanwhile
 * (sv_nbd_window_begin, nbd/server.c).  Held by this control connection. */
static json_t *
cmd_window_begin_run(struct call *c)
{
	if (!c->ctx->nbd)
		return sv_error(ENOTCONN,
				"a freeze window needs a running server (`snapvol serve`)"),
		       NULL;
	json_t *list = c->list[arg_must(c, "names")];
	size_t n = json_array_size(list);
	const char *names[SV_FREEZE_MAX_VOLUMES];
	if (n < 1 || n > SV_FREEZE_MAX_VOLUMES)
		return sv_error(EINVAL, "1 to %u volumes in one window", SV_FREEZE_MAX_VOLUMES),
		       NULL;
	for (size_t i = 0; i < n; i++)
		names[i] = json_string_value(json_array_get(list, i));
	uint64_t max = arg_num(c, "max", SV_FREEZE_MAX_DEFAULT_MS);
	if (max < 1 || max > SV_FREEZE_MAX_LIMIT_MS)
		return sv_error(EINVAL, "\"max\" must be 1 ms to 1 h"), NULL;
	uint64_t id;
	unsigned raised;
	if (sv_nbd_window_begin(c->ctx->nbd, names, n, c->ctx->session ? c->ctx->session->fd : -1,
				max * 1000000, &id, &raised) == -1)
		return NULL;
	return json_pack("{s:I, s:I}", "id", (json_int_t)id, "raised", (json_int_t)raised);
}

static const struct command cmd_window_begin = {
    "A filesystem freeze's window begins (snapshot create --fsfreeze sends it just before "
    "FIFREEZE): the threads serving the volumes' NBD connections run SCHED_FIFO until "
    "window-end, the maximum, or this control connection's close.  Root only; \"raised\": "
    "how many threads (0 without the privilege).",
    window_begin_args,
    cmd_window_begin_run,
};

static const struct arg_spec window_end_args[] = {
    {"id", ARG_UINT, true, "the window's id"},
    {NULL},
};

static json_t *
cmd_window_end_run(struct call *c)
{
	if (!c->ctx->nbd)
		return sv_error(ENOENT, "no freeze window without a running server"), NULL;
	unsigned restored;
	if (sv_nbd_window_end(c->ctx->nbd, arg_num(c, "id", 0), &restored) == -1)
		return NULL;
	return json_pack("{s:I}", "restored", (json_int_t)restored);
}

static const struct command cmd_window_end = {
    "End a freeze window: its threads get their previous scheduling policy back (ENOENT once "
    "it has ended).",
    window_end_args,
    cmd_window_end_run,
};

static const struct command cmd_info = {
    "One volume's properties.",
    name_arg,
    cmd_info_run,
};

/* ---- change tracking ---- */

/* A diff reply line stays far under the 1 MiB line limit: an extent is at
 * most 2 x 20 digits and 4 bytes of JSON. */
#define DIFF_MAX_EXTENTS     16384u
#define DIFF_DEFAULT_EXTENTS 16384u

static const struct arg_spec diff_args[] = {
    {"from", ARG_STRING, true, "\"VOLUME@SNAPSHOT\": changes since this snapshot"},
    {"to", ARG_STRING, false,
     "\"VOLUME@SNAPSHOT\" (a newer snapshot) or \"VOLUME\" (the live volume, the default)"},
    {"offset", ARG_SIZE, false, "where to start, in bytes (default 0)"},
    {"length", ARG_SIZE, false, "how many bytes to look at (default: to the end)"},
    {"max_extents", ARG_UINT, false, "most extents in one reply, 1-16384 (default 16384)"},
    {NULL},
};

struct diff_page {
	json_t *extents;
	size_t n, max;
	uint64_t bytes;
	uint64_t next; /* where the run that did not fit starts */
	bool more;
};

static int
diff_page_add(void *opaque, uint64_t off, uint64_t len)
{
	struct diff_page *p = opaque;
	if (p->n == p->max) {
		p->next = off;
		p->more = true;
		return 1;
	}
	json_t *e = json_array();
	json_array_append_new(e, json_integer((json_int_t)off));
	json_array_append_new(e, json_integer((json_int_t)len));
	json_array_append_new(p->extents, e);
	p->n++;
	p->bytes += len;
	return 0;
}

static json_t *
cmd_diff_run(struct call *c)
{
	char vol[SV_NAME_MAX + 1], from[SV_NAME_MAX + 1], tvol[SV_NAME_MAX + 1],
	    to[SV_NAME_MAX + 1] = "";
	const char *tspec = arg_str(c, "to");
	bool has_to = false;
	if (split_snapshot(arg_str(c, "from"), vol, from) == -1)
		return NULL;
	if (tspec) {
		if (sv_split_export_name(tspec, strlen(tspec), tvol, to, &has_to) == -1)
			return NULL;
		if (strcmp(tvol, vol))
			return sv_error(EINVAL, "'%s' and '%s' are of different volumes",
					arg_str(c, "from"), tspec),
			       NULL;
		if (!has_to)
			to[0] = '\0';
	}
	uint64_t max = arg_num(c, "max_extents", DIFF_DEFAULT_EXTENTS);
	if (max < 1 || max > DIFF_MAX_EXTENTS)
		return sv_error(EINVAL, "max_extents must be from 1 to %u", DIFF_MAX_EXTENTS), NULL;
	/* Not sv_volume_info: that stats every object of the volume (RADOS
	 * round trips), and a diff needs only the geometry. */
	struct {
		uint64_t size;
		uint32_t chunk_size;
	} vi;
	if (sv_volume_geometry(c->ctx->pool, vol, &vi.size, &vi.chunk_size) == -1)
		return NULL;
	uint64_t off = arg_num(c, "offset", 0);
	if (off > vi.size)
		return sv_error(EINVAL,
				"offset %" PRIu64 " is past the end of %s (%" PRIu64 " bytes)", off,
				vol, vi.size),
		       NULL;
	uint64_t len = arg_num(c, "length", vi.size - off);
	if (len > vi.size - off)
		len = vi.size - off;
	struct diff_page p = {.extents = json_array(), .max = (size_t)max};
	int r = sv_volume_diff(c->ctx->pool, vol, from, to, off, len, diff_page_add, &p);
	if (r == -1) {
		json_decref(p.extents);
		return NULL;
	}
	return json_pack("{s:o, s:o, s:I, s:I, s:I}", "extents", p.extents, "next",
			 p.more ? json_integer((json_int_t)p.next) : json_null(), "changed_bytes",
			 (json_int_t)p.bytes, "size", (json_int_t)vi.size, "chunk_size",
			 (json_int_t)vi.chunk_size);
}

static const struct command cmd_diff = {
    "Extents that changed between two snapshots of a volume, or since a snapshot: "
    "[offset, length] runs of whole chunks, paged (\"next\" is where to continue, or null).",
    diff_args,
    cmd_diff_run,
};

static json_t *
connections_json(struct sv_nbd_server *nbd)
{
	struct sv_nbd_conn_info *conns;
	unsigned n;
	if (sv_nbd_list_connections(nbd, &conns, &n) == -1)
		return NULL;
	json_t *arr = json_array();
	for (unsigned i = 0; i < n; i++) {
		const struct sv_nbd_conn_info *ci = &conns[i];
		json_array_append_new(
		    arr,
		    json_pack("{s:I, s:s, s:s, s:I, s:I, s:I, s:I, s:o}", "id", (json_int_t)ci->id,
			      "peer", ci->peer, "export", ci->export_name, "requests",
			      (json_int_t)ci->requests, "bytes_read", (json_int_t)ci->bytes_read,
			      "bytes_written", (json_int_t)ci->bytes_written, "started",
			      (json_int_t)ci->started, "tls",
			      ci->tls[0] ? json_string(ci->tls) : json_null()));
	}
	free(conns);
	return arr;
}

/* The server's TLS settings: per listener kind, and which credentials. */
static json_t *
tls_json(struct sv_nbd_server *nbd)
{
	static const char *const mode[] = {"off", "on", "require"};
	struct sv_nbd_tls_info t;
	sv_nbd_server_tls_info(nbd, &t);
	return json_pack("{s:s, s:s, s:b, s:b, s:b}", "unix", mode[t.unix_mode], "tcp",
			 mode[t.tcp_mode], "psk", t.psk, "x509", t.x509, "verify_peer",
			 t.verify_peer);
}

static json_t *
cmd_status_run(struct call *c)
{
	struct sv_ctl_context *ctx = c->ctx;
	json_t *held = json_array();
	json_t *vols = volumes_json_held(ctx->pool, held);
	if (!vols) {
		json_decref(held);
		return NULL;
	}
	json_t *freezes = freezes_json(ctx->pool);
	if (!freezes) {
		json_decref(vols);
		json_decref(held);
		return NULL;
	}
	if (!ctx->nbd) {
		json_decref(held);
		return json_pack("{s:b, s:s, s:s, s:o, s:o}", "running", 0, "message",
				 "no server running", "pool", sv_pool_describe(ctx->pool),
				 "volumes", vols, "freezes", freezes);
	}

	json_t *conns = connections_json(ctx->nbd);
	if (!conns) {
		json_decref(vols);
		json_decref(freezes);
		json_decref(held);
		return NULL;
	}
	/* Snapshot exports of volumes another node holds (engine/follow.c). */
	json_t *follows = json_array();
	struct sv_follow_info *fi;
	size_t nf;
	if (sv_follow_list(ctx->pool, &fi, &nf) == 0) {
		for (size_t i = 0; i < nf; i++)
			json_array_append_new(
			    follows, json_pack("{s:s, s:s, s:s, s:s, s:i}", "volume", fi[i].volume,
					       "snapshot", fi[i].snapshot, "mode", "read-only",
					       "holder", fi[i].holder, "views", (int)fi[i].views));
		free(fi);
	}
	json_t *tcp = json_array();
	for (unsigned i = 0; i < ctx->n_nbd_tcp; i++)
		json_array_append_new(tcp, json_string(ctx->nbd_tcp[i]));
	uint64_t up = ctx->started_ns ? (sv_now_ns() - ctx->started_ns) / 1000000000u : 0;
	return json_pack(
	    "{s:b, s:s, s:i, s:I, s:I, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, "
	    "s:o}",
	    "running", 1, "version", SNAPVOL_VERSION, "pid", (int)getpid(), "started",
	    (json_int_t)ctx->started, "uptime", (json_int_t)up, "pool", sv_pool_describe(ctx->pool),
	    "nbd_socket", ctx->nbd_socket ? json_string(ctx->nbd_socket) : json_null(), "nbd_tcp",
	    tcp, "tls", tls_json(ctx->nbd), "control_socket",
	    ctx->control_socket ? json_string(ctx->control_socket) : json_null(), "connections",
	    conns, "volumes", vols, "freezes", freezes, "held", held, "followed", follows);
}

static const struct command cmd_status = {
    "The server's state: pid, uptime, pool, sockets, NBD connections, volumes.  Without a "
    "server: \"running\": false and the volumes.",
    no_args,
    cmd_status_run,
};

static const struct arg_spec pool_check_args[] = {
    {"name", ARG_VOLUME, false, "one volume (default: all)"},
    {"repair", ARG_BOOL, false, "fix what can be fixed safely (default false)"},
    {NULL},
};

static void
check_finding(void *opaque, const struct sv_check_finding *f)
{
	json_array_append_new(opaque,
			      json_pack("{s:s, s:s, s:s, s:b}", "volume", f->volume, "severity",
					f->severity, "what", f->what, "repaired", f->repaired));
}

static json_t *
cmd_check_run(struct call *c)
{
	/* A server's volumes change under any check: refuse rather than
	 * report what a concurrent write did as damage. */
	if (c->ctx->nbd)
		return sv_error(EBUSY, "check works on a pool no server is serving: stop the "
				       "server first"),
		       NULL;
	json_t *findings = json_array();
	int errors = sv_pool_check(c->ctx->pool, arg_str(c, "name"), arg_num(c, "repair", 0),
				   check_finding, findings);
	if (errors < 0) {
		json_decref(findings);
		return NULL;
	}
	return json_pack("{s:o, s:i}", "findings", findings, "errors", errors);
}

static const struct command cmd_check = {
    "Verify a pool offline: metadata checksums and contents, the journal, pre-image space "
    "against the records, objects nothing names, work a crash left pending.  With repair, fix "
    "what is safe; damaged metadata is only reported.  Refused while a server serves the pool.",
    pool_check_args,
    cmd_check_run,
};

/* The table: X(identifier, wire name); the row is the struct cmd_<identifier>.
 * The public name list is built from the same list, so it cannot drift. */
#define COMMANDS(X)                                                                                \
	X(version, "version")                                                                      \
	X(commands, "commands")                                                                    \
	X(create, "create")                                                                        \
	X(delete, "delete")                                                                        \
	X(list, "list")                                                                            \
	X(info, "info")                                                                            \
	X(set, "set")                                                                              \
	X(status, "status")                                                                        \
	X(snapshot_create, "snapshot-create")                                                      \
	X(snapshot_list, "snapshot-list")                                                          \
	X(snapshot_delete, "snapshot-delete")                                                      \
	X(snapshot_rollback, "snapshot-rollback")                                                  \
	X(snapshot_set, "snapshot-set")                                                            \
	X(snapshot_release, "snapshot-release")                                                    \
	X(freeze, "freeze")                                                                        \
	X(heartbeat, "heartbeat")                                                                  \
	X(thaw, "thaw")                                                                            \
	X(window_begin, "window-begin")                                                            \
	X(window_end, "window-end")                                                                \
	X(diff, "diff")                                                                            \
	X(check, "check")

#define ROW(id, name)  &cmd_##id,
#define NAME(id, name) name,
static const struct command *const table[] = {COMMANDS(ROW)};
#define N_COMMANDS (sizeof table / sizeof table[0])
const char *const sv_ctl_command_names[] = {COMMANDS(NAME) NULL};

static json_t *
cmd_commands_run(struct call *c)
{
	(void)c;
	json_t *arr = json_array();
	for (size_t i = 0; i < N_COMMANDS; i++) {
		const struct command *cmd = table[i];
		json_t *args = json_array();
		for (int j = 0; cmd->args[j].name; j++) {
			const struct arg_spec *a = &cmd->args[j];
			json_array_append_new(args,
					      json_pack("{s:s, s:s, s:b, s:s}", "name", a->name,
							"type", arg_type_names[a->type], "required",
							a->required, "description", a->help));
		}
		json_array_append_new(arr,
				      json_pack("{s:s, s:s, s:o}", "name", sv_ctl_command_names[i],
						"description", cmd->help, "arguments", args));
	}
	return json_pack("{s:o}", "commands", arr);
}

json_t *
sv_ctl_execute(struct sv_ctl_context *ctx, const char *command, json_t *arguments)
{
	const struct command *cmd = NULL;
	const char *name = NULL;
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (command && !strcmp(sv_ctl_command_names[i], command)) {
			cmd = table[i];
			name = sv_ctl_command_names[i];
		}
	if (!cmd) {
		char desc[256];
		snprintf(desc, sizeof desc,
			 "unknown command '%.64s%s' (the command 'commands' lists them)",
			 command ? command : "", command && strlen(command) > 64 ? "..." : "");
		return sv_ctl_error_reply("CommandNotFound", ENOSYS, desc);
	}

	struct call c = {.ctx = ctx, .cmd = cmd, .name = name};
	sv_clear_error();
	if (check_args(&c, arguments) == -1)
		return error_from_last();
	json_t *ret = cmd->run(&c);
	if (!ret)
		return error_from_last();
	return json_pack("{s:o}", "return", ret);
}
