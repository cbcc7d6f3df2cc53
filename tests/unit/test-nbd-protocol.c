/*
 * test-nbd-protocol.c: unit tests for the NBD server.
 *
 * Two halves.  The first checks the pure wire functions of nbd/protocol.c
 * byte by byte: greeting, client flags, option headers and replies, the
 * INFO/GO and META_CONTEXT payload parsers, request decoding, the
 * validation rules (every error a bad request can earn), errno mapping,
 * error chunks, block-status descriptors and block sizes.  The second runs
 * whole sessions over a socketpair against a real temporary pool, with the
 * server in a thread (sv_nbd_serve_fd) and a hand-written client here, and
 * checks the bytes of the handshake replies and of the answers to good and
 * bad requests, and that the stream stays usable after each bad one.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "testpool.h"
#include "testwire.h"
#include "nbd-server.h"
#include "protocol.h"

/* ------------------------------------------------------------------ */
/* pure functions */

static void
test_greeting(void **state)
{
	(void)state;
	uint8_t g[NBD_GREETING_LEN];
	sv_nbd_encode_greeting(g);
	assert_memory_equal(g, "NBDMAGICIHAVEOPT\x00\x03", 18);
}

static void
test_client_flags(void **state)
{
	(void)state;
	bool nz = true;
	const char *why = NULL;
	assert_int_equal(sv_nbd_check_client_flags(0, &nz, &why), -1);
	assert_non_null(why);
	assert_int_equal(sv_nbd_check_client_flags(2, &nz, &why), -1);
	assert_int_equal(sv_nbd_check_client_flags(1 | 4, &nz, &why), -1);
	assert_int_equal(sv_nbd_check_client_flags(0x80000001u, &nz, &why), -1);
	assert_int_equal(sv_nbd_check_client_flags(1, &nz, &why), 0);
	assert_false(nz);
	assert_int_equal(sv_nbd_check_client_flags(3, &nz, &why), 0);
	assert_true(nz);
}

static void
test_option_header_and_reply(void **state)
{
	(void)state;
	uint8_t h[16] = "IHAVEOPT\x00\x00\x00\x07\x00\x01\x00\x02";
	struct sv_nbd_opt_hdr oh;
	assert_int_equal(sv_nbd_decode_option_header(h, &oh), 0);
	assert_int_equal(oh.option, 7);
	assert_int_equal(oh.len, 0x10002);
	h[0] = 'X';
	assert_int_equal(sv_nbd_decode_option_header(h, &oh), -1);

	uint8_t r[NBD_OPT_REPLY_HDR_LEN];
	sv_nbd_encode_option_reply(r, 3, NBD_REP_ERR_INVALID, 0x1234);
	assert_memory_equal(r,
			    "\x00\x03\xe8\x89\x04\x55\x65\xa9"
			    "\x00\x00\x00\x03"
			    "\x80\x00\x00\x03"
			    "\x00\x00\x12\x34",
			    20);
}

static void
test_export_reply(void **state)
{
	(void)state;
	uint8_t b[NBD_EXPORT_REPLY_LEN];
	memset(b, 0xaa, sizeof b);
	assert_int_equal(sv_nbd_encode_export_reply(b, 0x100000, 0x1234, true), 10);
	assert_memory_equal(b, "\x00\x00\x00\x00\x00\x10\x00\x00\x12\x34", 10);
	assert_int_equal(b[10], 0xaa);
	assert_int_equal(sv_nbd_encode_export_reply(b, 1, 1, false), 134);
	for (int i = 10; i < 134; i++)
		assert_int_equal(b[i], 0);

	uint8_t e[12];
	assert_int_equal(sv_nbd_encode_info_export(e, 0x200, 0x0d6d), 12);
	assert_memory_equal(e, "\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x0d\x6d", 12);
	uint8_t s[14];
	assert_int_equal(sv_nbd_encode_info_block_size(s, 1, 4096, 32u << 20), 14);
	assert_memory_equal(s, "\x00\x03\x00\x00\x00\x01\x00\x00\x10\x00\x02\x00\x00\x00", 14);
}

static void
test_block_sizes(void **state)
{
	(void)state;
	uint32_t mn, pf, mx;
	sv_nbd_block_sizes(1, 4096, 32u << 20, &mn, &pf, &mx);
	assert_int_equal(mn, 1);
	assert_int_equal(pf, 4096);
	assert_int_equal(mx, 32u << 20);
	sv_nbd_block_sizes(1, 65536, 32u << 20, &mn, &pf, &mx);
	assert_int_equal(pf, 65536);
	sv_nbd_block_sizes(65536, 4096, 32u << 20, &mn, &pf, &mx);
	assert_int_equal(mn, 65536);
	assert_int_equal(pf, 65536);
	sv_nbd_block_sizes(512, 1u << 20, (1u << 20) + 700, &mn, &pf, &mx);
	assert_int_equal(mx, (1u << 20) + 512); /* rounded down to a multiple of min */
	assert_int_equal(mx % mn, 0);
}

static void
test_transmission_flags(void **state)
{
	(void)state;
	uint16_t f = sv_nbd_transmission_flags(false, true);
	assert_int_equal(f, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
				NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
				NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE |
				NBD_FLAG_SEND_FAST_ZERO);
	f = sv_nbd_transmission_flags(true, false);
	assert_true(f & NBD_FLAG_READ_ONLY);
	/* read-only exports are snapshots: a trim releases a range of one */
	assert_true(f & NBD_FLAG_SEND_TRIM);
	assert_false(f & (NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF));
}

