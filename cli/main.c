/*
 * main.c: the snapvol program's entry point: the option tables, the parser
 * and the help text.
 *
 * Global options may come before or after the subcommand ("snapvol --pool
 * p list" and "snapvol list --pool p" are the same), as with zfs, git and
 * rbd.  The parser is hand-written rather than getopt_long because getopt
 * cannot take one table before the subcommand and a merged one after it
 * without re-scanning, and because the help text is printed from the same
 * tables, so --help, the parser and (through cli/check-man.sh) the man page
 * agree by construction.
 *
 * Exit status: 0 success, 1 the operation failed, 2 the command line is
 * wrong (unknown option, missing argument, a size that is not a size...).
 * Every error is one line "snapvol: error: <message>" on stderr.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "error.h"
#include "log.h"
#include "names.h"
#include "util.h"

/* ---- tables ---- */

static const struct cli_option global_options[] = {
    {"pool", 0, "DIR", OPT_POOL,
     "the pool: a directory, or rados:NAME for a Ceph RADOS pool (default: $SNAPVOL_POOL, "
     "else ./data)"},
    {"control", 0, "PATH", OPT_CONTROL,
     "the control socket (default: POOL/control.sock; for rados: pools, in the run directory)"},
    {"ceph-conf", 0, "FILE", OPT_CEPH_CONF,
     "rados: pools: the Ceph configuration (default: $CEPH_CONF, else /etc/ceph/ceph.conf)"},
    {"ceph-id", 0, "ID", OPT_CEPH_ID,
     "rados: pools: the Ceph client id, e.g. admin for client.admin (default: "
     "$SNAPVOL_CEPH_ID, else admin)"},
    {"json", 0, NULL, OPT_JSON, "print the result as JSON (the control command's return value)"},
    {"verbose", 'v', NULL, OPT_VERBOSE, "print debug messages on stderr"},
    {"help", 'h', NULL, OPT_HELP, "show this help and exit"},
    {"version", 0, NULL, OPT_VERSION, "print the version and exit"},
    {NULL},
};

static const struct cli_option create_options[] = {
    {"size", 0, "SIZE", OPT_SIZE,
     "the volume's size: bytes, or with a suffix K, M, G, T (binary: 1K = 1024)"},
    {"chunk-size", 0, "SIZE", OPT_CHUNK_SIZE,
     "unit of copy-on-write and change tracking: a power of 2 from 4K to 1M (default 4K)"},
    {"full-policy", 0, "POLICY", OPT_FULL_POLICY,
     "when the store is full and a write needs a copy: fail-writes (the write gets ENOSPC; "
     "default) or drop-snapshot (the oldest snapshot is invalidated)"},
    {NULL},
};

static const struct cli_option snapshot_options[] = {
    {"fsfreeze", 0, "MOUNTPOINT", OPT_FSFREEZE,
     "create: freeze the filesystem mounted there around the snapshot and record it as "
     "frozen (repeatable)"},
    {"no-fs-hint", 0, NULL, OPT_NO_FS_HINT,
     "create --fsfreeze: do not hand the filesystem's free-space map to the server"},
    {"timeout", 0, "DURATION", OPT_FREEZE_TIMEOUT,
     "create --fsfreeze: thaw after this long whatever happens (default 10s)"},
    {"lease", 0, "DURATION", OPT_FREEZE_LEASE,
     "create --fsfreeze: thaw if this process stops renewing for this long (default 2s)"},
    {NULL},
};

static const struct cli_option fsfreeze_options[] = {
    {"timeout", 0, "DURATION", OPT_FREEZE_TIMEOUT,
     "thaw after this long even if CMD still runs, 100ms to 1h (default 60s)"},
    {"lease", 0, "DURATION", OPT_FREEZE_LEASE,
     "thaw if snapvol stops renewing for this long (stopped, hung), 100ms to 10m (default 2s)"},
    {NULL},
};

static const struct cli_option freeze_options[] = {
    {"lease", 0, "DURATION", OPT_FREEZE_LEASE,
     "the freeze ends unless renewed within this time; snapvol renews it every third of it "
     "(default 5s; 100ms to the maximum)"},
    {"max", 0, "DURATION", OPT_FREEZE_MAX,
     "the freeze ends this long after it began whatever happens (default: the server's "
     "--freeze-max, 60s; at most 1h)"},
    {NULL},
};

