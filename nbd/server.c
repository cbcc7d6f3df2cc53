/*
 * server.c: the NBD server's outside: listening sockets, the accept
 * thread, the registry of connections, start and stop, and the life of one
 * connection (handshake, then transmission, then clean-up).
 *
 * One accept thread polls every listening socket plus a wake-up pipe.  Each
 * accepted client gets its own thread, which runs the handshake and then
 * becomes worker 0 of its connection (transmission.c starts the others).
 * Finished connection threads are joined by the accept thread when it next
 * wakes (the dying thread pokes the pipe), and by sv_nbd_stop at the end.
 * Connections from sv_nbd_serve_fd run in the caller's thread and leave
 * the registry themselves.
 *
 * sv_nbd_stop shuts down the read side of every client socket: readers
 * wake at end of stream, requests already read finish and are answered,
 * and the connections close.  A client that will not read its replies
 * gets both directions shut down after a grace period, so stop never
 * hangs on it.
 *
 * Unix sockets are created mode 0600 (fchmod before bind: Linux gives the
 * new socket file the socket inode's mode), a stale socket file is
 * replaced, and a socket some live server answers on is left alone.
 *
 * Admission limits are checked when a connection registers, under the
 * registry lock: connections in total, and per client, where a client is
 * a uid on unix sockets (SO_PEERCRED, so one local user cannot starve the
 * others) and an address on TCP (ports are free to make).  A refused
 * client is closed at once, before the greeting, with a log line.  Each
 * connection remembers its listener's TLS mode; TLS credentials are loaded
 * once, when the server is created (tls.c).
 *
 * Freeze windows (sv_nbd_window_begin, "window-begin" on the control
 * socket): for a filesystem freeze's FIFREEZE..FITHAW, the threads serving
 * a volume's connections (each registers itself: sv_nbd_thread_serving)
 * run SCHED_FIFO, so the freeze's FLUSHes wait for no CPU-bound process.
 * It must never be left behind: one watcher thread ends each window at its
 * bound and when its holder's control connection closes (it polls a dup of
 * that socket for POLLRDHUP), a thread that stops serving is put back
 * first (its tid is never touched after it exits), and stop ends them all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

/* Seconds a stopping server lets clients take their last replies. */
#define STOP_GRACE_S 5

void
sv_nbd_config_defaults(struct sv_nbd_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->min_block_size = 1;
	cfg->max_request = 32u * 1024 * 1024;
	cfg->max_option_len = 64u * 1024;
	cfg->threads_per_conn = 8;
	cfg->max_connections = 1024;
	cfg->handshake_timeout_s = 30;
	cfg->use_sendfile = true;
	cfg->max_conns_per_client = 256;
	cfg->max_name_len = NBD_MAX_STRING;
	cfg->tls_unix = SV_NBD_TLS_OFF;
	cfg->tls_tcp = SV_NBD_TLS_REQUIRE;
}

static int
check_config(const struct sv_nbd_config *cfg)
{
	if (!sv_is_power_of_2(cfg->min_block_size) || cfg->min_block_size > NBD_MAX_BLOCK_MIN)
		return sv_error(EINVAL, "minimum block size must be a power of 2 up to 64 KiB");
	if (cfg->max_request < 64u * 1024 || cfg->max_request > 1024u * 1024 * 1024 ||
	    cfg->max_request % cfg->min_block_size)
		return sv_error(EINVAL, "maximum request must be 64 KiB..1 GiB, a multiple of the "
					"minimum block size");
	if (cfg->max_option_len < 4096 + 64 || cfg->max_option_len > 16u * 1024 * 1024)
		return sv_error(EINVAL, "maximum option length must be 4160 bytes..16 MiB");
	if (cfg->threads_per_conn < 1 || cfg->threads_per_conn > 256)
		return sv_error(EINVAL, "threads per connection must be 1..256");
	if (cfg->max_connections < 1)
		return sv_error(EINVAL, "maximum connections must be at least 1");
	if (cfg->max_conns_per_client < 1)
		return sv_error(EINVAL, "maximum connections per client must be at least 1");
	if (cfg->max_name_len < 1 || cfg->max_name_len > NBD_MAX_STRING)
		return sv_error(EINVAL, "maximum name length must be 1..4096 bytes");
	if (cfg->handshake_timeout_s > 3600)
		return sv_error(EINVAL, "handshake timeout must be at most 3600 s");
	if (cfg->tls_verify_peer && !cfg->tls_certs_dir)
		return sv_error(EINVAL, "verifying TLS client certificates needs X.509 "
					"certificates");
	if (cfg->tls_unix != SV_NBD_TLS_OFF && !cfg->tls_psk_file && !cfg->tls_certs_dir)
		return sv_error(EINVAL, "TLS on unix sockets needs a PSK file or certificates");
	return 0;
}

