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
 * reopen; and a pool opened on a non-empty trash empties it by itself.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

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
	unsigned steps = 0;
	while (ops->trash_step(st, true, &left) == 1)
		assert_true(++steps < 1000);
	assert_int_equal(left, 0);
	assert_int_equal(trash_files(dir), 0);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_trash_steps),
	    cmocka_unit_test(test_trash_resume),
	    cmocka_unit_test(test_trash_pool_open),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
