/*
 * test-store-rados.c: the store contract (store.h) on the Ceph RADOS
 * backend, against a real single-node cluster.
 *
 * The group starts one cluster (tests/integration/ceph-cluster.sh, about
 * 3 s) and stops it at the end; the last case stops it early to see a dead
 * cluster turn into EIO, not a hang.  Stripes are made small
 * (SNAPVOL_RADOS_OBJECT_SIZE=64K) so that requests cross stripe boundaries,
 * and the claim short (SNAPVOL_RADOS_CLAIM=3s) so that fencing shows within
 * seconds.  Exit 77 (skip) only when the Ceph packages are missing.
 *
 * What each case would catch: a hole that reads as garbage, a write split
 * wrongly over stripes, a punch that leaves data, a blob that is not
 * replaced whole, a volume whose objects survive its removal, a second
 * claim that is granted, a lost claim that still lets writes through, a
 * free-space refresh (a monitor round trip) that other callers wait for.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rados/librados.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "store.h"
#include "util.h"

#define OBJSZ (64u << 10)
#define SPEC  "rados:blk"

static char cluster_dir[128];
static const char *cluster_sh;
static const struct sv_store_ops *ops = &sv_store_rados_ops;

static int
run_cluster(const char *verb)
{
	char cmd[512];
	/* A lifetime, so a test killed before its teardown leaves no cluster
	 * running for long. */
	snprintf(cmd, sizeof cmd, "CEPH_CLUSTER_LIFETIME=180 bash '%s' %s '%s' blk >'%s.log' 2>&1",
		 cluster_sh, verb, cluster_dir, cluster_dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}

static struct sv_store *
open_store(void)
{
	struct sv_store *st = NULL;
	if (sv_store_open(SPEC, true, &st) == -1)
		fail_msg("open %s: %s", SPEC, sv_last_error());
	return st;
}

static void
fill(char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)((i * 131 + seed * 7 + 1) & 0xff);
}

static bool
all_zero(const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i])
			return false;
	return true;
}

/* Every RADOS object whose name starts with prefix. */
static int
count_objects(const char *prefix)
{
	rados_t c;
	rados_ioctx_t io;
	assert_int_equal(rados_create(&c, NULL), 0);
	assert_int_equal(rados_conf_read_file(c, NULL), 0);
	assert_int_equal(rados_connect(c), 0);
	assert_int_equal(rados_ioctx_create(c, "blk", &io), 0);
	rados_list_ctx_t l;
	assert_int_equal(rados_nobjects_list_open(io, &l), 0);
	const char *oid;
	int n = 0;
	while (rados_nobjects_list_next(l, &oid, NULL, NULL) == 0)
		if (!strncmp(oid, prefix, strlen(prefix)))
			n++;
	rados_nobjects_list_close(l);
	rados_ioctx_destroy(io);
	rados_shutdown(c);
	return n;
}

static void
test_volumes(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	assert_string_equal(ops->describe(st), SPEC);
	assert_int_equal(ops->vol_create(st, "v1"), 0);
	assert_int_equal(ops->vol_create(st, "v1"), -1);
	assert_int_equal(errno, EEXIST);
	assert_int_equal(ops->vol_create(st, "v2"), 0);
	char **names;
	size_t n;
	assert_int_equal(ops->vol_list(st, &names, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(names[0], "v1");
	assert_string_equal(names[1], "v2");
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	assert_int_equal(ops->vol_remove(st, "v2"), 0);
	assert_int_equal(ops->vol_remove(st, "v2"), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->vol_list(st, &names, &n), 0);
	assert_int_equal(n, 1);
	free(names[0]);
	free(names);
	ops->close(st);
}

static void
test_data(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	const uint64_t size = 16 * OBJSZ;
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, "v1", "d", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &o), 0);
	struct sv_obj *o2;
	assert_int_equal(ops->obj_open(st, "v1", "d", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &o2), -1);
	assert_int_equal(errno, EEXIST);
	assert_int_equal(ops->obj_open(st, "v1", "d", size * 2, 0, &o2), -1);
	assert_int_equal(errno, EUCLEAN);
	assert_int_equal(ops->obj_open(st, "v1", "missing", size, 0, &o2), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->obj_open(st, "nosuchvol", "d", size, SV_OBJ_CREATE, &o2), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->obj_size(o), size);
	assert_int_equal(ops->obj_fd(o), -1);

	/* Never written: zeros, one hole, nothing allocated. */
	size_t big = 3 * OBJSZ + 1000;
	char *buf = malloc(big), *back = malloc(big);
	assert_int_equal(ops->obj_pread(o, back, big, 5000), 0);
	assert_true(all_zero(back, big));
	struct sv_extent e;
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0);
	assert_true(e.hole);
	assert_int_equal(e.length, size);
	uint64_t alloc = 1;
	assert_int_equal(ops->obj_allocated(o, &alloc), 0);
	assert_int_equal(alloc, 0);

	/* A write across four stripes, unaligned at both ends. */
	fill(buf, big, 1);
	uint64_t off = OBJSZ + 5000;
	assert_int_equal(ops->obj_pwrite(o, buf, big, off, 0), 0);
	assert_int_equal(ops->obj_sync(o), 0);
	memset(back, 0x55, big);
	assert_int_equal(ops->obj_pread(o, back, big, off), 0);
	assert_memory_equal(back, buf, big);
	/* Around it: zeros (before it in its first stripe, after it in its last). */
	char z[8000];
	assert_int_equal(ops->obj_pread(o, z, sizeof z, off - 4000), 0);
	assert_true(all_zero(z, 4000));
	assert_memory_equal(z + 4000, buf, 4000);
	assert_int_equal(ops->obj_pread(o, z, sizeof z, off + big), 0);
	assert_true(all_zero(z, sizeof z));
	/* FUA writes read back too. */
	assert_int_equal(ops->obj_pwrite(o, "fua!", 4, size - 4, SV_STORE_FUA), 0);
	assert_int_equal(ops->obj_pread(o, z, 4, size - 4), 0);
	assert_memory_equal(z, "fua!", 4);

	/* Extents: stripe 0 a hole, data from stripe 1 (its start: the
	 * granularity is a stripe and its length). */
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0);
	assert_true(e.hole);
	assert_int_equal(e.length, OBJSZ);
	assert_int_equal(ops->obj_extent(o, OBJSZ, size - OBJSZ, &e), 0);
	assert_false(e.hole);
	assert_int_equal(OBJSZ + e.length, off + big);
	assert_int_equal(ops->obj_extent(o, off + big, size, &e), 0);
	assert_true(e.hole);
	assert_int_equal(ops->obj_allocated(o, &alloc), 0);
	/* Each stripe counts up to its last written byte: stripes 1-4, and
	 * all of the last one (written at its very end). */
	assert_int_equal(alloc, (off + big - OBJSZ) + OBJSZ);

	/* Punch: the middle of a stripe, then a whole stripe (removed). */
	assert_int_equal(ops->obj_punch(o, off + 100, 200), 0);
	assert_int_equal(ops->obj_pread(o, back, big, off), 0);
	assert_true(all_zero(back + 100, 200));
	assert_memory_equal(back, buf, 100);
	assert_memory_equal(back + 300, buf + 300, big - 300);
	assert_int_equal(ops->obj_punch(o, 2 * OBJSZ, OBJSZ), 0);
	assert_int_equal(ops->obj_extent(o, 2 * OBJSZ, size, &e), 0);
	assert_true(e.hole);
	assert_int_equal(e.length, OBJSZ);
	assert_int_equal(ops->obj_pread(o, back, OBJSZ, 2 * OBJSZ), 0);
	assert_true(all_zero(back, OBJSZ));
	/* Zero over a stripe's tail: zeros, and the hole shows. */
	assert_int_equal(ops->obj_zero(o, 3 * OBJSZ + 10, OBJSZ - 10, SV_ZERO_MAY_TRIM), 0);
	assert_int_equal(ops->obj_pread(o, back, OBJSZ, 3 * OBJSZ), 0);
	assert_memory_equal(back, buf + (3 * OBJSZ - off), 10);
	assert_true(all_zero(back + 10, OBJSZ - 10));
	assert_int_equal(ops->obj_extent(o, 3 * OBJSZ + 10, OBJSZ, &e), 0);
	assert_true(e.hole);

	/* A read-only handle refuses writes. */
	assert_int_equal(ops->obj_open(st, "v1", "d", size, SV_OBJ_RDONLY, &o2), 0);
	assert_int_equal(ops->obj_pwrite(o2, "x", 1, 0, 0), -1);
	ops->obj_close(o2);

	char **names;
	size_t n;
	assert_int_equal(ops->obj_list(st, "v1", &names, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(names[0], "d");
	free(names[0]);
	free(names);
	ops->obj_close(o);

	/* Remove: every stripe goes, and the name is free again. */
	assert_true(count_objects("snapvol.vol.v1/data/d.") > 0);
	assert_int_equal(ops->obj_remove(st, "v1", "d"), 0);
	assert_int_equal(count_objects("snapvol.vol.v1/data/d."), 0);
	assert_int_equal(ops->obj_open(st, "v1", "d", size, 0, &o2), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->obj_open(st, "v1", "d", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &o2), 0);
	assert_int_equal(ops->obj_pread(o2, back, big, off), 0);
	assert_true(all_zero(back, big));
	ops->obj_close(o2);
	free(buf);
	free(back);
	ops->close(st);
}

/* obj_pread_async's completion, waited for by the test. */
struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int calls, err;
};