int
sv_nbd_server_new(struct sv_pool *pool, const struct sv_nbd_config *cfg, struct sv_nbd_server **out)
{
	struct sv_nbd_config def;
	if (!cfg) {
		sv_nbd_config_defaults(&def);
		cfg = &def;
	}
	if (check_config(cfg) == -1)
		return -1;
	struct sv_nbd_server *srv = calloc(1, sizeof *srv);
	if (!srv)
		return sv_error(ENOMEM, "out of memory");
	srv->pool = pool;
	srv->cfg = *cfg;
	srv->next_id = 1;
	if (sv_nbd_tls_creds_new(cfg, &srv->tls) == -1) {
		free(srv);
		return -1;
	}
	/* The paths were only needed to load the credentials. */
	srv->cfg.tls_psk_file = srv->cfg.tls_certs_dir = NULL;
	if (pipe2(srv->wake, O_CLOEXEC | O_NONBLOCK) == -1) {
		sv_nbd_tls_creds_free(srv->tls);
		free(srv);
		return sv_error_errno("pipe");
	}
	pthread_mutex_init(&srv->lock, NULL);
	pthread_cond_init(&srv->cond, NULL);

	/* sendfile(2) to a socket whose peer has gone raises SIGPIPE, which
	 * would kill the server; take it over unless the program has. */
	struct sigaction sa;
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);
	*out = srv;
	return 0;
}

static int
add_listener(struct sv_nbd_server *srv, int fd, const char *unix_path)
{
	int *l = realloc(srv->lfds, (srv->nlfds + 1) * sizeof *l);
	if (!l)
		goto nomem;
	srv->lfds = l;
	char **p = realloc(srv->unix_paths, (srv->nlfds + 1) * sizeof *p);
	if (!p)
		goto nomem;
	srv->unix_paths = p;
	p[srv->nlfds] = NULL;
	bool *u = realloc(srv->lfd_unix, (srv->nlfds + 1) * sizeof *u);
	if (!u)
		goto nomem;
	srv->lfd_unix = u;
	u[srv->nlfds] = unix_path != NULL;
	if (unix_path && !(p[srv->nlfds] = strdup(unix_path)))
		goto nomem;
	l[srv->nlfds] = fd;
	srv->nlfds++;
	return 0;
nomem:
	close(fd);
	return sv_error(ENOMEM, "out of memory");
}

int
sv_nbd_listen_unix(struct sv_nbd_server *srv, const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (srv->started)
		return sv_error(EINVAL, "server already started");
	if (strlen(path) >= sizeof sun.sun_path)
		return sv_error(ENAMETOOLONG, "socket path is too long: %s", path);
	memcpy(sun.sun_path, path, strlen(path) + 1);

	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return sv_error(EEXIST, "%s exists and is not a socket", path);
		int p = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (p == -1)
			return sv_error_errno("socket");
		int r = connect(p, (struct sockaddr *)&sun, sizeof sun);
		int e = errno;
		close(p);
		if (r == 0)
			return sv_error(EADDRINUSE, "a server is already listening on %s", path);
		if (e != ECONNREFUSED) {
			errno = e;
			return sv_error_errno("probing %s", path);
		}
		if (unlink(path) == -1 && errno != ENOENT)
			return sv_error_errno("removing stale socket %s", path);
	}

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return sv_error_errno("socket");
	if (fchmod(fd, 0600) == -1 || bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		int e = errno;
		close(fd);
		errno = e;
		return sv_error_errno("binding %s", path);
	}
	if (chmod(path, 0600) == -1 || listen(fd, SOMAXCONN) == -1) {
		int e = errno;
		close(fd);
		unlink(path);
		errno = e;
		return sv_error_errno("listening on %s", path);
	}
	if (add_listener(srv, fd, path) == -1) {
		unlink(path);
		return -1;
	}
	return 0;
}

