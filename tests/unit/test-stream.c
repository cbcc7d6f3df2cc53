/*
 * test-stream.c: unit tests of the send-stream encoder and decoder
 * (cli/stream.c): a stream encoded and parsed back item by item, fed whole
 * and a byte at a time; every single-byte corruption of a small stream and
 * every truncation refused; records out of order, overlapping, past the end
 * or too long refused; bad magic, newer version, bad names, trailing bytes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stream.h"

#define SIZE (1u << 20)

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void
put(struct buf *b, const void *p, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, p, len);
	b->len += len;
}

static const uint8_t ID[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void
header(struct sv_stream_header *h, bool incr)
{
	memset(h, 0, sizeof *h);
	h->version = SV_STREAM_VERSION;
	h->flags = incr ? SV_STREAM_F_INCREMENTAL : 0;
	h->chunk_size = 4096;
	h->volume_size = SIZE;
	memcpy(h->id, ID, 16);
	h->created = 1700000000;
	strcpy(h->volume, "vm1");
	strcpy(h->snapshot, "tue");
	strcpy(h->base, incr ? "mon" : "");
}

/* A stream: DATA 8K at 0, ZERO 64K at 64K, DATA 4K at SIZE-4K, END. */
static struct buf
make_stream(bool incr)
{
	struct buf b = {0};
	struct sv_stream_header h;
	header(&h, incr);
	uint8_t hb[SV_STREAM_HEADER_MAX], rh[SV_STREAM_REC_HEADER];
	size_t hl = sv_stream_encode_header(&h, hb);
	assert_true(hl > 0);
	put(&b, hb, hl);
	uint8_t d1[8192], d2[4096];
	for (size_t i = 0; i < sizeof d1; i++)
		d1[i] = (uint8_t)(i * 7 + 1);
	memset(d2, 0xab, sizeof d2);
	sv_stream_encode_record(rh, SV_REC_DATA, 0, sizeof d1, incr ? 0x1234 : 0, d1);
	put(&b, rh, sizeof rh);
	put(&b, d1, sizeof d1);
	sv_stream_encode_record(rh, SV_REC_ZERO, 65536, 65536, incr ? 0x5678 : 0, NULL);
	put(&b, rh, sizeof rh);
	sv_stream_encode_record(rh, SV_REC_DATA, SIZE - 4096, 4096, 0, d2);
	put(&b, rh, sizeof rh);
	put(&b, d2, sizeof d2);
	uint8_t end[SV_STREAM_REC_HEADER + SV_STREAM_END_PAYLOAD];
	sv_stream_encode_end(end, ID, 3, sizeof d1 + sizeof d2, 65536);
	put(&b, end, sizeof end);
	return b;
}

struct seen {
	int header, records, end;
	uint64_t data_bytes, zero_bytes;
	uint32_t data_crc;
	uint32_t base_crcs[3];
	char error[200];
};

/* Parse buf, giving the parser at most step new bytes at a time (as a
 * reader of a pipe would); returns 0 if the stream was accepted. */
static int
parse_all(const uint8_t *buf, size_t len, size_t step, struct seen *s)
{
	struct sv_stream_parser p;
	sv_stream_parser_init(&p);
	memset(s, 0, sizeof *s);
	size_t start = 0, avail = 0;
	for (;;) {
		size_t used, need;
		struct sv_stream_record rec;
		enum sv_stream_result r =
		    sv_stream_parse(&p, buf + start, avail - start, &used, &need, &rec);
		if (r == SV_STREAM_ERROR) {
			strcpy(s->error, p.error);
			return -1;
		}
		if (r == SV_STREAM_NEED) {
			assert_true(need <= SV_STREAM_BUF_MIN);
			if (avail == len) {
				int f = sv_stream_finish(&p, avail - start);
				strcpy(s->error, p.error);
				return f;
			}
			avail = avail + step > len ? len : avail + step;
			continue;
		}
		assert_true(used > 0 && used <= avail - start);
		if (r == SV_STREAM_HEADER) {
			s->header++;
			assert_string_equal(p.hdr.volume, "vm1");
		} else if (r == SV_STREAM_RECORD) {
			if (s->records < 3)
				s->base_crcs[s->records] = rec.base_crc;
			s->records++;
			if (rec.type == SV_REC_DATA) {
				s->data_bytes += rec.len;
				s->data_crc = sv_crc32(s->data_crc, rec.data, rec.len);
			} else {
				s->zero_bytes += rec.len;
			}
		} else {
			s->end++;
		}
		start += used;
	}
}

