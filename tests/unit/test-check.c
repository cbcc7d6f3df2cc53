/*
 * test-check.c: "snapvol check" (sv_pool_check) finds what is wrong, says
 * so, repairs what it safely can, and touches nothing without --repair.
 *
 * Each case builds a real pool with the engine (a volume, snapshots,
 * copies), closes it, damages the files the way a crash or a careless
 * hand would (stray pre-image data, an unknown pre-image object, a journal
 * not yet checkpointed, pre-images only in the log, rotten metadata, a truncated origin, a foreign
 * directory, a volume directory without metadata), and checks the
 * findings; then repairs and checks again.  The trash is nobody's stray.
 * One case checks that a checkpoint gives the pre-image log's space back.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "testpool.h"
#include "error.h"
#include "store.h"

#define CHUNK	 4096u
#define VOL_SIZE (64u * CHUNK)

struct fixture {
	char dir[64];
	char vdir[128];
};

struct findings {
	unsigned n, errors, warnings, infos, repaired;
	char last[8][1024];
};

static void
collect(void *opaque, const struct sv_check_finding *f)
{
	struct findings *fs = opaque;
	if (fs->n < 8)
		snprintf(fs->last[fs->n], sizeof fs->last[0], "%s %s: %s%s", f->severity, f->volume,
			 f->what, f->repaired ? " [repaired]" : "");
	fs->n++;
	fs->errors += !strcmp(f->severity, "error");
	fs->warnings += !strcmp(f->severity, "warning");
	fs->infos += !strcmp(f->severity, "info");
	fs->repaired += f->repaired;
	print_message("  finding: %s %s: %s%s\n", f->severity, f->volume, f->what,
		      f->repaired ? " [repaired]" : "");
}

static int
run_check(struct fixture *fx, bool repair, struct findings *fs)
{
	memset(fs, 0, sizeof *fs);
	struct sv_pool *pool;
	if (sv_pool_open(fx->dir, 0, &pool) == -1)
		fail_msg("open pool: %s", sv_last_error());
	int r = sv_pool_check(pool, NULL, repair, collect, fs);
	sv_pool_close(pool);
	return r;
}

static void
write_chunks(struct sv_view *v, unsigned first, unsigned n, int byte)
{
	char *buf = malloc((size_t)n * CHUNK);
	memset(buf, byte, (size_t)n * CHUNK);
	int err;
	if (sv_view_pwrite(v, buf, n * CHUNK, (uint64_t)first * CHUNK, 0, &err) == -1)
		fail_msg("write: %s", strerror(err));
	free(buf);
}

/* A volume "v" with data, snapshots a and b and copies in two epochs. */
static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof *fx);
	assert_non_null(fx);
	*state = fx; /* setup failures are test failures: assert */
	assert_int_equal(test_mkdtemp(fx->dir, "check", true), 0);
	snprintf(fx->vdir, sizeof fx->vdir, "%s/volumes/v", fx->dir);
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, SV_POOL_CREATE, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "v", VOL_SIZE, CHUNK), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v", 1, &v), 0);
	write_chunks(v, 0, 32, 1);
	const char *a = "v@a", *b = "v@b";
	assert_int_equal(sv_snapshot_create(pool, &a, 1, NULL), 0);
	write_chunks(v, 0, 8, 2);
	assert_int_equal(sv_snapshot_create(pool, &b, 1, NULL), 0);
	write_chunks(v, 4, 8, 3);
	sv_view_close(v);
	sv_pool_close(pool);
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;
	int r = test_rmtree(fx->dir);
	free(fx);
	return r;
}

static void
put_bytes(struct fixture *fx, const char *file, uint64_t off, const void *buf, size_t len,
	  bool create)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", fx->vdir, file);
	int fd = open(path, O_WRONLY | (create ? O_CREAT : 0), 0600);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static bool
exists(struct fixture *fx, const char *file)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", fx->vdir, file);
	return access(path, F_OK) == 0;
}

/* The name of the newest pre-image object (the one copies went to last). */
static void
newest_pre(struct fixture *fx, char *name, size_t len)
{
	unsigned best = 0;
	for (unsigned e = 1; e < 16; e++) {
		char f[32];
		snprintf(f, sizeof f, "pre-%u.raw", e);
		if (exists(fx, f))
			best = e;
	}
	assert_true(best > 0);
	snprintf(name, len, "pre-%u.raw", best);
}

