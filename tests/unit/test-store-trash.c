/*
 * test-store-trash.c: the file store's trash (obj_trash, trash_step), and
 * the engine picking an earlier run's trash up at pool open.
 *
 * A removed pre-image is moved into POOL/trash/ (its name leaves the
 * volume at once) and freed later a bounded step at a time, so that
 * neither a delete nor a stop of the server waits for the filesystem to
 * free thousands of extents (issue 3).  These cases check the contract:
 * the name is gone at once and open handles still read; each step frees at
 * most 64 runs, so a file of many scattered runs takes several steps and
 * the space left shrinks every step; the trash ends empty (the file
 * unlinked); a store closed half-way goes on where it stopped after a
 * reopen; a file that can be neither opened nor unlinked fails the step
 * (instead of a step that always has more to do, on which the pool's
 * thread spun); and a pool opened on a non-empty trash empties it by
 * itself.
 *
 * A deleted volume goes to the trash whole (vol_trash): its name is gone
 * from the listing at once and may be created again at once, its files
 * are freed in bounded steps and the directory removed after them, a
 * reopened store resumes it (what a crash after the delete leaves), and
 * sv_volume_delete of a volume with a snapshot's pre-images returns with
 * the data in the trash, which the pool's thread then empties.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "error.h"
#include "store.h"
#include "testpool.h"

#define SIZE   (64ull << 20)
#define CHUNK  4096u
#define NRUNS  300u	      /* scattered runs: more than 64, so several steps */
#define STRIDE (SIZE / NRUNS) /* far apart: one run each */