static void
test_roundtrip(void **state)
{
	(void)state;
	for (int incr = 0; incr < 2; incr++) {
		struct buf b = make_stream(incr);
		struct seen whole, bytewise;
		assert_int_equal(parse_all(b.p, b.len, b.len, &whole), 0);
		assert_int_equal(parse_all(b.p, b.len, 1, &bytewise), 0);
		assert_int_equal(whole.header, 1);
		assert_int_equal(whole.records, 3);
		assert_int_equal(whole.end, 1);
		assert_int_equal(whole.data_bytes, 8192 + 4096);
		assert_int_equal(whole.zero_bytes, 65536);
		assert_int_equal(memcmp(&whole, &bytewise, sizeof whole), 0);
		if (incr) {
			assert_int_equal(whole.base_crcs[0], 0x1234);
			assert_int_equal(whole.base_crcs[1], 0x5678);
		}
		free(b.p);
	}
}

static void
test_header_fields(void **state)
{
	(void)state;
	struct buf b = make_stream(true);
	struct sv_stream_parser p;
	sv_stream_parser_init(&p);
	size_t used, need;
	struct sv_stream_record rec;
	assert_int_equal(sv_stream_parse(&p, b.p, b.len, &used, &need, &rec), SV_STREAM_HEADER);
	assert_int_equal(p.hdr.version, 1);
	assert_int_equal(p.hdr.flags, SV_STREAM_F_INCREMENTAL);
	assert_int_equal(p.hdr.chunk_size, 4096);
	assert_int_equal(p.hdr.volume_size, SIZE);
	assert_int_equal(p.hdr.created, 1700000000);
	assert_memory_equal(p.hdr.id, ID, 16);
	assert_string_equal(p.hdr.snapshot, "tue");
	assert_string_equal(p.hdr.base, "mon");
	assert_int_equal(used, SV_STREAM_HEADER_FIXED + 3 + 3 + 3 + 4);
	free(b.p);
}

/* Flipping any one byte of the stream gets it refused, never accepted. */
static void
test_every_corruption_refused(void **state)
{
	(void)state;
	struct buf b = make_stream(true);
	for (size_t i = 0; i < b.len; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			b.p[i] ^= (uint8_t)(1u << bit);
			struct seen s;
			int r = parse_all(b.p, b.len, 4096, &s);
			if (r == 0)
				fail_msg("flipping bit %d of byte %zu was not noticed", bit, i);
			assert_true(s.error[0] != '\0');
			b.p[i] ^= (uint8_t)(1u << bit);
		}
	}
	free(b.p);
}

static void
test_every_truncation_refused(void **state)
{
	(void)state;
	struct buf b = make_stream(false);
	for (size_t len = 0; len < b.len; len++) {
		struct seen s;
		assert_int_equal(parse_all(b.p, len, 977, &s), -1);
		assert_true(strstr(s.error, "truncated") || strstr(s.error, "empty"));
	}
	/* Trailing bytes after the end record. */
	uint8_t extra = 0;
	put(&b, &extra, 1);
	struct seen s;
	assert_int_equal(parse_all(b.p, b.len, b.len, &s), -1);
	assert_non_null(strstr(s.error, "trailing"));
	free(b.p);
}

static void
test_bad_magic_and_version(void **state)
{
	(void)state;
	struct buf b = make_stream(false);
	struct seen s;
	b.p[0] = 'X';
	assert_int_equal(parse_all(b.p, b.len, b.len, &s), -1);
	assert_non_null(strstr(s.error, "magic"));
	/* Refused from the first bytes, before the header is complete. */
	assert_int_equal(parse_all(b.p, 3, 3, &s), -1);
	assert_non_null(strstr(s.error, "magic"));
	b.p[0] = 'S';
	b.p[8] = 2;
	assert_int_equal(parse_all(b.p, b.len, b.len, &s), -1);
	assert_non_null(strstr(s.error, "version 2"));
	free(b.p);
}

