/*
 * cli.h: what the files of the snapvol program share.
 *
 * main.c parses the command line against two tables, the global options
 * and the subcommands (each with its own options), and prints --help from
 * those same tables, so help and parser cannot disagree; docs/snapvol.1 is
 * checked against --help by cli/check-man.sh.  commands.c holds the
 * subcommands that are control commands (they run in the server when one
 * answers, else directly on the pool); serve.c holds "serve".
 */
#ifndef SV_CLI_H
#define SV_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctl.h"

/* Exit statuses. */
#define EXIT_OK	   0
#define EXIT_FAIL  1 /* the operation failed */
#define EXIT_USAGE 2 /* the command line is wrong */

enum opt_id {
	/* global */
	OPT_POOL,
	OPT_CONTROL,
	OPT_JSON,
	OPT_VERBOSE,
	OPT_HELP,
	OPT_VERSION,
	OPT_CEPH_CONF,
	OPT_CEPH_ID,
	/* create */
	OPT_SIZE,
	OPT_CHUNK_SIZE,
	OPT_FULL_POLICY,
	/* serve */
	OPT_SOCKET,
	OPT_LISTEN,
	OPT_THREADS,
	OPT_MIN_BLOCK_SIZE,
	OPT_MAX_CONNECTIONS,
	OPT_NO_SENDFILE,
	OPT_TLS,
	OPT_TLS_PSK,
	OPT_TLS_CERTS,
	OPT_TLS_VERIFY_PEER,
	OPT_INSECURE,
	OPT_GROUP,
	OPT_MAX_CONNS_PER_CLIENT,
	OPT_MAX_REQUEST,
	OPT_MAX_OPTION_LENGTH,
	OPT_MAX_NAME_LENGTH,
	OPT_HANDSHAKE_TIMEOUT,
	/* fsfreeze, snapshot create --fsfreeze */
	OPT_FSFREEZE,
	OPT_FREEZE_TIMEOUT,
	OPT_FREEZE_LEASE,
	OPT_NO_FS_HINT,
	/* freeze, thaw, serve --freeze-max */
	OPT_FREEZE_MAX,
	OPT_THAW_ID,
	OPT_SERVE_FREEZE_MAX,
	/* backup, restore, send */
	OPT_SINCE,
	OPT_FORCE,
	OPT_BASE_FILE,
	OPT_FORMAT,
	/* check */
	OPT_REPAIR,
	OPT__COUNT
};

struct cli_option {
	const char *lname;   /* "size" for --size */
	char sname;	     /* 'v' for -v, or 0 */
	const char *metavar; /* "SIZE" if it takes a value, NULL for a flag */
	enum opt_id id;
	const char *help;
};

#define CLI_MAX_POS	 64
#define CLI_MAX_LISTEN	 8
#define CLI_MAX_FSFREEZE 16

/* The parsed command line. */
struct cli {
	const struct cli_subcommand *sub;
	const char *pool;    /* --pool, $SNAPVOL_POOL, or "./data" */
	const char *control; /* --control, or NULL for POOL/control.sock */
	bool json;
	const char *pos[CLI_MAX_POS];
	unsigned npos;
	const char *val[OPT__COUNT]; /* last value of each option ("" for flags) */
	const char *listen[CLI_MAX_LISTEN];
	unsigned nlisten;
	const char *fsfreeze[CLI_MAX_FSFREEZE]; /* --fsfreeze, in order */
	unsigned nfsfreeze;
	bool dashdash;	       /* "--" was given after the command */
	unsigned dashdash_pos; /* the index in pos of the first argument after it */
};

struct cli_subcommand {
	const char *name;
	const char *args;    /* synopsis after the name: "NAME --size SIZE [--chunk-size SIZE]" */
	const char *summary; /* one line, for the command list */
	const char *description;
	const struct cli_option *options; /* terminated by a NULL lname; may be NULL */
	unsigned min_pos, max_pos;
	int (*run)(struct cli *cli);
};

/* main.c */
int cli_usage_error(const struct cli *cli, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* POOL/control.sock or --control; a malloc'd string. */
char *cli_control_path(const struct cli *cli);
char *cli_pool_file(const struct cli *cli, const char *name);
/* Option value parsers: exit status on failure (already reported), else 0. */
int cli_parse_size_opt(const struct cli *cli, enum opt_id id, uint64_t *out);
int cli_parse_uint_opt(const struct cli *cli, enum opt_id id, uint64_t min, uint64_t max,
		       uint64_t *out);
/* "VOL@SNAP", checked as the engine will check it, into vol and snap (each
 * SV_NAME_MAX + 1 bytes): 0, or the exit status of the usage error. */
int cli_snapshot_arg(const struct cli *cli, const char *spec, char *vol, char *snap);

/* commands.c */
int cli_run_create(struct cli *cli);
int cli_run_delete(struct cli *cli);
int cli_run_list(struct cli *cli);
int cli_run_info(struct cli *cli);
int cli_run_status(struct cli *cli);
int cli_run_call(struct cli *cli);
int cli_run_set(struct cli *cli);
int cli_run_snapshot(struct cli *cli);
int cli_run_diff(struct cli *cli);
int cli_run_check(struct cli *cli);

/* freeze.c: block-level freeze and thaw; the freezes in status */
int cli_run_freeze(struct cli *cli);
int cli_run_thaw(struct cli *cli);
void cli_print_freezes(json_t *freezes);

/* fsfreeze.c */
int cli_run_fsfreeze(struct cli *cli);
/* snapshot create --fsfreeze: snapshots is the checked "VOL@SNAP" list. */
int cli_snapshot_create_fsfreeze(struct cli *cli, json_t *snapshots);
/* The message for a pool whose lock is held by someone else. */
void cli_pool_in_use_message(const struct cli *cli, const char *control, const char *why, char *buf,
			     size_t len);

/* session.c: the server's control socket if one answers, else the pool
 * opened here (see the file-top comment). */
struct cli_session {
	int fd;			   /* control connection, or -1 */
	struct sv_pool *pool;	   /* the pool opened here when no server answers */
	struct sv_ctl_context ctx; /* for sv_ctl_execute on that pool */
	char *control;		   /* the control socket's path */
	char why[512];		   /* without a server: why its socket did not do */
};
/* 0, or -1 with the error set (a held pool lock names its holder). */
int cli_session_open(struct cli *cli, struct cli_session *s, unsigned pool_flags);
/* The whole reply to command, or NULL with the error set (the connection failed). */
json_t *cli_session_reply(struct cli_session *s, const char *command, json_t *args);
/* The reply's "return" value (a new reference), or NULL with the error set
 * from the error reply. */
json_t *cli_session_call(struct cli_session *s, const char *command, json_t *args);
/* The "return" value of a reply (new reference; the reply is dropped), or
 * NULL with the error set from an error reply. */
json_t *cli_reply_result(json_t *reply, const char *command);
void cli_session_close(struct cli_session *s);

/* serve.c */
int cli_run_serve(struct cli *cli);

/* backup.c */
int cli_run_backup(struct cli *cli);
int cli_run_restore(struct cli *cli);
int cli_run_send(struct cli *cli);
int cli_run_receive(struct cli *cli);

#endif
