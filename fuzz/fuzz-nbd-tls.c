/*
 * fuzz-nbd-tls.c: libFuzzer target for the NBD handshake of a server that
 * requires TLS (NBD_OPT_STARTTLS with a PSK, limits set low).
 *
 * fuzz-nbd-session covers a server without TLS; this one covers what TLS
 * adds: every option answered NBD_REP_ERR_TLS_REQD before STARTTLS, the
 * EXPORT_NAME close, STARTTLS with data, the name-length limit (set to 16
 * here), and, after a STARTTLS that is acknowledged, GnuTLS's handshake
 * reading fuzzed records through the connection's deadline-bound io
 * (tls.c: pull/push, their errors, the session teardown).  A fuzzer cannot
 * complete a TLS handshake, so what lies beyond it is the session target's.
 *
 * Each input is one selector byte, then the client's byte stream after the
 * greeting, pumped through a socketpair into sv_nbd_serve_fd()
 * (fuzz-common.h), like fuzz-nbd-session.  The selector's low bit picks the
 * server: 0, TLS required; 1, TLS optional (so plaintext options reach the
 * name-length check and the option handlers, and STARTTLS after them
 * resets their state).  The seeds in fuzz/corpus/nbd-tls: nbdinfo sessions
 * recorded with record-nbd-session.py, plaintext and with the PSK below
 * (nbds+unix://alice@/v?tls-psk-file=...), and hand-written ones: STARTTLS
 * twice, with data, after other options, plaintext after it, EXPORT_NAME
 * before it, long names.
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined
 *        ninja -C build-fuzz fuzz/fuzz-nbd-tls
 * Run:   build-fuzz/fuzz/fuzz-nbd-tls -close_fd_mask=2 fuzz/corpus/nbd-tls
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

static struct sv_nbd_server *srv[2]; /* TLS required, TLS optional */
static struct sv_pool *pool;

static void
cleanup(void)
{
	sv_nbd_server_free(srv[0]);
	sv_nbd_server_free(srv[1]);
	sv_pool_close(pool);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	const char *dir = fuzz_scratch_dir();
	char psk[128];
	if (sv_pool_open(dir, SV_POOL_CREATE, &pool) == -1 ||
	    sv_volume_create(pool, "v", 1 << 20, 0) == -1) {
		fprintf(stderr, "fuzz: cannot set up a pool in %s\n", dir);
		abort();
	}
	snprintf(psk, sizeof psk, "%s/keys.psk", dir);
	FILE *f = fopen(psk, "w");
	if (!f || fputs("alice:00112233445566778899aabbccddeeff\n", f) < 0 || fclose(f) != 0)
		abort();
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	cfg.threads_per_conn = 2;
	cfg.max_request = 1 << 20;
	cfg.handshake_timeout_s = 10;
	cfg.max_name_len = 16;
	cfg.tls_psk_file = psk;
	cfg.tls_unix = SV_NBD_TLS_REQUIRE;
	if (sv_nbd_server_new(pool, &cfg, &srv[0]) == -1)
		abort();
	cfg.tls_unix = SV_NBD_TLS_ON;
	if (sv_nbd_server_new(pool, &cfg, &srv[1]) == -1)
		abort();
	atexit(cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	struct sv_nbd_server *s = srv[data[0] & 1];
	data++;
	size--;
	fuzz_nbd_session(s, data, size);
	return 0;
}
