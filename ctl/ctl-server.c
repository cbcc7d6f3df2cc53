/*
 * ctl-server.c: the control server: JSON lines over a unix socket.
 *
 * One accept thread, and one thread per client, at most SV_CTL_MAX_CLIENTS
 * of them (a client beyond that gets an error line and is closed).  A
 * control connection is cheap and rare (the CLI opens one per command,
 * scripts and agents keep one open), so threads keep the code plain: a
 * client thread reads a line, runs the command, writes the reply.
 *
 * Robustness, since a client can be any program (DESIGN invariant 9):
 *  - a line is at most SV_CTL_LINE_MAX bytes; a longer one gets an error
 *    reply and the connection is closed (there is no way to find the end
 *    of a request we refused to buffer);
 *  - a line that is not JSON, not an object, or malformed as a request gets
 *    an error reply of class "JSONError" and the connection stays usable;
 *  - replies are sent with MSG_NOSIGNAL, so a client that vanishes costs
 *    an EPIPE, never a SIGPIPE.
 *
 * Commands run one at a time, under cmd_lock: the engine is thread-safe,
 * but commands that read and then act (later: snapshot a consistency group,
 * freeze then snapshot) are simpler to reason about when no other command
 * interleaves, and control commands are short.  Except "heartbeat" and
 * "thaw": a lease must not lapse, nor a thaw wait, because another client's
 * snapshot is syncing a large volume; they run at once.  So do
 * "window-begin" and "window-end" (a freeze must not wait to start, nor
 * its threads stay raised, behind another client's command; they touch
 * only the NBD server's windows, under its own lock).
 *
 * Events: a command may send lines {"event": ...} ahead of its reply
 * (sv_ctl_session_event; snapshot-create's SNAPSHOT_TAKEN).  It runs in the
 * connection's own thread, so an event never interleaves with a reply.
 *
 * Sessions (DESIGN invariant 7): each connection has its own copy of the
 * context with a session: the peer's pid and uid (SO_PEERCRED) and the
 * freezes taken on it.  When the connection closes (the holder exited, was
 * killed, or dropped it), its freezes end at once: a killed `snapvol
 * freeze` thaws within the time the kernel takes to close its socket.
 *
 * The socket file is created with mode 0600 before listen(2), so nobody can
 * connect through a more permissive window; a stale socket file left by a
 * crashed server is replaced, a live one is refused.  Stop closes every
 * connection, joins every thread and removes the socket file (if it is
 * still ours).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "ctl-private.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "log.h"
#include "util.h"

#define SV_CTL_MAX_CLIENTS 64

struct client {
	struct client *next;
	struct sv_ctl_server *srv;
	struct sv_ctl_context ctx; /* srv->ctx with this connection's session */
	struct sv_ctl_session session;
	pthread_t thread;
	int fd;	   /* -1 once the thread has closed it; guarded by srv->lock */
	bool done; /* the thread has finished and may be joined; guarded by srv->lock */
};

struct sv_ctl_server {
	struct sv_ctl_context *ctx;
	char *path;
	int listen_fd;
	int wake[2]; /* a byte on wake[1] stops the accept thread */
	dev_t sock_dev;
	ino_t sock_ino;
	pthread_t accept_thread;

	/* Protects clients, n_clients, each client's fd and done. */
	pthread_mutex_t lock;
	struct client *clients;
	unsigned n_clients;

	/* Held while a command runs: one command at a time. */
	pthread_mutex_t cmd_lock;
};

/* ---- sending ---- */

static int
send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t r = send(fd, buf, len, MSG_NOSIGNAL);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += r;
		len -= (size_t)r;
	}
	return 0;
}

/* Send obj as one line, and drop the reference. */
static int
send_json(int fd, json_t *obj)
{
	char *s = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!s)
		return -1;
	size_t len = strlen(s);
	/* json_dumps output never holds a raw newline: strings escape it. */
	char *line = realloc(s, len + 2);
	if (!line) {
		free(s);
		return -1;
	}
	line[len] = '\n';
	line[len + 1] = '\0';
	int r = send_all(fd, line, len + 1);
	free(line);
	return r;
}

static json_t *
greeting(struct sv_ctl_server *srv)
{
	return json_pack("{s:{s:s, s:i, s:s, s:i}}", "snapvol", "version", SNAPVOL_VERSION,
			 "protocol", SV_CTL_PROTOCOL, "pool", sv_pool_describe(srv->ctx->pool),
			 "pid", (int)getpid());
}

/* ---- one request ---- */

