/*
 * session.c: where a subcommand's control commands run.
 *
 * Every subcommand that reads or changes a pool does it with control
 * commands, and runs them in one of two places:
 *  1. a server's control socket (POOL/control.sock, or --control): if a
 *     server greets, the commands run there and the server owns the pool;
 *  2. else the pool opened here, which takes the pool's lock, with the same
 *     commands run through sv_ctl_execute in this process.  If the lock is
 *     held (a server whose control socket does not answer, or another CLI
 *     working directly), the error says exactly that, with the holder.
 * Either way each command gives the same JSON reply.  A session keeps its
 * connection or its open pool for all of a subcommand's commands: opening a
 * volume checkpoints it, so a backup or a paged diff must not reopen the
 * pool for every call.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "error.h"
#include "log.h"

int
cli_session_open(struct cli *cli, struct cli_session *s, unsigned pool_flags)
{
	memset(s, 0, sizeof *s);
	s->control = cli_control_path(cli);
	s->fd = sv_ctl_client_connect(s->control);
	if (s->fd >= 0) {
		sv_log_debug("through the server at %s", s->control);
		return 0;
	}
	snprintf(s->why, sizeof s->why, "%s", sv_last_error());
	sv_log_debug("no server (%s); opening pool %s directly", s->why, cli->pool);
	if (sv_pool_open(cli->pool, pool_flags, &s->pool) == -1) {
		if (sv_last_errno() == EWOULDBLOCK) {
			/* connect's own error, without the path repeated */
			const char *colon = strrchr(s->why, ':');
			char msg[1024];
			cli_pool_in_use_message(cli, s->control,
						colon && colon[1] == ' ' ? colon + 2 : s->why, msg,
						sizeof msg);
			sv_error(EWOULDBLOCK, "%s", msg);
		}
		free(s->control);
		s->control = NULL;
		return -1;
	}
	s->ctx.pool = s->pool;
	return 0;
}

json_t *
cli_session_reply(struct cli_session *s, const char *command, json_t *args)
{
	if (s->fd < 0)
		return sv_ctl_execute(&s->ctx, command, args);
	json_t *reply = sv_ctl_client_call(s->fd, command, args);
	if (!reply)
		sv_error_prefix("control socket %s", s->control);
	return reply;
}

json_t *
cli_session_call(struct cli_session *s, const char *command, json_t *args)
{
	json_t *reply = cli_session_reply(s, command, args);
	return reply ? cli_reply_result(reply, command) : NULL;
}

json_t *
cli_reply_result(json_t *reply, const char *command)
{
	json_t *err = json_object_get(reply, "error");
	json_t *ret = NULL;
	if (err) {
		const char *desc = json_string_value(json_object_get(err, "desc"));
		json_int_t en = json_integer_value(json_object_get(err, "errno"));
		sv_error(en > 0 ? (int)en : EIO, "%s", desc ? desc : "unknown error");
	} else {
		ret = json_incref(json_object_get(reply, "return"));
		if (!ret)
			sv_error(EPROTO, "the reply to '%s' has no result", command);
	}
	json_decref(reply);
	return ret;
}

void
cli_session_close(struct cli_session *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->pool)
		sv_pool_close(s->pool);
	free(s->control);
	memset(s, 0, sizeof *s);
	s->fd = -1;
}
