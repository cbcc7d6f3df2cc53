/*
 * journal.c: making copy-on-write records durable, with group commit.
 *
 * When a write first touches a chunk after a snapshot, cow.c copies the
 * chunk's old contents into the epoch's pre-image object and then calls
 * sv_journal_commit() with a record "epoch E holds chunks [a, a+n)".  The
 * origin may be written only after that record is durable, and the record
 * may become durable only after the pre-image data is (else a crash could
 * leave a record pointing at data that never reached the disk, while the
 * origin still holds the right contents: the snapshot would then read
 * garbage).  So one commit is:
 *
 *   1. fdatasync every pre-image object the batch wrote to;
 *   2. append the batch's records to the journal object;
 *   3. fdatasync the journal;
 *   4. set the bits in the in-memory bitmaps, clear the in-flight marks,
 *      wake the writers (they then write the origin).
 *
 * Group commit (DESIGN invariant 5): writers queue their records; one of
 * them becomes the leader, takes everything queued, and runs 1-4 for all
 * of it while new records queue for the next batch.  Many writers pay one
 * pair of syncs, not one each.
 *
 * Records (32 bytes, little-endian): magic "SVJR", CRC-32 of the rest,
 * generation, epoch, first chunk, count.  The journal object is a fixed
 * ring of slots written from slot 0 up; when it is full, or when a volume
 * is opened or closed, a checkpoint writes every bitmap into changed.meta
 * (atomically replaced by the store) under the next generation number and
 * the journal starts again at slot 0.  Replay reads slots from 0 while they
 * are valid records of the checkpoint's generation: a torn or stale slot
 * ends it.  Stale slots of the same generation can never follow a gap,
 * because a volume always checkpoints (bumping the generation) when it is
 * opened, before writing any record.
 *
 * changed.meta: one header line
 *   "snapvol-changed 1 gen=G epochs=N len=L crc32=0xXXXXXXXX\n"
 * then per epoch: u64 id, u64 length, the bitmap in CRoaring's portable
 * format (the format other Roaring implementations read, too).
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

#define JREC_SIZE     32
#define JREC_MAGIC    0x524a5653u	  /* the bytes "SVJR" on disk */
#define JOURNAL_SLOTS (UINT64_C(1) << 20) /* 32 MiB of records, sparse */

struct waiter {
	int err;
};

struct pending_rec {
	struct sv_jrec rec;
	struct waiter *w;
};

static void
encode_rec(unsigned char *b, uint64_t gen, uint64_t epoch, uint32_t first, uint32_t count)
{
	uint32_t magic = htole32(JREC_MAGIC);
	uint64_t g = htole64(gen), e = htole64(epoch);
	uint32_t f = htole32(first), c = htole32(count);
	memcpy(b, &magic, 4);
	memcpy(b + 8, &g, 8);
	memcpy(b + 16, &e, 8);
	memcpy(b + 24, &f, 4);
	memcpy(b + 28, &c, 4);
	uint32_t crc = htole32((uint32_t)crc32(0, b + 8, JREC_SIZE - 8));
	memcpy(b + 4, &crc, 4);
}

static bool
decode_rec(const unsigned char *b, uint64_t *gen, uint64_t *epoch, uint32_t *first, uint32_t *count)
{
	uint32_t magic, crc;
	memcpy(&magic, b, 4);
	memcpy(&crc, b + 4, 4);
	if (le32toh(magic) != JREC_MAGIC ||
	    le32toh(crc) != (uint32_t)crc32(0, b + 8, JREC_SIZE - 8))
		return false;
	uint64_t g, e;
	uint32_t f, c;
	memcpy(&g, b + 8, 8);
	memcpy(&e, b + 16, 8);
	memcpy(&f, b + 24, 4);
	memcpy(&c, b + 28, 4);
	*gen = le64toh(g);
	*epoch = le64toh(e);
	*first = le32toh(f);
	*count = le32toh(c);
	return true;
}

static int
journal_open(struct sv_volume *vol, unsigned flags)
{
	struct sv_journal *j = &vol->journal;
	memset(j, 0, sizeof *j);
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	j->capacity = JOURNAL_SLOTS;
	j->batch_open = 1;
	if (vol->ops->obj_open(vol->pool->st, vol->name, SV_OBJ_JOURNAL, j->capacity * JREC_SIZE,
			       flags, &j->obj) == -1) {
		j->obj = NULL;
		if (!(flags & SV_OBJ_CREATE) && errno == ENOENT)
			return 0; /* never opened by a server: nothing to replay */
		return sv_error_errno("volume %s: cannot open its journal", vol->name);
	}
	return 0;
}