static void
test_clean_pool(void **state)
{
	struct fixture *fx = *state;
	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 0);
}

/* Chunk 60 was never written, so no epoch records it: bytes there in the
 * newest pre-image are a copy whose record never became durable. */
static void
plant_stray_copy(struct fixture *fx)
{
	char pre[32];
	newest_pre(fx, pre, sizeof pre);
	char junk[CHUNK];
	memset(junk, 0x5a, sizeof junk);
	put_bytes(fx, pre, 60 * CHUNK, junk, sizeof junk, false);
}

static void
test_stray_copy(void **state)
{
	struct fixture *fx = *state;
	plant_stray_copy(fx);
	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.warnings, 1);
	assert_non_null(strstr(fs.last[0], "4096 bytes of copies no record names"));
	assert_int_equal(fs.repaired, 0);
	/* again: without --repair nothing changed */
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.warnings, 1);
	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.repaired, 1);
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 0);
	/* the snapshots still read as they did */
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v@a", 3, &v), 0);
	char buf[CHUNK];
	int err;
	assert_int_equal(sv_view_pread(v, buf, CHUNK, 5 * CHUNK, &err), 0);
	assert_int_equal(buf[0], 1);
	sv_view_close(v);
	assert_int_equal(sv_view_open(pool, "v@b", 3, &v), 0);
	assert_int_equal(sv_view_pread(v, buf, CHUNK, 5 * CHUNK, &err), 0);
	assert_int_equal(buf[0], 2);
	sv_view_close(v);
	sv_pool_close(pool);
}

/* A stray copy (a crash cut it short) under a chunk whose old contents are
 * a hole: the chunk's first write in that epoch copies nothing (holes are
 * not copied) and sets its bit, and the snapshots must read zeros there,
 * not the stray bytes (cow.c, punch_stale; found by test-powerloss). */
static void
test_stray_copy_then_write(void **state)
{
	struct fixture *fx = *state;
	plant_stray_copy(fx);
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v", 1, &v), 0);
	write_chunks(v, 60, 1, 4); /* chunk 60 was a hole: no copy */
	sv_view_close(v);
	char buf[CHUNK], zero[CHUNK] = {0};
	int err;
	for (int k = 0; k < 2; k++) {
		assert_int_equal(sv_view_open(pool, k ? "v@a" : "v@b", 3, &v), 0);
		assert_int_equal(sv_view_pread(v, buf, CHUNK, 60 * CHUNK, &err), 0);
		assert_memory_equal(buf, zero, CHUNK);
		sv_view_close(v);
	}
	sv_pool_close(pool);
	/* and after a reopen (the punch was durable with the record) */
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	assert_int_equal(sv_view_open(pool, "v@b", 3, &v), 0);
	assert_int_equal(sv_view_pread(v, buf, CHUNK, 60 * CHUNK, &err), 0);
	assert_memory_equal(buf, zero, CHUNK);
	sv_view_close(v);
	sv_pool_close(pool);
}

static void
test_unknown_pre_object(void **state)
{
	struct fixture *fx = *state;
	put_bytes(fx, "pre-99.raw", 0, "x", 1, true);
	put_bytes(fx, "notes.raw", 0, "x", 1, true);
	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.warnings, 2);
	assert_true(exists(fx, "pre-99.raw"));
	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.repaired, 1);
	assert_false(exists(fx, "pre-99.raw"));
	assert_true(exists(fx, "notes.raw")); /* not snapvol's: left alone */
}

static void
test_journal_not_checkpointed(void **state)
{
	struct fixture *fx = *state;
	/* Copy the volume's files while a server-like user has it open and
	 * has made copies since its checkpoint: what a kill -9 leaves. */
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v", 1, &v), 0);
	write_chunks(v, 20, 4, 4);
	int err;
	assert_int_equal(sv_view_flush(v, &err), 0);
	char cmd[512];
	snprintf(cmd, sizeof cmd, "cp -a --sparse=always '%s' '%s.crash'", fx->vdir, fx->vdir);
	assert_int_equal(system(cmd), 0);
	sv_view_close(v);
	sv_pool_close(pool);
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mv '%s.crash' '%s'", fx->vdir, fx->vdir,
		 fx->vdir);
	assert_int_equal(system(cmd), 0);

	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.infos, 1);
	assert_non_null(strstr(fs.last[0], "records not yet in the checkpoint"));
	assert_int_equal(run_check(fx, false, &fs), 0); /* nothing written */
	assert_int_equal(fs.infos, 1);
	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.repaired, 1);
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 0);
}

