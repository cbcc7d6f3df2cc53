/*
 * stream.c: encoder and decoder of the send stream (format: stream.h and
 * docs/send-stream.md).
 *
 * The decoder trusts nothing: every length is bounded before it is used
 * (a record can never ask for more than SV_STREAM_BUF_MIN bytes of
 * buffer), every offset is checked against the volume size without
 * overflow, records must ascend without overlapping (so a stream cannot
 * write one place twice), names are checked as the engine checks them,
 * and nothing of a record is returned before its CRC matched.  Errors are
 * sticky: once a stream is refused, every later call refuses it again, so
 * a caller cannot apply records past a bad one by mistake.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "engine.h"
#include "error.h"
#include "names.h"
#include "stream.h"
#include "util.h"

uint32_t
sv_crc32(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	/* zlib takes uInt lengths. */
	while (len > 0) {
		uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
		crc = (uint32_t)crc32(crc, p, n);
		p += n;
		len -= n;
	}
	return crc;
}

/* ---- little-endian helpers ---- */

static void
put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t
get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ---- encoder ---- */

static bool
valid_geometry(uint64_t size, uint32_t chunk)
{
	return size > 0 && size % 512 == 0 && size <= SV_VOLUME_MAX_SIZE &&
	       sv_is_power_of_2(chunk) && chunk >= SV_CHUNK_MIN && chunk <= SV_CHUNK_MAX;
}

size_t
sv_stream_encode_header(const struct sv_stream_header *h, uint8_t *out)
{
	size_t lv = strlen(h->volume), ls = strlen(h->snapshot), lb = strlen(h->base);
	bool incr = h->flags & SV_STREAM_F_INCREMENTAL;
	if (h->flags & ~SV_STREAM_F_INCREMENTAL || !valid_geometry(h->volume_size, h->chunk_size) ||
	    sv_check_name(h->volume, "volume") == -1 ||
	    sv_check_name(h->snapshot, "snapshot") == -1 || (incr != (lb > 0)) ||
	    (incr && sv_check_name(h->base, "snapshot") == -1))
		return 0;
	size_t len = SV_STREAM_HEADER_FIXED + lv + ls + lb + 4;
	memset(out, 0, SV_STREAM_HEADER_FIXED);
	memcpy(out, SV_STREAM_MAGIC, 8);
	put32(out + 8, SV_STREAM_VERSION);
	put32(out + 12, (uint32_t)len);
	put32(out + 16, h->flags);
	put32(out + 20, h->chunk_size);
	put64(out + 24, h->volume_size);
	memcpy(out + 32, h->id, 16);
	put64(out + 48, h->created);
	out[56] = (uint8_t)lv;
	out[57] = (uint8_t)ls;
	out[58] = (uint8_t)lb;
	out[59] = 0;
	uint8_t *p = out + SV_STREAM_HEADER_FIXED;
	memcpy(p, h->volume, lv);
	memcpy(p + lv, h->snapshot, ls);
	memcpy(p + lv + ls, h->base, lb);
	put32(out + len - 4, sv_crc32(0, out, len - 4));
	return len;
}

static void
record_header(uint8_t out[SV_STREAM_REC_HEADER], enum sv_stream_rec_type type, uint64_t off,
	      uint64_t len, uint32_t base_crc, uint32_t payload_len)
{
	put32(out, (uint32_t)type);
	put32(out + 4, base_crc);
	put64(out + 8, off);
	put64(out + 16, len);
	put32(out + 24, payload_len);
	put32(out + 28, 0);
}

void
sv_stream_encode_record(uint8_t out[SV_STREAM_REC_HEADER], enum sv_stream_rec_type type,
			uint64_t off, uint64_t len, uint32_t base_crc, const void *payload)
{
	uint32_t plen = type == SV_REC_DATA ? (uint32_t)len : 0;
	record_header(out, type, off, len, base_crc, plen);
	uint32_t crc = sv_crc32(0, out, 28);
	if (plen)
		crc = sv_crc32(crc, payload, plen);
	put32(out + 28, crc);
}

void
sv_stream_encode_end(uint8_t out[SV_STREAM_REC_HEADER + SV_STREAM_END_PAYLOAD],
		     const uint8_t id[16], uint64_t records, uint64_t data_bytes,
		     uint64_t zero_bytes)
{
	uint8_t *pl = out + SV_STREAM_REC_HEADER;
	record_header(out, SV_REC_END, 0, 0, 0, SV_STREAM_END_PAYLOAD);
	put64(pl, records);
	put64(pl + 8, data_bytes);
	put64(pl + 16, zero_bytes);
	memcpy(pl + 24, id, 16);
	uint32_t crc = sv_crc32(0, out, 28);
	crc = sv_crc32(crc, pl, SV_STREAM_END_PAYLOAD);
	put32(out + 28, crc);
}