static void
async_done(void *arg, int err)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->lock);
	w->calls++;
	w->err = err;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* Start an asynchronous read and wait for its one completion: its error. */
static int
read_async(struct sv_obj *o, void *buf, size_t len, uint64_t off)
{
	struct waiter w = {.calls = 0};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	assert_int_equal(ops->obj_pread_async(o, buf, len, off, async_done, &w), 0);
	pthread_mutex_lock(&w.lock);
	while (w.calls == 0)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	usleep(20000); /* a second call would show by now */
	assert_int_equal(w.calls, 1);
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	return w.err;
}

/* The asynchronous read (the NBD layer's READs on RADOS): one read over a
 * full stripe, a missing one and a short one reads what obj_pread reads,
 * holes and the part past a stripe's end as zeros, with one completion;
 * an empty read completes too; a range past the end fails at once.  And
 * obj_extent's cache of full stripes forgets a stripe that a punch
 * shortened. */
static void
test_async_read(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	const uint64_t size = 8 * OBJSZ;
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, "v1", "a", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &o), 0);
	size_t len = 4 * OBJSZ;
	char *buf = malloc(len), *back = malloc(len), *want = calloc(1, len);
	fill(buf, len, 3);
	/* stripe 0 full, stripe 1 a hole, stripe 2 its first half only */
	assert_int_equal(ops->obj_pwrite(o, buf, OBJSZ, 0, 0), 0);
	assert_int_equal(ops->obj_pwrite(o, buf + 2 * OBJSZ, OBJSZ / 2, 2 * OBJSZ, 0), 0);
	memcpy(want, buf, OBJSZ);
	memcpy(want + 2 * OBJSZ, buf + 2 * OBJSZ, OBJSZ / 2);
	memset(back, 0x55, len);
	assert_int_equal(read_async(o, back + 1000, 3 * OBJSZ - 2000, 1000), 0);
	assert_memory_equal(back + 1000, want + 1000, 3 * OBJSZ - 2000);
	assert_int_equal((unsigned char)back[999], 0x55); /* nothing outside the range */
	assert_int_equal((unsigned char)back[3 * OBJSZ - 1000], 0x55);
	char *sync = malloc(len);
	assert_int_equal(ops->obj_pread(o, sync, 3 * OBJSZ - 2000, 1000), 0);
	assert_memory_equal(sync, back + 1000, 3 * OBJSZ - 2000);
	/* Within one stripe, and empty. */
	assert_int_equal(read_async(o, back, 4096, OBJSZ - 8192), 0);
	assert_memory_equal(back, want + OBJSZ - 8192, 4096);
	assert_int_equal(read_async(o, back, 0, 0), 0);
	/* Past the end: refused before anything starts (no completion). */
	struct waiter w = {.calls = 0};
	assert_int_equal(ops->obj_pread_async(o, back, 4096, size - 1000, async_done, &w), -1);
	assert_int_equal(errno, EINVAL);
	usleep(20000);
	assert_int_equal(w.calls, 0);

	/* Stripe 0 is full (known after this), then punched to a short
	 * length and then away: obj_extent must see each change. */
	struct sv_extent e;
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0);
	assert_false(e.hole);
	assert_int_equal(e.length, OBJSZ);
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0); /* from the cache */
	assert_false(e.hole);
	assert_int_equal(e.length, OBJSZ);
	assert_int_equal(ops->obj_punch(o, OBJSZ / 2, OBJSZ / 2), 0);
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0);
	assert_false(e.hole);
	assert_int_equal(e.length, OBJSZ / 2);
	assert_int_equal(ops->obj_punch(o, 0, OBJSZ), 0);
	assert_int_equal(ops->obj_extent(o, 0, size, &e), 0);
	assert_true(e.hole);
	assert_int_equal(e.length, 2 * OBJSZ);
	assert_int_equal(read_async(o, back, OBJSZ, 0), 0);
	assert_true(all_zero(back, OBJSZ));

	ops->obj_close(o);
	assert_int_equal(ops->obj_remove(st, "v1", "a"), 0);
	free(buf);
	free(back);
	free(want);
	free(sync);
	ops->close(st);
}