int
sv_nbd_listen_tcp(struct sv_nbd_server *srv, const char *hostport)
{
	if (srv->started)
		return sv_error(EINVAL, "server already started");
	if (srv->cfg.tls_tcp != SV_NBD_TLS_OFF && !srv->tls)
		return sv_error(EPERM, "NBD over TCP requires TLS: configure a PSK file or "
				       "certificates, or opt out explicitly");
	char host[256], port[32];
	const char *colon;
	if (hostport[0] == '[') {
		const char *rb = strchr(hostport, ']');
		if (!rb || rb[1] != ':')
			return sv_error(EINVAL, "bad address %s (want [HOST]:PORT)", hostport);
		if ((size_t)(rb - hostport - 1) >= sizeof host)
			return sv_error(EINVAL, "host name too long in %s", hostport);
		memcpy(host, hostport + 1, (size_t)(rb - hostport - 1));
		host[rb - hostport - 1] = 0;
		colon = rb + 1;
	} else {
		colon = strrchr(hostport, ':');
		if (!colon)
			return sv_error(EINVAL, "bad address %s (want HOST:PORT)", hostport);
		if ((size_t)(colon - hostport) >= sizeof host)
			return sv_error(EINVAL, "host name too long in %s", hostport);
		memcpy(host, hostport, (size_t)(colon - hostport));
		host[colon - hostport] = 0;
	}
	if (strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof port ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return sv_error(EINVAL, "bad port in %s", hostport);
	strcpy(port, colon + 1);

	struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
				 .ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM};
	struct addrinfo *res;
	int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (g != 0)
		return sv_error(EINVAL, "%s: %s", hostport, gai_strerror(g));
	int bound = 0, err = 0;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd == -1) {
			err = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (a->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
		if (bind(fd, a->ai_addr, a->ai_addrlen) == -1 || listen(fd, SOMAXCONN) == -1) {
			err = errno;
			close(fd);
			continue;
		}
		if (add_listener(srv, fd, NULL) == -1) {
			freeaddrinfo(res);
			return -1;
		}
		bound++;
	}
	freeaddrinfo(res);
	if (!bound) {
		errno = err ? err : EADDRNOTAVAIL;
		return sv_error_errno("listening on %s", hostport);
	}
	return 0;
}

/* ---- connections ---- */

static void
unlink_conn_locked(struct sv_nbd_server *srv, struct sv_nbd_conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	srv->nconns--;
}

static unsigned
count_client_locked(struct sv_nbd_server *srv, const char *client)
{
	unsigned n = 0;
	for (struct sv_nbd_conn *c = srv->conns; c; c = c->next)
		if (!(c->own_thread && c->finished) && !strcmp(c->client, client))
			n++;
	return n;
}

/* Register a new connection, or NULL (and a log line) if refused. */
static struct sv_nbd_conn *
conn_new(struct sv_nbd_server *srv, int fd, const char *peer, const char *client,
	 enum sv_nbd_tls tls_mode, bool own_thread)
{
	struct sv_nbd_conn *c = calloc(1, sizeof *c);
	if (!c) {
		sv_log_error("connection from %s: out of memory", peer);
		return NULL;
	}
	c->srv = srv;
	c->fd = fd;
	c->io = &sv_nbd_plain_io;
	c->own_thread = own_thread;
	c->started = sv_realtime_s();
	snprintf(c->peer, sizeof c->peer, "%s", peer);
	snprintf(c->client, sizeof c->client, "%s", client);
	c->tls_mode = tls_mode;
	pthread_mutex_init(&c->role_lock, NULL);
	pthread_cond_init(&c->role_cv, NULL);
	pthread_mutex_init(&c->send_lock, NULL);

	SV_LOCK_SCOPE(&srv->lock);
	unsigned mine = 0;
	if (srv->stopping || srv->nconns >= srv->cfg.max_connections ||
	    (mine = count_client_locked(srv, client)) >= srv->cfg.max_conns_per_client) {
		if (srv->stopping)
			sv_log_info("refusing connection from %s: server is stopping", peer);
		else if (srv->nconns >= srv->cfg.max_connections)
			sv_log_warn("refusing connection from %s: %u connections already "
				    "(the maximum)",
				    peer, srv->nconns);
		else
			sv_log_warn("refusing connection from %s: client %s has %u connections "
				    "already (the maximum per client)",
				    peer, client, mine);
		pthread_mutex_destroy(&c->role_lock);
		pthread_cond_destroy(&c->role_cv);
		pthread_mutex_destroy(&c->send_lock);
		free(c);
		return NULL;
	}
	c->id = srv->next_id++;
	if (srv->next_id == 0)
		srv->next_id = 1;
	c->next = srv->conns;
	if (c->next)
		c->next->prev = c;
	srv->conns = c;
	srv->nconns++;
	return c;
}