static void
test_info_request(void **state)
{
	(void)state;
	struct sv_nbd_info_req rq;
	const char *why;
	/* name "vm1", 3 requests: NAME, BLOCK_SIZE, unknown 99 */
	uint8_t ok[] = {0, 0, 0, 3, 'v', 'm', '1', 0, 3, 0, 1, 0, 3, 0, 99};
	assert_int_equal(sv_nbd_parse_info_request(ok, sizeof ok, &rq, &why), 0);
	assert_int_equal(rq.name_len, 3);
	assert_memory_equal(rq.name, "vm1", 3);
	assert_true(rq.want_name);
	assert_true(rq.want_block_size);
	assert_false(rq.want_description);

	uint8_t empty[] = {0, 0, 0, 0, 0, 0};
	assert_int_equal(sv_nbd_parse_info_request(empty, sizeof empty, &rq, &why), 0);
	assert_int_equal(rq.name_len, 0);

	assert_int_equal(sv_nbd_parse_info_request(ok, 5, &rq, &why), -1);
	uint8_t longname[] = {0, 0, 0, 10, 'v', 'm', '1', 0, 0};
	assert_int_equal(sv_nbd_parse_info_request(longname, sizeof longname, &rq, &why), -1);
	uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 0, 0};
	assert_int_equal(sv_nbd_parse_info_request(huge, sizeof huge, &rq, &why), -1);
	/* count says 2 requests, only 1 present; or trailing bytes */
	uint8_t shortreq[] = {0, 0, 0, 1, 'a', 0, 2, 0, 1};
	assert_int_equal(sv_nbd_parse_info_request(shortreq, sizeof shortreq, &rq, &why), -1);
	uint8_t trailing[] = {0, 0, 0, 1, 'a', 0, 0, 7};
	assert_int_equal(sv_nbd_parse_info_request(trailing, sizeof trailing, &rq, &why), -1);

	/* a 4097-byte name is refused, 4096 accepted */
	size_t n = 4 + 4097 + 2;
	uint8_t *big = calloc(1, n);
	assert_non_null(big);
	sv_put32(big, 4097);
	assert_int_equal(sv_nbd_parse_info_request(big, (uint32_t)n, &rq, &why), -1);
	assert_string_equal(why, "export name longer than 4096 bytes");
	sv_put32(big, 4096);
	assert_int_equal(sv_nbd_parse_info_request(big, (uint32_t)n - 1, &rq, &why), 0);
	free(big);
}

static void
test_meta_request(void **state)
{
	(void)state;
	struct sv_nbd_meta_req rq;
	const char *why;
	uint8_t ok[] = {0,   0,	  0,   1,   'v', 0,   0,   0,	2,   0,	  0,   0,   5,
			'b', 'a', 's', 'e', ':', 0,   0,   0,	15,  'b', 'a', 's', 'e',
			':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'};
	assert_int_equal(sv_nbd_parse_meta_request(ok, sizeof ok, &rq, &why), 0);
	assert_int_equal(rq.name_len, 1);
	assert_int_equal(rq.n_queries, 2);
	uint32_t pos = 0, ql;
	const char *q;
	assert_true(sv_nbd_meta_next_query(&rq, &pos, &q, &ql));
	assert_int_equal(ql, 5);
	assert_int_equal(sv_nbd_meta_match(q, ql, true), SV_NBD_CTX_BASE_ALLOCATION);
	assert_int_equal(sv_nbd_meta_match(q, ql, false), 0);
	assert_true(sv_nbd_meta_next_query(&rq, &pos, &q, &ql));
	assert_int_equal(ql, 15);
	assert_int_equal(sv_nbd_meta_match(q, ql, false), SV_NBD_CTX_BASE_ALLOCATION);
	assert_false(sv_nbd_meta_next_query(&rq, &pos, &q, &ql));

	assert_int_equal(sv_nbd_meta_match("qemu:dirty-bitmap:x", 19, false), 0);
	assert_int_equal(sv_nbd_meta_match("base:allocationX", 16, false), 0);
	assert_int_equal(sv_nbd_meta_match("base:alloc", 10, true), 0);

	/* truncated: the last query is 1 byte short */
	assert_int_equal(sv_nbd_parse_meta_request(ok, sizeof ok - 1, &rq, &why), -1);
	/* one byte of garbage after the last query */
	uint8_t trail[sizeof ok + 1];
	memcpy(trail, ok, sizeof ok);
	trail[sizeof ok] = 0;
	assert_int_equal(sv_nbd_parse_meta_request(trail, sizeof trail, &rq, &why), -1);
	/* query count far beyond the data */
	uint8_t many[] = {0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff};
	assert_int_equal(sv_nbd_parse_meta_request(many, sizeof many, &rq, &why), -1);
	uint8_t none[] = {0, 0, 0, 0, 0, 0, 0, 0};
	assert_int_equal(sv_nbd_parse_meta_request(none, sizeof none, &rq, &why), 0);
	assert_int_equal(rq.n_queries, 0);
	uint8_t badq[] = {0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xf0, 'x'};
	assert_int_equal(sv_nbd_parse_meta_request(badq, sizeof badq, &rq, &why), -1);
	assert_int_equal(sv_nbd_parse_meta_request(none, 7, &rq, &why), -1);
}

static void
test_request_codec(void **state)
{
	(void)state;
	struct sv_nbd_request r = {.flags = 0x11,
				   .type = NBD_CMD_WRITE_ZEROES,
				   .cookie = 0x0102030405060708ull,
				   .offset = 0x1000,
				   .len = 0x2000},
			      d;
	uint8_t b[NBD_REQUEST_LEN];
	sv_nbd_encode_request(b, &r);
	assert_memory_equal(b,
			    "\x25\x60\x95\x13\x00\x11\x00\x06\x01\x02\x03\x04\x05\x06\x07\x08"
			    "\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x20\x00",
			    28);
	assert_int_equal(sv_nbd_decode_request(b, &d), 0);
	assert_int_equal(d.flags, r.flags);
	assert_int_equal(d.type, r.type);
	assert_true(d.cookie == r.cookie);
	assert_true(d.offset == r.offset);
	assert_int_equal(d.len, r.len);
	b[3] = 0x14;
	assert_int_equal(sv_nbd_decode_request(b, &d), -1);
	assert_int_equal(sv_nbd_request_payload(&r), 0);
	r.type = NBD_CMD_WRITE;
	assert_int_equal(sv_nbd_request_payload(&r), 0x2000);
}

static uint32_t
judge(uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
      const struct sv_nbd_export_state *st)
{
	struct sv_nbd_request r = {.flags = flags, .type = type, .offset = off, .len = len};
	const char *why = NULL;
	uint32_t v = sv_nbd_validate_request(&r, st, &why);
	if (v != NBD_SUCCESS)
		assert_non_null(why);
	return v;
}

