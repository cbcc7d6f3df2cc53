/*
 * serve.c: "snapvol serve": open the pool, serve it over NBD and answer the
 * control socket, in the foreground, until SIGINT or SIGTERM.
 *
 * Signals: SIGINT and SIGTERM are blocked before any thread exists, so
 * every thread inherits the mask and the main thread alone takes them, with
 * sigwait(): no async handler, nothing to make async-signal-safe, and the
 * stop sequence runs as ordinary code.  A second SIGINT or SIGTERM during
 * the stop (a second or more after the first: "timeout" sends one to the
 * child and one to its group) ends the process at once (status 1):
 * everything on the pool is crash-safe, so that only skips the clean close
 * (a stop can wait on a store that does not answer: RADOS op timeouts
 * during an outage), and the next open replays what it has to.  SIGPIPE is
 * ignored: a client that vanishes costs an EPIPE on its own connection.
 *
 * Stop order: the control server first (no command runs during teardown),
 * then the NBD server (requests in flight finish and are answered, then
 * connections close and the socket files go), then the pool (volumes
 * synced, lock released).  The service manager sees exit status 0.
 *
 * TLS and access: a TCP listener without TLS is refused unless --insecure
 * says so (the NBD layer refuses it too).  --tls sets the unix socket's
 * mode: by default TLS is offered there when configured (local clients
 * without keys keep working; the socket is 0600), and "require" makes it
 * mandatory.  --group widens both sockets to 0660 with that group, after
 * they are created 0600, so neither is ever wider than asked.
 */
#include <errno.h>
#include <malloc.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "log.h"
#include "nbd-server.h"
#include "util.h"

/* "nbd+unix:///VOLUME?socket=/abs/path": libnbd resolves a relative path
 * against the client's working directory, so print the absolute one. */
static void
log_unix_uri(const char *what, const char *path)
{
	char abs[PATH_MAX];
	if (!realpath(path, abs))
		snprintf(abs, sizeof abs, "%s", path);
	sv_log_info("%s on unix socket %s; connect to nbd+unix:///VOLUME?socket=%s", what, path,
		    abs);
}

/* "HOST:PORT" or "[V6ADDR]:PORT", with a port from 1 to 65535: a usage
 * error otherwise (the NBD layer parses it again when it listens). */
static int
check_hostport(const struct cli *cli, const char *hp)
{
	const char *port;
	if (hp[0] == '[') {
		const char *rb = strchr(hp, ']');
		if (!rb || rb == hp + 1 || rb[1] != ':')
			return cli_usage_error(cli, "--listen: '%s' is not [ADDRESS]:PORT", hp);
		port = rb + 2;
	} else {
		const char *colon = strrchr(hp, ':');
		if (!colon || colon == hp)
			return cli_usage_error(cli, "--listen: '%s' is not HOST:PORT", hp);
		if (memchr(hp, ':', (size_t)(colon - hp)))
			return cli_usage_error(cli,
					       "--listen: '%s': write an IPv6 address in brackets, "
					       "like [::1]:10809",
					       hp);
		port = colon + 1;
	}
	unsigned long v = 0;
	const char *p = port;
	while (*p >= '0' && *p <= '9' && v <= 65535)
		v = v * 10 + (unsigned long)(*p++ - '0');
	if (p == port || *p || v == 0 || v > 65535)
		return cli_usage_error(
		    cli, "--listen: '%s': the port must be a number from 1 to 65535", hp);
	return 0;
}

/* chgrp and chmod 0660 a socket file (--group). */
static int
widen_socket(const char *path, gid_t gid, const char *group)
{
	if (chown(path, (uid_t)-1, gid) == -1 || chmod(path, 0660) == -1)
		return cli_fail("--group %s: %s: %s", group, path, strerror(errno));
	sv_log_info("%s: mode 0660, group %s", path, group);
	return 0;
}

static int
parse_tls_mode(const struct cli *cli, const char *s, enum sv_nbd_tls *out)
{
	if (!strcmp(s, "off"))
		*out = SV_NBD_TLS_OFF;
	else if (!strcmp(s, "on"))
		*out = SV_NBD_TLS_ON;
	else if (!strcmp(s, "require"))
		*out = SV_NBD_TLS_REQUIRE;
	else
		return cli_usage_error(cli, "--tls: '%s' is not off, on or require", s);
	return 0;
}