/* The snap id in vol's index entry of obj ("SIZE snap=ID"), 0 if none. */
static uint64_t
snap_of(const char *vol, const char *obj)
{
	rados_t c;
	rados_ioctx_t io;
	assert_int_equal(rados_create(&c, NULL), 0);
	assert_int_equal(rados_conf_read_file(c, NULL), 0);
	assert_int_equal(rados_connect(c), 0);
	assert_int_equal(rados_ioctx_create(c, "blk", &io), 0);
	char hdr[128], key[128];
	snprintf(hdr, sizeof hdr, "snapvol.vol.%s", vol);
	snprintf(key, sizeof key, "obj.%s", obj);
	const char *k = key;
	size_t kl = strlen(key);
	rados_omap_iter_t it = NULL;
	int prval = 0;
	rados_read_op_t op = rados_create_read_op();
	rados_read_op_omap_get_vals_by_keys2(op, &k, 1, &kl, &it, &prval);
	assert_int_equal(rados_read_op_operate(op, io, hdr, 0), 0);
	char *ok = NULL, *v = NULL;
	size_t okl = 0, vl = 0;
	uint64_t snap = 0;
	assert_int_equal(rados_omap_get_next2(it, &ok, &v, &okl, &vl), 0);
	if (ok) {
		char val[128];
		snprintf(val, sizeof val, "%.*s", (int)vl, v);
		const char *s = strstr(val, " snap=");
		if (s)
			snap = strtoull(s + 6, NULL, 10);
	}
	rados_omap_get_end(it);
	rados_release_read_op(op);
	rados_ioctx_destroy(io);
	rados_shutdown(c);
	return snap;
}

/* The snap ids the clones of RADOS object oid are kept for (from "rados
 * listsnaps"), into ids; their number, or -1 if it cannot be listed. */
static int
clone_snaps(const char *oid, uint64_t *ids, int max)
{
	char cmd[400], line[512];
	snprintf(cmd, sizeof cmd, "timeout 20 rados -p blk listsnaps '%s' 2>/dev/null", oid);
	FILE *f = popen(cmd, "r");
	if (!f)
		return -1;
	int n = 0;
	while (fgets(line, sizeof line, f)) {
		/* "CLONEID\tSNAP,SNAP\tSIZE\t...": a clone; "head\t-..." is not */
		char *tab = strchr(line, '\t');
		if (!tab || line[0] < '0' || line[0] > '9')
			continue;
		for (char *p = tab + 1; *p >= '0' && *p <= '9';) {
			char *end;
			uint64_t id = strtoull(p, &end, 10);
			if (n < max)
				ids[n] = id;
			n++;
			p = *end == ',' ? end + 1 : end;
		}
	}
	return pclose(f) == 0 ? n : -1;
}