static void
test_validate(void **state)
{
	(void)state;
	struct sv_nbd_export_state st = {.size = 1 << 20,
					 .structured = true,
					 .contexts = SV_NBD_CTX_BASE_ALLOCATION,
					 .min_block = 1,
					 .max_request = 32u << 20};
	const uint64_t sz = st.size;
	assert_int_equal(judge(NBD_CMD_READ, 0, 0, 4096, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_READ, 0, sz - 1, 1, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_READ, NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA, 0, 1, &st),
			 NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_READ, 0, sz, 1, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, 0, sz - 1, 2, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, 0, UINT64_MAX, 2, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, 0, UINT64_MAX - 1, 0xffffffffu, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, 0, 0, 0, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 0, 1, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, 1u << 15, 0, 1, &st), NBD_EINVAL);
	/* writes past the end: ENOSPC (spec), trims: EINVAL */
	assert_int_equal(judge(NBD_CMD_WRITE, 0, sz - 4, 8, &st), NBD_ENOSPC);
	assert_int_equal(judge(NBD_CMD_WRITE_ZEROES, 0, sz, 1, &st), NBD_ENOSPC);
	assert_int_equal(judge(NBD_CMD_TRIM, 0, sz, 1, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
			       0, 4096, &st),
			 NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_WRITE, NBD_CMD_FLAG_FAST_ZERO, 0, 4096, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, sz, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, sz, &st),
			 NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_CACHE, NBD_CMD_FLAG_REQ_ONE, 0, sz, &st), NBD_EINVAL);
	/* flush and disc take no range */
	assert_int_equal(judge(NBD_CMD_FLUSH, 0, 0, 0, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_FLUSH, 0, 0, 1, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_FLUSH, NBD_CMD_FLAG_DF, 0, 0, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_DISC, 0, 0, 0, &st), NBD_SUCCESS);
	/* unknown commands */
	assert_int_equal(judge(8, 0, 0, 0, &st), NBD_EINVAL);
	assert_int_equal(judge(0xffff, 0, 0, 1, &st), NBD_EINVAL);
	/* size limit for data commands only */
	st.max_request = 65536;
	assert_int_equal(judge(NBD_CMD_READ, 0, 0, 65537, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_WRITE, 0, 0, 65537, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_WRITE, 0, 0, 65536, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_TRIM, 0, 0, 65537, &st), NBD_SUCCESS);
	/* alignment */
	st.min_block = 512;
	assert_int_equal(judge(NBD_CMD_READ, 0, 512, 512, &st), NBD_SUCCESS);
	assert_int_equal(judge(NBD_CMD_READ, 0, 1, 512, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_TRIM, 0, 512, 511, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_BLOCK_STATUS, 0, 0, 100, &st), NBD_EINVAL);
	st.min_block = 1;
	/* read-only exports */
	st.readonly = true;
	assert_int_equal(judge(NBD_CMD_WRITE, 0, 0, 1, &st), NBD_EPERM);
	assert_int_equal(judge(NBD_CMD_TRIM, 0, 0, 1, &st), NBD_SUCCESS); /* a release */
	assert_int_equal(judge(NBD_CMD_WRITE_ZEROES, 0, 0, 1, &st), NBD_EPERM);
	assert_int_equal(judge(NBD_CMD_READ, 0, 0, 1, &st), NBD_SUCCESS);
	st.readonly = false;
	/* DF and block status need structured replies; block status a context */
	st.contexts = 0;
	assert_int_equal(judge(NBD_CMD_BLOCK_STATUS, 0, 0, 1, &st), NBD_EINVAL);
	st.contexts = SV_NBD_CTX_BASE_ALLOCATION;
	st.structured = false;
	assert_int_equal(judge(NBD_CMD_BLOCK_STATUS, 0, 0, 1, &st), NBD_EINVAL);
	assert_int_equal(judge(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1, &st), NBD_EINVAL);
}

static void
test_errno_map(void **state)
{
	(void)state;
	assert_int_equal(sv_nbd_errno_to_nbd(0), 0);
	assert_int_equal(sv_nbd_errno_to_nbd(EPERM), NBD_EPERM);
	assert_int_equal(sv_nbd_errno_to_nbd(EROFS), NBD_EPERM);
	assert_int_equal(sv_nbd_errno_to_nbd(EIO), NBD_EIO);
	assert_int_equal(sv_nbd_errno_to_nbd(ENOMEM), NBD_ENOMEM);
	assert_int_equal(sv_nbd_errno_to_nbd(EINVAL), NBD_EINVAL);
	assert_int_equal(sv_nbd_errno_to_nbd(ENOSPC), NBD_ENOSPC);
	assert_int_equal(sv_nbd_errno_to_nbd(EDQUOT), NBD_ENOSPC);
	assert_int_equal(sv_nbd_errno_to_nbd(EFBIG), NBD_ENOSPC);
	assert_int_equal(sv_nbd_errno_to_nbd(EOVERFLOW), NBD_EOVERFLOW);
	assert_int_equal(sv_nbd_errno_to_nbd(ENOTSUP), NBD_ENOTSUP);
	assert_int_equal(sv_nbd_errno_to_nbd(EOPNOTSUPP), NBD_ENOTSUP);
	assert_int_equal(sv_nbd_errno_to_nbd(ESHUTDOWN), NBD_ESHUTDOWN);
	assert_int_equal(sv_nbd_errno_to_nbd(EBADF), NBD_EIO);
	assert_int_equal(sv_nbd_errno_to_nbd(ENOENT), NBD_EIO);
}

static void
test_replies(void **state)
{
	(void)state;
	uint8_t s[16];
	sv_nbd_encode_simple_reply(s, NBD_EINVAL, 0xa1a2a3a4a5a6a7a8ull);
	assert_memory_equal(s, "\x67\x44\x66\x98\x00\x00\x00\x16\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8",
			    16);
	uint8_t h[20];
	sv_nbd_encode_structured_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 5, 9);
	assert_memory_equal(h,
			    "\x66\x8e\x33\xef\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x05"
			    "\x00\x00\x00\x09",
			    20);
	uint8_t e[64];
	size_t n = sv_nbd_encode_error_chunk(e, sizeof e, 5, NBD_EIO, "boom");
	assert_int_equal(n, 20 + 6 + 4);
	assert_memory_equal(e,
			    "\x66\x8e\x33\xef\x00\x01\x80\x01\x00\x00\x00\x00\x00\x00\x00\x05"
			    "\x00\x00\x00\x0a"
			    "\x00\x00\x00\x05\x00\x04"
			    "boom",
			    30);
	/* message truncated to fit */
	n = sv_nbd_encode_error_chunk(e, 28, 5, NBD_EIO, "a long message");
	assert_int_equal(n, 28);
	assert_int_equal(sv_get16(e + 24), 2);
	assert_int_equal(sv_get32(e + 16), 8);
}