/* The TLS, group and limit options into cfg; 0 or an exit status. */
static int
security_options(struct cli *cli, struct sv_nbd_config *cfg, gid_t *gid)
{
	uint64_t v;
	int r;
	cfg->tls_psk_file = cli->val[OPT_TLS_PSK];
	cfg->tls_certs_dir = cli->val[OPT_TLS_CERTS];
	if ((cfg->tls_psk_file && !*cfg->tls_psk_file) ||
	    (cfg->tls_certs_dir && !*cfg->tls_certs_dir))
		return cli_usage_error(cli, "--tls-psk, --tls-certs: empty path");
	bool have_tls = cfg->tls_psk_file || cfg->tls_certs_dir;
	cfg->tls_verify_peer = cli->val[OPT_TLS_VERIFY_PEER] != NULL;
	if (cfg->tls_verify_peer && !cfg->tls_certs_dir)
		return cli_usage_error(cli, "--tls-verify-peer needs --tls-certs");
	cfg->tls_unix = have_tls ? SV_NBD_TLS_ON : SV_NBD_TLS_OFF;
	if (cli->val[OPT_TLS] && (r = parse_tls_mode(cli, cli->val[OPT_TLS], &cfg->tls_unix)))
		return r;
	if (cfg->tls_unix != SV_NBD_TLS_OFF && !have_tls)
		return cli_usage_error(cli, "--tls %s needs --tls-psk or --tls-certs",
				       cli->val[OPT_TLS]);
	if (cli->val[OPT_INSECURE])
		cfg->tls_tcp = have_tls ? SV_NBD_TLS_ON : SV_NBD_TLS_OFF;
	else
		cfg->tls_tcp = SV_NBD_TLS_REQUIRE;
	if (cli->nlisten && !have_tls && !cli->val[OPT_INSECURE])
		return cli_usage_error(
		    cli, "--listen: NBD over TCP requires TLS: give --tls-psk FILE or "
			 "--tls-certs DIR, or --insecure to serve TCP without it");

	if (cli->val[OPT_GROUP]) {
		struct group *g = getgrnam(cli->val[OPT_GROUP]);
		if (!g)
			return cli_usage_error(cli, "--group: no group named '%s'",
					       cli->val[OPT_GROUP]);
		*gid = g->gr_gid;
	}

	if (cli->val[OPT_MAX_CONNS_PER_CLIENT]) {
		if ((r = cli_parse_uint_opt(cli, OPT_MAX_CONNS_PER_CLIENT, 1, 65536, &v)))
			return r;
		cfg->max_conns_per_client = (unsigned)v;
	}
	if (cli->val[OPT_MAX_REQUEST]) {
		if ((r = cli_parse_size_opt(cli, OPT_MAX_REQUEST, &v)))
			return r;
		if (v < 64 * 1024 || v > 1024 * 1024 * 1024)
			return cli_usage_error(cli, "--max-request: %s is not from 64K to 1G",
					       cli->val[OPT_MAX_REQUEST]);
		cfg->max_request = (uint32_t)v;
	}
	if (cli->val[OPT_MAX_OPTION_LENGTH]) {
		if ((r = cli_parse_size_opt(cli, OPT_MAX_OPTION_LENGTH, &v)))
			return r;
		if (v < 4096 + 64 || v > 16 * 1024 * 1024)
			return cli_usage_error(
			    cli, "--max-option-length: %s is not from 4160 bytes to 16M",
			    cli->val[OPT_MAX_OPTION_LENGTH]);
		cfg->max_option_len = (uint32_t)v;
	}
	if (cli->val[OPT_MAX_NAME_LENGTH]) {
		if ((r = cli_parse_uint_opt(cli, OPT_MAX_NAME_LENGTH, 1, 4096, &v)))
			return r;
		cfg->max_name_len = (uint32_t)v;
	}
	if (cli->val[OPT_HANDSHAKE_TIMEOUT]) {
		uint64_t ns;
		if (sv_parse_duration(cli->val[OPT_HANDSHAKE_TIMEOUT], &ns) == -1)
			return cli_usage_error(cli, "--handshake-timeout: %s", sv_last_error());
		if (ns > UINT64_C(3600) * 1000000000u)
			return cli_usage_error(cli, "--handshake-timeout: at most 1h");
		cfg->handshake_timeout_s = (unsigned)((ns + 999999999u) / 1000000000u);
	}
	return 0;
}