static const struct cli_option thaw_options[] = {
    {"id", 0, "N", OPT_THAW_ID, "end the freeze with this id (from status or freeze --json)"},
    {NULL},
};

static const struct cli_option backup_options[] = {
    {"since", 0, "VOL@BASE", OPT_SINCE,
     "incremental: write only what changed since VOL@BASE (into FILE, a raw backup of "
     "VOL@BASE, or with --base-file into a new qcow2 overlay)"},
    {"base-file", 0, "BASE", OPT_BASE_FILE,
     "with --since: FILE is a new qcow2 overlay whose backing file is BASE, a complete "
     "backup of VOL@BASE (raw or qcow2)"},
    {"format", 0, "FORMAT", OPT_FORMAT,
     "raw or qcow2 (default: qcow2 with --base-file or when FILE ends in .qcow2, else raw)"},
    {"force", 0, NULL, OPT_FORCE, "a full backup overwrites an existing FILE"},
    {NULL},
};

static const struct cli_option send_options[] = {
    {"since", 0, "VOL@BASE", OPT_SINCE,
     "incremental: send only what changed since VOL@BASE, which the receiver must have"},
    {NULL},
};

static const struct cli_option restore_options[] = {
    {"force", 0, NULL, OPT_FORCE, "overwrite the contents of an existing volume of the same size"},
    {NULL},
};

static const struct cli_option set_options[] = {
    {"full-policy", 0, "POLICY", OPT_FULL_POLICY,
     "when the store is full and a write needs a copy: fail-writes or drop-snapshot"},
    {NULL},
};

static const struct cli_option check_options[] = {
    {"repair", 0, NULL, OPT_REPAIR,
     "fix what can be fixed safely: wasted pre-image space, stray objects, pending work"},
    {NULL},
};

static const struct cli_option serve_options[] = {
    {"socket", 0, "PATH", OPT_SOCKET, "the NBD unix socket (default: POOL/nbd.sock)"},
    {"listen", 0, "HOST:PORT", OPT_LISTEN,
     "also serve NBD on TCP, e.g. 127.0.0.1:10809 or [::1]:10809 (repeatable)"},
    {"threads", 0, "N", OPT_THREADS, "parallel requests per connection (default 8)"},
    {"min-block-size", 0, "SIZE", OPT_MIN_BLOCK_SIZE,
     "advertised minimum block size, a power of 2 up to 64K; unaligned requests are refused "
     "(default 1)"},
    {"max-connections", 0, "N", OPT_MAX_CONNECTIONS,
     "NBD connections allowed at once (default 1024)"},
    {"no-sendfile", 0, NULL, OPT_NO_SENDFILE, "copy read data through memory, not sendfile(2)"},
    {"tls-psk", 0, "FILE", OPT_TLS_PSK,
     "TLS with pre-shared keys: FILE holds username:hexkey lines (psktool's format)"},
    {"tls-certs", 0, "DIR", OPT_TLS_CERTS,
     "TLS with X.509: DIR holds ca-cert.pem, server-cert.pem and server-key.pem"},
    {"tls-verify-peer", 0, NULL, OPT_TLS_VERIFY_PEER,
     "require client certificates signed by DIR/ca-cert.pem"},
    {"tls", 0, "MODE", OPT_TLS,
     "TLS on the unix socket: off, on (clients choose) or require (default: on when TLS is "
     "configured, else off); TCP requires TLS unless --insecure"},
    {"insecure", 0, NULL, OPT_INSECURE,
     "allow NBD over TCP without TLS (TLS stays optional on TCP if configured)"},
    {"group", 0, "NAME", OPT_GROUP,
     "give group NAME read-write access to both sockets (mode 0660; default 0600)"},
    {"max-connections-per-client", 0, "N", OPT_MAX_CONNS_PER_CLIENT,
     "NBD connections allowed at once per client: per uid on the unix socket, per address "
     "on TCP (default 256)"},
    {"max-request", 0, "SIZE", OPT_MAX_REQUEST,
     "largest read or write request, 64K to 1G, advertised as the maximum block size "
     "(default 32M)"},
    {"max-option-length", 0, "SIZE", OPT_MAX_OPTION_LENGTH,
     "largest handshake option, 4160 bytes to 16M; a longer one closes the connection "
     "(default 64K)"},
    {"max-name-length", 0, "N", OPT_MAX_NAME_LENGTH,
     "longest export name a client may send, 1 to 4096 bytes (default 4096)"},
    {"handshake-timeout", 0, "DURATION", OPT_HANDSHAKE_TIMEOUT,
     "drop clients that have not finished the handshake in this time, e.g. 30s or 2m; 0 for "
     "no limit (default 30s)"},
    {"freeze-max", 0, "DURATION", OPT_SERVE_FREEZE_MAX,
     "longest a block-level freeze lasts unless it asks for less, 100ms to 1h (default 60s)"},
    {NULL},
};