static void
desc(const uint8_t *d, size_t i, uint32_t *len, uint32_t *fl)
{
	*len = sv_get32(d + 8 * i);
	*fl = sv_get32(d + 8 * i + 4);
}

static void
test_extents(void **state)
{
	(void)state;
	uint8_t d[8 * 16];
	uint32_t l, f;
	const uint32_t HZ = NBD_STATE_HOLE | NBD_STATE_ZERO;
	/* data, hole, data (the engine merges, but be safe if it does not) */
	struct sv_extent e1[] = {
	    {0, 4096, false}, {4096, 8192, false}, {12288, 4096, true}, {16384, 100000, false}};
	size_t k = sv_nbd_encode_extents(e1, 4, 0, 20480, 1, false, d, 16);
	assert_int_equal(k, 3);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 12288);
	assert_int_equal(f, 0);
	desc(d, 1, &l, &f);
	assert_int_equal(l, 4096);
	assert_int_equal(f, HZ);
	desc(d, 2, &l, &f);
	assert_int_equal(l, 4096); /* clipped at off+len */
	/* REQ_ONE: a single descriptor */
	k = sv_nbd_encode_extents(e1, 4, 0, 20480, 1, true, d, 16);
	assert_int_equal(k, 1);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 12288);
	/* max_desc honoured */
	k = sv_nbd_encode_extents(e1, 4, 0, 20480, 1, false, d, 2);
	assert_int_equal(k, 2);
	/* starting mid-way */
	struct sv_extent e2[] = {{1000, 3096, true}, {4096, 4096, false}};
	k = sv_nbd_encode_extents(e2, 2, 1000, 7192, 1, false, d, 16);
	assert_int_equal(k, 2);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 3096);
	assert_int_equal(f, HZ);
	/* alignment 4096: unaligned boundaries rounded, mixed blocks are data */
	struct sv_extent e3[] = {{0, 6000, true}, {6000, 2192, false}, {8192, 8192, true}};
	k = sv_nbd_encode_extents(e3, 3, 0, 16384, 4096, false, d, 16);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 4096);
	assert_int_equal(f, HZ);
	uint32_t sum = l;
	for (size_t i = 1; i < k; i++) {
		desc(d, i, &l, &f);
		assert_int_equal(l % 4096, 0);
		sum += l;
	}
	assert_int_equal(sum, 16384);
	desc(d, 1, &l, &f);
	assert_int_equal(f, 0); /* [4096, 8192) mixes hole and data */
	/* a hole shorter than the block inside data: never reported as hole */
	struct sv_extent e4[] = {{0, 100, true}, {100, 8092, true}};
	k = sv_nbd_encode_extents(e4, 2, 0, 8192, 4096, false, d, 16);
	desc(d, 0, &l, &f);
	assert_int_equal(f, HZ); /* same state merged: one 8192 hole */
	assert_int_equal(l, 8192);
	struct sv_extent e5[] = {{0, 100, true}, {100, 8092, false}};
	k = sv_nbd_encode_extents(e5, 2, 0, 8192, 4096, true, d, 16);
	assert_int_equal(k, 1);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 4096);
	assert_int_equal(f, 0);
	/* nothing from the engine: the whole range as data */
	k = sv_nbd_encode_extents(NULL, 0, 0, 512, 1, false, d, 16);
	assert_int_equal(k, 1);
	desc(d, 0, &l, &f);
	assert_int_equal(l, 512);
	assert_int_equal(f, 0);
	/* extents that start past off: same */
	struct sv_extent e6[] = {{10, 100, true}};
	k = sv_nbd_encode_extents(e6, 1, 0, 512, 1, false, d, 16);
	assert_int_equal(k, 1);
	desc(d, 0, &l, &f);
	assert_int_equal(f, 0);
}

/* ------------------------------------------------------------------ */
/* sessions over a socketpair */

struct session {
	char dir[64];
	struct sv_pool *pool;
	struct sv_nbd_server *srv;
	int fd; /* client end */
	pthread_t thr;
	int sfd;
};

static void *
serve_thread(void *arg)
{
	struct session *s = arg;
	sv_nbd_serve_fd(s->srv, s->sfd);
	return NULL;
}

static void
start_session(struct session *s, const struct sv_nbd_config *cfg)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct timeval tv = {10, 0};
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	s->fd = sv[0];
	s->sfd = sv[1];
	assert_int_equal(sv_nbd_server_new(s->pool, cfg, &s->srv), 0);
	assert_int_equal(pthread_create(&s->thr, NULL, serve_thread, s), 0);
}

static void
end_session(struct session *s)
{
	close(s->fd);
	pthread_join(s->thr, NULL);
	sv_nbd_server_free(s->srv);
	s->srv = NULL;
}

static int
setup_pool(void **state)
{
	struct session *s = calloc(1, sizeof *s);
	if (!s)
		return -1;
	if (test_mkdtemp(s->dir, "nbd", false) == -1 ||
	    sv_pool_open(s->dir, SV_POOL_CREATE, &s->pool) == -1 ||
	    sv_volume_create(s->pool, "v", 1 << 20, 0) == -1)
		return -1;
	*state = s;
	return 0;
}

static int
teardown_pool(void **state)
{
	struct session *s = *state;
	sv_pool_close(s->pool);
	int r = test_rmtree(s->dir);
	free(s);
	return r;
}

/* The server closed the stream (after reading what it wanted). */
static void
expect_eof(int fd)
{
	char b[256];
	ssize_t r;
	while ((r = recv(fd, b, sizeof b, 0)) > 0)
		;
	assert_true(r == 0 || errno == ECONNRESET);
}

static void
send_option(int fd, uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[16];
	sv_put64(h, NBD_IHAVEOPT);
	sv_put32(h + 8, opt);
	sv_put32(h + 12, len);
	xsend(fd, h, 16);
	if (len)
		xsend(fd, data, len);
}

/* Read one option reply; check option and type; return its payload
 * (malloc'd, NUL-terminated) and length. */
static char *
get_reply(int fd, uint32_t opt, uint32_t type, uint32_t *len)
{
	uint8_t h[20];
	xrecv(fd, h, 20);
	assert_true(sv_get64(h) == NBD_REP_MAGIC);
	assert_int_equal(sv_get32(h + 8), opt);
	assert_int_equal(sv_get32(h + 12), type);
	uint32_t n = sv_get32(h + 16);
	assert_true(n < 65536);
	char *p = calloc(1, n + 1);
	assert_non_null(p);
	if (n)
		xrecv(fd, p, n);
	if (len)
		*len = n;
	return p;
}