static void
conn_free(struct sv_nbd_conn *c)
{
	pthread_mutex_destroy(&c->role_lock);
	pthread_cond_destroy(&c->role_cv);
	pthread_mutex_destroy(&c->send_lock);
	free(c->meta_export);
	free(c->tids);
	free(c->inbuf);
	free(c->batch);
	free(c);
}

/* Handshake, transmission, clean-up.  Leaves c registered. */
static void
conn_run(struct sv_nbd_conn *c)
{
	struct sv_nbd_server *srv = c->srv;
	sv_log_info("conn %u: open from %s", c->id, c->peer);
	if (sv_nbd_handshake(c) == 0) {
		sv_log_debug("conn %u: export '%s', %" PRIu64 " bytes%s%s, flags 0x%x", c->id,
			     c->export_name, c->st.size, c->st.readonly ? ", read-only" : "",
			     c->st.structured ? ", structured replies" : "", c->tflags);
		sv_nbd_transmission(c);
	}
	sv_view_close(c->view);
	c->view = NULL;
	sv_nbd_tls_end(c);

	char r[32], w[32];
	sv_log_info("conn %u: closed (export '%s', %" PRIu64 " requests, %s read, %s written)",
		    c->id, c->export_name, (uint64_t)atomic_load(&c->requests),
		    sv_format_size(atomic_load(&c->bytes_read), r, sizeof r),
		    sv_format_size(atomic_load(&c->bytes_written), w, sizeof w));
	SV_LOCK_SCOPE(&srv->lock);
	close(c->fd);
	c->fd_closed = true;
}

static void *
conn_thread(void *arg)
{
	struct sv_nbd_conn *c = arg;
	struct sv_nbd_server *srv = c->srv;
	conn_run(c);
	sv_lock_or_abort(&srv->lock);
	c->finished = true;
	pthread_cond_broadcast(&srv->cond);
	sv_unlock_or_abort(&srv->lock);
	/* Ask the accept thread to join us. */
	ssize_t r = write(srv->wake[1], "r", 1);
	(void)r;
	return NULL;
}

void
sv_nbd_serve_fd(struct sv_nbd_server *srv, int fd)
{
	struct sv_nbd_conn *c = conn_new(srv, fd, "fd", "fd", srv->cfg.tls_unix, false);
	if (!c) {
		close(fd);
		return;
	}
	conn_run(c);
	sv_lock_or_abort(&srv->lock);
	unlink_conn_locked(srv, c);
	pthread_cond_broadcast(&srv->cond);
	sv_unlock_or_abort(&srv->lock);
	conn_free(c);
}

/* Join connection threads that have finished (all of them if wait_all,
 * which only sv_nbd_stop uses, after every connection has finished). */
static void
reap(struct sv_nbd_server *srv)
{
	struct sv_nbd_conn *done = NULL;
	sv_lock_or_abort(&srv->lock);
	for (struct sv_nbd_conn *c = srv->conns, *nx; c; c = nx) {
		nx = c->next;
		if (c->own_thread && c->finished) {
			unlink_conn_locked(srv, c);
			c->next = done;
			done = c;
		}
	}
	sv_unlock_or_abort(&srv->lock);
	while (done) {
		struct sv_nbd_conn *c = done;
		done = c->next;
		pthread_join(c->thread, NULL);
		conn_free(c);
	}
}

static void
peer_name(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t cap)
{
	if (ss->ss_family == AF_UNIX) {
		snprintf(out, cap, "unix");
		return;
	}
	char h[NI_MAXHOST], p[NI_MAXSERV];
	if (getnameinfo((const struct sockaddr *)ss, len, h, sizeof h, p, sizeof p,
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(out, cap, "?");
		return;
	}
	snprintf(out, cap, ss->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, p);
}

/* Who a connection counts against for max_conns_per_client. */
static void
client_name(int fd, const struct sockaddr_storage *ss, const char *peer, char *out, size_t cap)
{
	if (ss->ss_family == AF_UNIX) {
		struct ucred cr;
		socklen_t l = sizeof cr;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0)
			snprintf(out, cap, "uid %u", (unsigned)cr.uid);
		else
			snprintf(out, cap, "uid ?");
		return;
	}
	/* The address without the port: "127.0.0.1:5555" -> "127.0.0.1",
	 * "[::1]:5555" -> "[::1]". */
	const char *colon = strrchr(peer, ':');
	size_t n = colon ? (size_t)(colon - peer) : strlen(peer);
	snprintf(out, cap, "%.*s", (int)n, peer);
}