/* Pre-images a crash kept only in the pre-image log (engine/journal.c):
 * copies are committed by appending their bytes to the log, and the
 * pre-image file is synced only at checkpoints, so after a power loss the
 * file may lack them (here: punched, as pages that never reached the
 * disk).  The check reports the log's bytes; the repair (the open's
 * replay) copies them back, and the snapshots read what they held. */
static void
test_log_restores_pre_images(void **state)
{
	struct fixture *fx = *state;
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v", 1, &v), 0);
	write_chunks(v, 20, 4, 4); /* copies chunks 20-23 (byte 1) into epoch 2 (b's) */
	int err;
	assert_int_equal(sv_view_flush(v, &err), 0);
	char cmd[512];
	snprintf(cmd, sizeof cmd, "cp -a --sparse=always '%s' '%s.crash'", fx->vdir, fx->vdir);
	assert_int_equal(system(cmd), 0);
	sv_view_close(v);
	sv_pool_close(pool);
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mv '%s.crash' '%s'", fx->vdir, fx->vdir,
		 fx->vdir);
	assert_int_equal(system(cmd), 0);
	char path[256];
	snprintf(path, sizeof path, "%s/pre-2.raw", fx->vdir);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(
	    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 20 * CHUNK, 4 * CHUNK), 0);
	close(fd);

	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.infos, 1);
	assert_non_null(strstr(fs.last[0], "with 16384 bytes of pre-images"));
	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.repaired, 1);

	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	char *buf = malloc(4 * CHUNK), *want = malloc(4 * CHUNK);
	memset(want, 1, 4 * CHUNK);
	const char *names[] = {"v@a", "v@b"};
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(sv_view_open(pool, names[i], 3, &v), 0);
		assert_int_equal(sv_view_pread(v, buf, 4 * CHUNK, 20 * CHUNK, &err), 0);
		assert_memory_equal(buf, want, 4 * CHUNK);
		sv_view_close(v);
	}
	free(buf);
	free(want);
	sv_pool_close(pool);
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 0);
}

static uint64_t
allocated(struct fixture *fx, const char *file)
{
	char path[256];
	struct stat sb;
	snprintf(path, sizeof path, "%s/%s", fx->vdir, file);
	assert_int_equal(stat(path, &sb), 0);
	return (uint64_t)sb.st_blocks * 512;
}

/* A checkpoint gives the pre-image log's dead space back (journal.c): in
 * use the log holds at most its capacity (here 64 KiB: checkpoints come
 * mid-run), and once the volume is closed (a checkpoint) it holds none,
 * while every snapshot still reads right, now and after a reopen. */
static void
test_log_space_given_back(void **state)
{
	struct fixture *fx = *state;
	setenv("SNAPVOL_PRELOG_KB", "64", 1);
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "v", 1, &v), 0);
	const char *c = "v@c";
	assert_int_equal(sv_snapshot_create(pool, &c, 1, NULL), 0);
	int err;
	for (unsigned i = 0; i < 12; i++) /* 48 first writes of 4 KiB: 3 checkpoints or more */
		write_chunks(v, 16 + 4 * i, 4, 5);
	assert_int_equal(sv_view_flush(v, &err), 0);
	uint64_t in_use = allocated(fx, "prelog.raw");
	print_message("  prelog allocated in use: %" PRIu64 " bytes\n", in_use);
	assert_true(in_use > 0);
	assert_true(in_use <= 64 * 1024);
	sv_view_close(v);
	sv_pool_close(pool);
	assert_int_equal(allocated(fx, "prelog.raw"), 0);
	unsetenv("SNAPVOL_PRELOG_KB");

	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	char *buf = malloc(48 * CHUNK), *want = malloc(48 * CHUNK);
	memset(want, 0, 48 * CHUNK); /* chunks 16-63 as a and c saw them: 16-31 */
	memset(want, 1, 16 * CHUNK); /* hold write 1, 32-63 were never written */
	const char *names[] = {"v@a", "v@c"};
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(sv_view_open(pool, names[i], 3, &v), 0);
		assert_int_equal(sv_view_pread(v, buf, 48 * CHUNK, 16 * CHUNK, &err), 0);
		assert_memory_equal(buf, want, 48 * CHUNK);
		sv_view_close(v);
	}
	free(buf);
	free(want);
	sv_pool_close(pool);
	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.errors, 0);
}