static int run_help(struct cli *cli);

static const struct cli_subcommand subcommands[] = {
    {"create", "NAME --size SIZE [--chunk-size SIZE] [--full-policy POLICY]", "create a volume",
     "Create the volume NAME: an empty, sparse raw image of SIZE bytes (a multiple "
     "of 512).  The pool directory is created if it does not exist.  A volume name "
     "is 1 to 64 characters among letters, digits and . _ + : -, and does not start "
     "with . or -.",
     create_options, 1, 1, cli_run_create},
    {"delete", "NAME", "delete a volume",
     "Delete the volume NAME and all its data.  Refused while an NBD client has it open.", NULL, 1,
     1, cli_run_delete},
    {"list", "", "list the volumes",
     "List the pool's volumes: name, size, chunk size, space allocated, creation time.", NULL, 0, 0,
     cli_run_list},
    {"info", "NAME", "show one volume",
     "Show the properties of the volume NAME, one \"key: value\" per line.", NULL, 1, 1,
     cli_run_info},
    {"set", "NAME --full-policy POLICY", "change a volume's properties",
     "Change the properties of the volume NAME: its full-store policy.", set_options, 1, 1,
     cli_run_set},
    {"snapshot",
     "create VOL@SNAP [VOL@SNAP...] [--fsfreeze MOUNTPOINT]...\n"
     "         [--no-fs-hint] [--timeout DURATION] [--lease DURATION]\n"
     "         | list VOL | delete VOL@SNAP | rollback VOL@SNAP",
     "create, list, delete or roll back snapshots",
     "'snapshot create' takes read-only, point-in-time snapshots of one or more volumes at "
     "one instant (a consistency group): it blocks no I/O and returns when they are durable.  "
     "A snapshot is exported over NBD as VOL@SNAP.  'snapshot list' shows a volume's "
     "snapshots, oldest first, with their consistency, validity and the space they hold.  "
     "'snapshot delete' gives back the space only that snapshot needed (refused while it is "
     "exported).  'snapshot rollback' makes the volume's contents the snapshot's again: "
     "writes are held while it runs, reads go on and may see a mix until it returns; an "
     "interrupted rollback is finished when the volume is next opened.  Trimming a range of a "
     "snapshot's export releases it: it reads as zeros from then on and its space is given "
     "back, so a backup reader can free the snapshot behind itself.  With --fsfreeze, "
     "'snapshot create' freezes the filesystems mounted at MOUNTPOINT on this host (as "
     "'snapvol fsfreeze' does, with its watchdog), takes the snapshots with the volumes' "
     "writes held for the instant, thaws, and records them as \"frozen\" only if every "
     "filesystem stayed frozen throughout (else \"crash\", and says why); it prints the "
     "freeze window, FIFREEZE to FITHAW.  While frozen it reads the free-space map "
     "(GETFSMAP, ext4 and xfs) and releases the free chunks from the snapshot, so they are "
     "never copied: only when one volume is snapshotted, exactly one frozen filesystem's "
     "device has the volume's size, and that device's first 64 KiB equal the volume's "
     "(its filesystem sits on the volume at offset 0, as with nbdfuse and a loop device).",
     snapshot_options, 2, CLI_MAX_POS, cli_run_snapshot},
    {"freeze", "VOL... [--lease DURATION] [--max DURATION] [-- CMD [ARGS...]]",
     "hold the writes of volumes (block-level freeze)",
     "Freeze the volumes VOL... on the running server: new writes are held (queued, never "
     "failed), those in flight finish, data and metadata are synced and the volumes are "
     "clean; reads go on.  With CMD, run it while frozen and thaw when it exits (the exit "
     "status is CMD's).  Without, print what is frozen and hold the freeze until SIGINT or "
     "SIGTERM, until 'snapvol thaw' ends it (then print \"thawed\" and exit 0), or until "
     "the maximum.  The freeze is a lease renewed every third of --lease: if snapvol dies "
     "(even by SIGKILL) the server thaws at once, if it stops (SIGSTOP, a hung machine) "
     "the lease lapses.  Needs a running server.",
     freeze_options, 1, CLI_MAX_POS, cli_run_freeze},
    {"thaw", "VOL | --id N", "end block-level freezes",
     "End every freeze of the volume VOL, or the freeze with id N, on the running server.  "
     "Thawing a volume that is not frozen is an error.",
     thaw_options, 0, 1, cli_run_thaw},
    {"fsfreeze", "[--timeout DURATION] [--lease DURATION] MOUNTPOINT... -- CMD [ARGS...]",
     "run a command with filesystems frozen",
     "Freeze the filesystems mounted at each MOUNTPOINT (FIFREEZE; stacked ones, an image "
     "file on one loop-mounted with another on it, top-down), run CMD, and thaw them "
     "(bottom-up) when it exits, at the timeout, or if snapvol dies, is killed (even with "
     "SIGKILL) or stops renewing its lease: a watchdog process in its own session, memory "
     "locked, that writes to no filesystem, holds the freeze and thaws.  Exits with CMD's "
     "status (128+N if a signal N killed it, 127 if it could not be run) and says on stderr "
     "if the filesystems were thawed before CMD ended, and why.  A path that is not a mount "
     "point, a filesystem that cannot be frozen or is already frozen are errors that leave "
     "nothing frozen.",
     fsfreeze_options, 2, CLI_MAX_POS, cli_run_fsfreeze},
    {"diff", "VOL@FROM [VOL@TO | VOL]", "list the extents changed between snapshots",
     "List the extents of the volume that changed between the snapshot VOL@FROM and the "
     "newer snapshot VOL@TO, or the live volume (VOL, the default): runs of whole chunks, "
     "as offset, length and end in bytes, then the totals.  With --json, one object: "
     "\"extents\" as [offset, length] pairs, \"changed_bytes\", \"extent_count\", \"size\", "
     "\"chunk_size\".  What is reported is complete even after a crash or power loss: "
     "nothing that changed is ever left out.",
     NULL, 1, 2, cli_run_diff},
    {"backup", "VOL@SNAP FILE [--since VOL@BASE [--base-file BASE]] [--format FORMAT] [--force]",
     "back up a snapshot into a sparse raw image or a qcow2 file",
     "Write the snapshot VOL@SNAP into FILE, a sparse raw image that qemu-img, losetup and "
     "'snapvol restore' read: holes stay holes and only allocated data is read.  With --since "
     "VOL@BASE, FILE must already hold a backup of VOL@BASE (for instance a copy of it): only "
     "the extents that changed between the two snapshots are read and written into it, and no "
     "other byte of the volume is read.  With --since and --base-file BASE, FILE is instead a "
     "new qcow2 overlay whose backing file is BASE (a complete backup of VOL@BASE, raw or "
     "qcow2): it holds only the changed extents, chains of them work with every qemu tool, "
     "and 'snapvol restore FILE' follows the chain (needs qemu-img and qemu-nbd).  What FILE "
     "holds is recorded in FILE.snapvol.json; a FILE that holds another volume or base is "
     "refused, and an interrupted backup can be run again.  Shows a progress bar on a "
     "terminal; --json prints progress lines on stderr and a summary (bytes_read, "
     "changed_bytes, seconds...) on stdout.",
     backup_options, 2, 2, cli_run_backup},
    {"restore", "FILE VOL [--force]", "create a volume from a backup image",
     "Create the volume VOL from FILE, a backup made by 'snapvol backup' (its size and chunk "
     "size come from FILE.snapvol.json); only FILE's data is read and written.  A qcow2 "
     "backup is read through qemu-nbd with its whole backing chain, each link of which must "
     "be a complete backup of the one before.  An existing "
     "VOL is refused unless --force, which overwrites its contents (same size).  A restore "
     "that fails deletes the volume it created.",
     restore_options, 2, 2, cli_run_restore},
    {"send", "VOL@SNAP [--since VOL@BASE] > STREAM", "write a snapshot as a send stream",
     "Write the snapshot VOL@SNAP to standard output as a send stream "
     "(docs/send-stream.md): the whole snapshot, or with --since only what changed since "
     "VOL@BASE.  Every record carries a CRC-32, and an incremental one the CRC-32 of the "
     "base's bytes it replaces, so 'receive' refuses a stream for another base.  With "
     "--json, progress lines and the summary go to stderr.",
     send_options, 1, 1, cli_run_send},
    {"receive", "VOL < STREAM", "apply a send stream",
     "Read a send stream on standard input into the volume VOL.  A full stream creates VOL "
     "(refused if it exists); an incremental one needs VOL to have the stream's base snapshot "
     "with no change since.  Either way the stream's snapshot VOL@SNAP is created at the end.  "
     "A stream that does not apply (bad magic or version, wrong size, wrong base, a corrupt "
     "or truncated record) is refused and VOL is left as it was.  An interrupted receive "
     "leaves the snapshot VOL@snapvol.receiving; the next receive into VOL undoes what it "
     "wrote and starts over.",
     NULL, 1, 1, cli_run_receive},
    {"check", "[VOL] [--repair]", "verify a pool offline",
     "Verify every volume of the pool (or VOL) while no server serves it: metadata "
     "checksums and contents, the change journal, pre-image space against the records that "
     "name it, objects that nothing names, and work a crash left pending (journal records "
     "not yet checkpointed, an interrupted rollback).  Prints one line per finding: error, "
     "warning or info.  With --repair, wasted pre-image space is punched, stray pre-image "
     "objects are removed and pending work is finished; damaged metadata is only reported, "
     "never guessed at.  Exits 1 if errors remain.  Refused while a server serves the pool.",
     check_options, 0, 1, cli_run_check},
    {"status", "", "show the server's state",
     "Show the running server: pid, uptime, pool, sockets, NBD connections and volumes. "
     "Without a server, say so and list the volumes.",
     NULL, 0, 0, cli_run_status},
    {"serve",
     "[--socket PATH] [--listen HOST:PORT]\n"
     "         [--threads N] [--min-block-size SIZE] [--max-connections N]\n"
     "         [--no-sendfile] [--tls-psk FILE] [--tls-certs DIR [--tls-verify-peer]]\n"
     "         [--tls MODE] [--insecure] [--group NAME] [LIMITS]\n"
     "         [--freeze-max DURATION]",
     "serve the pool over NBD",
     "Serve every volume of the pool over NBD (export name: the volume's name) on a "
     "unix socket, and optionally TCP, and answer control commands on the control "
     "socket.  Runs in the foreground and logs on stderr; SIGINT or SIGTERM stops it "
     "cleanly and removes its sockets (a second one during the stop exits at once, status "
     "1).  The pool directory is created if it does not "
     "exist.  NBD over TCP requires TLS (--tls-psk or --tls-certs) unless --insecure is "
     "given.  A client that exceeds a limit is refused or disconnected, and logged.",
     serve_options, 0, 0, cli_run_serve},
    {"call", "COMMAND [ARGUMENTS]", "run any control command",
     "Run the control command COMMAND with ARGUMENTS, a JSON object (default {}), and print "
     "its JSON result.  'snapvol call commands' lists every command and its arguments.",
     NULL, 1, 2, cli_run_call},
    {"help", "[COMMAND]", "show help for snapvol or a command",
     "Show the help for COMMAND, or the list of commands.", NULL, 0, 1, run_help},
    {NULL},
};