static void
accept_one(struct sv_nbd_server *srv, int lfd, bool is_unix)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			sv_log_warn("accept: %m");
			struct timespec ts = {0, 100 * 1000 * 1000};
			nanosleep(&ts, NULL); /* let some connections end */
		} else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
			sv_log_warn("accept: %m");
		}
		return;
	}
	char peer[64];
	peer_name(&ss, sl, peer, sizeof peer);
	if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	char client[64];
	client_name(fd, &ss, peer, client, sizeof client);
	struct sv_nbd_conn *c =
	    conn_new(srv, fd, peer, client, is_unix ? srv->cfg.tls_unix : srv->cfg.tls_tcp, true);
	if (!c) {
		close(fd);
		return;
	}
	int e = pthread_create(&c->thread, NULL, conn_thread, c);
	if (e) {
		sv_log_error("conn %u: cannot start a thread: %s", c->id, strerror(e));
		sv_lock_or_abort(&srv->lock);
		unlink_conn_locked(srv, c);
		pthread_cond_broadcast(&srv->cond);
		sv_unlock_or_abort(&srv->lock);
		close(fd);
		conn_free(c);
	}
}

static void *
accept_main(void *arg)
{
	struct sv_nbd_server *srv = arg;
	struct pollfd *p = calloc(srv->nlfds + 1, sizeof *p);
	if (!p) {
		sv_log_error("accept thread: out of memory");
		return NULL;
	}
	p[0] = (struct pollfd){.fd = srv->wake[0], .events = POLLIN};
	for (unsigned i = 0; i < srv->nlfds; i++)
		p[i + 1] = (struct pollfd){.fd = srv->lfds[i], .events = POLLIN};
	for (;;) {
		int r = poll(p, srv->nlfds + 1, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			sv_log_error("poll: %m");
			break;
		}
		if (p[0].revents) {
			char b[64];
			while (read(srv->wake[0], b, sizeof b) > 0)
				;
			reap(srv);
			bool stop;
			sv_lock_or_abort(&srv->lock);
			stop = srv->stopping;
			sv_unlock_or_abort(&srv->lock);
			if (stop)
				break;
		}
		for (unsigned i = 0; i < srv->nlfds; i++)
			if (p[i + 1].revents & POLLIN)
				accept_one(srv, srv->lfds[i], srv->lfd_unix[i]);
	}
	free(p);
	return NULL;
}

int
sv_nbd_start(struct sv_nbd_server *srv)
{
	if (srv->started)
		return sv_error(EINVAL, "server already started");
	if (srv->nlfds == 0)
		return sv_error(EINVAL, "no socket to listen on");
	for (unsigned i = 0; i < srv->nlfds; i++) {
		int fl = fcntl(srv->lfds[i], F_GETFL);
		if (fl == -1 || fcntl(srv->lfds[i], F_SETFL, fl | O_NONBLOCK) == -1)
			return sv_error_errno("fcntl");
	}
	int e = pthread_create(&srv->accept_thread, NULL, accept_main, srv);
	if (e) {
		errno = e;
		return sv_error_errno("starting the accept thread");
	}
	srv->started = true;
	return 0;
}

static unsigned
count_active_locked(struct sv_nbd_server *srv)
{
	unsigned n = 0;
	for (struct sv_nbd_conn *c = srv->conns; c; c = c->next)
		if (!(c->own_thread && c->finished))
			n++;
	return n;
}

static void
shutdown_all_locked(struct sv_nbd_server *srv, int how)
{
	for (struct sv_nbd_conn *c = srv->conns; c; c = c->next)
		if (!c->fd_closed)
			shutdown(c->fd, how);
}

/* ---- freeze windows: the threads serving a volume run SCHED_FIFO ---- */

/* A thread raised for a window, and what to put back. */
struct raised {
	pid_t tid;
	int policy;
	struct sched_param sp;
};

struct sv_nbd_window {
	struct sv_nbd_window *next;
	uint64_t id;
	uint64_t deadline_ns; /* the hard bound (CLOCK_MONOTONIC) */
	int hold_fd;	      /* the holder's control connection (a dup), or -1 */
	bool ended;	      /* threads put back; the watcher frees it */
	struct raised *r;
	size_t n, cap;
};

/* All of it under srv->lock, but efd and the watcher's start and join. */
struct sv_nbd_rt {
	struct sv_nbd_window *windows;
	uint64_t next_id;
	int efd; /* eventfd: wakes the watcher */
	pthread_t watcher;
	bool stop;
};

#define WINDOW_POLICY (SCHED_FIFO | SCHED_RESET_ON_FORK)

