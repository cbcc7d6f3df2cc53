/*
 * test-volume.c: unit tests for the engine's volume layer on a real local
 * pool in a temporary directory: create, list, info, delete, the pool lock,
 * metadata checksums, and the data path of a live view.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "config.h"
#include "engine.h"
#include "testpool.h"
#include "error.h"
#include "internal.h"

static int
setup(void **state)
{
	return test_pool_setup(state, "volume", false);
}

static int
teardown(void **state)
{
	return test_pool_teardown(state);
}

static void
test_create_list_info_delete(void **state)
{
	struct test_pool *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "vm1", 1 << 20, 0), 0);
	assert_int_equal(sv_volume_create(f->pool, "a0", 8 << 20, 65536), 0);

	struct sv_volume_info *infos;
	size_t n;
	assert_int_equal(sv_volume_list(f->pool, &infos, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(infos[0].name, "a0"); /* sorted */
	assert_int_equal(infos[0].chunk_size, 65536);
	assert_string_equal(infos[1].name, "vm1");
	assert_int_equal(infos[1].size, 1 << 20);
	assert_int_equal(infos[1].chunk_size, 4096);
	assert_int_equal(infos[1].allocated, 0); /* sparse */
	free(infos);

	struct sv_volume_info info;
	assert_int_equal(sv_volume_info(f->pool, "vm1", &info), 0);
	assert_non_null(strstr(info.origin_path, "/volumes/vm1/origin.raw"));
	struct stat sb;
	assert_int_equal(stat(info.origin_path, &sb), 0);
	assert_int_equal(sb.st_size, 1 << 20); /* a plain raw image of the volume's size */

	assert_int_equal(sv_volume_create(f->pool, "vm1", 1 << 20, 0), -1);
	assert_int_equal(sv_last_errno(), EEXIST);
	assert_non_null(strstr(sv_last_error(), "already exists"));

	assert_int_equal(sv_volume_delete(f->pool, "vm1"), 0);
	assert_int_equal(stat(info.origin_path, &sb), -1);
	assert_int_equal(sv_volume_info(f->pool, "vm1", &info), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_int_equal(sv_volume_delete(f->pool, "vm1"), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
}

static void
test_bad_create(void **state)
{
	struct test_pool *f = *state;
	struct {
		const char *name;
		uint64_t size;
		uint32_t chunk;
		const char *msg;
	} bad[] = {
	    {"a/b", 1 << 20, 0, "'/'"},
	    {"..", 1 << 20, 0, "'.'"},
	    {"x@y", 1 << 20, 0, "'@'"},
	    {"c\x01", 1 << 20, 0, "control"},
	    {"ok", 0, 0, "greater than 0"},
	    {"ok", 1000, 0, "multiple of 512"},
	    {"ok", UINT64_MAX - 511, 0, "larger than the maximum"},
	    {"ok", 1 << 20, 2048, "power of 2"},
	    {"ok", 1 << 20, 3 * 4096, "power of 2"},
	    {"ok", 1 << 20, 2 << 20, "power of 2"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(sv_volume_create(f->pool, bad[i].name, bad[i].size, bad[i].chunk),
				 -1);
		assert_int_equal(sv_last_errno(), EINVAL);
		if (!strstr(sv_last_error(), bad[i].msg))
			fail_msg("case %zu: '%s' lacks '%s'", i, sv_last_error(), bad[i].msg);
	}
	struct sv_volume_info *infos;
	size_t n;
	assert_int_equal(sv_volume_list(f->pool, &infos, &n), 0);
	assert_int_equal(n, 0); /* nothing left behind */
	free(infos);
}

static void
test_pool_lock(void **state)
{
	struct test_pool *f = *state;
	struct sv_pool *second;
	assert_int_equal(sv_pool_open(f->dir, 0, &second), -1);
	assert_int_equal(sv_last_errno(), EWOULDBLOCK);
	assert_non_null(strstr(sv_last_error(), "in use"));
	assert_int_equal(sv_pool_open("/nonexistent/snapvol-pool", 0, &second), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	/* A RADOS pool without a Ceph configuration: refused, saying why. */
	setenv("CEPH_CONF", "/nonexistent/ceph.conf", 1);
	assert_int_equal(sv_pool_open("rados:x", 0, &second), -1);
	unsetenv("CEPH_CONF");
#ifdef SV_HAVE_RADOS
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_non_null(strstr(sv_last_error(), "CEPH_CONF"));
#else
	assert_int_equal(sv_last_errno(), ENOTSUP);
#endif
}

static void
test_meta_checksum(void **state)
{
	struct test_pool *f = *state;
	assert_int_equal(sv_volume_create(f->pool, "vm1", 1 << 20, 0), 0);
	char path[256];
	snprintf(path, sizeof path, "%s/volumes/vm1/volume.meta", f->dir);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	char buf[4096];
	ssize_t len = pread(fd, buf, sizeof buf, 0);
	assert_true(len > 60);
	/* flip one byte of the body: a digit of the size */
	char *p = strstr(buf, "\"size\": ");
	assert_non_null(p);
	p += 8;
	*p = *p == '1' ? '2' : '1';
	assert_int_equal(pwrite(fd, buf, (size_t)len, 0), len);
	struct sv_volume_info info;
	assert_int_equal(sv_volume_info(f->pool, "vm1", &info), -1);
	assert_int_equal(sv_last_errno(), EUCLEAN);
	assert_non_null(strstr(sv_last_error(), "checksum"));
	/* truncated (torn) */
	assert_int_equal(ftruncate(fd, len - 5), 0);
	assert_int_equal(sv_volume_info(f->pool, "vm1", &info), -1);
	assert_non_null(strstr(sv_last_error(), "torn"));
	close(fd);

	/* encode/decode round trip */
	json_t *body = json_pack("{s:s, s:i}", "format", "x", "version", 1);
	char *enc;
	size_t enclen;
	assert_int_equal(sv_meta_encode(body, &enc, &enclen), 0);
	json_t *back;
	assert_int_equal(sv_meta_decode(enc, enclen, &back), 0);
	assert_true(json_equal(body, back));
	json_decref(back);
	assert_int_equal(sv_meta_decode(enc, enclen - 1, &back), -1);
	assert_int_equal(sv_meta_decode("garbage\n{}", 10, &back), -1);
	free(enc);
	json_decref(body);
}

static void
test_leftover_namespace(void **state)
{
	struct test_pool *f = *state;
	/* a crashed create: the directory exists without metadata */
	char path[256];
	snprintf(path, sizeof path, "%s/volumes/ghost", f->dir);
	assert_int_equal(mkdir(path, 0700), 0);
	struct sv_volume_info *infos;
	size_t n;
	assert_int_equal(sv_volume_list(f->pool, &infos, &n), 0);
	assert_int_equal(n, 0);
	free(infos);
	assert_int_equal(sv_volume_create(f->pool, "ghost", 1 << 20, 0), 0);
}

static void
test_view_io(void **state)
{
	struct test_pool *f = *state;
	const uint64_t size = 4 << 20;
	assert_int_equal(sv_volume_create(f->pool, "vm1", size, 0), 0);
	struct sv_view *v, *v2;
	assert_int_equal(sv_view_open(f->pool, "vm1", 3, &v), 0);
	assert_int_equal(sv_view_open(f->pool, "vm1", 3, &v2), 0); /* multi-conn: shared */
	assert_int_equal(sv_view_size(v), size);
	assert_false(sv_view_readonly(v));
	assert_int_equal(sv_view_chunk_size(v), 4096);
	assert_non_null(strstr(sv_view_description(v), "vm1"));

	int err = 0;
	char buf[8192], back[8192];
	memset(buf, 0xab, sizeof buf);
	assert_int_equal(sv_view_pwrite(v, buf, sizeof buf, 65536, 0, &err), 0);
	assert_int_equal(sv_view_pwrite(v, buf, 100, 1 << 20, SV_FUA, &err), 0);
	assert_int_equal(sv_view_flush(v2, &err), 0);
	assert_int_equal(sv_view_pread(v2, back, sizeof back, 65536, &err), 0);
	assert_memory_equal(buf, back, sizeof buf);

	struct sv_extent ext[16];
	size_t n;
	assert_int_equal(sv_view_extents(v, (uint32_t)(2 << 20), 0, ext, 16, &n, &err), 0);
	assert_int_equal(n, 5);
	assert_true(ext[0].hole);
	assert_int_equal(ext[0].length, 65536);
	assert_false(ext[1].hole);
	assert_int_equal(ext[1].offset, 65536);
	assert_true(ext[2].hole);
	assert_false(ext[3].hole);
	assert_int_equal(ext[3].offset, 1 << 20);
	assert_true(ext[4].hole);
	assert_int_equal(ext[4].offset + ext[4].length, 2 << 20); /* never past the range */
	/* limited to max */
	assert_int_equal(sv_view_extents(v, (uint32_t)(2 << 20), 0, ext, 1, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 65536);

	/* trim gives the range back as zeros and as a hole */
	assert_int_equal(sv_view_trim(v, 8192, 65536, 0, &err), 0);
	assert_int_equal(sv_view_pread(v, back, 8192, 65536, &err), 0);
	char zeros[8192] = {0};
	assert_memory_equal(back, zeros, 8192);
	assert_int_equal(sv_view_extents(v, 1 << 20, 0, ext, 16, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_true(ext[0].hole);

	/* write zeroes, with and without NO_HOLE */
	assert_int_equal(sv_view_pwrite(v, buf, 8192, 0, 0, &err), 0);
	assert_int_equal(sv_view_zero(v, 4096, 0, SV_NO_HOLE, &err), 0);
	assert_int_equal(sv_view_zero(v, 4096, 4096, SV_FAST_ZERO, &err), 0);
	assert_int_equal(sv_view_pread(v, back, 8192, 0, &err), 0);
	assert_memory_equal(back, zeros, 8192);
	assert_int_equal(sv_view_extents(v, 8192, 0, ext, 16, &n, &err), 0);
	assert_false(ext[0].hole); /* NO_HOLE kept it allocated */
	assert_int_equal(ext[0].length, 4096);
	assert_true(ext[1].hole);

	int fd;
	uint64_t fo;
	assert_int_equal(sv_view_read_fd(v, 4096, 8192, &fd, &fo), 0);
	assert_int_equal(fo, 8192);
	assert_int_equal(sv_view_cache(v, 4096, 0, &err), 0);

	/* no delete while exported */
	assert_int_equal(sv_volume_delete(f->pool, "vm1"), -1);
	assert_int_equal(sv_last_errno(), EBUSY);
	struct sv_volume_info info;
	assert_int_equal(sv_volume_info(f->pool, "vm1", &info), 0);
	assert_int_equal(info.open_views, 2);
	sv_view_close(v);
	sv_view_close(v2);
	assert_int_equal(sv_volume_delete(f->pool, "vm1"), 0);
}

static void
test_view_open_errors(void **state)
{
	struct test_pool *f = *state;
	struct sv_view *v;
	assert_int_equal(sv_view_open(f->pool, "nope", 4, &v), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	assert_non_null(strstr(sv_last_error(), "does not exist"));
	assert_int_equal(sv_view_open(f->pool, "../x", 4, &v), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_view_open(f->pool, "a/b", 3, &v), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
	assert_int_equal(sv_volume_create(f->pool, "vm1", 1 << 20, 0), 0);
	assert_int_equal(sv_view_open(f->pool, "vm1@snap", 8, &v), -1);
	assert_int_equal(sv_last_errno(), ENOENT);
	char longname[5000];
	memset(longname, 'a', sizeof longname);
	assert_int_equal(sv_view_open(f->pool, longname, sizeof longname, &v), -1);
	assert_int_equal(sv_last_errno(), EINVAL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_create_list_info_delete, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_create, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pool_lock, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_meta_checksum, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_leftover_namespace, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_view_io, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_view_open_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