/* The stop's watcher: a second SIGINT or SIGTERM ends the process now.
 * One that comes within a second of the first is the same request twice
 * ("timeout" and shells signal the child and then its process group). */
static void *
second_signal(void *arg)
{
	uint64_t first = sv_now_ns();
	int sig;
	while (sigwait(arg, &sig) != 0 || sv_now_ns() - first < 1000000000u)
		;
	sv_log_warn("SIG%s received again: stopping at once, without the clean close (the "
		    "pool is crash-safe: the next open replays what it has to)",
		    sigabbrev_np(sig));
	_exit(EXIT_FAIL);
	return NULL;
}

int
cli_run_serve(struct cli *cli)
{
	/* Request buffers (parked writes, write-behind payloads) are made on
	 * one thread and freed on another; glibc's per-thread arenas would
	 * each grow to their own peak (measured: RSS 106 MiB and climbing
	 * after 7 snapshots, against 35 MiB flat with two arenas). */
	mallopt(M_ARENA_MAX, 2);
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	uint64_t v;
	int r;

	if (cli->val[OPT_THREADS]) {
		if ((r = cli_parse_uint_opt(cli, OPT_THREADS, 1, 1024, &v)))
			return r;
		cfg.threads_per_conn = (unsigned)v;
	}
	if (cli->val[OPT_MAX_CONNECTIONS]) {
		if ((r = cli_parse_uint_opt(cli, OPT_MAX_CONNECTIONS, 1, 65536, &v)))
			return r;
		cfg.max_connections = (unsigned)v;
	}
	if (cli->val[OPT_MIN_BLOCK_SIZE]) {
		if ((r = cli_parse_size_opt(cli, OPT_MIN_BLOCK_SIZE, &v)))
			return r;
		if (!sv_is_power_of_2(v) || v > 65536)
			return cli_usage_error(cli,
					       "--min-block-size: %s is not a power of 2 from 1 "
					       "to 64K (the NBD protocol's limit)",
					       cli->val[OPT_MIN_BLOCK_SIZE]);
		cfg.min_block_size = (uint32_t)v;
	}
	if (cli->val[OPT_NO_SENDFILE])
		cfg.use_sendfile = false;
	if (cli->val[OPT_SOCKET] && !*cli->val[OPT_SOCKET])
		return cli_usage_error(cli, "--socket: empty path");
	for (unsigned i = 0; i < cli->nlisten; i++)
		if ((r = check_hostport(cli, cli->listen[i])))
			return r;
	gid_t gid = (gid_t)-1;
	if ((r = security_options(cli, &cfg, &gid)))
		return r;
	uint64_t freeze_max_ms = 0;
	if (cli->val[OPT_SERVE_FREEZE_MAX]) {
		uint64_t ns;
		if (sv_parse_duration(cli->val[OPT_SERVE_FREEZE_MAX], &ns) == -1)
			return cli_usage_error(cli, "--freeze-max: %s", sv_last_error());
		freeze_max_ms = ns / 1000000u;
		if (freeze_max_ms < SV_FREEZE_LEASE_MIN_MS ||
		    freeze_max_ms > SV_FREEZE_MAX_LIMIT_MS)
			return cli_usage_error(cli,
					       "--freeze-max: %s is out of range (100ms to 1h)",
					       cli->val[OPT_SERVE_FREEZE_MAX]);
	}

	char *nbd_path =
	    cli->val[OPT_SOCKET] ? strdup(cli->val[OPT_SOCKET]) : cli_pool_file(cli, "nbd.sock");
	char *control_path = cli_control_path(cli);
	int status = EXIT_FAIL;
	struct sv_pool *pool = NULL;
	struct sv_nbd_server *nbd = NULL;
	struct sv_ctl_server *ctl = NULL;

	/* Before any thread: every thread inherits this mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (sv_pool_open(cli->pool, SV_POOL_CREATE, &pool) == -1) {
		if (sv_last_errno() == EWOULDBLOCK) {
			char msg[1024], held[512];
			snprintf(held, sizeof held, "%s", sv_last_error());
			int fd = sv_ctl_client_connect(control_path);
			if (fd >= 0) {
				close(fd);
				cli_fail("pool %s is already served by another snapvol server; its "
					 "control socket is %s",
					 cli->pool, control_path);
			} else {
				char why[512];
				snprintf(why, sizeof why, "%s", sv_last_error());
				const char *colon = strrchr(why, ':');
				/* who holds it (a RADOS claim), for the message */
				sv_error(EWOULDBLOCK, "%s", held);
				cli_pool_in_use_message(cli, control_path,
							colon && colon[1] == ' ' ? colon + 2 : why,
							msg, sizeof msg);
				cli_fail("%s", msg);
			}
		} else {
			cli_fail("%s", sv_last_error());
		}
		goto out;
	}
	if (freeze_max_ms && sv_freeze_set_default_max(pool, freeze_max_ms) == -1) {
		cli_fail("%s", sv_last_error());
		goto out;
	}

	if (sv_nbd_server_new(pool, &cfg, &nbd) == -1) {
		cli_fail("%s", sv_last_error());
		goto out;
	}
	if (sv_nbd_listen_unix(nbd, nbd_path) == -1) {
		cli_fail("%s", sv_last_error());
		goto out;
	}
	if (gid != (gid_t)-1 && widen_socket(nbd_path, gid, cli->val[OPT_GROUP]))
		goto out;
	for (unsigned i = 0; i < cli->nlisten; i++) {
		if (sv_nbd_listen_tcp(nbd, cli->listen[i]) == -1) {
			cli_fail("%s", sv_last_error());
			goto out;
		}
	}

	struct sv_ctl_context ctx = {
	    .pool = pool,
	    .nbd = nbd,
	    .nbd_socket = nbd_path,
	    .nbd_tcp = cli->listen,
	    .n_nbd_tcp = cli->nlisten,
	    .control_socket = control_path,
	    .started = sv_realtime_s(),
	    .started_ns = sv_now_ns(),
	};
	if (sv_ctl_server_start(&ctx, control_path, &ctl) == -1) {
		cli_fail("%s", sv_last_error());
		goto out;
	}
	if (gid != (gid_t)-1 && widen_socket(control_path, gid, cli->val[OPT_GROUP]))
		goto out;
	if (sv_nbd_start(nbd) == -1) {
		cli_fail("%s", sv_last_error());
		goto out;
	}

	sv_log_info("snapvol %s serving pool %s (pid %ld)", SNAPVOL_VERSION, sv_pool_describe(pool),
		    (long)getpid());
	log_unix_uri("NBD", nbd_path);
	for (unsigned i = 0; i < cli->nlisten; i++)
		sv_log_info("NBD on TCP %s (TLS %s); connect to %s://%s/VOLUME", cli->listen[i],
			    cfg.tls_tcp == SV_NBD_TLS_REQUIRE ? "required"
			    : cfg.tls_tcp == SV_NBD_TLS_ON    ? "optional"
							      : "off: --insecure",
			    cfg.tls_tcp == SV_NBD_TLS_REQUIRE ? "nbds" : "nbd", cli->listen[i]);
	if (cfg.tls_unix != SV_NBD_TLS_OFF)
		sv_log_info("TLS on the unix socket: %s",
			    cfg.tls_unix == SV_NBD_TLS_REQUIRE ? "required" : "optional");
	sv_log_info("control on %s; stop with SIGINT or SIGTERM", control_path);

	int sig;
	while ((r = sigwait(&sigs, &sig)) != 0) {
		if (r != EINTR) {
			errno = r;
			sv_log_error("sigwait: %m");
			break;
		}
	}
	sv_log_info("SIG%s received, stopping (a second one stops at once, without the clean "
		    "close)",
		    r == 0 ? sigabbrev_np(sig) : "wait failed");
	status = EXIT_OK;
	static sigset_t again; /* outlives this frame: the thread is never joined */
	again = sigs;
	pthread_t impatient;
	if (pthread_create(&impatient, NULL, second_signal, &again) == 0)
		pthread_detach(impatient);

out:
	sv_ctl_server_stop(ctl);
	if (nbd) {
		sv_nbd_stop(nbd);
		sv_nbd_server_free(nbd);
	}
	if (pool)
		sv_pool_close(pool);
	if (status == EXIT_OK)
		sv_log_info("stopped");
	free(nbd_path);
	free(control_path);
	return status;
}
