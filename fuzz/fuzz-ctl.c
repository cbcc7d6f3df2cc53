/*
 * fuzz-ctl.c: libFuzzer target for the control protocol.
 *
 * Each input is what one client sends on the control socket after the
 * greeting: JSON lines (or anything else).  It goes through the real
 * control server (sv_ctl_server_start on a unix socket in a temporary
 * directory, with an NBD server object behind it for "status"), so line
 * framing, the 1 MiB line limit, JSON parsing, argument checking and every
 * command's own validation run exactly as in "snapvol serve".  The pool
 * holds a 1 MiB volume "v" with a snapshot "v@s" for commands to act on;
 * whatever an input creates, deletes or rolls back is put back before the
 * next one, so inputs stay independent.
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined
 *        ninja -C build-fuzz fuzz/fuzz-ctl
 * Run:   build-fuzz/fuzz/fuzz-ctl -close_fd_mask=2 fuzz/corpus/ctl
 * Seeds: fuzz/corpus/ctl/ holds real CLI sessions recorded through
 * fuzz/record-nbd-session.py (it proxies any greeting-first protocol).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "engine.h"
#include "error.h"
#include "fuzz-common.h"
#include "nbd-server.h"

static struct sv_pool *pool;
static struct sv_nbd_server *nbd;
static struct sv_ctl_server *ctl;
static struct sv_ctl_context ctx;
static char sock[96];

static void
cleanup(void)
{
	sv_ctl_server_stop(ctl);
	sv_nbd_server_free(nbd);
	sv_pool_close(pool);
}

static void
make_fixture(void)
{
	const char *spec = "v@s";
	if (sv_volume_create(pool, "v", 1 << 20, 0) == -1 ||
	    sv_snapshot_create(pool, &spec, 1, NULL) == -1) {
		fprintf(stderr, "fuzz: cannot set up the fixture: %s\n", sv_last_error());
		abort();
	}
}

/* Put the pool back to exactly "v" with one snapshot "s". */
static void
reset_pool(void)
{
	struct sv_volume_info *vols;
	size_t n;
	if (sv_volume_list(pool, &vols, &n) == -1)
		abort();
	bool ok = n == 1 && !strcmp(vols[0].name, "v") && vols[0].snapshots == 1 &&
		  vols[0].size == 1 << 20;
	if (ok) {
		struct sv_snapshot_info *snaps;
		size_t ns;
		if (sv_snapshot_list(pool, "v", &snaps, &ns) == -1)
			abort();
		ok = ns == 1 && !strcmp(snaps[0].name, "s");
		free(snaps);
	}
	for (size_t i = 0; !ok && i < n; i++)
		if (sv_volume_delete(pool, vols[i].name) == -1) {
			fprintf(stderr, "fuzz: cannot reset: %s\n", sv_last_error());
			abort();
		}
	free(vols);
	if (!ok)
		make_fixture();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	const char *dir = fuzz_scratch_dir();
	if (sv_pool_open(dir, SV_POOL_CREATE, &pool) == -1) {
		fprintf(stderr, "fuzz: cannot set up a pool in %s\n", dir);
		abort();
	}
	make_fixture();
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	if (sv_nbd_server_new(pool, &cfg, &nbd) == -1)
		abort();
	snprintf(sock, sizeof sock, "%s/control.sock", dir);
	ctx.pool = pool;
	ctx.nbd = nbd;
	ctx.control_socket = sock;
	if (sv_ctl_server_start(&ctx, sock, &ctl) == -1) {
		fprintf(stderr, "fuzz: cannot start the control server: %s\n", sv_last_error());
		abort();
	}
	atexit(cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = sv_ctl_client_connect(sock);
	if (fd == -1)
		abort();
	fuzz_pump(fd, data, size);
	close(fd);
	reset_pool();
	return 0;
}