/* Raise tid if it runs the normal class (a thread already real-time is
 * left alone).  Without the privilege (EPERM) nothing is done. */
static void
window_raise(struct sv_nbd_window *w, pid_t tid)
{
	struct raised r = {.tid = tid, .policy = sched_getscheduler(tid)};
	if (r.policy == -1 || (r.policy & ~SCHED_RESET_ON_FORK) != SCHED_OTHER ||
	    sched_getparam(tid, &r.sp) == -1 || w->n == w->cap)
		return;
	struct sched_param rt = {.sched_priority = SV_NBD_WINDOW_PRIO};
	if (sched_setscheduler(tid, WINDOW_POLICY, &rt) == -1)
		return;
	w->r[w->n++] = r;
}

/* Put r back, unless someone changed its policy meanwhile. */
static void
window_restore(const struct raised *r)
{
	struct sched_param sp;
	if (sched_getscheduler(r->tid) != WINDOW_POLICY || sched_getparam(r->tid, &sp) == -1 ||
	    sp.sched_priority != SV_NBD_WINDOW_PRIO)
		return;
	if (sched_setscheduler(r->tid, r->policy, &r->sp) == -1)
		sv_log_warn("freeze window: thread %d: restoring its policy: %s", (int)r->tid,
			    strerror(errno));
}

static void
window_end_locked(struct sv_nbd_window *w)
{
	if (w->ended)
		return;
	for (size_t i = 0; i < w->n; i++)
		window_restore(&w->r[i]);
	w->n = 0;
	w->ended = true;
}

static void
window_free(struct sv_nbd_window *w)
{
	if (w->hold_fd >= 0)
		close(w->hold_fd);
	free(w->r);
	free(w);
}

/* The watcher: ends windows at their bound and when their holder's
 * connection closes, and frees the ended ones (only it closes hold_fd,
 * so the descriptors it polls stay valid). */
static void *
window_watcher(void *arg)
{
	struct sv_nbd_server *srv = arg;
	struct sv_nbd_rt *rt = srv->rt;
	struct pollfd *p = NULL;
	struct sv_nbd_window **pw = NULL;
	size_t cap = 0;
	sv_lock_or_abort(&srv->lock);
	while (!rt->stop) {
		uint64_t now = sv_now_ns(), next = UINT64_MAX;
		size_t n = 1;
		for (struct sv_nbd_window **wp = &rt->windows, *w; (w = *wp);) {
			if (!w->ended && w->deadline_ns <= now) {
				sv_log_warn("freeze window %" PRIu64 ": ended at its bound", w->id);
				window_end_locked(w);
			}
			if (w->ended) {
				*wp = w->next;
				window_free(w);
				continue;
			}
			if (w->deadline_ns < next)
				next = w->deadline_ns;
			n++;
			wp = &w->next;
		}
		if (n > cap) {
			struct pollfd *np = realloc(p, n * sizeof *p);
			if (np)
				p = np;
			struct sv_nbd_window **npw = np ? realloc(pw, n * sizeof *pw) : NULL;
			if (npw)
				pw = npw;
			if (np && npw)
				cap = n;
		}
		n = 0;
		if (cap) {
			p[n++] = (struct pollfd){.fd = rt->efd, .events = POLLIN};
			for (struct sv_nbd_window *w = rt->windows; w && n < cap; w = w->next) {
				pw[n] = w;
				p[n++] = (struct pollfd){.fd = w->hold_fd, .events = POLLRDHUP};
			}
		}
		int ms = next == UINT64_MAX ? -1 : (int)((next - now) / 1000000 + 1);
		if (!cap && ms < 0)
			ms = 100; /* out of memory: look again soon */
		sv_unlock_or_abort(&srv->lock);
		int k = poll(p, n, ms);
		if (k > 0 && (p[0].revents & POLLIN)) {
			uint64_t v;
			ssize_t r = read(rt->efd, &v, sizeof v);
			(void)r;
		}
		sv_lock_or_abort(&srv->lock);
		/* Windows are freed only here, so pw[] still points at them. */
		for (size_t i = 1; k > 0 && i < n; i++)
			if (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR) && !pw[i]->ended) {
				sv_log_warn("freeze window %" PRIu64 ": ended: its control "
					    "connection closed",
					    pw[i]->id);
				window_end_locked(pw[i]);
			}
	}
	sv_unlock_or_abort(&srv->lock);
	free(p);
	free(pw);
	return NULL;
}

/* Register the calling thread as serving c; when it stops, put it back
 * first if a window raised it (its tid is not used after it exits). */