/* ---- decoder ---- */

void
sv_stream_parser_init(struct sv_stream_parser *p)
{
	memset(p, 0, sizeof *p);
}

static enum sv_stream_result __attribute__((format(printf, 2, 3)))
refuse(struct sv_stream_parser *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p->error, sizeof p->error, fmt, ap);
	va_end(ap);
	p->state = SV_STREAM_ST_ERROR;
	return SV_STREAM_ERROR;
}

/* Copy a name of len bytes and check it. */
static int
take_name(const uint8_t *src, size_t len, char *dst, const char *what)
{
	if (len > SV_NAME_MAX)
		return -1;
	memcpy(dst, src, len);
	dst[len] = '\0';
	if (strlen(dst) != len) /* a NUL inside */
		return -1;
	return sv_check_name(dst, what);
}

static enum sv_stream_result
parse_header(struct sv_stream_parser *p, const uint8_t *buf, size_t len, size_t *used, size_t *need)
{
	/* Magic first, so that "not a stream at all" gets that message. */
	size_t m = len < 8 ? len : 8;
	if (memcmp(buf, SV_STREAM_MAGIC, m))
		return refuse(p, "not a snapvol send stream (bad magic)");
	if (len < 16) {
		*need = 16;
		return SV_STREAM_NEED;
	}
	uint32_t version = get32(buf + 8);
	if (version != SV_STREAM_VERSION)
		return refuse(p,
			      "stream version %u is not supported (this snapvol reads version %u)",
			      version, SV_STREAM_VERSION);
	uint32_t hlen = get32(buf + 12);
	if (hlen < SV_STREAM_HEADER_FIXED + 4 || hlen > SV_STREAM_HEADER_MAX)
		return refuse(p, "corrupt stream header (length %u)", hlen);
	if (len < hlen) {
		*need = hlen;
		return SV_STREAM_NEED;
	}
	if (get32(buf + hlen - 4) != sv_crc32(0, buf, hlen - 4))
		return refuse(p, "corrupt stream header (CRC mismatch)");
	struct sv_stream_header *h = &p->hdr;
	memset(h, 0, sizeof *h);
	h->version = version;
	h->flags = get32(buf + 16);
	h->chunk_size = get32(buf + 20);
	h->volume_size = get64(buf + 24);
	memcpy(h->id, buf + 32, 16);
	h->created = get64(buf + 48);
	size_t lv = buf[56], ls = buf[57], lb = buf[58];
	if (buf[59] != 0 || SV_STREAM_HEADER_FIXED + lv + ls + lb + 4 != hlen)
		return refuse(p, "corrupt stream header (name lengths)");
	if (h->flags & ~SV_STREAM_F_INCREMENTAL)
		return refuse(p, "stream header has unknown flags 0x%x", h->flags);
	if (!valid_geometry(h->volume_size, h->chunk_size))
		return refuse(p, "stream header has an invalid volume size or chunk size");
	const uint8_t *names = buf + SV_STREAM_HEADER_FIXED;
	if (take_name(names, lv, h->volume, "volume") == -1 ||
	    take_name(names + lv, ls, h->snapshot, "snapshot") == -1)
		return refuse(p, "stream header has an invalid volume or snapshot name");
	bool incr = h->flags & SV_STREAM_F_INCREMENTAL;
	if (incr != (lb > 0))
		return refuse(p, "stream header: the incremental flag and the base name disagree");
	if (incr && take_name(names + lv + ls, lb, h->base, "snapshot") == -1)
		return refuse(p, "stream header has an invalid base snapshot name");
	*used = hlen;
	p->state = SV_STREAM_ST_RECORDS;
	return SV_STREAM_HEADER;
}