static void
expect_reply(int fd, uint32_t opt, uint32_t type)
{
	free(get_reply(fd, opt, type, NULL));
}

static void
greet(int fd, uint32_t cflags)
{
	uint8_t g[18];
	xrecv(fd, g, 18);
	assert_memory_equal(g, "NBDMAGICIHAVEOPT\x00\x03", 18);
	uint8_t f[4];
	sv_put32(f, cflags);
	xsend(fd, f, 4);
}

static void
send_request(int fd, uint16_t type, uint16_t flags, uint64_t cookie, uint64_t off, uint32_t len,
	     const void *payload)
{
	struct sv_nbd_request r = {flags, type, cookie, off, len};
	uint8_t b[NBD_REQUEST_LEN];
	sv_nbd_encode_request(b, &r);
	xsend(fd, b, sizeof b);
	if (payload)
		xsend(fd, payload, len);
}

static void
expect_simple(int fd, uint64_t cookie, uint32_t error)
{
	uint8_t b[16];
	xrecv(fd, b, 16);
	assert_int_equal(sv_get32(b), NBD_SIMPLE_REPLY_MAGIC);
	assert_int_equal(sv_get32(b + 4), error);
	assert_true(sv_get64(b + 8) == cookie);
}

/* A structured chunk header; returns its payload length. */
static uint32_t
expect_chunk(int fd, uint64_t cookie, uint16_t flags, uint16_t type)
{
	uint8_t b[20];
	xrecv(fd, b, 20);
	assert_int_equal(sv_get32(b), NBD_STRUCTURED_REPLY_MAGIC);
	assert_int_equal(sv_get16(b + 4), flags);
	assert_int_equal(sv_get16(b + 6), type);
	assert_true(sv_get64(b + 8) == cookie);
	return sv_get32(b + 16);
}

static void
expect_error_chunk(int fd, uint64_t cookie, uint32_t error)
{
	uint32_t n = expect_chunk(fd, cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR);
	assert_true(n >= 6 && n < 4200);
	uint8_t b[4200];
	xrecv(fd, b, n);
	assert_int_equal(sv_get32(b), error);
	assert_int_equal(sv_get16(b + 4), n - 6);
	assert_true(n > 6); /* a message for the human */
}

/* A structured READ reply of any shape (data chunks, holes, a final NONE):
 * reassemble it into buf and check it covers [off, off+len). */
static void
read_structured(int fd, uint64_t cookie, uint64_t off, uint32_t len, uint8_t *buf)
{
	uint64_t covered = 0;
	for (;;) {
		uint8_t h[20];
		xrecv(fd, h, 20);
		assert_int_equal(sv_get32(h), NBD_STRUCTURED_REPLY_MAGIC);
		assert_true(sv_get64(h + 8) == cookie);
		uint16_t flags = sv_get16(h + 4), type = sv_get16(h + 6);
		uint32_t n = sv_get32(h + 16);
		if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
			uint8_t o[8];
			xrecv(fd, o, 8);
			uint64_t at = sv_get64(o);
			assert_true(at >= off && at + (n - 8) <= off + len);
			xrecv(fd, buf + (at - off), n - 8);
			covered += n - 8;
		} else if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
			uint8_t o[12];
			assert_int_equal(n, 12);
			xrecv(fd, o, 12);
			uint64_t at = sv_get64(o);
			memset(buf + (at - off), 0, sv_get32(o + 8));
			covered += sv_get32(o + 8);
		} else {
			assert_int_equal(type, NBD_REPLY_TYPE_NONE);
			assert_int_equal(n, 0);
		}
		if (flags & NBD_REPLY_FLAG_DONE)
			break;
	}
	assert_true(covered == len);
}

static void
go(int fd, const char *name, uint16_t ninfo, const uint16_t *info, uint64_t *size, uint16_t *flags)
{
	size_t nl = strlen(name);
	uint8_t b[256];
	sv_put32(b, (uint32_t)nl);
	memcpy(b + 4, name, nl);
	sv_put16(b + 4 + nl, ninfo);
	for (uint16_t i = 0; i < ninfo; i++)
		sv_put16(b + 6 + nl + 2 * i, info[i]);
	send_option(fd, NBD_OPT_GO, b, (uint32_t)(6 + nl + 2 * ninfo));
	bool got_export = false;
	for (;;) {
		uint8_t h[20];
		xrecv(fd, h, 20);
		assert_int_equal(sv_get32(h + 8), NBD_OPT_GO);
		uint32_t type = sv_get32(h + 12), n = sv_get32(h + 16);
		uint8_t p[4200];
		assert_true(n <= sizeof p);
		xrecv(fd, p, n);
		if (type == NBD_REP_ACK)
			break;
		assert_int_equal(type, NBD_REP_INFO);
		if (sv_get16(p) == NBD_INFO_EXPORT) {
			assert_int_equal(n, 12);
			*size = sv_get64(p + 2);
			*flags = sv_get16(p + 10);
			got_export = true;
		} else if (sv_get16(p) == NBD_INFO_BLOCK_SIZE) {
			assert_int_equal(n, 14);
			assert_int_equal(sv_get32(p + 2), 1);
			assert_int_equal(sv_get32(p + 6), 4096);
		}
	}
	assert_true(got_export);
}

