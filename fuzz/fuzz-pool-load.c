/*
 * fuzz-pool-load.c: libFuzzer target for everything read back from disk.
 *
 * A volume's state on disk is five blobs: volume.meta (JSON under a
 * checksummed header), changed.meta (the bitmap checkpoint), released.meta
 * (released ranges of snapshots), journal.raw (32-byte change records, an
 * older snapvol's or RADOS's) and prelog.raw (the pre-image log: blocks of
 * records, runs and copied bytes, engine/journal.c).  Each input is those
 * five (missing ones empty), separated by SEP, after one flags byte.  They
 * are written into a temporary pool next to a 1 MiB origin, and the pool is
 * opened and used the way the server would: every export listed, opened,
 * read and mapped.  A corrupt blob must be refused with a message, never
 * crash, hang, or reach memory or a file outside the volume.
 *
 * Checksums stop a fuzzer at the door, so the flags byte can ask the
 * harness to fix them after mutation: bit 0 rewrites the len= and crc32=
 * fields of each blob's header line to match its body, bit 1 recomputes
 * every journal record's CRC, bit 2 makes each pre-image log block (from
 * offset 0, while their sizes chain) one of changed.meta's generation and
 * recomputes its two CRCs.  Then the parsers behind the checksums (JSON
 * fields, Roaring bitmaps, record contents, log block headers, records and
 * runs, and replay into the pre-image objects) are fuzzed too.
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined
 *        ninja -C build-fuzz fuzz/fuzz-pool-load
 * Run:   build-fuzz/fuzz/fuzz-pool-load -close_fd_mask=2 fuzz/corpus/pool-load
 * Seeds: fuzz/make-pool-seeds.sh builds them from real pools.
 */
#include <endian.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "engine.h"
#include "fuzz-common.h"

#define SEP	     "\n==8<==\n"
#define JOURNAL_SIZE (32u << 20)
#define LOG_SIZE     (1u << 30) /* journal.c's LOG_OBJ_SIZE */
#define NBLOBS	     5

static const char *const files[NBLOBS] = {"volume.meta", "changed.meta", "released.meta",
					  "journal.raw", "prelog.raw"};
static const uint64_t sizes[NBLOBS] = {0, 0, 0, JOURNAL_SIZE, LOG_SIZE};
static const char *dir;
static char voldir[96];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	dir = fuzz_scratch_dir();
	struct sv_pool *pool;
	if (sv_pool_open(dir, SV_POOL_CREATE, &pool) == -1) {
		fprintf(stderr, "fuzz: cannot set up a pool in %s\n", dir);
		abort();
	}
	sv_pool_close(pool);
	snprintf(voldir, sizeof voldir, "%s/volumes/v", dir);
	return 0;
}

/* Make "... len=N ... crc32=0xX\n" in the first line of b match the rest. */
static void
fix_header(char *b, size_t *len, size_t cap)
{
	char *nl = memchr(b, '\n', *len);
	char *l = nl ? memmem(b, (size_t)(nl - b), " len=", 5) : NULL;
	char *c = nl ? memmem(b, (size_t)(nl - b), " crc32=0x", 9) : NULL;
	if (!l || !c || c < l)
		return;
	size_t body = *len - (size_t)(nl + 1 - b);
	/* the fields between len=N and crc32= (no str*(): b has no NUL) */
	const char *mid = memchr(l + 1, ' ', (size_t)(c - l)); /* c itself is a space */
	char hdr[256];
	int n = snprintf(hdr, sizeof hdr, "%.*s len=%zu%.*s crc32=0x%08lx\n", (int)(l - b), b, body,
			 (int)(c - mid), mid, crc32(0, (const Bytef *)nl + 1, (uInt)body));
	if (n <= 0 || (size_t)n >= sizeof hdr || (size_t)n + body > cap)
		return;
	memmove(b + n, nl + 1, body);
	memcpy(b, hdr, (size_t)n);
	*len = (size_t)n + body;
}

static void
fix_records(unsigned char *b, size_t len)
{
	for (size_t o = 0; o + 32 <= len; o += 32) {
		uint32_t crc = htole32((uint32_t)crc32(0, b + o + 8, 24));
		memcpy(b + o + 4, &crc, 4);
	}
}

static uint64_t
get64(const unsigned char *b)
{
	uint64_t v;
	memcpy(&v, b, 8);
	return le64toh(v);
}

static void
put64(unsigned char *b, uint64_t v)
{
	v = htole64(v);
	memcpy(b, &v, 8);
}

static void
put32(unsigned char *b, uint32_t v)
{
	v = htole32(v);
	memcpy(b, &v, 4);
}

