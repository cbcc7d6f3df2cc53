/*
 * testpool.h: what the unit tests share: temporary pools and a mixer.
 *
 * Header-only (static inline): each unit test is one program, and cmocka's
 * setup/teardown want plain functions.  Pools go on tmpfs (/dev/shm) when
 * the test asks and there is one: the engine syncs a lot, and most tests
 * are about its logic, not the disk's speed.
 */
#ifndef SV_TESTPOOL_H
#define SV_TESTPOOL_H

#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

/* Make a new directory "snapvol-test-STEM-XXXXXX" in dir[64]; 0 or -1. */
static inline int
test_mkdtemp(char dir[64], const char *stem, bool tmpfs)
{
	const char *base = tmpfs && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	if ((size_t)snprintf(dir, 64, "%s/snapvol-test-%s-XXXXXX", base, stem) >= 64)
		return -1;
	return mkdtemp(dir) ? 0 : -1;
}

static inline int
test_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb, (void)type, (void)ftw;
	return remove(path);
}

/* rm -rf dir; 0 or -1. */
static inline int
test_rmtree(const char *dir)
{
	return nftw(dir, test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The usual fixture: a new pool in a temporary directory. */
struct test_pool {
	char dir[64];
	struct sv_pool *pool;
};

static inline int
test_pool_setup(void **state, const char *stem, bool tmpfs)
{
	struct test_pool *f = calloc(1, sizeof *f);
	if (!f || test_mkdtemp(f->dir, stem, tmpfs) == -1 ||
	    sv_pool_open(f->dir, SV_POOL_CREATE, &f->pool) == -1) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static inline int
test_pool_teardown(void **state)
{
	struct test_pool *f = *state;
	sv_pool_close(f->pool);
	int r = test_rmtree(f->dir);
	free(f);
	return r;
}

/* A 64-bit mixer (the splitmix64 finalizer): test data from a seed. */
static inline uint64_t
test_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* len bytes (a multiple of 8) of generation gen of block block: a test's
 * way to tell every version of every block apart. */
static inline void
test_fill_block(unsigned char *buf, size_t len, unsigned gen, uint64_t block)
{
	for (size_t i = 0; i < len / 8; i++) {
		uint64_t x = test_mix(((uint64_t)gen << 40) ^ (block << 12) ^ i);
		memcpy(buf + i * 8, &x, 8);
	}
}

/* Write blocks [first, first+n) of len bytes as generation gen of
 * test_fill_block, noting it in model[b] if model; 0, or -1 at the first
 * write that fails. */
static inline int
test_write_blocks(struct sv_view *v, unsigned gen, uint64_t first, uint64_t n, size_t len,
		  unsigned *model)
{
	unsigned char *buf = malloc(len);
	if (!buf)
		return -1;
	int r = 0;
	for (uint64_t b = first; b < first + n && r == 0; b++) {
		test_fill_block(buf, len, gen, b);
		int err = 0;
		r = sv_view_pwrite(v, buf, len, b * len, 0, &err);
		if (r == 0 && model)
			model[b] = gen;
	}
	free(buf);
	return r == 0 ? 0 : -1;
}

/* Does export name read each of its nblocks blocks of len bytes as
 * generation gen[b] of test_fill_block (0: zeros)?  Says where not on
 * stderr. */
static inline bool
test_reads_as(struct sv_pool *pool, const char *name, const unsigned *gen, uint64_t nblocks,
	      size_t len)
{
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1)
		return false;
	bool ok = true;
	unsigned char *got = malloc(len), *want = malloc(len);
	for (uint64_t b = 0; b < nblocks && ok && got && want; b++) {
		int err = 0;
		if (sv_view_pread(v, got, len, b * len, &err) == -1) {
			ok = false;
			break;
		}
		if (gen[b])
			test_fill_block(want, len, gen[b], b);
		else
			memset(want, 0, len);
		if (memcmp(got, want, len)) {
			fprintf(stderr, "%s: block %llu is not generation %u\n", name,
				(unsigned long long)b, gen[b]);
			ok = false;
		}
	}
	ok = ok && got && want;
	free(got);
	free(want);
	sv_view_close(v);
	return ok;
}

/* A 512-byte sector that names the write that stored it: a header (magic,
 * write id, sector number, ~id), then bytes derived from id and sector; id
 * 0 is zeros.  Crash and fault tests read back which write a sector holds,
 * and so tell old, new, torn and misplaced data apart. */
#define TEST_SECTOR 512u

static inline void
test_sector_image(unsigned char *p, uint32_t magic, uint32_t id, uint32_t sct)
{
	if (id == 0) {
		memset(p, 0, TEST_SECTOR);
		return;
	}
	uint32_t hdr[4] = {magic, id, sct, ~id};
	memcpy(p, hdr, sizeof hdr);
	uint64_t x = test_mix(((uint64_t)id << 32) | sct) | 1;
	for (size_t i = sizeof hdr; i < TEST_SECTOR; i += 8) {
		x = test_mix(x);
		memcpy(p + i, &x, 8);
	}
}

/* The id of the write sector sct holds (0: zeros), or -1 for anything else. */
static inline int64_t
test_sector_id(const unsigned char *p, uint32_t magic, uint32_t sct)
{
	static const unsigned char zeros[TEST_SECTOR];
	if (!memcmp(p, zeros, TEST_SECTOR))
		return 0;
	uint32_t hdr[4];
	memcpy(hdr, p, sizeof hdr);
	if (hdr[0] != magic || hdr[2] != sct || hdr[3] != ~hdr[1])
		return -1;
	unsigned char want[TEST_SECTOR];
	test_sector_image(want, magic, hdr[1], sct);
	return memcmp(p, want, TEST_SECTOR) ? -1 : (int64_t)hdr[1];
}

#endif