/* ---- messages ---- */

static const char *progname = "snapvol";

int
cli_usage_error(const struct cli *cli, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: error: ", progname);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (cli && cli->sub)
		fprintf(stderr, "\nTry '%s %s --help'.\n", progname, cli->sub->name);
	else
		fprintf(stderr, "\nTry '%s --help'.\n", progname);
	return EXIT_USAGE;
}

int
cli_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: error: ", progname);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_FAIL;
}

/* ---- help ---- */

/* Print text from column col, wrapped at 80 columns with later lines
 * indented to indent. */
static void
print_wrapped(FILE *f, const char *text, size_t col, size_t indent)
{
	const size_t width = 80;
	const char *p = text;
	while (*p) {
		size_t wlen = strcspn(p, " ");
		if (col > indent && col + 1 + wlen > width) {
			fprintf(f, "\n%*s", (int)indent, "");
			col = indent;
		} else if (col > indent) {
			fputc(' ', f);
			col++;
		}
		fwrite(p, 1, wlen, f);
		col += wlen;
		p += wlen;
		while (*p == ' ')
			p++;
	}
	fputc('\n', f);
}

#define HELP_COL 28

static void
print_options(FILE *f, const struct cli_option *opts)
{
	for (const struct cli_option *o = opts; o && o->lname; o++) {
		char left[64];
		if (o->sname)
			snprintf(left, sizeof left, "-%c, --%s%s%s", o->sname, o->lname,
				 o->metavar ? " " : "", o->metavar ? o->metavar : "");
		else
			snprintf(left, sizeof left, "    --%s%s%s", o->lname, o->metavar ? " " : "",
				 o->metavar ? o->metavar : "");
		if (strlen(left) + 2 > HELP_COL - 2)
			fprintf(f, "  %s\n%*s", left, HELP_COL, "");
		else
			fprintf(f, "  %-*s", HELP_COL - 2, left);
		print_wrapped(f, o->help, HELP_COL, HELP_COL);
	}
}