static bool
has_id(const uint64_t *ids, int n, uint64_t id)
{
	for (int i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

static void
stripe_name(char *buf, size_t len, const char *vol, const char *obj, unsigned i)
{
	snprintf(buf, len, "snapvol.vol.%s/data/%s.%016x", vol, obj, i);
}

/* Native pre-images (self-managed snapshots): a pre-image object reads the
 * origin as it was when obj_preserve returned, through writes, zeros,
 * punches of whole stripes and of stripes' tails made after it; a stripe
 * made after it reads zeros; a second epoch reads its own moment; objects
 * other than the origin are not cloned; preservation lasts across a new
 * open of the store; removing a pre-image removes its snap; and a volume
 * made with SNAPVOL_RADOS_PRE=copy has plain writable pre-image objects. */
static void
test_native_pre(void **state)
{
	(void)state;
	unsetenv("SNAPVOL_RADOS_PRE");
	struct sv_store *st = open_store();
	assert_int_equal(ops->vol_create(st, "nat1"), 0);
	assert_true(ops->vol_native_pre(st, "nat1"));
	const uint64_t size = 8 * OBJSZ;
	const size_t span = 6 * OBJSZ;
	struct sv_obj *origin, *j, *pre1, *pre2, *x;
	assert_int_equal(
	    ops->obj_open(st, "nat1", "origin", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &origin), 0);
	assert_int_equal(ops->obj_open(st, "nat1", "journal", OBJSZ, SV_OBJ_CREATE, &j), 0);
	char *a = calloc(1, span), *b = malloc(span), *now = malloc(span), *back = malloc(span);
	/* Stripes 0-4 written, 5 a hole. */
	fill(a, 5 * OBJSZ, 1);
	assert_int_equal(ops->obj_pwrite(origin, a, 5 * OBJSZ, 0, 0), 0);
	assert_int_equal(ops->obj_pwrite(j, "old", 3, 0, 0), 0);

	assert_int_equal(
	    ops->obj_open(st, "nat1", "pre-1", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &pre1), 0);
	assert_int_equal(ops->obj_open(st, "nat1", "pre-1", size, SV_OBJ_CREATE | SV_OBJ_EXCL, &x),
			 -1);
	assert_int_equal(errno, EEXIST);
	uint64_t s1 = snap_of("nat1", "pre-1");
	assert_true(s1 > 0);
	assert_int_equal(ops->obj_preserve(origin, pre1), 0);

	/* After it: a write (stripe 0), a zero (middle of 1), a punch of a
	 * whole stripe (2), of a stripe's tail (3, a truncate), a new stripe
	 * (5), and a write of another object of the volume. */
	memcpy(now, a, span);
	fill(b, span, 2);
	assert_int_equal(ops->obj_pwrite(origin, b, 1000, 100, 0), 0);
	memcpy(now + 100, b, 1000);
	assert_int_equal(ops->obj_zero(origin, OBJSZ + 10, 100, 0), 0);
	memset(now + OBJSZ + 10, 0, 100);
	assert_int_equal(ops->obj_punch(origin, 2 * OBJSZ, OBJSZ), 0);
	memset(now + 2 * OBJSZ, 0, OBJSZ);
	assert_int_equal(ops->obj_punch(origin, 3 * OBJSZ + 500, OBJSZ - 500), 0);
	memset(now + 3 * OBJSZ + 500, 0, OBJSZ - 500);
	assert_int_equal(ops->obj_pwrite(origin, b, OBJSZ, 5 * OBJSZ, 0), 0);
	memcpy(now + 5 * OBJSZ, b, OBJSZ);
	assert_int_equal(ops->obj_pwrite(j, "new", 3, 0, 0), 0);

	assert_int_equal(ops->obj_pread(origin, back, span, 0), 0);
	assert_memory_equal(back, now, span);
	memset(back, 0x55, span);
	assert_int_equal(ops->obj_pread(pre1, back, span, 0), 0);
	assert_memory_equal(back, a, span); /* stripe 5: zeros, as it was */
	memset(back, 0x55, span);
	assert_int_equal(read_async(pre1, back + 7, span - 7, 7), 0);
	assert_memory_equal(back + 7, a + 7, span - 7);
	struct sv_extent e;
	assert_int_equal(ops->obj_extent(pre1, 0, size, &e), 0);
	assert_false(e.hole);
	assert_int_equal(e.length, 5 * OBJSZ);
	assert_int_equal(ops->obj_extent(pre1, 5 * OBJSZ, size - 5 * OBJSZ, &e), 0);
	assert_true(e.hole);
	assert_int_equal(e.length, size - 5 * OBJSZ);

	/* Never written by anyone but the OSD. */
	assert_int_equal(ops->obj_pwrite(pre1, b, 10, 0, 0), -1);
	assert_int_equal(errno, ENOTSUP);
	assert_int_equal(ops->obj_punch(pre1, 0, OBJSZ), 0);
	assert_int_equal(ops->obj_zero(pre1, 0, OBJSZ, SV_ZERO_MAY_TRIM), 0);
	assert_int_equal(ops->obj_sync(pre1), 0);
	uint64_t alloc;
	assert_int_equal(ops->obj_allocated(pre1, &alloc), -1);
	assert_int_equal(errno, ENOTSUP);
	assert_int_equal(ops->obj_pread(pre1, back, OBJSZ, 0), 0);
	assert_memory_equal(back, a, OBJSZ);

	/* A second epoch reads the origin as at its own preserve. */
	char *pre2want = malloc(span);
	memcpy(pre2want, now, span);
	assert_int_equal(ops->obj_open(st, "nat1", "pre-2", size, SV_OBJ_CREATE, &pre2), 0);
	uint64_t s2 = snap_of("nat1", "pre-2");
	assert_true(s2 > s1);
	assert_int_equal(ops->obj_preserve(origin, pre2), 0);
	fill(now, 4 * OBJSZ, 3); /* stripes 4 and 5 stay as they were */
	assert_int_equal(ops->obj_pwrite(origin, now, 4 * OBJSZ, 0, 0), 0);
	assert_int_equal(ops->obj_pread(pre2, back, span, 0), 0);
	assert_memory_equal(back, pre2want, span);
	assert_int_equal(ops->obj_pread(pre1, back, span, 0), 0);
	assert_memory_equal(back, a, span);
	assert_int_equal(ops->obj_pread(origin, back, span, 0), 0);
	assert_memory_equal(back, now, span);

	/* The OSD cloned the origin's stripes, and nothing else. */
	uint64_t ids[16];
	char oid[200];
	stripe_name(oid, sizeof oid, "nat1", "origin", 0);
	int n = clone_snaps(oid, ids, 16);
	print_message("origin stripe 0: %d snap ids in clones (pre-1 %" PRIu64 ", pre-2 %" PRIu64
		      ")\n",
		      n, s1, s2);
	assert_true(n >= 2 && has_id(ids, n, s1) && has_id(ids, n, s2));
	stripe_name(oid, sizeof oid, "nat1", "journal", 0);
	assert_int_equal(clone_snaps(oid, ids, 16), 0);

	/* Lasting: a new open of the store (a restart) preserves into both
	 * (stripes 4 and 5 are first written since either preserve here). */
	ops->obj_close(pre1);
	ops->obj_close(pre2);
	ops->obj_close(origin);
	ops->obj_close(j);
	ops->close(st);
	st = open_store();
	assert_true(ops->vol_native_pre(st, "nat1"));
	assert_int_equal(ops->obj_open(st, "nat1", "origin", size, 0, &origin), 0);
	fill(b, span, 4);
	assert_int_equal(ops->obj_pwrite(origin, b, span, 0, 0), 0);
	assert_int_equal(ops->obj_open(st, "nat1", "pre-1", size, 0, &pre1), 0);
	assert_int_equal(ops->obj_open(st, "nat1", "pre-2", size, 0, &pre2), 0);
	assert_int_equal(ops->obj_pread(pre1, back, span, 0), 0);
	assert_memory_equal(back, a, span);
	assert_int_equal(ops->obj_pread(pre2, back, span, 0), 0);
	assert_memory_equal(back, pre2want, span);
	/* The origin removed whole (through its snap context): still read. */
	ops->obj_close(origin);
	assert_int_equal(ops->obj_remove(st, "nat1", "origin"), 0);
	assert_int_equal(ops->obj_pread(pre2, back, span, 0), 0);
	assert_memory_equal(back, pre2want, span);

	/* Removing pre-1 removes its snap: no clone keeps it (the OSD trims
	 * in the background), and it cannot be opened. */
	ops->obj_close(pre1);
	assert_int_equal(ops->obj_remove(st, "nat1", "pre-1"), 0);
	assert_int_equal(ops->obj_open(st, "nat1", "pre-1", size, 0, &x), -1);
	assert_int_equal(errno, ENOENT);
	stripe_name(oid, sizeof oid, "nat1", "origin", 0);
	for (int i = 0; i < 100; i++) {
		n = clone_snaps(oid, ids, 16);
		if (n >= 0 && !has_id(ids, n, s1))
			break;
		usleep(100000);
	}
	assert_true(n >= 1 && !has_id(ids, n, s1) && has_id(ids, n, s2));
	assert_int_equal(ops->obj_pread(pre2, back, span, 0), 0);
	assert_memory_equal(back, pre2want, span);
	ops->obj_close(pre2);
	/* The volume goes with every snap of it. */
	assert_int_equal(ops->vol_remove(st, "nat1"), 0);
	for (int i = 0; i < 100; i++) {
		n = clone_snaps(oid, ids, 16);
		if (n <= 0)
			break;
		usleep(100000);
	}
	assert_true(n <= 0);
	assert_int_equal(count_objects("snapvol.vol.nat1"), 0);

	/* Copy mode: the engine copies into plain objects. */
	setenv("SNAPVOL_RADOS_PRE", "nonsense", 1);
	assert_int_equal(ops->vol_create(st, "cp1"), -1);
	assert_int_equal(errno, EINVAL);
	setenv("SNAPVOL_RADOS_PRE", "copy", 1);
	assert_int_equal(ops->vol_create(st, "cp1"), 0);
	unsetenv("SNAPVOL_RADOS_PRE");
	assert_false(ops->vol_native_pre(st, "cp1"));
	assert_int_equal(ops->obj_open(st, "cp1", "origin", size, SV_OBJ_CREATE, &origin), 0);
	assert_int_equal(ops->obj_open(st, "cp1", "pre-1", size, SV_OBJ_CREATE, &pre1), 0);
	assert_int_equal(snap_of("cp1", "pre-1"), 0);
	assert_int_equal(ops->obj_pwrite(pre1, b, 4096, 0, 0), 0);
	assert_int_equal(ops->obj_pread(pre1, back, 4096, 0), 0);
	assert_memory_equal(back, b, 4096);
	assert_int_equal(ops->obj_preserve(origin, pre1), -1);
	ops->obj_close(pre1);
	ops->obj_close(origin);
	ops->close(st);
	/* Still copy on a new open, where nothing is cached. */
	st = open_store();
	assert_false(ops->vol_native_pre(st, "cp1"));
	assert_int_equal(ops->vol_remove(st, "cp1"), 0);
	ops->close(st);
	free(a);
	free(b);
	free(now);
	free(back);
	free(pre2want);
}

struct writer {
	struct sv_obj *o;
	unsigned seed;
	int failed;
};

static void *
writer_thread(void *arg)
{
	struct writer *w = arg;
	char buf[4096];
	for (int i = 0; i < 300; i++) {
		fill(buf, sizeof buf, w->seed + (unsigned)i);
		uint64_t off = (uint64_t)((w->seed * 7919u + (unsigned)i * 104729u) % 64) * 4096;
		if (ops->obj_pwrite(w->o, buf, sizeof buf, off, 0) == -1 ||
		    (i % 16 == 0 && ops->obj_punch(w->o, off, 4096) == -1)) {
			print_message("writer %u: %s\n", w->seed, strerror(errno));
			w->failed++;
		}
	}
	return NULL;
}

/* obj_preserve and pre-image removal change the origin's snap context
 * while other threads write it (librados assigns an ioctx's snap context
 * without a lock; store-rados.c orders them with the write context's
 * lock): every write succeeds, and the last pre-image, preserved after
 * every writer ended, reads what the origin holds. */
static void
test_native_preserve_racing(void **state)
{
	(void)state;
	unsetenv("SNAPVOL_RADOS_PRE");
	struct sv_store *st = open_store();
	assert_int_equal(ops->vol_create(st, "nat2"), 0);
	const uint64_t size = 4 * OBJSZ;
	struct sv_obj *origin, *pre;
	assert_int_equal(ops->obj_open(st, "nat2", "origin", size, SV_OBJ_CREATE, &origin), 0);
	struct writer w[3];
	pthread_t t[3];
	for (unsigned i = 0; i < 3; i++) {
		w[i] = (struct writer){.o = origin, .seed = i + 1};
		assert_int_equal(pthread_create(&t[i], NULL, writer_thread, &w[i]), 0);
	}
	for (int k = 1; k <= 12; k++) {
		char name[16];
		snprintf(name, sizeof name, "pre-%d", k);
		int r = ops->obj_open(st, "nat2", name, size, SV_OBJ_CREATE, &pre);
		if (r == -1)
			print_message("obj_open %s: %s\n", name, strerror(errno));
		assert_int_equal(r, 0);
		assert_int_equal(ops->obj_preserve(origin, pre), 0);
		ops->obj_close(pre);
		if (k > 2) {
			snprintf(name, sizeof name, "pre-%d", k - 2);
			assert_int_equal(ops->obj_remove(st, "nat2", name), 0);
		}
	}
	for (unsigned i = 0; i < 3; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].failed, 0);
	}
	assert_int_equal(ops->obj_open(st, "nat2", "pre-13", size, SV_OBJ_CREATE, &pre), 0);
	assert_int_equal(ops->obj_preserve(origin, pre), 0);
	char *x = malloc(size), *y = malloc(size);
	assert_int_equal(ops->obj_pread(origin, x, size, 0), 0);
	fill(y, size, 99);
	assert_int_equal(ops->obj_pwrite(origin, y, size, 0, 0), 0);
	assert_int_equal(ops->obj_pread(pre, y, size, 0), 0);
	assert_memory_equal(x, y, size);
	ops->obj_close(pre);
	ops->obj_close(origin);
	assert_int_equal(ops->vol_remove(st, "nat2"), 0);
	ops->close(st);
	free(x);
	free(y);
}

