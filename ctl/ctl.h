/*
 * ctl.h: the control protocol: one JSON object per line over a unix socket,
 * in the spirit of QMP.  Every CLI subcommand is a control command, so the
 * CLI, scripts and other programs drive snapvol the same way.
 *
 * Wire format (docs/control-protocol.md has the full list of commands):
 *   server greets: {"snapvol": {"version": "0.1.0", "protocol": 1, "pool": "./data", "pid": N}}
 *   request:       {"execute": "create", "arguments": {...}, "id": ANY}
 *   success:       {"return": {...}, "id": ANY}
 *   failure:       {"error": {"class": "EEXIST", "errno": 17, "desc": "..."}, "id": ANY}
 * "class" is the errno's name, or JSONError, CommandNotFound, LineTooLong.
 * "id" is optional and echoed.  A line that is not a JSON object, has no
 * "execute", names an unknown command or carries wrong arguments gets an
 * error reply; the connection stays usable.  Lines are limited to 1 MiB.
 *
 * The same command table runs in the server (sv_ctl_server_*) and, when no
 * server holds the pool, inside the CLI itself (sv_ctl_execute on a pool it
 * opened directly).
 */
#ifndef SV_CTL_H
#define SV_CTL_H

#include <jansson.h>
#include <stdint.h>

struct sv_pool;
struct sv_nbd_server;

/* What commands can reach.  nbd is NULL when the CLI runs them directly;
 * the fields after it describe the running server for "status" and are
 * left zero/NULL then too. */
struct sv_ctl_context {
	struct sv_pool *pool;
	struct sv_nbd_server *nbd;
	const char *nbd_socket;	    /* unix socket path, or NULL */
	const char *const *nbd_tcp; /* TCP "HOST:PORT" listeners */
	unsigned n_nbd_tcp;
	const char *control_socket; /* path, or NULL */
	uint64_t started;	    /* server start, seconds since the Unix epoch */
	uint64_t started_ns;	    /* the same, sv_now_ns() (for the uptime) */
	/* The control connection the command came on (ctl-server.c gives each
	 * its own copy of the context); NULL when the CLI runs it directly.
	 * What a session holds (freezes) ends when its connection closes. */
	struct sv_ctl_session *session;
};

/* Run one command; always returns a new reply object ({"return":..} or
 * {"error":..}), never NULL. */
json_t *sv_ctl_execute(struct sv_ctl_context *ctx, const char *command, json_t *arguments);

/* Names of all commands, NULL-terminated (for --help and tests). */
extern const char *const sv_ctl_command_names[];

/* The server: listens on path (mode 0600), a thread per client. */
struct sv_ctl_server;
int sv_ctl_server_start(struct sv_ctl_context *ctx, const char *path, struct sv_ctl_server **out);
void sv_ctl_server_stop(struct sv_ctl_server *srv);

/* The client side, for the CLI.  connect returns an fd or -1 (errno set:
 * ENOENT/ECONNREFUSED mean no server).  call sends one command and returns
 * the reply object (new reference), or NULL with the last error set if the
 * connection failed. */
int sv_ctl_client_connect(const char *path);
json_t *sv_ctl_client_call(int fd, const char *command, json_t *arguments);
/* The two halves of call, for a command that sends events before its
 * reply (snapshot-create with "notify"): send returns the request's id or
 * -1; read returns the next message, an {"event": ...} or the reply. */
json_int_t sv_ctl_client_send(int fd, const char *command, json_t *arguments);
json_t *sv_ctl_client_read(int fd);

#endif