/* Files in DIR/trash (0 if there is no such directory). */
static unsigned
trash_files(const char *dir)
{
	char path[128];
	snprintf(path, sizeof path, "%s/trash", dir);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* Step st's trash until it is empty (1000 steps at most): nothing left. */
static void
drain(struct sv_store *st, const char *dir)
{
	uint64_t left = 1;
	unsigned steps = 0;
	while (sv_store_file_ops.trash_step(st, true, &left) == 1)
		assert_true(++steps < 1000);
	assert_int_equal(left, 0);
	assert_int_equal(trash_files(dir), 0);
}

/* A store with volume "v" and object "pre-1" of NRUNS scattered chunks
 * (byte i+1 in chunk i); the object stays open in *o if o. */
static struct sv_store *
make_store(const char *dir, struct sv_obj **o)
{
	struct sv_store *st;
	const struct sv_store_ops *ops = &sv_store_file_ops;
	assert_int_equal(ops->open(dir, true, &st), 0);
	assert_int_equal(ops->lock(st), 0);
	assert_int_equal(ops->vol_create(st, "v"), 0);
	struct sv_obj *obj;
	assert_int_equal(ops->obj_open(st, "v", "pre-1", SIZE, SV_OBJ_CREATE, &obj), 0);
	char buf[CHUNK];
	for (unsigned i = 0; i < NRUNS; i++) {
		memset(buf, (int)(i + 1), sizeof buf);
		assert_int_equal(ops->obj_pwrite(obj, buf, sizeof buf, (uint64_t)i * STRIDE, 0), 0);
	}
	assert_int_equal(ops->obj_sync(obj), 0);
	if (o)
		*o = obj;
	else
		ops->obj_close(obj);
	return st;
}

static void
test_trash_steps(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_obj *obj;
	struct sv_store *st = make_store(dir, &obj);
	uint64_t left = 1;

	/* Nothing trashed yet: empty, and no directory needed for it. */
	assert_int_equal(ops->trash_step(st, true, &left), 0);
	assert_int_equal(left, 0);
	errno = 0;
	assert_int_equal(ops->obj_trash(st, "v", "nope"), -1);
	assert_int_equal(errno, ENOENT);

	assert_int_equal(ops->obj_trash(st, "v", "pre-1"), 0);
	/* The name is gone from the volume at once ... */
	char **names;
	size_t n;
	assert_int_equal(ops->obj_list(st, "v", &names, &n), 0);
	for (size_t i = 0; i < n; i++) {
		assert_string_not_equal(names[i], "pre-1");
		free(names[i]);
	}
	free(names);
	struct sv_obj *again;
	assert_int_equal(ops->obj_open(st, "v", "pre-1", SIZE, 0, &again), -1);
	assert_int_equal(errno, ENOENT);
	/* ... the handle still reads the data, and the space is still held. */
	char buf[CHUNK];
	assert_int_equal(ops->obj_pread(obj, buf, sizeof buf, 7 * STRIDE), 0);
	assert_int_equal((unsigned char)buf[0], 8);
	ops->obj_close(obj);
	assert_int_equal(trash_files(dir), 1);
	assert_int_equal(ops->trash_step(st, false, &left), 1); /* looking frees nothing */
	assert_true(left >= (uint64_t)NRUNS * CHUNK);

	/* Steps of at most 64 runs: several, each freeing some. */
	unsigned steps = 0;
	int r;
	do {
		uint64_t before = left;
		r = ops->trash_step(st, true, &left);
		assert_true(r == 0 || r == 1);
		steps++;
		if (r == 1)
			assert_true(left < before);
		assert_true(steps < 1000);
	} while (r == 1);
	assert_int_equal(left, 0);
	assert_true(steps >= (NRUNS + 63) / 64);
	assert_int_equal(trash_files(dir), 0);

	ops->close(st);
	assert_int_equal(test_rmtree(dir), 0);
}

static void
test_trash_resume(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st = make_store(dir, NULL);
	uint64_t left, full;
	assert_int_equal(ops->obj_trash(st, "v", "pre-1"), 0);
	assert_int_equal(ops->trash_step(st, false, &full), 1);
	assert_int_equal(ops->trash_step(st, true, &left), 1); /* one step, then stop */
	assert_true(left < full);
	ops->close(st);
	assert_int_equal(trash_files(dir), 1); /* the rest stays, durably named */

	/* The next process goes on where this one stopped. */
	assert_int_equal(ops->open(dir, false, &st), 0);
	assert_int_equal(ops->lock(st), 0);
	uint64_t resumed;
	assert_int_equal(ops->trash_step(st, false, &resumed), 1);
	assert_int_equal(resumed, left);
	drain(st, dir);
	ops->close(st);
	assert_int_equal(test_rmtree(dir), 0);
}

/* Set (or clear) the immutable flag of the one file in DIR/trash: such a
 * file can be neither opened for writing nor unlinked, even by root.
 * 0, or -1 if the filesystem has no such flag. */
static int
set_immutable(const char *dir, bool on)
{
	char path[384];
	snprintf(path, sizeof path, "%s/trash", dir);
	DIR *d = opendir(path);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)) != NULL && e->d_name[0] == '.')
		;
	assert_non_null(e);
	snprintf(path, sizeof path, "%s/trash/%s", dir, e->d_name);
	closedir(d);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	int flags = 0, r = ioctl(fd, FS_IOC_GETFLAGS, &flags);
	if (r == 0) {
		flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
		r = ioctl(fd, FS_IOC_SETFLAGS, &flags);
	}
	close(fd);
	return r;
}

/* A trashed file that can be neither stepped nor unlinked fails the step
 * with its errno (the pool's thread then logs it and waits for the next
 * removal) instead of reporting more to do for ever: the thread used to
 * spin on it. */
static void
test_trash_stuck(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st = make_store(dir, NULL);
	assert_int_equal(ops->obj_trash(st, "v", "pre-1"), 0);
	if (set_immutable(dir, true) == -1) {
		ops->close(st);
		assert_int_equal(test_rmtree(dir), 0);
		skip(); /* no immutable flag here */
	}
	uint64_t left;
	for (int i = 0; i < 3; i++) {
		errno = 0;
		assert_int_equal(ops->trash_step(st, true, &left), -1);
		assert_int_equal(errno, EPERM);
	}
	assert_int_equal(trash_files(dir), 1); /* nothing lost, nothing half-done */
	assert_int_equal(set_immutable(dir, false), 0);
	drain(st, dir);
	ops->close(st);
	assert_int_equal(test_rmtree(dir), 0);
}