static void
test_meta(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	char *b;
	size_t len;
	assert_int_equal(ops->meta_read(st, "v1", "k.meta", &b, &len), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(ops->meta_write(st, "v1", "k.meta", "first, long one", 15), 0);
	assert_int_equal(ops->meta_read(st, "v1", "k.meta", &b, &len), 0);
	assert_int_equal(len, 15);
	assert_memory_equal(b, "first, long one", 15);
	free(b);
	/* Replaced whole: shorter contents leave nothing of the old. */
	assert_int_equal(ops->meta_write(st, "v1", "k.meta", "2nd", 3), 0);
	assert_int_equal(ops->meta_read(st, "v1", "k.meta", &b, &len), 0);
	assert_int_equal(len, 3);
	assert_string_equal(b, "2nd");
	free(b);
	/* Larger than the first read's buffer. */
	size_t big = 1 << 20;
	char *x = malloc(big);
	fill(x, big, 9);
	assert_int_equal(ops->meta_write(st, "v1", "big.meta", x, big), 0);
	assert_int_equal(ops->meta_read(st, "v1", "big.meta", &b, &len), 0);
	assert_int_equal(len, big);
	assert_memory_equal(b, x, big);
	free(b);
	free(x);
	/* Empty blob. */
	assert_int_equal(ops->meta_write(st, "v1", "empty.meta", "", 0), 0);
	assert_int_equal(ops->meta_read(st, "v1", "empty.meta", &b, &len), 0);
	assert_int_equal(len, 0);
	free(b);
	assert_int_equal(ops->meta_remove(st, "v1", "empty.meta"), 0);
	assert_int_equal(ops->meta_read(st, "v1", "empty.meta", &b, &len), -1);
	assert_int_equal(errno, ENOENT);
	/* No volume, no blob. */
	assert_int_equal(ops->meta_write(st, "nosuchvol", "k.meta", "x", 1), -1);
	assert_int_equal(errno, ENOENT);

	/* Removing the volume removes its blobs and objects. */
	assert_true(count_objects("snapvol.vol.v1") > 0);
	assert_int_equal(ops->vol_remove(st, "v1"), 0);
	assert_int_equal(count_objects("snapvol.vol.v1"), 0);
	assert_int_equal(ops->vol_create(st, "v1"), 0);
	ops->close(st);
}

/* Break the claim lock on oid behind its holder's back, as when it lapsed. */
static void
break_claim(const char *oid)
{
	rados_t c;
	rados_ioctx_t io;
	assert_int_equal(rados_create(&c, NULL), 0);
	assert_int_equal(rados_conf_read_file(c, NULL), 0);
	assert_int_equal(rados_connect(c), 0);
	assert_int_equal(rados_ioctx_create(c, "blk", &io), 0);
	char tag[64], clients[256], cookies[256], addrs[256];
	size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies, al = sizeof addrs;
	int excl;
	assert_int_equal(rados_list_lockers(io, oid, "snapvol.claim", &excl, tag, &tl, clients, &cl,
					    cookies, &kl, addrs, &al),
			 1);
	assert_int_equal(rados_break_lock(io, oid, "snapvol.claim", clients, cookies), 0);
	rados_ioctx_destroy(io);
	rados_shutdown(c);
}

/* Make native pre-image N of vol through st (claimed) and close it; its
 * snap id. */
static uint64_t
make_pre(struct sv_store *st, const char *vol, unsigned n)
{
	char name[16];
	snprintf(name, sizeof name, "pre-%u", n);
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, vol, name, OBJSZ, SV_OBJ_CREATE | SV_OBJ_EXCL, &o), 0);
	ops->obj_close(o);
	uint64_t id = snap_of(vol, name);
	assert_true(id > 0);
	return id;
}