static void
print_main_help(FILE *f)
{
	fprintf(f, "Usage: snapvol [OPTIONS] COMMAND [ARGS...]\n"
		   "\n"
		   "snapvol keeps block volumes in a pool directory and serves them over NBD.\n"
		   "When a server runs on the pool, commands go to it through its control socket;\n"
		   "otherwise they work on the pool directly.\n"
		   "\n"
		   "Commands:\n");
	for (const struct cli_subcommand *s = subcommands; s->name; s++)
		fprintf(f, "  %-10s  %s\n", s->name, s->summary);
	fprintf(f, "\nOptions (before or after the command):\n");
	print_options(f, global_options);
	fprintf(f, "\n'snapvol COMMAND --help' shows a command's own options.\n");
}

static void
print_sub_help(FILE *f, const struct cli_subcommand *s)
{
	fprintf(f, "Usage: snapvol [OPTIONS] %s%s%s\n\n", s->name, s->args[0] ? " " : "", s->args);
	print_wrapped(f, s->description, 0, 0);
	if (s->options) {
		fprintf(f, "\nOptions:\n");
		print_options(f, s->options);
	}
	fprintf(f, "\nGlobal options (before or after the command):\n");
	print_options(f, global_options);
}

static const struct cli_subcommand *
find_subcommand(const char *name)
{
	for (const struct cli_subcommand *s = subcommands; s->name; s++)
		if (!strcmp(s->name, name))
			return s;
	return NULL;
}