static json_t *json_error_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static json_t *
json_error_reply(const char *fmt, ...)
{
	char desc[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(desc, sizeof desc, fmt, ap);
	va_end(ap);
	return sv_ctl_error_reply("JSONError", EINVAL, desc);
}

/* The reply to one line (without its newline), or NULL for a blank line. */
/* Commands that must not wait behind others (see the top of the file). */
static bool
runs_unlocked(const char *command)
{
	return !strcmp(command, "heartbeat") || !strcmp(command, "thaw") ||
	       !strcmp(command, "window-begin") || !strcmp(command, "window-end");
}

static json_t *
handle_line(struct client *cl, const char *line, size_t len)
{
	struct sv_ctl_server *srv = cl->srv;
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	size_t start = 0;
	while (start < len && (line[start] == ' ' || line[start] == '\t'))
		start++;
	if (start == len)
		return NULL;

	json_error_t jerr;
	json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!req)
		return json_error_reply("malformed JSON at column %d: %s", jerr.column, jerr.text);
	if (!json_is_object(req)) {
		json_decref(req);
		return json_error_reply("a request must be a JSON object, like "
					"{\"execute\": \"list\"}");
	}

	json_t *reply = NULL;
	json_t *id = json_object_get(req, "id");
	json_t *exec = json_object_get(req, "execute");
	json_t *args = json_object_get(req, "arguments");
	const char *key;
	json_t *v;
	json_object_foreach(req, key, v)
	{
		if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
			reply =
			    json_error_reply("unknown key '%.64s' in request (expected execute, "
					     "arguments, id)",
					     key);
			break;
		}
	}
	if (!reply && !exec)
		reply = json_error_reply("request has no \"execute\" (the command's name)");
	if (!reply && !json_is_string(exec))
		reply = json_error_reply("\"execute\" must be a string");
	if (!reply && args && !json_is_object(args) && !json_is_null(args))
		reply = json_error_reply("\"arguments\" must be a JSON object");
	if (!reply && runs_unlocked(json_string_value(exec))) {
		sv_log_debug("control: %s", json_string_value(exec));
		reply = sv_ctl_execute(&cl->ctx, json_string_value(exec), args);
	} else if (!reply) {
		SV_LOCK_SCOPE(&srv->cmd_lock);
		sv_log_debug("control: %s", json_string_value(exec));
		reply = sv_ctl_execute(&cl->ctx, json_string_value(exec), args);
	}
	if (id)
		json_object_set(reply, "id", id);
	json_decref(req);
	return reply;
}

/* ---- sessions ---- */

int
sv_ctl_session_hold_freeze(struct sv_ctl_session *s, uint64_t id)
{
	if (s->n_freezes == s->cap_freezes) {
		size_t cap = s->cap_freezes ? 2 * s->cap_freezes : 4;
		uint64_t *a = realloc(s->freezes, cap * sizeof *a);
		if (!a)
			return -1;
		s->freezes = a;
		s->cap_freezes = cap;
	}
	s->freezes[s->n_freezes++] = id;
	return 0;
}

/* The command that sends an event holds locks (cmd_lock, a volume's): a
 * client that does not read must not hold them.  So an event that finds the
 * socket full is dropped, and one half sent gets a second to finish before
 * the connection is shut down (a half line would garble the stream). */
int
sv_ctl_session_event(struct sv_ctl_session *s, const char *name, json_t *data)
{
	json_t *ev = json_pack("{s:s, s:o}", "event", name, "data", data ? data : json_object());
	char *line = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
	json_decref(ev);
	if (!line)
		return -1;
	size_t len = strlen(line) + 1, off = 0;
	line[len - 1] = '\n'; /* replaces the NUL: sent by length */
	while (off < len) {
		ssize_t r = send(s->fd, line + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0) {
			off += (size_t)r;
			continue;
		}
		if (r == -1 && errno == EINTR)
			continue;
		struct pollfd p = {.fd = s->fd, .events = POLLOUT};
		if (r == -1 && errno == EAGAIN && off > 0 && poll(&p, 1, 1000) == 1)
			continue;
		if (off > 0)
			shutdown(s->fd, SHUT_RDWR);
		break;
	}
	free(line);
	return off == len ? 0 : -1;
}

/* The connection is gone: what it held ends now. */
static void
end_session(struct client *c)
{
	struct sv_ctl_session *s = &c->session;
	for (size_t i = 0; i < s->n_freezes; i++) {
		/* Those already thawed or lapsed answer ENOENT: nothing to do. */
		if (sv_freeze_end(c->ctx.pool, s->freezes[i]) == 0)
			sv_log_warn("control connection of pid %d closed: freeze %" PRIu64
				    " thawed",
				    s->pid, s->freezes[i]);
	}
	free(s->freezes);
	s->freezes = NULL;
	s->n_freezes = s->cap_freezes = 0;
}