/* Spare snap ids (store-rados.c, take_snap_id): a process that makes
 * pre-images keeps ids asked for in the background, but a volume's ids
 * must still grow with time across nodes.  Here node a makes three
 * pre-images (the third from a spare), lets the volume go, node b makes
 * one, and a, claiming it again, must not take the spares it asked for
 * before b's: its next id is above b's. */
static void
test_spare_ids(void **state)
{
	(void)state;
	unsetenv("SNAPVOL_RADOS_PRE");
	struct sv_store *a = open_store(), *b = open_store();
	assert_int_equal(ops->lock(a), 0);
	assert_int_equal(ops->lock(b), 0);
	assert_int_equal(ops->vol_claim(a, "sp1"), 0);
	assert_int_equal(ops->vol_create(a, "sp1"), 0);
	uint64_t id1 = make_pre(a, "sp1", 1), id2 = make_pre(a, "sp1", 2);
	usleep(500000); /* room for the spares to arrive (not needed for the checks) */
	uint64_t id3 = make_pre(a, "sp1", 3);
	assert_true(id1 < id2 && id2 < id3);
	ops->vol_release(a, "sp1");

	assert_int_equal(ops->vol_claim(b, "sp1"), 0);
	uint64_t id4 = make_pre(b, "sp1", 4);
	assert_true(id4 > id3);
	ops->vol_release(b, "sp1");

	assert_int_equal(ops->vol_claim(a, "sp1"), 0);
	uint64_t id5 = make_pre(a, "sp1", 5);
	assert_true(id5 > id4);
	uint64_t id6 = make_pre(a, "sp1", 6);
	assert_true(id6 > id5);
	for (unsigned n = 1; n <= 6; n++) {
		char name[16];
		snprintf(name, sizeof name, "pre-%u", n);
		assert_int_equal(ops->obj_remove(a, "sp1", name), 0);
	}
	assert_int_equal(ops->vol_remove(a, "sp1"), 0);
	ops->vol_release(a, "sp1");
	ops->close(a);
	ops->close(b);
}

/* A volume's pre-image mode is read again when its claim is taken: another
 * node may have deleted it and made it again in the other mode meanwhile
 * (a stale mode would read a copy-mode pre-image through the origin's
 * snapshots). */
