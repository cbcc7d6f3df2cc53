/*
 * ctl-client.c: the client side of the control protocol, for the CLI.
 *
 * connect() also reads the server's greeting, with a timeout: a socket that
 * accepts but never greets (a hung or foreign process) counts as no server,
 * and the CLI then says so instead of hanging.  Calls themselves have no
 * timeout, since a command may legitimately take long.
 *
 * Lines are read without reading past their newline (recv with MSG_PEEK,
 * then consume exactly the line), so nothing the server sends after a
 * reply (a later reply, or asynchronous events in later protocol versions)
 * is lost between calls, and no state has to live beside the fd.  Lines
 * that are neither a reply nor an error (events) are skipped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl-private.h"
#include "ctl.h"
#include "error.h"

/* Read one line (newline stripped) into a malloc'd buffer. */
static char *
read_line(int fd, size_t *out_len)
{
	size_t len = 0, cap = 0;
	char *buf = NULL;
	for (;;) {
		char peek[65536];
		ssize_t r = recv(fd, peek, sizeof peek, MSG_PEEK);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			int e = errno;
			free(buf);
			if (e == EAGAIN || e == EWOULDBLOCK)
				sv_error(ETIMEDOUT, "the control server did not answer in time");
			else
				sv_error(e, "reading from the control socket: %s", strerror(e));
			return NULL;
		}
		if (r == 0) {
			free(buf);
			sv_error(ECONNRESET, "the control server closed the connection");
			return NULL;
		}
		char *nl = memchr(peek, '\n', (size_t)r);
		size_t take = nl ? (size_t)(nl - peek) + 1 : (size_t)r;
		if (len + take > SV_CTL_REPLY_MAX) {
			free(buf);
			sv_error(EMSGSIZE, "the control server sent a line longer than %u bytes",
				 SV_CTL_REPLY_MAX);
			return NULL;
		}
		if (len + take + 1 > cap) {
			size_t ncap = cap ? cap : 4096;
			while (ncap < len + take + 1)
				ncap *= 2;
			char *nbuf = realloc(buf, ncap);
			if (!nbuf) {
				free(buf);
				sv_error(ENOMEM, "out of memory");
				return NULL;
			}
			buf = nbuf;
			cap = ncap;
		}
		/* Consume exactly what was peeked and is ours. */
		ssize_t got;
		do
			got = recv(fd, buf + len, take, 0);
		while (got == -1 && errno == EINTR);
		if (got != (ssize_t)take) {
			free(buf);
			sv_error(EIO, "reading from the control socket: short read");
			return NULL;
		}
		len += take;
		if (nl) {
			len--; /* the newline */
			buf[len] = '\0';
			*out_len = len;
			return buf;
		}
	}
}

static json_t *
read_json(int fd)
{
	size_t len;
	char *line = read_line(fd, &len);
	if (!line)
		return NULL;
	json_error_t jerr;
	json_t *obj = json_loadb(line, len, 0, &jerr);
	free(line);
	if (!obj || !json_is_object(obj)) {
		json_decref(obj);
		sv_error(EPROTO, "the control server sent something that is not a JSON object");
		return NULL;
	}
	return obj;
}

/* Turn an {"error": ...} object into the thread's last error. */
static void
set_error_from_reply(json_t *reply, const char *prefix)
{
	json_t *err = json_object_get(reply, "error");
	const char *desc = json_string_value(json_object_get(err, "desc"));
	json_int_t e = json_integer_value(json_object_get(err, "errno"));
	sv_error(e > 0 && e < 4096 ? (int)e : EIO, "%s%s", prefix, desc ? desc : "unknown error");
}

int
sv_ctl_client_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path)
		return sv_error(ENAMETOOLONG, "control socket path '%s' is too long", path);
	strcpy(sa.sun_path, path);

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return sv_error_errno("socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
		int e = errno;
		close(fd);
		return sv_error(e, "cannot connect to control socket %s: %s", path, strerror(e));
	}

	struct timeval tv = {.tv_sec = SV_CTL_GREETING_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	json_t *greet = read_json(fd);
	if (!greet) {
		int e = sv_last_errno();
		sv_error_prefix("control socket %s", path);
		close(fd);
		errno = e;
		return -1;
	}
	if (json_object_get(greet, "error")) {
		set_error_from_reply(greet, "the control server refused the connection: ");
		json_decref(greet);
		close(fd);
		return -1;
	}
	if (!json_is_object(json_object_get(greet, "snapvol"))) {
		json_decref(greet);
		close(fd);
		return sv_error(EPROTO, "control socket %s: not a snapvol server (no greeting)",
				path);
	}
	json_decref(greet);
	tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

json_int_t
sv_ctl_client_send(int fd, const char *command, json_t *arguments)
{
	static json_int_t next_id = 1; /* only distinguishes calls on one fd */
	json_int_t id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);

	json_t *req = json_pack("{s:s, s:I}", "execute", command, "id", id);
	if (!req)
		return sv_error(EINVAL, "cannot encode the request");
	if (arguments)
		json_object_set(req, "arguments", arguments);
	char *s = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!s)
		return sv_error(EINVAL, "cannot encode the request");
	size_t len = strlen(s);
	s[len] = '\n'; /* replaces the NUL: the buffer is sent by length */
	const char *p = s;
	size_t left = len + 1;
	while (left > 0) {
		ssize_t r = send(fd, p, left, MSG_NOSIGNAL);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			int e = errno;
			free(s);
			return sv_error(e, "writing to the control socket: %s", strerror(e));
		}
		p += r;
		left -= (size_t)r;
	}
	free(s);
	return id;
}

json_t *
sv_ctl_client_read(int fd)
{
	return read_json(fd);
}

json_t *
sv_ctl_client_call(int fd, const char *command, json_t *arguments)
{
	json_int_t id = sv_ctl_client_send(fd, command, arguments);
	if (id == -1)
		return NULL;
	for (;;) {
		json_t *reply = read_json(fd);
		if (!reply)
			return NULL;
		if (!json_object_get(reply, "return") && !json_object_get(reply, "error")) {
			json_decref(reply); /* an event: not ours to handle here */
			continue;
		}
		json_t *rid = json_object_get(reply, "id");
		if (rid && (!json_is_integer(rid) || json_integer_value(rid) != id)) {
			json_decref(reply);
			sv_error(EPROTO, "the control server answered another request");
			return NULL;
		}
		return reply;
	}
}
