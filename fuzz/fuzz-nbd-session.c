/*
 * fuzz-nbd-session.c: libFuzzer target for the whole NBD server.
 *
 * Each input is the byte stream of one client session, from the first
 * byte after the server's greeting (client flags, options, requests and
 * payloads).  It is fed through a socketpair into sv_nbd_serve_fd(), the
 * same code path a real connection takes (handshake, then the threaded
 * transmission phase), against a small volume in a temporary pool.  This
 * is the shape of nbdkit's server/fuzzer.c, except that the phony client
 * is a thread rather than a forked process: libFuzzer then sees leaks and
 * sanitizer reports from the server directly, and runs thousands of
 * sessions a second.
 *
 * The client thread is fuzz_pump() (fuzz-common.h): it writes the input,
 * discards what the server sends, and ends the stream, so nothing hangs.
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined
 *        ninja -C build-fuzz fuzz/fuzz-nbd-session
 * Run:   build-fuzz/fuzz/fuzz-nbd-session -close_fd_mask=2 fuzz/corpus/nbd-session
 * (-close_fd_mask=2 silences the server's per-connection log lines.)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine.h"
#include "nbd-server.h"

#include "fuzz-common.h" /* after nbd-server.h: fuzz_nbd_session */

static struct sv_nbd_server *srv;
static struct sv_pool *pool;
static void
cleanup(void)
{
	sv_nbd_server_free(srv);
	sv_pool_close(pool);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	const char *dir = fuzz_scratch_dir();
	/* A snapshot "v@s", so sessions reach snapshot exports and the
	 * qemu:dirty-bitmap:s context of "v". */
	const char *snap[] = {"v@s"};
	if (sv_pool_open(dir, SV_POOL_CREATE, &pool) == -1 ||
	    sv_volume_create(pool, "v", 1 << 20, 0) == -1 ||
	    sv_snapshot_create(pool, snap, 1, NULL) == -1) {
		fprintf(stderr, "fuzz: cannot set up a pool in %s\n", dir);
		abort();
	}
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	cfg.threads_per_conn = 2;  /* exercise the parallel path, cheaply */
	cfg.max_request = 1 << 20; /* the volume's size; keeps buffers small */
	cfg.handshake_timeout_s = 10;
	if (sv_nbd_server_new(pool, &cfg, &srv) == -1)
		abort();
	atexit(cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_nbd_session(srv, data, size);
	return 0;
}