void
sv_nbd_thread_serving(struct sv_nbd_conn *c, bool on)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	SV_LOCK_SCOPE(&c->srv->lock);
	if (on) {
		if (c->ntids == c->cap_tids) {
			unsigned ncap = c->cap_tids ? 2 * c->cap_tids : 8;
			pid_t *a = realloc(c->tids, ncap * sizeof *a);
			if (!a)
				return; /* only never raised */
			c->tids = a;
			c->cap_tids = ncap;
		}
		c->tids[c->ntids++] = tid;
		return;
	}
	for (unsigned i = 0; i < c->ntids; i++)
		if (c->tids[i] == tid)
			c->tids[i--] = c->tids[--c->ntids];
	if (!c->srv->rt)
		return;
	for (struct sv_nbd_window *w = c->srv->rt->windows; w; w = w->next)
		for (size_t i = 0; i < w->n; i++)
			if (w->r[i].tid == tid) {
				window_restore(&w->r[i]);
				w->r[i--] = w->r[--w->n];
			}
}

static int
rt_start_locked(struct sv_nbd_server *srv)
{
	if (srv->rt)
		return 0;
	struct sv_nbd_rt *rt = calloc(1, sizeof *rt);
	if (!rt)
		return sv_error(ENOMEM, "out of memory");
	rt->next_id = 1;
	rt->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (rt->efd < 0) {
		free(rt);
		return sv_error_errno("eventfd");
	}
	srv->rt = rt;
	int e = pthread_create(&rt->watcher, NULL, window_watcher, srv);
	if (e) {
		srv->rt = NULL;
		close(rt->efd);
		free(rt);
		return sv_error(e, "starting the freeze window watcher: %s", strerror(e));
	}
	return 0;
}