static int
run_help(struct cli *cli)
{
	if (cli->npos == 0) {
		print_main_help(stdout);
		return EXIT_OK;
	}
	const struct cli_subcommand *s = find_subcommand(cli->pos[0]);
	if (!s)
		return cli_usage_error(cli, "unknown command '%s'", cli->pos[0]);
	print_sub_help(stdout, s);
	return EXIT_OK;
}

/* ---- helpers for the subcommands ---- */

static char *
join_path(const char *dir, const char *name)
{
	size_t n = strlen(dir);
	char *p;
	if (asprintf(&p, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name) == -1) {
		fprintf(stderr, "%s: error: out of memory\n", progname);
		exit(EXIT_FAIL);
	}
	return p;
}

/* A RADOS pool has no local directory: its sockets go in a run directory,
 * $XDG_RUNTIME_DIR/snapvol/rados:NAME, else /run/snapvol/rados:NAME for
 * root, else /tmp/snapvol-UID/rados:NAME, made (0700) when first asked for. */
static char *
rados_run_dir(const char *pool)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char *base;
	int n;
	if (xdg && *xdg)
		n = asprintf(&base, "%s/snapvol", xdg);
	else if (geteuid() == 0)
		n = asprintf(&base, "/run/snapvol");
	else
		n = asprintf(&base, "/tmp/snapvol-%ld", (long)geteuid());
	if (n == -1) {
		fprintf(stderr, "%s: error: out of memory\n", progname);
		exit(EXIT_FAIL);
	}
	char *dir = join_path(base, pool);
	(void)mkdir(base, 0700);
	(void)mkdir(dir, 0700); /* if this fails, binding the socket says why */
	free(base);
	return dir;
}

char *
cli_pool_file(const struct cli *cli, const char *name)
{
	if (!strncmp(cli->pool, "rados:", 6)) {
		char *dir = rados_run_dir(cli->pool);
		char *p = join_path(dir, name);
		free(dir);
		return p;
	}
	return join_path(cli->pool, name);
}

char *
cli_control_path(const struct cli *cli)
{
	if (cli->control)
		return strdup(cli->control);
	return cli_pool_file(cli, "control.sock");
}