/* ---- a client ---- */

static void
serve_client(struct client *c)
{
	struct sv_ctl_server *srv = c->srv;
	int fd = c->fd;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);

	if (!buf || send_json(fd, greeting(srv)) == -1)
		goto out;
	for (;;) {
		if (len == cap) {
			size_t ncap = cap * 2 > SV_CTL_LINE_MAX + 1 ? SV_CTL_LINE_MAX + 1 : cap * 2;
			char *nbuf = realloc(buf, ncap);
			if (!nbuf)
				break;
			buf = nbuf;
			cap = ncap;
		}
		ssize_t r = recv(fd, buf + len, cap - len, 0);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		size_t scan = len;
		len += (size_t)r;

		/* Answer every complete line in the buffer. */
		size_t begin = 0;
		char *nl;
		while ((nl = memchr(buf + scan, '\n', len - scan))) {
			size_t end = (size_t)(nl - buf);
			json_t *reply = handle_line(c, buf + begin, end - begin);
			if (reply && send_json(fd, reply) == -1)
				goto out;
			begin = scan = end + 1;
		}
		memmove(buf, buf + begin, len - begin);
		len -= begin;

		if (len > SV_CTL_LINE_MAX) {
			char desc[128];
			snprintf(desc, sizeof desc,
				 "request line longer than %u bytes; closing the connection",
				 SV_CTL_LINE_MAX);
			send_json(fd, sv_ctl_error_reply("LineTooLong", EMSGSIZE, desc));
			sv_log_warn("control: %s", desc);
			break;
		}
	}
out:
	free(buf);
	end_session(c);
	SV_LOCK_SCOPE(&srv->lock);
	close(c->fd);
	c->fd = -1;
	c->done = true;
}

static void *
client_thread(void *arg)
{
	serve_client(arg);
	return NULL;
}

/* Join and free clients that have finished; with all, wait for every one
 * (the caller has shut their sockets down). */
static void
reap_clients(struct sv_ctl_server *srv, bool all)
{
	for (;;) {
		struct client *victim = NULL;
		{
			SV_LOCK_SCOPE(&srv->lock);
			for (struct client **pp = &srv->clients; *pp; pp = &(*pp)->next) {
				if ((*pp)->done || all) {
					victim = *pp;
					*pp = victim->next;
					srv->n_clients--;
					break;
				}
			}
		}
		if (!victim)
			return;
		pthread_join(victim->thread, NULL);
		free(victim);
	}
}

static void
refuse_client(int fd, const char *desc, int errnum)
{
	send_json(fd, sv_ctl_error_reply(NULL, errnum, desc));
	close(fd);
}

static void
accept_one(struct sv_ctl_server *srv)
{
	int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
			sv_log_warn("control: accept: %m");
		if (errno == EMFILE || errno == ENFILE)
			usleep(100000); /* do not spin while out of descriptors */
		return;
	}
	reap_clients(srv, false);

	struct client *c = calloc(1, sizeof *c);
	if (!c) {
		refuse_client(fd, "out of memory", ENOMEM);
		return;
	}
	c->srv = srv;
	c->fd = fd;
	c->ctx = *srv->ctx;
	c->ctx.session = &c->session;
	c->session.fd = fd;
	struct ucred cred;
	socklen_t cl = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
		c->session.pid = (int)cred.pid;
		c->session.uid = (unsigned)cred.uid;
	}
	{
		SV_LOCK_SCOPE(&srv->lock);
		if (srv->n_clients >= SV_CTL_MAX_CLIENTS) {
			free(c);
			char desc[96];
			snprintf(desc, sizeof desc, "too many control connections (at most %d)",
				 SV_CTL_MAX_CLIENTS);
			refuse_client(fd, desc, EAGAIN);
			return;
		}
		int e = pthread_create(&c->thread, NULL, client_thread, c);
		if (e != 0) {
			free(c);
			refuse_client(fd, "cannot start a thread for this connection", e);
			return;
		}
		c->next = srv->clients;
		srv->clients = c;
		srv->n_clients++;
	}
}