/* A pool opened on a non-empty trash frees it without being asked. */
static void
test_trash_pool_open(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st = make_store(dir, NULL);
	assert_int_equal(ops->obj_trash(st, "v", "pre-1"), 0);
	ops->close(st);
	assert_int_equal(trash_files(dir), 1);

	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	for (unsigned i = 0; i < 3000 && trash_files(dir); i++) { /* 30 s at most */
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(trash_files(dir), 0);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

/* Is vol among the store's volumes? */
static bool
has_volume(const struct sv_store_ops *ops, struct sv_store *st, const char *vol)
{
	char **names;
	size_t n;
	assert_int_equal(ops->vol_list(st, &names, &n), 0);
	bool found = false;
	for (size_t i = 0; i < n; i++) {
		found |= !strcmp(names[i], vol);
		free(names[i]);
	}
	free(names);
	return found;
}

static void
test_vol_trash(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st = make_store(dir, NULL);
	assert_int_equal(ops->meta_write(st, "v", "volume.meta", "{}", 2), 0);
	uint64_t left;

	errno = 0;
	assert_int_equal(ops->vol_trash(st, "nope"), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->vol_trash(st, "v"), 0);
	/* The name is gone at once, and free for a new volume ... */
	assert_false(has_volume(ops, st, "v"));
	assert_int_equal(ops->vol_create(st, "v"), 0);
	struct sv_obj *obj;
	assert_int_equal(ops->obj_open(st, "v", "pre-1", SIZE, 0, &obj), -1);
	assert_int_equal(errno, ENOENT);
	/* ... while the trash holds the old one's space, as one entry. */
	assert_int_equal(trash_files(dir), 1);
	assert_int_equal(ops->trash_step(st, false, &left), 1);
	assert_true(left >= (uint64_t)NRUNS * CHUNK);

	/* Steps of at most 64 runs through its files, then the directory. */
	unsigned steps = 0;
	int r;
	do {
		uint64_t before = left;
		r = ops->trash_step(st, true, &left);
		assert_true(r == 0 || r == 1);
		assert_true(left <= before);
		assert_true(++steps < 1000);
	} while (r == 1);
	assert_int_equal(left, 0);
	assert_true(steps >= (NRUNS + 63) / 64);
	assert_int_equal(trash_files(dir), 0);
	assert_true(has_volume(ops, st, "v")); /* the new one is untouched */
	ops->close(st);
	assert_int_equal(test_rmtree(dir), 0);
}

/* A store closed (or crashed) right after a volume's delete, or half-way
 * through freeing it, leaves it in the trash; the next process finishes. */
static void
test_vol_trash_resume(void **state)
{
	(void)state;
	char dir[64];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	const struct sv_store_ops *ops = &sv_store_file_ops;
	struct sv_store *st = make_store(dir, NULL);
	uint64_t left, full;
	assert_int_equal(ops->vol_trash(st, "v"), 0);
	assert_int_equal(ops->trash_step(st, false, &full), 1);
	assert_int_equal(ops->trash_step(st, true, &left), 1);
	assert_true(left < full);
	ops->close(st);
	assert_int_equal(trash_files(dir), 1);

	assert_int_equal(ops->open(dir, false, &st), 0);
	assert_int_equal(ops->lock(st), 0);
	uint64_t resumed;
	assert_int_equal(ops->trash_step(st, false, &resumed), 1);
	assert_int_equal(resumed, left);
	assert_false(has_volume(ops, st, "v"));
	ops->close(st);

	/* A pool opened on it frees it by itself. */
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	for (unsigned i = 0; i < 3000 && trash_files(dir); i++) { /* 30 s at most */
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(trash_files(dir), 0);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

/* Entries in DIR/trash/SUB. */
static unsigned
trash_sub_files(const char *dir, const char *sub)
{
	char path[512];
	snprintf(path, sizeof path, "%s/trash/%s", dir, sub);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void
sleep_10ms(void)
{
	struct timespec ts = {0, 10 * 1000 * 1000};
	nanosleep(&ts, NULL);
}

/* The engine's delete of a volume with a snapshot's pre-images: the
 * volume's directory moves into the trash whole, the name is free at once
 * (listing, re-create), and the pool's thread frees its files.  A foreign
 * entry (a directory "keep" put into the volume's directory here) is left
 * alone, and keeps the trashed directory, which makes what the delete did
 * visible without racing the thread: without the trash, the delete unlinks
 * the files in place and the volume's directory stays where it was. */
static void
test_volume_delete_trashes(void **state)
{
	(void)state;
	char dir[64], path[512];
	assert_int_equal(test_mkdtemp(dir, "trash", false), 0);
	struct sv_pool *pool;
	assert_int_equal(sv_pool_open(dir, SV_POOL_CREATE, &pool), 0);
	assert_int_equal(sv_volume_create(pool, "big", 16ull << 20, 0), 0);
	struct sv_view *v;
	assert_int_equal(sv_view_open(pool, "big", 3, &v), 0);
	assert_int_equal(test_write_blocks(v, 1, 0, 512, 4096, NULL), 0);
	const char *snap[] = {"big@s"};
	assert_int_equal(sv_snapshot_create(pool, snap, 1, NULL), 0);
	assert_int_equal(test_write_blocks(v, 2, 0, 512, 4096, NULL), 0); /* pre-images */
	/* In use: refused, nothing moved. */
	assert_int_equal(sv_volume_delete(pool, "big"), -1);
	assert_int_equal(sv_last_errno(), EBUSY);
	sv_view_close(v);
	snprintf(path, sizeof path, "%s/volumes/big/keep", dir);
	assert_int_equal(mkdir(path, 0700), 0);

	assert_int_equal(sv_volume_delete(pool, "big"), 0);
	struct sv_volume_info *vi;
	size_t n;
	assert_int_equal(sv_volume_list(pool, &vi, &n), 0);
	assert_int_equal(n, 0);
	free(vi);
	struct stat sb;
	snprintf(path, sizeof path, "%s/volumes/big", dir);
	assert_int_equal(stat(path, &sb), -1);
	/* The trash holds one directory: the volume's, with "keep" in it. */
	assert_int_equal(trash_files(dir), 1);
	snprintf(path, sizeof path, "%s/trash", dir);
	DIR *d = opendir(path);
	assert_non_null(d);
	struct dirent *e;
	char sub[256] = "";
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			snprintf(sub, sizeof sub, "%s", e->d_name);
	closedir(d);
	snprintf(path, sizeof path, "%s/trash/%s/keep", dir, sub);
	assert_int_equal(stat(path, &sb), 0);
	assert_true(S_ISDIR(sb.st_mode));

	/* The name is free again at once, and the new volume is new. */
	assert_int_equal(sv_volume_create(pool, "big", 1ull << 20, 0), 0);
	assert_int_equal(sv_view_open(pool, "big", 3, &v), 0);
	unsigned char buf[4096], zero[4096] = {0};
	int err;
	assert_int_equal(sv_view_pread(v, buf, sizeof buf, 0, &err), 0);
	assert_memory_equal(buf, zero, sizeof buf);
	sv_view_close(v);

	/* The thread frees the old volume's files; "keep" stays. */
	for (unsigned i = 0; i < 3000 && trash_sub_files(dir, sub) > 1; i++) /* 30 s at most */
		sleep_10ms();
	assert_int_equal(trash_sub_files(dir, sub), 1);
	assert_int_equal(stat(path, &sb), 0);
	/* Without it, the next pool open removes the empty directory. */
	assert_int_equal(rmdir(path), 0);
	sv_pool_close(pool);
	assert_int_equal(sv_pool_open(dir, 0, &pool), 0);
	for (unsigned i = 0; i < 3000 && trash_files(dir); i++)
		sleep_10ms();
	assert_int_equal(trash_files(dir), 0);
	sv_pool_close(pool);
	assert_int_equal(test_rmtree(dir), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_trash_steps),
	    cmocka_unit_test(test_trash_resume),
	    cmocka_unit_test(test_trash_stuck),
	    cmocka_unit_test(test_trash_pool_open),
	    cmocka_unit_test(test_vol_trash),
	    cmocka_unit_test(test_vol_trash_resume),
	    cmocka_unit_test(test_volume_delete_trashes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