int
sv_journal_open(struct sv_volume *vol)
{
	return journal_open(vol, SV_OBJ_CREATE);
}

int
sv_journal_open_readonly(struct sv_volume *vol)
{
	return journal_open(vol, SV_OBJ_RDONLY);
}

void
sv_journal_close(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	if (j->obj)
		vol->ops->obj_close(j->obj);
	j->obj = NULL;
	free(j->pending);
	j->pending = NULL;
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->lock);
}

/* ---- checkpoints ---- */

static int
parse_checkpoint(struct sv_volume *vol, const char *buf, size_t len, uint64_t *gen)
{
	const char *nl = memchr(buf, '\n', len < 160 ? len : 160);
	uint64_t g;
	size_t nep, blen;
	uint32_t crc;
	if (!nl ||
	    sscanf(buf, "snapvol-changed 1 gen=%" SCNu64 " epochs=%zu len=%zu crc32=0x%" SCNx32, &g,
		   &nep, &blen, &crc) != 4)
		return sv_error(EUCLEAN, "volume %s: changed.meta has a bad header", vol->name);
	const unsigned char *p = (const unsigned char *)nl + 1;
	size_t have = len - (size_t)((const char *)p - buf);
	if (have != blen)
		return sv_error(EUCLEAN, "volume %s: changed.meta is %zu bytes, header says %zu",
				vol->name, have, blen);
	if ((uint32_t)crc32(0, p, (uInt)blen) != crc)
		return sv_error(EUCLEAN, "volume %s: changed.meta checksum mismatch", vol->name);
	for (size_t i = 0; i < nep; i++) {
		uint64_t id, n;
		if (have < 16)
			return sv_error(EUCLEAN, "volume %s: changed.meta is truncated", vol->name);
		memcpy(&id, p, 8);
		memcpy(&n, p + 8, 8);
		id = le64toh(id);
		n = le64toh(n);
		p += 16;
		have -= 16;
		if (n > have)
			return sv_error(EUCLEAN, "volume %s: changed.meta is truncated", vol->name);
		roaring_bitmap_t *bm = sv_bitmap_load((const char *)p, n, vol->nchunks);
		if (!bm)
			return sv_error(EUCLEAN,
					"volume %s: changed.meta has a bad bitmap (malformed, or "
					"naming chunks past the end)",
					vol->name);
		struct sv_epoch *ep = sv_epoch_find_locked(vol, id);
		if (!ep && !(ep = sv_epoch_new_locked(vol, id))) {
			roaring_bitmap_free(bm);
			return -1;
		}
		roaring_bitmap_or_inplace(ep->changed, bm);
		roaring_bitmap_free(bm);
		p += n;
		have -= n;
	}
	*gen = g;
	return 0;
}

/* Serialise every epoch's bitmap; cow_lock held. */
static int
encode_checkpoint_locked(struct sv_volume *vol, uint64_t gen, char **out, size_t *outlen)
{
	size_t blen = 0;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		roaring_bitmap_run_optimize(vol->epochs[i]->changed);
		blen += 16 + roaring_bitmap_portable_size_in_bytes(vol->epochs[i]->changed);
	}
	char hdr[160];
	char *body = malloc(blen ? blen : 1);
	if (!body)
		return sv_error(ENOMEM, "out of memory");
	char *p = body;
	for (size_t i = 0; i < vol->n_epochs; i++) {
		uint64_t id = htole64(vol->epochs[i]->id);
		uint64_t n = roaring_bitmap_portable_size_in_bytes(vol->epochs[i]->changed);
		uint64_t nl = htole64(n);
		memcpy(p, &id, 8);
		memcpy(p + 8, &nl, 8);
		roaring_bitmap_portable_serialize(vol->epochs[i]->changed, p + 16);
		p += 16 + n;
	}
	uint32_t crc = (uint32_t)crc32(0, (const Bytef *)body, (uInt)blen);
	int hl =
	    snprintf(hdr, sizeof hdr,
		     "snapvol-changed 1 gen=%" PRIu64 " epochs=%zu len=%zu crc32=0x%08" PRIx32 "\n",
		     gen, vol->n_epochs, blen, crc);
	char *buf = malloc((size_t)hl + blen);
	if (!buf) {
		free(body);
		return sv_error(ENOMEM, "out of memory");
	}
	memcpy(buf, hdr, (size_t)hl);
	memcpy(buf + hl, body, blen);
	free(body);
	*out = buf;
	*outlen = (size_t)hl + blen;
	return 0;
}

