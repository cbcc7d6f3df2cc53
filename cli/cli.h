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
	OPT__COUNT
};

struct cli_option {
	const char *lname;   /* "size" for --size */
	char sname;	     /* 'v' for -v, or 0 */
	const char *metavar; /* "SIZE" if it takes a value, NULL for a flag */
	enum opt_id id;
	const char *help;
};

#define CLI_MAX_POS    64
#define CLI_MAX_LISTEN 8

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

/* commands.c */
int cli_run_create(struct cli *cli);
int cli_run_delete(struct cli *cli);
int cli_run_list(struct cli *cli);
int cli_run_info(struct cli *cli);
int cli_run_status(struct cli *cli);
int cli_run_call(struct cli *cli);
int cli_run_set(struct cli *cli);
int cli_run_snapshot(struct cli *cli);
/* The message for a pool whose lock is held by someone else. */
void cli_pool_in_use_message(const struct cli *cli, const char *control, const char *why, char *buf,
			     size_t len);

/* serve.c */
int cli_run_serve(struct cli *cli);

#endif
