/*
 * meta.c: the on-disk form of metadata blobs.
 *
 * A blob is one header line and a JSON body:
 *
 *   snapvol-meta 1 len=123 crc32=0x1a2b3c4d\n
 *   {"format": "snapvol-volume", "version": 1, ...}
 *
 * The header names the framing version, the body's exact length and the
 * zlib CRC-32 of the body's bytes, so a torn or bit-rotted blob is detected
 * rather than half-parsed.  The body is JSON so a person can read it and so
 * fields can be added without a new framing; the body's own "version" says
 * which fields it has.  Blobs are replaced atomically by the store.
 *
 * JSON (jansson) rather than a packed struct: metadata is small and rarely
 * written; readability and forward compatibility matter more than bytes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "internal.h"

#define META_MAGIC "snapvol-meta 1 "

int
sv_meta_encode(json_t *body, char **buf, size_t *len)
{
	char *js = json_dumps(body, JSON_INDENT(1) | JSON_SORT_KEYS);
	if (!js)
		return sv_error(ENOMEM, "cannot encode metadata");
	size_t blen = strlen(js) + 1; /* the body ends with a newline, under the CRC too */
	js[blen - 1] = '\n';
	uint32_t crc = (uint32_t)crc32(0L, (const Bytef *)js, (uInt)blen);
	char hdr[96];
	int hl = snprintf(hdr, sizeof hdr, META_MAGIC "len=%zu crc32=0x%08" PRIx32 "\n", blen, crc);
	char *out = malloc((size_t)hl + blen);
	if (!out) {
		free(js);
		return sv_error(ENOMEM, "cannot encode metadata");
	}
	memcpy(out, hdr, (size_t)hl);
	memcpy(out + hl, js, blen);
	free(js);
	*buf = out;
	*len = (size_t)hl + blen;
	return 0;
}

int
sv_meta_decode(const char *buf, size_t len, json_t **body)
{
	const char *nl = memchr(buf, '\n', len < 128 ? len : 128);
	if (!nl || strncmp(buf, META_MAGIC, strlen(META_MAGIC)) != 0)
		return sv_error(EUCLEAN, "not a snapvol metadata blob (bad header)");
	size_t blen;
	uint32_t crc;
	char hdr[128];
	memcpy(hdr, buf, (size_t)(nl - buf));
	hdr[nl - buf] = '\0';
	if (sscanf(hdr, META_MAGIC "len=%zu crc32=0x%" SCNx32, &blen, &crc) != 2)
		return sv_error(EUCLEAN, "malformed metadata header '%s'", hdr);
	const char *b = nl + 1;
	size_t have = len - (size_t)(b - buf);
	if (have != blen)
		return sv_error(EUCLEAN,
				"metadata is %zu bytes long, header says %zu (torn write?)", have,
				blen);
	uint32_t got = (uint32_t)crc32(0L, (const Bytef *)b, (uInt)blen);
	if (got != crc)
		return sv_error(EUCLEAN,
				"metadata checksum mismatch (0x%08" PRIx32 ", expected 0x%08" PRIx32
				")",
				got, crc);
	json_error_t jerr;
	json_t *j = json_loadb(b, blen, 0, &jerr);
	if (!j)
		return sv_error(EUCLEAN, "metadata is not JSON: %s", jerr.text);
	if (!json_is_object(j)) {
		json_decref(j);
		return sv_error(EUCLEAN, "metadata body is not an object");
	}
	*body = j;
	return 0;
}

int
sv_meta_load(struct sv_pool *pool, const char *vol, const char *key, json_t **body)
{
	char *buf;
	size_t len;
	if (pool->ops->meta_read(pool->st, vol, key, &buf, &len) == -1)
		return sv_error_errno("%s: reading %s", vol, key);
	int r = sv_meta_decode(buf, len, body);
	free(buf);
	if (r == -1)
		sv_error_prefix("%s: %s", vol, key);
	return r;
}

int
sv_meta_store(struct sv_pool *pool, const char *vol, const char *key, json_t *body)
{
	char *buf;
	size_t len;
	if (sv_meta_encode(body, &buf, &len) == -1)
		return -1;
	int r = pool->ops->meta_write(pool->st, vol, key, buf, len);
	free(buf);
	if (r == -1)
		return sv_error_errno("%s: writing %s", vol, key);
	return 0;
}

roaring_bitmap_t *
sv_bitmap_load(const char *buf, size_t len, uint64_t nchunks)
{
	roaring_bitmap_t *bm = roaring_bitmap_portable_deserialize_safe(buf, len);
	if (!bm)
		return NULL;
	/* CRoaring 0.2's "safe" deserialization checks bounds, not shape: an
	 * empty container or keys out of order load fine and crash a later
	 * iteration (found by fuzz-pool-load).  A bitmap snapvol wrote has
	 * neither, fills its blob exactly, and names no chunk past the end. */
	const roaring_array_t *ra = &bm->high_low_container;
	bool ok = roaring_bitmap_portable_size_in_bytes(bm) == len;
	for (int32_t i = 0; ok && i < ra->size; i++) {
		uint64_t lo = (uint64_t)ra->keys[i] << 16;
		ok = (i == 0 || ra->keys[i] > ra->keys[i - 1]) &&
		     roaring_bitmap_range_cardinality(bm, lo, lo + 65536) > 0;
	}
	if (ok && !roaring_bitmap_is_empty(bm))
		ok = roaring_bitmap_maximum(bm) < nchunks;
	if (!ok) {
		roaring_bitmap_free(bm);
		return NULL;
	}
	return bm;
}