static const struct cli_option *
option_of(const struct cli *cli, enum opt_id id)
{
	for (const struct cli_option *o = cli->sub->options; o && o->lname; o++)
		if (o->id == id)
			return o;
	for (const struct cli_option *o = global_options; o->lname; o++)
		if (o->id == id)
			return o;
	return NULL;
}

int
cli_parse_size_opt(const struct cli *cli, enum opt_id id, uint64_t *out)
{
	if (sv_parse_size(cli->val[id], out) == -1)
		return cli_usage_error(cli, "--%s: %s", option_of(cli, id)->lname, sv_last_error());
	return 0;
}

int
cli_snapshot_arg(const struct cli *cli, const char *spec, char *vol, char *snap)
{
	bool has;
	if (sv_split_export_name(spec, strlen(spec), vol, snap, &has) == -1)
		return cli_usage_error(cli, "'%s': %s", spec, sv_last_error());
	if (!has)
		return cli_usage_error(cli, "'%s' names no snapshot: write VOLUME@SNAPSHOT", spec);
	return 0;
}

int
cli_parse_uint_opt(const struct cli *cli, enum opt_id id, uint64_t min, uint64_t max, uint64_t *out)
{
	const char *s = cli->val[id];
	const char *name = option_of(cli, id)->lname;
	uint64_t v = 0;
	if (!*s)
		return cli_usage_error(cli, "--%s: expected a number, got an empty string", name);
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return cli_usage_error(cli, "--%s: '%s' is not a whole number", name, s);
		if (v > (UINT64_MAX - 9) / 10)
			return cli_usage_error(cli, "--%s: '%s' is too large", name, s);
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v < min || v > max)
		return cli_usage_error(cli, "--%s: %s is out of range (%llu to %llu)", name, s,
				       (unsigned long long)min, (unsigned long long)max);
	*out = v;
	return 0;
}

/* ---- parsing ---- */

static const struct cli_option *
lookup_long(const struct cli *cli, const char *name, size_t len)
{
	const struct cli_option *tables[2] = {cli->sub ? cli->sub->options : NULL, global_options};
	for (int t = 0; t < 2; t++)
		for (const struct cli_option *o = tables[t]; o && o->lname; o++)
			if (strlen(o->lname) == len && !strncmp(o->lname, name, len))
				return o;
	return NULL;
}

static const struct cli_option *
lookup_short(const struct cli *cli, char c)
{
	const struct cli_option *tables[2] = {cli->sub ? cli->sub->options : NULL, global_options};
	for (int t = 0; t < 2; t++)
		for (const struct cli_option *o = tables[t]; o && o->lname; o++)
			if (o->sname == c)
				return o;
	return NULL;
}

/* Is --name an option of some subcommand (to explain where it goes)? */
static const struct cli_subcommand *
owner_of(const char *name, size_t len)
{
	for (const struct cli_subcommand *s = subcommands; s->name; s++)
		for (const struct cli_option *o = s->options; o && o->lname; o++)
			if (strlen(o->lname) == len && !strncmp(o->lname, name, len))
				return s;
	return NULL;
}

static int
store_option(struct cli *cli, const struct cli_option *o, const char *value)
{
	if (o->id == OPT_LISTEN) {
		if (cli->nlisten == CLI_MAX_LISTEN)
			return cli_usage_error(cli, "--listen given more than %d times",
					       CLI_MAX_LISTEN);
		cli->listen[cli->nlisten++] = value;
	}
	if (o->id == OPT_FSFREEZE) {
		if (cli->nfsfreeze == CLI_MAX_FSFREEZE)
			return cli_usage_error(cli, "--fsfreeze given more than %d times",
					       CLI_MAX_FSFREEZE);
		cli->fsfreeze[cli->nfsfreeze++] = value;
	}
	if (o->id == OPT_VERBOSE)
		sv_verbose++;
	cli->val[o->id] = value ? value : "";
	return 0;
}