/* A record the encoder would write, that the parser must still refuse. */
static int
with_records(const uint64_t (*recs)[3], size_t n, struct seen *s)
{
	struct buf b = {0};
	struct sv_stream_header h;
	header(&h, false);
	uint8_t hb[SV_STREAM_HEADER_MAX], rh[SV_STREAM_REC_HEADER];
	put(&b, hb, sv_stream_encode_header(&h, hb));
	uint8_t *zero = calloc(1, SV_STREAM_MAX_DATA + 4096);
	uint64_t records = 0, data = 0, zeros = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t type = recs[i][0], off = recs[i][1], len = recs[i][2];
		sv_stream_encode_record(rh, (enum sv_stream_rec_type)type, off, len, 0, zero);
		put(&b, rh, sizeof rh);
		if (type == SV_REC_DATA) {
			put(&b, zero, len);
			data += len;
		} else {
			zeros += len;
		}
		records++;
	}
	uint8_t end[SV_STREAM_REC_HEADER + SV_STREAM_END_PAYLOAD];
	sv_stream_encode_end(end, ID, records, data, zeros);
	put(&b, end, sizeof end);
	int r = parse_all(b.p, b.len, b.len, s);
	free(zero);
	free(b.p);
	return r;
}

static void
test_record_checks(void **state)
{
	(void)state;
	struct seen s;
	const uint64_t ok[][3] = {{SV_REC_DATA, 0, 512}, {SV_REC_ZERO, 512, SIZE - 512}};
	assert_int_equal(with_records(ok, 2, &s), 0);
	const uint64_t overlap[][3] = {{SV_REC_DATA, 4096, 4096}, {SV_REC_ZERO, 6000, 100}};
	assert_int_equal(with_records(overlap, 2, &s), -1);
	assert_non_null(strstr(s.error, "overlaps"));
	const uint64_t past[][3] = {{SV_REC_ZERO, SIZE - 512, 1024}};
	assert_int_equal(with_records(past, 1, &s), -1);
	assert_non_null(strstr(s.error, "outside"));
	const uint64_t wrap[][3] = {{SV_REC_ZERO, UINT64_MAX - 10, 20}};
	assert_int_equal(with_records(wrap, 1, &s), -1);
	const uint64_t big[][3] = {{SV_REC_DATA, 0, SV_STREAM_MAX_DATA + 512}};
	assert_int_equal(with_records(big, 1, &s), -1);
	assert_non_null(strstr(s.error, "length"));
	const uint64_t empty[][3] = {{SV_REC_ZERO, 0, 0}};
	assert_int_equal(with_records(empty, 1, &s), -1);
	const uint64_t unknown[][3] = {{7, 0, 512}};
	assert_int_equal(with_records(unknown, 1, &s), -1);
	assert_non_null(strstr(s.error, "unknown type"));
}

static void
test_encoder_refuses_bad_headers(void **state)
{
	(void)state;
	struct sv_stream_header h;
	uint8_t hb[SV_STREAM_HEADER_MAX];
	header(&h, true);
	strcpy(h.base, "");
	assert_int_equal(sv_stream_encode_header(&h, hb), 0); /* incremental without base */
	header(&h, false);
	strcpy(h.snapshot, "a/b");
	assert_int_equal(sv_stream_encode_header(&h, hb), 0);
	header(&h, false);
	h.volume_size = 1000;
	assert_int_equal(sv_stream_encode_header(&h, hb), 0);
	header(&h, false);
	h.chunk_size = 3000;
	assert_int_equal(sv_stream_encode_header(&h, hb), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_header_fields),
	    cmocka_unit_test(test_every_corruption_refused),
	    cmocka_unit_test(test_every_truncation_refused),
	    cmocka_unit_test(test_bad_magic_and_version),
	    cmocka_unit_test(test_record_checks),
	    cmocka_unit_test(test_encoder_refuses_bad_headers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