static void
test_mode_recreated(void **state)
{
	(void)state;
	unsetenv("SNAPVOL_RADOS_PRE");
	struct sv_store *a = open_store(), *b = open_store();
	assert_int_equal(ops->lock(a), 0);
	assert_int_equal(ops->lock(b), 0);
	assert_int_equal(ops->vol_claim(a, "m1"), 0);
	assert_int_equal(ops->vol_create(a, "m1"), 0);
	assert_true(ops->vol_native_pre(a, "m1"));
	ops->vol_release(a, "m1");

	assert_int_equal(ops->vol_claim(b, "m1"), 0);
	assert_int_equal(ops->vol_remove(b, "m1"), 0);
	setenv("SNAPVOL_RADOS_PRE", "copy", 1);
	assert_int_equal(ops->vol_create(b, "m1"), 0);
	unsetenv("SNAPVOL_RADOS_PRE");
	ops->vol_release(b, "m1");

	assert_int_equal(ops->vol_claim(a, "m1"), 0);
	assert_false(ops->vol_native_pre(a, "m1"));
	assert_int_equal(ops->vol_remove(a, "m1"), 0);
	ops->vol_release(a, "m1");
	ops->close(a);
	ops->close(b);
}

static void
test_claim(void **state)
{
	(void)state;
	/* Two "nodes" on one pool: each takes the claim of its own volume. */
	struct sv_store *a = open_store(), *b = open_store();
	assert_int_equal(ops->lock(a), 0);
	assert_int_equal(ops->lock(b), 0);
	/* A volume is made under its claim too. */
	assert_int_equal(ops->vol_create(a, "c1"), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(ops->vol_claim(a, "c1"), 0);
	assert_int_equal(ops->vol_create(a, "c1"), 0);
	assert_int_equal(ops->vol_claim(b, "c2"), 0);
	assert_int_equal(ops->vol_create(b, "c2"), 0);
	sv_clear_error();
	assert_int_equal(ops->vol_claim(b, "c1"), -1);
	assert_int_equal(errno, EWOULDBLOCK);
	/* The refusal names the holder: this process. */
	char pid[32];
	snprintf(pid, sizeof pid, "pid %ld ", (long)getpid());
	assert_non_null(strstr(sv_last_error(), "volume c1 is claimed by"));
	assert_non_null(strstr(sv_last_error(), pid));
	assert_non_null(strstr(sv_last_error(), "lapses 3 s"));

	/* Without the claim, no write of the volume reaches the cluster. */
	struct sv_obj *oa, *ob, *o2;
	assert_int_equal(ops->obj_open(a, "c1", "d", OBJSZ, SV_OBJ_CREATE, &oa), 0);
	assert_int_equal(ops->obj_open(b, "c1", "d", OBJSZ, 0, &ob), 0);
	assert_int_equal(ops->obj_open(b, "c2", "d", OBJSZ, SV_OBJ_CREATE, &o2), 0);
	assert_int_equal(ops->obj_pwrite(ob, "nope", 4, 0, 0), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(ops->meta_write(b, "c1", "k.meta", "x", 1), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(ops->obj_pwrite(o2, "bbbb", 4, 0, 0), 0);

	/* Renewed: still held well past its 3 s duration, by both. */
	sleep(4);
	assert_int_equal(ops->obj_pwrite(oa, "held", 4, 0, 0), 0);
	assert_int_equal(ops->obj_pwrite(o2, "held", 4, 0, 0), 0);
	assert_int_equal(ops->vol_claim(b, "c1"), -1);

	/* A release lets the next one in at once; claims are counted. */
	assert_int_equal(ops->vol_claim(a, "c1"), 0);
	ops->vol_release(a, "c1");
	assert_int_equal(ops->vol_claim(b, "c1"), -1);
	ops->vol_release(a, "c1");
	assert_int_equal(ops->vol_claim(b, "c1"), 0);
	assert_int_equal(ops->obj_pwrite(ob, "bb", 2, 0, 0), 0);
	assert_int_equal(ops->obj_pwrite(oa, "aa", 2, 0, 0), -1); /* a let go */
	assert_int_equal(errno, EIO);

	/* A claim that lapsed with nobody taking it meanwhile is taken back
	 * by its holder, and writes go on. */
	break_claim("snapvol.claim.c2");
	sleep(2); /* a renewal, every second */
	int r = 0;
	for (int i = 0; i < 40; i++) {
		r = ops->obj_pwrite(o2, "back", 4, 0, 0);
		usleep(100000);
	}
	assert_int_equal(r, 0);
	assert_int_equal(ops->obj_sync(o2), 0);

	/* Lost to another node (a takes c1 while b's claim is broken): b stops
	 * writing at once, for good (a blocklists b), and a reads b's data. */
	break_claim("snapvol.claim.c1");
	assert_int_equal(ops->vol_claim(a, "c1"), 0);
	r = 0;
	for (int i = 0; i < 60 && r == 0; i++) {
		r = ops->obj_pwrite(ob, "late", 4, 0, 0);
		if (r == 0)
			usleep(100000);
	}
	assert_int_equal(r, -1);
	assert_int_equal(errno, EIO);
	char back[4];
	assert_int_equal(ops->obj_pread(oa, back, 4, 0), 0);
	assert_true(!memcmp(back, "late", 4) || !memcmp(back, "bbld", 4));
	assert_int_equal(ops->obj_pwrite(oa, "mine", 4, 0, 0), 0);
	ops->obj_close(ob);
	ops->obj_close(o2);
	ops->close(b);

	/* Free space: known, and more than nothing on this cluster. */
	uint64_t avail = 0;
	assert_int_equal(ops->space_avail(a, &avail), 0);
	print_message("space_avail: %" PRIu64 " MiB\n", avail >> 20);
	assert_true(avail > 0);
	/* Under the pool's byte quota (read from the monitor, not cached
	 * past a second). */
	assert_int_equal(system("timeout 20 ceph osd pool set-quota blk max_bytes 1048576 "
				">/dev/null 2>&1"),
			 0);
	usleep(1100000);
	assert_int_equal(ops->space_avail(a, &avail), 0);
	assert_true(avail <= 1048576);
	assert_int_equal(
	    system("timeout 20 ceph osd pool set-quota blk max_bytes 0 >/dev/null 2>&1"), 0);
	ops->obj_close(oa);
	ops->vol_release(a, "c1");
	assert_int_equal(ops->vol_claim(a, "c1"), 0);
	assert_int_equal(ops->vol_remove(a, "c1"), 0);
	ops->vol_release(a, "c1");
	ops->close(a);
	/* The claims of the volumes this test made are gone with them. */
	a = open_store();
	assert_int_equal(ops->lock(a), 0);
	/* b was blocklisted, so its claim of c2 lapses rather than goes. */
	for (int i = 0; i < 100 && (r = ops->vol_claim(a, "c2")) == -1; i++)
		usleep(100000);
	assert_int_equal(r, 0);
	assert_int_equal(ops->vol_remove(a, "c2"), 0);
	ops->vol_release(a, "c2");
	ops->close(a);
	assert_int_equal(count_objects("snapvol.claim.c"), 0);
}

/* The monitor's pid (mon.pid names the "timeout" that runs it). */
static pid_t
mon_pid(void)
{
	char path[200];
	long t = 0, m = 0;
	snprintf(path, sizeof path, "%s/mon.pid", cluster_dir);
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%ld", &t) != 1)
			t = 0;
		fclose(f);
	}
	snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", t, t);
	if (t > 0 && (f = fopen(path, "r"))) {
		if (fscanf(f, "%ld", &m) != 1)
			m = 0;
		fclose(f);
	}
	return (pid_t)m;
}

struct space_call {
	struct sv_store *st;
	pthread_barrier_t *go;
	uint64_t avail, ns;
	int rc;
};

static void *
space_call(void *arg)
{
	struct space_call *c = arg;
	pthread_barrier_wait(c->go);
	uint64_t t0 = sv_now_ns();
	c->rc = ops->space_avail(c->st, &c->avail);
	c->ns = sv_now_ns() - t0;
	return NULL;
}

/* space_avail's refresh (monitor round trips, once a second) is made by
 * one caller while the others take the last answer: with the monitor
 * stopped, of two callers at once one waits out the op timeout and fails,
 * and the other answers the cached figure (before, the second waited for
 * the first and then made its own refresh, and failed too). */
static void
test_space_refresh(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	uint64_t first = 0;
	assert_int_equal(ops->space_avail(st, &first), 0);
	usleep(1100000); /* the cached answer is now due for a refresh */
	pid_t mon = mon_pid();
	assert_true(mon > 0);
	assert_int_equal(kill(mon, SIGSTOP), 0);
	pthread_barrier_t go;
	pthread_barrier_init(&go, NULL, 2);
	struct space_call c[2] = {{.st = st, .go = &go}, {.st = st, .go = &go}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, space_call, &c[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(kill(mon, SIGCONT), 0);
	pthread_barrier_destroy(&go);
	print_message("space_avail with the monitor %d stopped: %d in %.2f s and %d in %.2f s\n",
		      (int)mon, c[0].rc, c[0].ns / 1e9, c[1].rc, c[1].ns / 1e9);
	/* (Both answer if the refresh got through after all.) */
	assert_true(c[0].rc == 0 || c[1].rc == 0);
	for (int i = 0; i < 2; i++)
		if (c[i].rc == 0)
			assert_int_equal(c[i].avail, first);
	/* With the monitor back, a refresh succeeds again. */
	uint64_t avail = 0;
	int r = -1;
	for (int i = 0; i < 100 && (r = ops->space_avail(st, &avail)) == -1; i++)
		usleep(100000);
	assert_int_equal(r, 0);
	ops->close(st);
}

static void
test_dead_cluster(void **state)
{
	(void)state;
	struct sv_store *st = open_store();
	struct sv_obj *o;
	assert_int_equal(ops->obj_open(st, "v1", "d", OBJSZ, SV_OBJ_CREATE, &o), 0);
	assert_int_equal(run_cluster("stop"), 0);
	uint64_t t0 = sv_now_ns();
	char buf[4096];
	assert_int_equal(ops->obj_pread(o, buf, sizeof buf, 0), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(ops->obj_pwrite(o, buf, sizeof buf, 0, 0), -1);
	assert_int_equal(errno, EIO);
	/* An asynchronous read starts, and its completion says EIO. */
	assert_int_equal(read_async(o, buf, sizeof buf, 0), EIO);
	double s = (double)(sv_now_ns() - t0) / 1e9;
	print_message("dead cluster: EIO after %.1f s for a read, a write and an async read\n", s);
	assert_true(s < 30); /* not a hang; the op timeout is 1 s */
	ops->obj_close(o);
	ops->close(st);
}

static int
group_setup(void **state)
{
	(void)state;
	char cwd[64];
	snprintf(cwd, sizeof cwd, "/tmp/snapvol-test-rados-XXXXXX");
	if (!mkdtemp(cwd))
		return -1;
	snprintf(cluster_dir, sizeof cluster_dir, "%s/c", cwd);
	int r = run_cluster("start");
	if (r != 0) {
		fprintf(stderr, "cannot start a Ceph cluster (status %d): see %s.log\n", r,
			cluster_dir);
		return -1;
	}
	char conf[160];
	snprintf(conf, sizeof conf, "%s/ceph.conf", cluster_dir);
	setenv("CEPH_CONF", conf, 1);
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	run_cluster("stop");
	char cmd[200];
	snprintf(cmd, sizeof cmd, "rm -rf '%.*s'", (int)(strrchr(cluster_dir, '/') - cluster_dir),
		 cluster_dir);
	return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
	cluster_sh = getenv("CEPH_CLUSTER_SH");
	if (!cluster_sh || access(cluster_sh, R_OK) != 0) {
		fprintf(stderr, "CEPH_CLUSTER_SH must name tests/integration/ceph-cluster.sh\n");
		return 1;
	}
	if (access("/usr/bin/ceph-mon", X_OK) != 0 || access("/usr/bin/ceph-osd", X_OK) != 0) {
		fprintf(stderr, "SKIP: ceph-mon and ceph-osd are not installed\n");
		return 77;
	}
	setenv("SNAPVOL_RADOS_OBJECT_SIZE", "64K", 1);
	setenv("SNAPVOL_RADOS_CLAIM", "3s", 1);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_volumes),
	    cmocka_unit_test(test_data),
	    cmocka_unit_test(test_async_read),
	    cmocka_unit_test(test_native_pre),
	    cmocka_unit_test(test_native_preserve_racing),
	    cmocka_unit_test(test_meta),
	    cmocka_unit_test(test_claim),
	    cmocka_unit_test(test_mode_recreated),
	    cmocka_unit_test(test_spare_ids),
	    cmocka_unit_test(test_space_refresh),
	    cmocka_unit_test(test_dead_cluster),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