/* Write a checkpoint; the caller holds the leader role. */
static int
checkpoint_as_leader(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	char *buf = NULL;
	size_t len = 0;
	sv_lock_or_abort(&vol->cow_lock);
	int r = encode_checkpoint_locked(vol, j->gen + 1, &buf, &len);
	sv_unlock_or_abort(&vol->cow_lock);
	if (r == -1)
		return -1;
	r = vol->ops->meta_write(vol->pool->st, vol->name, SV_META_CHANGED, buf, len);
	free(buf);
	if (r == -1)
		return sv_error_errno("volume %s: cannot write changed.meta", vol->name);
	j->gen++;
	j->next = 0;
	j->must_checkpoint = false;
	return 0;
}

static void
become_leader(struct sv_journal *j)
{
	sv_lock_or_abort(&j->lock);
	while (j->leader)
		pthread_cond_wait(&j->cond, &j->lock);
	j->leader = true;
	sv_unlock_or_abort(&j->lock);
}

static void
resign_leader(struct sv_journal *j)
{
	sv_lock_or_abort(&j->lock);
	j->leader = false;
	pthread_cond_broadcast(&j->cond);
	sv_unlock_or_abort(&j->lock);
}

int
sv_journal_checkpoint(struct sv_volume *vol)
{
	struct sv_journal *j = &vol->journal;
	become_leader(j);
	int r = checkpoint_as_leader(vol);
	resign_leader(j);
	return r;
}

int
sv_journal_load(struct sv_volume *vol, json_t *volmeta)
{
	(void)volmeta;
	struct sv_journal *j = &vol->journal;
	char *buf;
	size_t len;
	uint64_t gen = 0;
	if (vol->ops->meta_read(vol->pool->st, vol->name, SV_META_CHANGED, &buf, &len) == 0) {
		int r = parse_checkpoint(vol, buf, len, &gen);
		free(buf);
		if (r == -1)
			return -1;
	} else if (errno != ENOENT) {
		return sv_error_errno("volume %s: reading changed.meta", vol->name);
	}
	j->gen = gen;

	/* Replay the records of this generation, in order, until the first
	 * slot that is not one. */
	const size_t piece = 1 << 20;
	unsigned char *p = malloc(piece);
	if (!p)
		return sv_error(ENOMEM, "out of memory");
	uint64_t slot = 0, replayed = 0;
	bool end = !j->obj; /* opened read-only, and there is none */
	while (!end && slot < j->capacity) {
		struct sv_extent ext;
		uint64_t off = slot * JREC_SIZE;
		if (vol->ops->obj_extent(j->obj, off, JREC_SIZE, &ext) == -1) {
			free(p);
			return sv_error_errno("volume %s: reading its journal", vol->name);
		}
		if (ext.hole)
			break; /* never written: the end */
		size_t n = piece;
		if (n > (j->capacity - slot) * JREC_SIZE)
			n = (size_t)((j->capacity - slot) * JREC_SIZE);
		if (vol->ops->obj_pread(j->obj, p, n, off) == -1) {
			free(p);
			return sv_error_errno("volume %s: reading its journal", vol->name);
		}
		for (size_t i = 0; i + JREC_SIZE <= n; i += JREC_SIZE, slot++) {
			uint64_t g, e;
			uint32_t first, count;
			if (!decode_rec(p + i, &g, &e, &first, &count) || g != gen) {
				end = true;
				break;
			}
			if (count == 0 || (uint64_t)first + count > vol->nchunks) {
				free(p);
				return sv_error(EUCLEAN,
						"volume %s: journal record %" PRIu64
						" names chunks past the end",
						vol->name, slot);
			}
			struct sv_epoch *ep = sv_epoch_find_locked(vol, e);
			if (!ep && !(ep = sv_epoch_new_locked(vol, e))) {
				free(p);
				return -1;
			}
			roaring_bitmap_add_range(ep->changed, first, (uint64_t)first + count);
			replayed++;
		}
	}
	free(p);
	j->next = slot;
	if (replayed)
		sv_log_info("volume %s: replayed %" PRIu64 " journal records", vol->name, replayed);
	return 0;
}

/* ---- commit ---- */