static void
test_session_handshake(void **state)
{
	struct session *s = *state;
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	start_session(s, &cfg);
	int fd = s->fd;
	greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);

	/* LIST: one export "v" with a description, then ACK */
	send_option(fd, NBD_OPT_LIST, NULL, 0);
	uint32_t n;
	char *p = get_reply(fd, NBD_OPT_LIST, NBD_REP_SERVER, &n);
	assert_true(n > 5);
	assert_int_equal(sv_get32((uint8_t *)p), 1);
	assert_int_equal(p[4], 'v');
	assert_non_null(strstr(p + 5, "v"));
	free(p);
	expect_reply(fd, NBD_OPT_LIST, NBD_REP_ACK);
	/* LIST with data, unknown option, STARTTLS, EXTENDED_HEADERS */
	send_option(fd, NBD_OPT_LIST, "x", 1);
	expect_reply(fd, NBD_OPT_LIST, NBD_REP_ERR_INVALID);
	send_option(fd, 99, "abc", 3);
	expect_reply(fd, 99, NBD_REP_ERR_UNSUP);
	send_option(fd, NBD_OPT_STARTTLS, NULL, 0);
	expect_reply(fd, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY);
	send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0);
	expect_reply(fd, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP);
	/* INFO on a missing export: ERR_UNKNOWN with the engine's message */
	uint8_t b[64] = {0, 0, 0, 4, 'n', 'o', 'p', 'e', 0, 0};
	send_option(fd, NBD_OPT_INFO, b, 10);
	p = get_reply(fd, NBD_OPT_INFO, NBD_REP_ERR_UNKNOWN, &n);
	assert_true(n > 0);
	free(p);
	/* names the engine refuses */
	uint8_t bad[] = {0, 0, 0, 3, 'a', '/', 'b', 0, 0};
	send_option(fd, NBD_OPT_GO, bad, sizeof bad);
	expect_reply(fd, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN);
	/* a malformed GO */
	uint8_t mal[] = {0, 0, 0, 9, 'v', 0, 0};
	send_option(fd, NBD_OPT_GO, mal, sizeof mal);
	expect_reply(fd, NBD_OPT_GO, NBD_REP_ERR_INVALID);
	/* a 5000-byte name */
	uint8_t *big = calloc(1, 4 + 5000 + 2);
	assert_non_null(big);
	sv_put32(big, 5000);
	memset(big + 4, 'a', 5000);
	send_option(fd, NBD_OPT_GO, big, 5006);
	expect_reply(fd, NBD_OPT_GO, NBD_REP_ERR_INVALID);
	free(big);
	/* meta contexts need structured replies first */
	uint8_t meta[] = {0,   0,   0,	 1,   'v', 0,	0,   0,	  1,   0,   0,	 0,   15,  'b',
			  'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'};
	send_option(fd, NBD_OPT_SET_META_CONTEXT, meta, sizeof meta);
	expect_reply(fd, NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_INVALID);
	send_option(fd, NBD_OPT_STRUCTURED_REPLY, "x", 1);
	expect_reply(fd, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID);
	send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	expect_reply(fd, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK);
	/* LIST_META_CONTEXT with no query lists base:allocation with id 0 */
	uint8_t lm[] = {0, 0, 0, 1, 'v', 0, 0, 0, 0};
	send_option(fd, NBD_OPT_LIST_META_CONTEXT, lm, sizeof lm);
	p = get_reply(fd, NBD_OPT_LIST_META_CONTEXT, NBD_REP_META_CONTEXT, &n);
	assert_int_equal(n, 4 + 15);
	assert_int_equal(sv_get32((uint8_t *)p), 0);
	assert_memory_equal(p + 4, "base:allocation", 15);
	free(p);
	expect_reply(fd, NBD_OPT_LIST_META_CONTEXT, NBD_REP_ACK);
	/* an unknown namespace selects nothing: just ACK */
	uint8_t um[] = {0, 0, 0, 1, 'v', 0, 0, 0, 1, 0, 0, 0, 4, 'x', '-', 'a', ':'};
	send_option(fd, NBD_OPT_SET_META_CONTEXT, um, sizeof um);
	expect_reply(fd, NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK);
	/* SET base:allocation: id 1 */
	send_option(fd, NBD_OPT_SET_META_CONTEXT, meta, sizeof meta);
	p = get_reply(fd, NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, &n);
	assert_int_equal(sv_get32((uint8_t *)p), SV_NBD_CTX_BASE_ALLOCATION_ID);
	free(p);
	expect_reply(fd, NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK);

	uint16_t info[] = {NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_NAME};
	uint64_t size = 0;
	uint16_t flags = 0;
	go(fd, "v", 3, info, &size, &flags);
	assert_true(size == 1 << 20);
	assert_int_equal(flags, sv_nbd_transmission_flags(false, true));

	/* transmission: write, read back (structured), block status */
	uint8_t data[4096], back[4096];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)(i * 7 + 1);
	send_request(fd, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 1, 8192, 4096, data);
	expect_simple(fd, 1, 0);
	send_request(fd, NBD_CMD_READ, 0, 2, 8192, 4096, NULL);
	assert_int_equal(expect_chunk(fd, 2, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA),
			 8 + 4096);
	uint8_t off[8];
	xrecv(fd, off, 8);
	assert_true(sv_get64(off) == 8192);
	xrecv(fd, back, 4096);
	assert_memory_equal(data, back, 4096);

	send_request(fd, NBD_CMD_BLOCK_STATUS, 0, 3, 0, 1 << 20, NULL);
	n = expect_chunk(fd, 3, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS);
	assert_true(n >= 12 && (n - 4) % 8 == 0);
	uint8_t *bs = malloc(n);
	assert_non_null(bs);
	xrecv(fd, bs, n);
	assert_int_equal(sv_get32(bs), SV_NBD_CTX_BASE_ALLOCATION_ID);
	uint64_t sum = 0;
	bool data_seen = false;
	for (uint32_t i = 4; i < n; i += 8) {
		uint64_t a = sum, l = sv_get32(bs + i);
		if (a <= 8192 && 8192 < a + l)
			data_seen = !(sv_get32(bs + i + 4) & NBD_STATE_HOLE);
		sum += l;
	}
	assert_true(sum == 1 << 20);
	assert_true(data_seen);
	free(bs);
	send_request(fd, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 4, 0, 1 << 20, NULL);
	assert_int_equal(expect_chunk(fd, 4, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS), 12);
	uint8_t one[12];
	xrecv(fd, one, 12);

	/* bad requests: each gets its error and the stream goes on */
	send_request(fd, NBD_CMD_READ, 0, 10, 1 << 20, 1, NULL);
	expect_error_chunk(fd, 10, NBD_EINVAL);
	send_request(fd, NBD_CMD_READ, 0, 11, UINT64_MAX - 10, 4096, NULL);
	expect_error_chunk(fd, 11, NBD_EINVAL);
	send_request(fd, NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 12, 0, 1, NULL);
	expect_error_chunk(fd, 12, NBD_EINVAL);
	send_request(fd, NBD_CMD_WRITE, 0, 13, (1 << 20) - 100, 4096, data);
	expect_simple(fd, 13, NBD_ENOSPC);
	send_request(fd, NBD_CMD_WRITE, NBD_CMD_FLAG_REQ_ONE, 14, 0, 4096, data);
	expect_simple(fd, 14, NBD_EINVAL);
	send_request(fd, 42, 0, 15, 0, 0, NULL);
	expect_simple(fd, 15, NBD_EINVAL);
	send_request(fd, NBD_CMD_FLUSH, 0, 16, 0, 1, NULL);
	expect_simple(fd, 16, NBD_EINVAL);
	send_request(fd, NBD_CMD_TRIM, 0, 17, 0, 0, NULL);
	expect_simple(fd, 17, NBD_EINVAL);
	send_request(fd, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 18, 0, 4096, NULL);
	expect_simple(fd, 18, 0);
	send_request(fd, NBD_CMD_CACHE, 0, 19, 0, 1 << 20, NULL);
	expect_simple(fd, 19, 0);
	send_request(fd, NBD_CMD_FLUSH, 0, 20, 0, 0, NULL);
	expect_simple(fd, 20, 0);
	/* the write past the end changed nothing, the one before is there */
	send_request(fd, NBD_CMD_READ, NBD_CMD_FLAG_DF, 21, 8192, 4096, NULL);
	expect_chunk(fd, 21, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA);
	xrecv(fd, off, 8);
	xrecv(fd, back, 4096);
	assert_memory_equal(data, back, 4096);

	/* a large write and read (payload read straight from the socket; the
	 * read may go out with sendfile, as data chunk + NONE) */
	uint8_t *bigw = malloc(262144), *bigr = malloc(262144);
	assert_non_null(bigw);
	assert_non_null(bigr);
	for (size_t i = 0; i < 262144; i++)
		bigw[i] = (uint8_t)(i / 7);
	send_request(fd, NBD_CMD_WRITE, 0, 40, 65536, 262144, bigw);
	expect_simple(fd, 40, 0);
	send_request(fd, NBD_CMD_READ, 0, 41, 65536, 262144, NULL);
	read_structured(fd, 41, 65536, 262144, bigr);
	assert_memory_equal(bigw, bigr, 262144);
	free(bigw);
	free(bigr);

	/* pipelined: several requests in one send, replies in any order */
	uint8_t pipe[5 * NBD_REQUEST_LEN];
	for (int i = 0; i < 5; i++) {
		struct sv_nbd_request r = {0, NBD_CMD_FLUSH, 100 + (uint64_t)i, 0, 0};
		sv_nbd_encode_request(pipe + i * NBD_REQUEST_LEN, &r);
	}
	xsend(fd, pipe, sizeof pipe);
	unsigned seen = 0;
	for (int i = 0; i < 5; i++) {
		uint8_t r[16];
		xrecv(fd, r, 16);
		assert_int_equal(sv_get32(r), NBD_SIMPLE_REPLY_MAGIC);
		assert_int_equal(sv_get32(r + 4), 0);
		uint64_t c = sv_get64(r + 8);
		assert_true(c >= 100 && c < 105);
		seen |= 1u << (c - 100);
	}
	assert_int_equal(seen, 0x1f);

	/* DISC: the server closes */
	send_request(fd, NBD_CMD_DISC, 0, 30, 0, 0, NULL);
	expect_eof(fd);
	end_session(s);
}