int
sv_nbd_window_begin(struct sv_nbd_server *srv, const char *const *vols, size_t nvols, int holder_fd,
		    uint64_t max_ns, uint64_t *id, unsigned *raised)
{
	*id = 0;
	*raised = 0;
	struct sv_nbd_window *w = calloc(1, sizeof *w);
	if (!w)
		return sv_error(ENOMEM, "out of memory");
	w->hold_fd = -1;
	if (holder_fd >= 0 && (w->hold_fd = fcntl(holder_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		free(w);
		return sv_error_errno("dup");
	}
	w->deadline_ns = sv_now_ns() + max_ns;
	SV_LOCK_SCOPE(&srv->lock);
	if (srv->stopping) {
		window_free(w);
		return sv_error(ESHUTDOWN, "the NBD server is stopping");
	}
	if (rt_start_locked(srv) == -1) {
		window_free(w);
		return -1;
	}
	for (struct sv_nbd_conn *c = srv->conns; c; c = c->next)
		for (size_t i = 0; i < nvols; i++)
			if (!strcmp(c->export_name, vols[i]))
				w->cap += c->ntids;
	w->r = w->cap ? calloc(w->cap, sizeof *w->r) : NULL;
	if (w->cap && !w->r) {
		window_free(w);
		return sv_error(ENOMEM, "out of memory");
	}
	for (struct sv_nbd_conn *c = srv->conns; c; c = c->next)
		for (size_t i = 0; i < nvols; i++)
			if (!strcmp(c->export_name, vols[i]))
				for (unsigned k = 0; k < c->ntids; k++)
					window_raise(w, c->tids[k]);
	w->id = srv->rt->next_id++;
	w->next = srv->rt->windows;
	srv->rt->windows = w;
	*id = w->id;
	*raised = (unsigned)w->n;
	uint64_t one = 1;
	ssize_t r = write(srv->rt->efd, &one, sizeof one); /* a new bound, a new fd */
	(void)r;
	return 0;
}

int
sv_nbd_window_end(struct sv_nbd_server *srv, uint64_t id, unsigned *restored)
{
	*restored = 0;
	SV_LOCK_SCOPE(&srv->lock);
	for (struct sv_nbd_window *w = srv->rt ? srv->rt->windows : NULL; w; w = w->next)
		if (w->id == id && !w->ended) {
			*restored = (unsigned)w->n;
			window_end_locked(w);
			uint64_t one = 1;
			ssize_t r = write(srv->rt->efd, &one, sizeof one);
			(void)r;
			return 0;
		}
	return sv_error(ENOENT, "freeze window %" PRIu64 " has ended (or never began)", id);
}

/* Every window ends; the watcher stops. */
static void
rt_stop(struct sv_nbd_server *srv)
{
	sv_lock_or_abort(&srv->lock);
	struct sv_nbd_rt *rt = srv->rt;
	srv->rt = NULL;
	if (rt) {
		for (struct sv_nbd_window *w = rt->windows; w; w = w->next)
			window_end_locked(w);
		rt->stop = true;
	}
	sv_unlock_or_abort(&srv->lock);
	if (!rt)
		return;
	uint64_t one = 1;
	ssize_t r = write(rt->efd, &one, sizeof one);
	(void)r;
	pthread_join(rt->watcher, NULL);
	while (rt->windows) {
		struct sv_nbd_window *w = rt->windows;
		rt->windows = w->next;
		window_free(w);
	}
	close(rt->efd);
	free(rt);
}

void
sv_nbd_stop(struct sv_nbd_server *srv)
{
	/* Idempotent: a second call finds nothing left to do. */
	sv_lock_or_abort(&srv->lock);
	srv->stopping = true;
	sv_unlock_or_abort(&srv->lock);
	rt_stop(srv); /* puts every raised thread back */

	if (srv->started) {
		ssize_t r = write(srv->wake[1], "s", 1);
		(void)r;
		pthread_join(srv->accept_thread, NULL);
		srv->started = false;
	}
	for (unsigned i = 0; i < srv->nlfds; i++) {
		close(srv->lfds[i]);
		if (srv->unix_paths[i]) {
			unlink(srv->unix_paths[i]);
			free(srv->unix_paths[i]);
		}
	}
	free(srv->lfds);
	free(srv->unix_paths);
	free(srv->lfd_unix);
	srv->lfds = NULL;
	srv->unix_paths = NULL;
	srv->lfd_unix = NULL;
	srv->nlfds = 0;

	sv_lock_or_abort(&srv->lock);
	shutdown_all_locked(srv, SHUT_RD);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += STOP_GRACE_S;
	bool hard = false;
	while (count_active_locked(srv) > 0) {
		if (hard) {
			pthread_cond_wait(&srv->cond, &srv->lock);
			continue;
		}
		if (pthread_cond_timedwait(&srv->cond, &srv->lock, &dl) == ETIMEDOUT) {
			sv_log_warn("%u connections still busy after %d s: closing them",
				    count_active_locked(srv), STOP_GRACE_S);
			shutdown_all_locked(srv, SHUT_RDWR);
			hard = true;
		}
	}
	sv_unlock_or_abort(&srv->lock);
	reap(srv);
}

void
sv_nbd_server_tls_info(const struct sv_nbd_server *srv, struct sv_nbd_tls_info *out)
{
	*out = (struct sv_nbd_tls_info){.unix_mode = srv->cfg.tls_unix,
					.tcp_mode = srv->cfg.tls_tcp,
					.verify_peer = srv->cfg.tls_verify_peer};
	sv_nbd_tls_creds_kinds(srv->tls, &out->psk, &out->x509);
}

void
sv_nbd_server_free(struct sv_nbd_server *srv)
{
	if (!srv)
		return;
	sv_nbd_stop(srv);
	close(srv->wake[0]);
	close(srv->wake[1]);
	pthread_mutex_destroy(&srv->lock);
	pthread_cond_destroy(&srv->cond);
	sv_nbd_tls_creds_free(srv->tls);
	free(srv);
}

int
sv_nbd_list_connections(struct sv_nbd_server *srv, struct sv_nbd_conn_info **conns, unsigned *n)
{
	SV_LOCK_SCOPE(&srv->lock);
	unsigned k = count_active_locked(srv);
	struct sv_nbd_conn_info *a = calloc(k ? k : 1, sizeof *a);
	if (!a)
		return sv_error(ENOMEM, "out of memory");
	unsigned i = 0;
	for (struct sv_nbd_conn *c = srv->conns; c && i < k; c = c->next) {
		if (c->own_thread && c->finished)
			continue;
		a[i].id = c->id;
		snprintf(a[i].peer, sizeof a[i].peer, "%s", c->peer);
		snprintf(a[i].export_name, sizeof a[i].export_name, "%s", c->export_name);
		a[i].requests = atomic_load(&c->requests);
		a[i].bytes_read = atomic_load(&c->bytes_read);
		a[i].bytes_written = atomic_load(&c->bytes_written);
		a[i].started = c->started;
		if (atomic_load(&c->encrypted))
			snprintf(a[i].tls, sizeof a[i].tls, "%s", c->tls_desc);
		i++;
	}
	*conns = a;
	*n = i;
	return 0;
}