static void *
accept_thread(void *arg)
{
	struct sv_ctl_server *srv = arg;
	for (;;) {
		struct pollfd pfd[2] = {
		    {.fd = srv->listen_fd, .events = POLLIN},
		    {.fd = srv->wake[0], .events = POLLIN},
		};
		if (poll(pfd, 2, -1) == -1) {
			if (errno == EINTR)
				continue;
			sv_log_error("control: poll: %m");
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		if (pfd[0].revents)
			accept_one(srv);
	}
}

/* ---- listening ---- */

static int
make_addr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (!path || !*path)
		return sv_error(EINVAL, "no control socket path");
	if (strlen(path) >= sizeof sa->sun_path)
		return sv_error(ENAMETOOLONG,
				"control socket path '%s' is longer than %zu bytes (a unix "
				"socket limit); use a shorter --control path",
				path, sizeof sa->sun_path - 1);
	strcpy(sa->sun_path, path);
	return 0;
}

/* A socket file at path: remove it if nobody listens on it any more. */
static int
clear_stale_socket(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	if (lstat(path, &st) == -1)
		return errno == ENOENT ? 0 : sv_error_errno("control socket %s", path);
	if (!S_ISSOCK(st.st_mode))
		return sv_error(EEXIST, "%s exists and is not a socket; not replacing it", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return sv_error_errno("socket");
	int r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
	int e = errno;
	close(fd);
	if (r == 0)
		return sv_error(EADDRINUSE, "control socket %s is in use by a running server",
				path);
	if (e != ECONNREFUSED)
		return sv_error(e, "control socket %s: cannot tell whether it is live: %s", path,
				strerror(e));
	if (unlink(path) == -1 && errno != ENOENT)
		return sv_error_errno("removing stale control socket %s", path);
	return 0;
}

int
sv_ctl_server_start(struct sv_ctl_context *ctx, const char *path, struct sv_ctl_server **out)
{
	struct sockaddr_un sa;
	if (!path)
		return sv_error(EINVAL, "no control socket path");
	if (make_addr(path, &sa) == -1 || clear_stale_socket(path, &sa) == -1)
		return -1;

	struct sv_ctl_server *srv = calloc(1, sizeof *srv);
	if (!srv)
		return sv_error(ENOMEM, "out of memory");
	srv->ctx = ctx;
	srv->listen_fd = -1;
	srv->wake[0] = srv->wake[1] = -1;
	pthread_mutex_init(&srv->lock, NULL);
	pthread_mutex_init(&srv->cmd_lock, NULL);
	srv->path = strdup(path);
	if (!srv->path) {
		sv_error(ENOMEM, "out of memory");
		goto fail;
	}

	srv->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (srv->listen_fd == -1) {
		sv_error_errno("socket");
		goto fail;
	}
	if (bind(srv->listen_fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
		sv_error_errno("control socket %s: bind", path);
		goto fail;
	}
	struct stat st;
	if (chmod(path, 0600) == -1 || stat(path, &st) == -1) {
		sv_error_errno("control socket %s", path);
		unlink(path);
		goto fail;
	}
	srv->sock_dev = st.st_dev;
	srv->sock_ino = st.st_ino;
	if (listen(srv->listen_fd, 16) == -1) {
		sv_error_errno("control socket %s: listen", path);
		unlink(path);
		goto fail;
	}
	if (pipe2(srv->wake, O_CLOEXEC) == -1) {
		sv_error_errno("pipe");
		unlink(path);
		goto fail;
	}
	int e = pthread_create(&srv->accept_thread, NULL, accept_thread, srv);
	if (e != 0) {
		sv_error(e, "cannot start the control server thread: %s", strerror(e));
		unlink(path);
		goto fail;
	}
	*out = srv;
	return 0;

fail:
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	if (srv->wake[0] >= 0) {
		close(srv->wake[0]);
		close(srv->wake[1]);
	}
	pthread_mutex_destroy(&srv->lock);
	pthread_mutex_destroy(&srv->cmd_lock);
	free(srv->path);
	free(srv);
	return -1;
}

void
sv_ctl_server_stop(struct sv_ctl_server *srv)
{
	if (!srv)
		return;
	char byte = 0;
	while (write(srv->wake[1], &byte, 1) == -1 && errno == EINTR)
		;
	pthread_join(srv->accept_thread, NULL);
	close(srv->listen_fd);

	/* Wake every client blocked in recv or send; each closes its own fd. */
	{
		SV_LOCK_SCOPE(&srv->lock);
		for (struct client *c = srv->clients; c; c = c->next)
			if (c->fd >= 0)
				shutdown(c->fd, SHUT_RDWR);
	}
	reap_clients(srv, true);

	struct stat st;
	if (stat(srv->path, &st) == 0 && st.st_dev == srv->sock_dev && st.st_ino == srv->sock_ino)
		unlink(srv->path);
	close(srv->wake[0]);
	close(srv->wake[1]);
	pthread_mutex_destroy(&srv->lock);
	pthread_mutex_destroy(&srv->cmd_lock);
	free(srv->path);
	free(srv);
}