static void
test_session_export_name(void **state)
{
	struct session *s = *state;
	start_session(s, NULL);
	int fd = s->fd;
	/* no NO_ZEROES: 124 zero bytes follow size and flags */
	greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
	send_option(fd, NBD_OPT_EXPORT_NAME, "v", 1);
	uint8_t b[134];
	xrecv(fd, b, sizeof b);
	assert_true(sv_get64(b) == 1 << 20);
	assert_int_equal(sv_get16(b + 8), sv_nbd_transmission_flags(false, false));
	for (int i = 10; i < 134; i++)
		assert_int_equal(b[i], 0);
	/* simple replies: READ data follows the header */
	send_request(fd, NBD_CMD_READ, 0, 7, 0, 512, NULL);
	expect_simple(fd, 7, 0);
	uint8_t d[512];
	xrecv(fd, d, sizeof d);
	/* without structured replies: simple errors, no block status, no DF */
	send_request(fd, NBD_CMD_READ, 0, 8, 1 << 20, 512, NULL);
	expect_simple(fd, 8, NBD_EINVAL);
	send_request(fd, NBD_CMD_BLOCK_STATUS, 0, 9, 0, 512, NULL);
	expect_simple(fd, 9, NBD_EINVAL);
	send_request(fd, NBD_CMD_READ, NBD_CMD_FLAG_DF, 10, 0, 512, NULL);
	expect_simple(fd, 10, NBD_EINVAL);
	/* bad magic: the stream cannot be trusted any more */
	uint8_t junk[NBD_REQUEST_LEN] = "garbage garbage garbage ga";
	xsend(fd, junk, sizeof junk);
	expect_eof(fd);
	end_session(s);
}

static void
test_session_refusals(void **state)
{
	struct session *s = *state;
	/* a client without FIXED_NEWSTYLE is dropped */
	start_session(s, NULL);
	greet(s->fd, 0);
	expect_eof(s->fd);
	end_session(s);
	/* unknown client flags */
	start_session(s, NULL);
	greet(s->fd, 1 | 8);
	expect_eof(s->fd);
	end_session(s);
	/* an unknown export with EXPORT_NAME: closed, there is no error reply */
	start_session(s, NULL);
	greet(s->fd, 3);
	send_option(s->fd, NBD_OPT_EXPORT_NAME, "nope", 4);
	expect_eof(s->fd);
	end_session(s);
	/* bad option magic */
	start_session(s, NULL);
	greet(s->fd, 3);
	xsend(s->fd, "IHAVEOPX\0\0\0\3\0\0\0\0", 16);
	expect_eof(s->fd);
	end_session(s);
	/* ABORT: ACK, then closed */
	start_session(s, NULL);
	greet(s->fd, 3);
	send_option(s->fd, NBD_OPT_ABORT, NULL, 0);
	expect_reply(s->fd, NBD_OPT_ABORT, NBD_REP_ACK);
	expect_eof(s->fd);
	end_session(s);
	/* an option longer than max_option_len: ERR_TOO_BIG, then closed */
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	cfg.max_option_len = 8192;
	start_session(s, &cfg);
	greet(s->fd, 3);
	uint8_t h[16];
	sv_put64(h, NBD_IHAVEOPT);
	sv_put32(h + 8, NBD_OPT_GO);
	sv_put32(h + 12, 100000);
	xsend(s->fd, h, 16);
	expect_reply(s->fd, NBD_OPT_GO, NBD_REP_ERR_TOO_BIG);
	expect_eof(s->fd);
	end_session(s);
	/* a client that stalls in the handshake is dropped at the deadline */
	cfg.max_option_len = 65536;
	cfg.handshake_timeout_s = 1;
	start_session(s, &cfg);
	greet(s->fd, 3);
	xsend(s->fd, "IHAVEOPT", 8); /* ... and nothing more */
	struct timeval t0, t1;
	gettimeofday(&t0, NULL);
	expect_eof(s->fd);
	gettimeofday(&t1, NULL);
	double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_usec - t0.tv_usec) / 1e6;
	assert_true(el > 0.5 && el < 5);
	end_session(s);
	/* a client that vanishes in the middle of a write payload */
	start_session(s, NULL);
	greet(s->fd, 3);
	send_option(s->fd, NBD_OPT_EXPORT_NAME, "v", 1);
	uint8_t b[10];
	xrecv(s->fd, b, 10);
	uint8_t data[100] = {0};
	struct sv_nbd_request r = {0, NBD_CMD_WRITE, 1, 0, 65536};
	uint8_t rb[NBD_REQUEST_LEN];
	sv_nbd_encode_request(rb, &r);
	xsend(s->fd, rb, sizeof rb);
	xsend(s->fd, data, sizeof data);
	end_session(s); /* closes the client end; the server must just end */
}