static int
parse(int argc, char **argv, struct cli *cli)
{
	bool only_pos = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!only_pos && !strcmp(a, "--")) {
			only_pos = true;
			if (cli->sub) {
				cli->dashdash = true;
				cli->dashdash_pos = cli->npos;
			}
			continue;
		}
		if (!only_pos && a[0] == '-' && a[1] == '-') {
			const char *name = a + 2;
			const char *eq = strchr(name, '=');
			size_t len = eq ? (size_t)(eq - name) : strlen(name);
			const struct cli_option *o = lookup_long(cli, name, len);
			if (!o) {
				const struct cli_subcommand *owner = owner_of(name, len);
				if (owner && !cli->sub)
					return cli_usage_error(
					    cli, "option '--%.*s' belongs after the command ('%s')",
					    (int)len, name, owner->name);
				return cli_usage_error(cli, "unknown option '--%.*s'", (int)len,
						       name);
			}
			const char *value = NULL;
			if (o->metavar) {
				if (eq)
					value = eq + 1;
				else if (i + 1 < argc)
					value = argv[++i];
				else
					return cli_usage_error(cli,
							       "option '--%s' needs a value (%s)",
							       o->lname, o->metavar);
			} else if (eq) {
				return cli_usage_error(cli, "option '--%s' takes no value",
						       o->lname);
			}
			if (store_option(cli, o, value))
				return EXIT_USAGE;
			continue;
		}
		if (!only_pos && a[0] == '-' && a[1] != '\0') {
			for (const char *p = a + 1; *p; p++) {
				const struct cli_option *o = lookup_short(cli, *p);
				if (!o)
					return cli_usage_error(cli, "unknown option '-%c'", *p);
				const char *value = NULL;
				if (o->metavar) {
					if (p[1])
						value = p + 1;
					else if (i + 1 < argc)
						value = argv[++i];
					else
						return cli_usage_error(
						    cli, "option '-%c' needs a value (%s)", *p,
						    o->metavar);
				}
				if (store_option(cli, o, value))
					return EXIT_USAGE;
				if (value)
					break;
			}
			continue;
		}
		if (!cli->sub) {
			cli->sub = find_subcommand(a);
			if (!cli->sub)
				return cli_usage_error(cli, "unknown command '%s'", a);
			continue;
		}
		if (cli->npos == cli->sub->max_pos || cli->npos == CLI_MAX_POS)
			return cli_usage_error(cli, "unexpected argument '%s'", a);
		cli->pos[cli->npos++] = a;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct cli cli = {0};
	int r = parse(argc, argv, &cli);
	if (r)
		return r;

	if (cli.val[OPT_HELP]) {
		if (cli.sub && cli.sub->run != run_help)
			print_sub_help(stdout, cli.sub);
		else if (cli.sub && cli.npos)
			return run_help(&cli);
		else
			print_main_help(stdout);
		return EXIT_OK;
	}
	if (cli.val[OPT_VERSION]) {
		printf("snapvol %s\n", SNAPVOL_VERSION);
		return EXIT_OK;
	}
	if (!cli.sub) {
		print_main_help(stderr);
		return EXIT_USAGE;
	}
	if (cli.npos < cli.sub->min_pos) {
		/* The first missing word of the synopsis: "NAME", "COMMAND". */
		char word[32] = "an argument";
		const char *args = cli.sub->args;
		for (unsigned k = 0; k < cli.npos && args; k++) {
			args = strchr(args, ' ');
			if (args)
				args++;
		}
		if (args && sscanf(args, "%31[A-Z]", word) != 1)
			strcpy(word, "an argument");
		return cli_usage_error(&cli, "'%s' needs %s", cli.sub->name, word);
	}

	cli.json = cli.val[OPT_JSON] != NULL;
	cli.control = cli.val[OPT_CONTROL];
	if (cli.control && !*cli.control)
		return cli_usage_error(&cli, "--control: empty path");
	cli.pool = cli.val[OPT_POOL];
	if (!cli.pool) {
		const char *env = getenv("SNAPVOL_POOL");
		cli.pool = env && *env ? env : "./data";
	}
	if (!*cli.pool)
		return cli_usage_error(&cli, "--pool: empty path");
	/* The RADOS backend reads these from the environment (store-rados.c). */
	if (cli.val[OPT_CEPH_CONF] && setenv("CEPH_CONF", cli.val[OPT_CEPH_CONF], 1) == -1)
		return cli_fail("--ceph-conf: %s", strerror(errno));
	if (cli.val[OPT_CEPH_ID] && setenv("SNAPVOL_CEPH_ID", cli.val[OPT_CEPH_ID], 1) == -1)
		return cli_fail("--ceph-id: %s", strerror(errno));
	return cli.sub->run(&cli);
}