/* On failure *bad is the epoch whose object failed. */
static int
sync_pre_objects(struct sv_volume *vol, struct pending_rec *b, size_t n, uint64_t *bad)
{
	for (size_t i = 0; i < n; i++) {
		struct sv_epoch *ep = b[i].rec.ep;
		bool seen = false;
		for (size_t k = 0; k < i && !seen; k++)
			seen = b[k].rec.ep == ep;
		if (seen)
			continue;
		sv_lock_or_abort(&vol->pre_lock);
		struct sv_obj *o = ep->pre;
		sv_unlock_or_abort(&vol->pre_lock);
		if (o && vol->ops->obj_sync(o) == -1) {
			*bad = ep->id;
			return -1;
		}
	}
	return 0;
}

static int
commit_batch(struct sv_volume *vol, struct pending_rec *b, size_t n)
{
	struct sv_journal *j = &vol->journal;
	uint64_t bad;
	if (__atomic_load_n(&vol->pre_untrusted, __ATOMIC_ACQUIRE))
		return EIO; /* see sv_snap_invalidate_epoch */
	if (sync_pre_objects(vol, b, n, &bad) == -1) {
		/* Sticky: the file may have lost other pre-images (snapshot.c). */
		int e = errno ? errno : EIO;
		(void)sv_snap_invalidate_epoch(vol, bad, e);
		return e;
	}
	if ((j->must_checkpoint || j->next + n > j->capacity) && checkpoint_as_leader(vol) == -1)
		return sv_last_errno();
	unsigned char *recs = malloc(n * JREC_SIZE);
	if (!recs)
		return ENOMEM;
	for (size_t i = 0; i < n; i++)
		encode_rec(recs + i * JREC_SIZE, j->gen, b[i].rec.ep->id, b[i].rec.first,
			   b[i].rec.count);
	int r = vol->ops->obj_pwrite(j->obj, recs, n * JREC_SIZE, j->next * JREC_SIZE, 0);
	if (r == 0)
		r = vol->ops->obj_sync(j->obj);
	free(recs);
	if (r == -1)
		return errno ? errno : EIO;
	j->next += n;

	sv_lock_or_abort(&vol->cow_lock);
	for (size_t i = 0; i < n; i++) {
		struct sv_epoch *ep = b[i].rec.ep;
		uint64_t a = b[i].rec.first, z = a + b[i].rec.count;
		roaring_bitmap_add_range(ep->changed, a, z);
		if (ep->nocopy)
			roaring_bitmap_add_range(ep->nocopy, a, z);
		roaring_bitmap_remove_range(vol->inflight, a, z);
	}
	pthread_cond_broadcast(&vol->cow_cond);
	sv_unlock_or_abort(&vol->cow_lock);
	return 0;
}

int
sv_journal_commit(struct sv_volume *vol, const struct sv_jrec *recs, size_t n)
{
	struct sv_journal *j = &vol->journal;
	struct waiter me = {.err = 0};
	sv_lock_or_abort(&j->lock);
	if (j->n_pending + n > j->cap_pending) {
		size_t cap = j->cap_pending ? j->cap_pending : 64;
		while (cap < j->n_pending + n)
			cap *= 2;
		struct pending_rec *np = realloc(j->pending, cap * sizeof *np);
		if (!np) {
			sv_unlock_or_abort(&j->lock);
			errno = ENOMEM;
			return -1;
		}
		j->pending = np;
		j->cap_pending = cap;
	}
	for (size_t i = 0; i < n; i++)
		j->pending[j->n_pending++] = (struct pending_rec){.rec = recs[i], .w = &me};
	uint64_t mine = j->batch_open;
	while (j->batch_done < mine) {
		if (j->leader) {
			pthread_cond_wait(&j->cond, &j->lock);
			continue;
		}
		/* Lead: take everything queued as one batch. */
		j->leader = true;
		struct pending_rec *batch = j->pending;
		size_t nb = j->n_pending;
		j->pending = NULL;
		j->n_pending = j->cap_pending = 0;
		uint64_t bno = j->batch_open++;
		sv_unlock_or_abort(&j->lock);

		int err = commit_batch(vol, batch, nb);
		for (size_t i = 0; i < nb; i++)
			batch[i].w->err = err;

		sv_lock_or_abort(&j->lock);
		free(batch);
		j->syncs++;
		j->batch_done = bno;
		j->leader = false;
		pthread_cond_broadcast(&j->cond);
	}
	sv_unlock_or_abort(&j->lock);
	if (me.err) {
		errno = me.err;
		return -1;
	}
	return 0;
}