static enum sv_stream_result
parse_record(struct sv_stream_parser *p, const uint8_t *buf, size_t len, size_t *used, size_t *need,
	     struct sv_stream_record *rec)
{
	if (len < SV_STREAM_REC_HEADER) {
		*need = SV_STREAM_REC_HEADER;
		return SV_STREAM_NEED;
	}
	uint32_t type = get32(buf);
	uint64_t off = get64(buf + 8), rlen = get64(buf + 16);
	uint32_t plen = get32(buf + 24);
	/* Bound the payload before asking for it; the CRC is checked once
	 * it is all here. */
	switch (type) {
	case SV_REC_DATA:
		if (rlen == 0 || rlen > SV_STREAM_MAX_DATA || plen != rlen)
			return refuse(p, "corrupt record after offset %llu (bad data length)",
				      (unsigned long long)p->next_off);
		break;
	case SV_REC_ZERO:
		if (rlen == 0 || plen != 0)
			return refuse(p, "corrupt record after offset %llu (bad zero length)",
				      (unsigned long long)p->next_off);
		break;
	case SV_REC_END:
		if (plen != SV_STREAM_END_PAYLOAD || off || rlen)
			return refuse(p, "corrupt end record");
		break;
	default:
		return refuse(p, "corrupt record after offset %llu (unknown type %u)",
			      (unsigned long long)p->next_off, type);
	}
	size_t total = SV_STREAM_REC_HEADER + (size_t)plen;
	if (len < total) {
		*need = total;
		return SV_STREAM_NEED;
	}
	uint32_t crc = sv_crc32(0, buf, 28);
	crc = sv_crc32(crc, buf + SV_STREAM_REC_HEADER, plen);
	if (crc != get32(buf + 28))
		return refuse(p, "corrupt record at offset %llu (CRC mismatch)",
			      (unsigned long long)off);
	memset(rec, 0, sizeof *rec);
	rec->type = (enum sv_stream_rec_type)type;
	if (type == SV_REC_END) {
		const uint8_t *pl = buf + SV_STREAM_REC_HEADER;
		rec->records = get64(pl);
		rec->data_bytes = get64(pl + 8);
		rec->zero_bytes = get64(pl + 16);
		if (memcmp(pl + 24, p->hdr.id, 16))
			return refuse(p, "the end record belongs to another stream");
		if (rec->records != p->records || rec->data_bytes != p->data_bytes ||
		    rec->zero_bytes != p->zero_bytes)
			return refuse(
			    p,
			    "records are missing: the end record counts %llu records, "
			    "%llu data bytes, the stream held %llu, %llu",
			    (unsigned long long)rec->records, (unsigned long long)rec->data_bytes,
			    (unsigned long long)p->records, (unsigned long long)p->data_bytes);
		p->state = SV_STREAM_ST_DONE;
		*used = total;
		return SV_STREAM_END;
	}
	if (off < p->next_off)
		return refuse(p, "record at offset %llu overlaps or precedes the one before",
			      (unsigned long long)off);
	if (off > p->hdr.volume_size || rlen > p->hdr.volume_size - off)
		return refuse(p,
			      "record at offset %llu, length %llu is outside the %llu-byte volume",
			      (unsigned long long)off, (unsigned long long)rlen,
			      (unsigned long long)p->hdr.volume_size);
	if (!(p->hdr.flags & SV_STREAM_F_INCREMENTAL) && get32(buf + 4))
		return refuse(p, "record at offset %llu has a base CRC in a full stream",
			      (unsigned long long)off);
	rec->off = off;
	rec->len = rlen;
	rec->base_crc = get32(buf + 4);
	rec->data = type == SV_REC_DATA ? buf + SV_STREAM_REC_HEADER : NULL;
	p->next_off = off + rlen;
	p->records++;
	if (type == SV_REC_DATA)
		p->data_bytes += rlen;
	else
		p->zero_bytes += rlen;
	*used = total;
	return SV_STREAM_RECORD;
}

enum sv_stream_result
sv_stream_parse(struct sv_stream_parser *p, const uint8_t *buf, size_t len, size_t *used,
		size_t *need, struct sv_stream_record *rec)
{
	*used = 0;
	*need = 0;
	switch (p->state) {
	case SV_STREAM_ST_HEADER:
		if (len == 0) {
			*need = 16;
			return SV_STREAM_NEED;
		}
		return parse_header(p, buf, len, used, need);
	case SV_STREAM_ST_RECORDS:
		return parse_record(p, buf, len, used, need, rec);
	case SV_STREAM_ST_DONE:
		if (len == 0) {
			*need = 0;
			return SV_STREAM_NEED;
		}
		return refuse(p, "trailing bytes after the end of the stream");
	case SV_STREAM_ST_ERROR:
	default:
		return SV_STREAM_ERROR;
	}
}

int
sv_stream_finish(struct sv_stream_parser *p, size_t left)
{
	switch (p->state) {
	case SV_STREAM_ST_DONE:
		if (left == 0)
			return 0;
		refuse(p, "trailing bytes after the end of the stream");
		return -1;
	case SV_STREAM_ST_HEADER:
		refuse(p, left ? "truncated stream header" : "empty input: no stream");
		return -1;
	case SV_STREAM_ST_RECORDS:
		refuse(p, "truncated stream: it ends after offset %llu without an end record",
		       (unsigned long long)p->next_off);
		return -1;
	case SV_STREAM_ST_ERROR:
	default:
		return -1;
	}
}