/* The pre-image log's blocks (journal.c: a 64-byte header, "SVJB", the
 * header's CRC-32 of bytes 8..63, generation, record and run counts, the
 * header area's size, the data's size, the CRC-32 of the rest of the
 * header area and the data; blocks start at multiples of 4096): give each
 * the generation gen and correct CRCs, while the sizes stay in the blob. */
static void
fix_log(unsigned char *b, size_t len, uint64_t gen)
{
	for (size_t off = 0; off + 64 <= len;) {
		unsigned char *h = b + off;
		uint64_t hsize = get64(h + 24), dlen = get64(h + 32);
		if (hsize < 64 || hsize > len - off || dlen > len - off - hsize)
			return;
		put32(h, 0x424a5653u);
		put64(h + 8, gen);
		uLong crc = crc32(0, h + 64, (uInt)(hsize - 64));
		crc = crc32(crc, h + hsize, (uInt)dlen);
		put32(h + 40, (uint32_t)crc);
		put32(h + 4, (uint32_t)crc32(0, h + 8, 56));
		off += (size_t)((hsize + dlen + 4095) & ~(uint64_t)4095);
	}
}

/* The gen= of changed.meta's header line, or 0 (the log's generation
 * before the first checkpoint). */
static uint64_t
checkpoint_gen(const char *b, size_t len)
{
	const char *nl = memchr(b, '\n', len);
	const char *g = nl ? memmem(b, (size_t)(nl - b), " gen=", 5) : NULL;
	uint64_t v = 0;
	for (g = g ? g + 5 : NULL; g && g < nl && *g >= '0' && *g <= '9'; g++)
		v = v * 10 + (uint64_t)(*g - '0');
	return v;
}

static void
put_file(const char *name, const void *buf, size_t len, uint64_t size)
{
	char path[160];
	snprintf(path, sizeof path, "%s/%s", voldir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1 || (len && write(fd, buf, len) != (ssize_t)len) ||
	    (size && ftruncate(fd, (off_t)size) == -1))
		abort();
	close(fd);
}

static int
use_export(void *opaque, const char *name, const char *description)
{
	(void)description;
	struct sv_pool *pool = opaque;
	struct sv_view *v;
	if (sv_view_open(pool, name, strlen(name), &v) == -1)
		return 0;
	static char buf[4096];
	struct sv_extent ext[16];
	size_t n;
	int err;
	uint64_t size = sv_view_size(v);
	uint32_t len = size < sizeof buf ? (uint32_t)size : (uint32_t)sizeof buf;
	if (len) {
		sv_view_pread(v, buf, len, 0, &err);
		sv_view_pread(v, buf, len, size - len, &err);
		sv_view_extents(v, size > UINT32_MAX ? UINT32_MAX : (uint32_t)size, 0, ext, 16, &n,
				&err);
	}
	sv_view_close(v);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned flags = data[0];
	const char *p = (const char *)data + 1, *end = (const char *)data + size;
	if (mkdir(voldir, 0700) == -1)
		abort();
	uint64_t gen = 0;
	for (size_t i = 0; i < NBLOBS; i++) {
		const char *sep = p < end ? memmem(p, (size_t)(end - p), SEP, strlen(SEP)) : NULL;
		const char *stop = sep ? sep : end;
		size_t len = p < end ? (size_t)(stop - p) : 0;
		if (len > (1u << 20))
			len = 1u << 20;
		char *b = malloc(len + 256);
		if (!b)
			abort();
		memcpy(b, p, len);
		if (i < 3 && (flags & 1))
			fix_header(b, &len, len + 256);
		if (i == 1)
			gen = checkpoint_gen(b, len);
		if (i == 3 && (flags & 2))
			fix_records((unsigned char *)b, len);
		if (i == 4 && (flags & 4))
			fix_log((unsigned char *)b, len, gen);
		/* An empty released.meta means "none": no file, as on disk;
		 * so does an empty log (the open creates it). */
		if (len || (i != 2 && i != 4))
			put_file(files[i], b, len, sizes[i]);
		free(b);
		p = sep ? sep + strlen(SEP) : end;
	}
	put_file("origin.raw", NULL, 0, 1 << 20);

	struct sv_pool *pool;
	if (sv_pool_open(dir, 0, &pool) == 0) {
		sv_pool_list_exports(pool, use_export, pool);
		struct sv_snapshot_info *snaps;
		size_t n;
		if (sv_snapshot_list(pool, "v", &snaps, &n) == 0)
			free(snaps);
		sv_pool_close(pool);
	}
	if (fuzz_rmtree(voldir) == -1) /* pre-images included, for the next input */
		abort();
	return 0;
}