static void
test_session_limits(void **state)
{
	struct session *s = *state;
	struct sv_nbd_config cfg;
	sv_nbd_config_defaults(&cfg);
	cfg.max_request = 65536;
	cfg.min_block_size = 512;
	cfg.threads_per_conn = 3;
	start_session(s, &cfg);
	int fd = s->fd;
	greet(fd, 3);
	send_option(fd, NBD_OPT_EXPORT_NAME, "v", 1);
	uint8_t b[10];
	xrecv(fd, b, 10);
	/* a write over max_request: EINVAL, its payload is skipped */
	size_t big = 100000;
	uint8_t *data = calloc(1, big);
	assert_non_null(data);
	send_request(fd, NBD_CMD_WRITE, 0, 1, 0, (uint32_t)big, data);
	expect_simple(fd, 1, NBD_EINVAL);
	send_request(fd, NBD_CMD_FLUSH, 0, 2, 0, 0, NULL);
	expect_simple(fd, 2, 0);
	/* unaligned requests */
	send_request(fd, NBD_CMD_WRITE, 0, 3, 1, 512, data);
	expect_simple(fd, 3, NBD_EINVAL);
	send_request(fd, NBD_CMD_READ, 0, 4, 0, 100, NULL);
	expect_simple(fd, 4, NBD_EINVAL);
	/* a big aligned write and read: payload read straight into the buffer */
	for (size_t i = 0; i < 65536; i++)
		data[i] = (uint8_t)(i % 251);
	send_request(fd, NBD_CMD_WRITE, 0, 5, 65536, 65536, data);
	expect_simple(fd, 5, 0);
	send_request(fd, NBD_CMD_READ, 0, 6, 65536, 65536, NULL);
	expect_simple(fd, 6, 0);
	uint8_t *back = malloc(65536);
	assert_non_null(back);
	xrecv(fd, back, 65536);
	assert_memory_equal(data, back, 65536);
	free(back);
	free(data);
	/* a write far too big to skip: the connection is dropped */
	send_request(fd, NBD_CMD_WRITE, 0, 7, 0, 0xffffffffu, NULL);
	expect_eof(fd);
	end_session(s);
}

static void
test_listen_and_stop(void **state)
{
	struct session *s = *state;
	char path[128];
	snprintf(path, sizeof path, "%s/nbd.sock", s->dir);
	struct sv_nbd_server *srv, *srv2;
	assert_int_equal(sv_nbd_server_new(s->pool, NULL, &srv), 0);
	assert_int_equal(sv_nbd_listen_unix(srv, path), 0);
	assert_int_equal(sv_nbd_start(srv), 0);
	/* mode 0600 */
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* a second server on a live socket is refused */
	assert_int_equal(sv_nbd_server_new(s->pool, NULL, &srv2), 0);
	assert_int_equal(sv_nbd_listen_unix(srv2, path), -1);
	/* a client in transmission, then stop: the client sees end of stream */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	strcpy(sun.sun_path, path);
	assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	struct timeval tv = {10, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	greet(fd, 3);
	send_option(fd, NBD_OPT_EXPORT_NAME, "v", 1);
	uint8_t b[10];
	xrecv(fd, b, 10);
	struct sv_nbd_conn_info *ci;
	unsigned n;
	assert_int_equal(sv_nbd_list_connections(srv, &ci, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ci[0].export_name, "v");
	assert_string_equal(ci[0].peer, "unix");
	free(ci);
	sv_nbd_stop(srv);
	expect_eof(fd);
	close(fd);
	assert_int_equal(stat(path, &st), -1); /* socket file removed */
	sv_nbd_server_free(srv);
	/* a stale socket file is replaced */
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(l, (struct sockaddr *)&sun, sizeof sun), 0);
	close(l);
	assert_int_equal(sv_nbd_listen_unix(srv2, path), 0);
	sv_nbd_server_free(srv2);
	/* a regular file is not */
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(sv_nbd_server_new(s->pool, NULL, &srv), 0);
	assert_int_equal(sv_nbd_listen_unix(srv, path), -1);
	sv_nbd_server_free(srv);
	unlink(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_greeting),
	    cmocka_unit_test(test_client_flags),
	    cmocka_unit_test(test_option_header_and_reply),
	    cmocka_unit_test(test_export_reply),
	    cmocka_unit_test(test_block_sizes),
	    cmocka_unit_test(test_transmission_flags),
	    cmocka_unit_test(test_info_request),
	    cmocka_unit_test(test_meta_request),
	    cmocka_unit_test(test_request_codec),
	    cmocka_unit_test(test_validate),
	    cmocka_unit_test(test_errno_map),
	    cmocka_unit_test(test_replies),
	    cmocka_unit_test(test_extents),
	    cmocka_unit_test_setup_teardown(test_session_handshake, setup_pool, teardown_pool),
	    cmocka_unit_test_setup_teardown(test_session_export_name, setup_pool, teardown_pool),
	    cmocka_unit_test_setup_teardown(test_session_refusals, setup_pool, teardown_pool),
	    cmocka_unit_test_setup_teardown(test_session_limits, setup_pool, teardown_pool),
	    cmocka_unit_test_setup_teardown(test_listen_and_stop, setup_pool, teardown_pool),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