static void
flip_byte(struct fixture *fx, const char *file, off_t off)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", fx->vdir, file);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	char c;
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x20;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void
test_rotten_metadata(void **state)
{
	struct fixture *fx = *state;
	flip_byte(fx, "changed.meta", 100);
	struct findings fs;
	assert_int_equal(run_check(fx, true, &fs), 1); /* never "repaired" */
	assert_int_equal(fs.errors, 1);
	assert_non_null(strstr(fs.last[0], "changed.meta"));
	flip_byte(fx, "changed.meta", 100);
	assert_int_equal(run_check(fx, false, &fs), 0);

	flip_byte(fx, "volume.meta", 60);
	assert_int_equal(run_check(fx, false, &fs), 1);
	assert_non_null(strstr(fs.last[0], "volume.meta"));
}

static void
test_origin_size(void **state)
{
	struct fixture *fx = *state;
	char path[256];
	snprintf(path, sizeof path, "%s/origin.raw", fx->vdir);
	assert_int_equal(truncate(path, VOL_SIZE - CHUNK), 0);
	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 1);
	assert_non_null(strstr(fs.last[0], "origin"));
}

static void
test_foreign_directory(void **state)
{
	struct fixture *fx = *state;
	char path[256];
	snprintf(path, sizeof path, "%s/volumes/-junk", fx->dir);
	assert_int_equal(mkdir(path, 0700), 0);
	struct findings fs;
	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.warnings, 1);
	assert_int_equal(fs.repaired, 0);
}

/* A volume directory without metadata (a crash in the middle of a create,
 * or an older snapvol's delete) is a warning, and repair moves it to the
 * trash; what is in the trash (a deleted volume, a removed pre-image) is
 * nobody's stray.  Checking a name that does not exist at all is an error
 * as before. */
static void
test_leftover_and_trash(void **state)
{
	struct fixture *fx = *state;
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st;
	assert_int_equal(ops->open(fx->dir, false, &st), 0);
	assert_int_equal(ops->lock(st), 0);
	assert_int_equal(ops->vol_create(st, "gone"), 0);
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, "gone", "pre-1", VOL_SIZE, SV_OBJ_CREATE, &o), 0);
	assert_int_equal(ops->obj_pwrite(o, "x", 1, 0, 0), 0);
	ops->obj_close(o);
	assert_int_equal(ops->vol_trash(st, "gone"), 0);
	assert_int_equal(ops->vol_create(st, "half"), 0); /* no metadata */
	assert_int_equal(ops->obj_open(st, "half", "origin", VOL_SIZE, SV_OBJ_CREATE, &o), 0);
	ops->obj_close(o);
	ops->close(st);

	struct findings fs;
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 1);
	assert_int_equal(fs.warnings, 1);
	assert_non_null(strstr(fs.last[0], "half"));
	assert_non_null(strstr(fs.last[0], "unfinished create"));
	char path[256];
	snprintf(path, sizeof path, "%s/volumes/half", fx->dir);
	assert_int_equal(access(path, F_OK), 0); /* untouched without --repair */

	assert_int_equal(run_check(fx, true, &fs), 0);
	assert_int_equal(fs.n, 1);
	assert_int_equal(fs.repaired, 1);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(run_check(fx, false, &fs), 0);
	assert_int_equal(fs.n, 0);

	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(fx->dir, 0, &pool), 0);
	memset(&fs, 0, sizeof fs);
	assert_int_equal(sv_pool_check(pool, "nosuch", false, collect, &fs), 1);
	assert_int_equal(fs.errors, 1);
	assert_int_equal(sv_volume_create(pool, "half", VOL_SIZE, CHUNK), 0);
	sv_pool_close(pool);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_clean_pool, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stray_copy, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stray_copy_then_write, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unknown_pre_object, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_journal_not_checkpointed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_log_restores_pre_images, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_log_space_given_back, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotten_metadata, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_origin_size, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_directory, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_leftover_and_trash, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
