/*
 * protocol.h: the NBD wire format, and the pure functions that encode and
 * decode it.
 *
 * Everything here is bytes in, bytes out: no sockets, no engine, no locks,
 * so that tests/unit/test-nbd-protocol.c checks every encoder, decoder and
 * validation rule without a connection, and the fuzzer's findings are easy
 * to reproduce.  The constants follow the NBD protocol document
 * (NetworkBlockDevice/nbd doc/proto.md); all integers on the wire are big
 * endian.  Functions that judge client input return a reason string for
 * the log and for the error message sent back where the protocol has room
 * for one.
 */
#ifndef SV_NBD_PROTOCOL_H
#define SV_NBD_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h" /* struct sv_extent */

/* ---- magic numbers ---- */
#define NBD_MAGIC		   UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_IHAVEOPT		   UINT64_C(0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC		   UINT64_C(0x0003e889045565a9)
#define NBD_REQUEST_MAGIC	   UINT32_C(0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC	   UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)

/* ---- handshake flags (server) and client flags ---- */
#define NBD_FLAG_FIXED_NEWSTYLE	  (1u << 0)
#define NBD_FLAG_NO_ZEROES	  (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES	  (1u << 1)

/* ---- transmission flags ---- */
#define NBD_FLAG_HAS_FLAGS	   (1u << 0)
#define NBD_FLAG_READ_ONLY	   (1u << 1)
#define NBD_FLAG_SEND_FLUSH	   (1u << 2)
#define NBD_FLAG_SEND_FUA	   (1u << 3)
#define NBD_FLAG_ROTATIONAL	   (1u << 4)
#define NBD_FLAG_SEND_TRIM	   (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF	   (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN	   (1u << 8)
#define NBD_FLAG_SEND_RESIZE	   (1u << 9)
#define NBD_FLAG_SEND_CACHE	   (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO	   (1u << 11)

/* ---- options ---- */
#define NBD_OPT_EXPORT_NAME	  1
#define NBD_OPT_ABORT		  2
#define NBD_OPT_LIST		  3
#define NBD_OPT_PEEK_EXPORT	  4
#define NBD_OPT_STARTTLS	  5
#define NBD_OPT_INFO		  6
#define NBD_OPT_GO		  7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* ---- option replies ---- */
#define NBD_REP_ACK		    1u
#define NBD_REP_SERVER		    2u
#define NBD_REP_INFO		    3u
#define NBD_REP_META_CONTEXT	    4u
#define NBD_REP_ERR(n)		    ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP	    NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY	    NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID	    NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM	    NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD	    NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN	    NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN	    NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG	    NBD_REP_ERR(9)

/* ---- NBD_REP_INFO types ---- */
#define NBD_INFO_EXPORT	     0
#define NBD_INFO_NAME	     1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* ---- commands and command flags ---- */
#define NBD_CMD_READ	     0
#define NBD_CMD_WRITE	     1
#define NBD_CMD_DISC	     2
#define NBD_CMD_FLUSH	     3
#define NBD_CMD_TRIM	     4
#define NBD_CMD_CACHE	     5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF	       (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* ---- structured replies ---- */
#define NBD_REPLY_FLAG_DONE	    (1u << 0)
#define NBD_REPLY_TYPE_NONE	    0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR	    ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2)

/* base:allocation status flags */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* ---- error values (the only ones the protocol allows) ---- */
#define NBD_SUCCESS   0
#define NBD_EPERM     1
#define NBD_EIO	      5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* ---- sizes ---- */
#define NBD_GREETING_LEN      18  /* NBDMAGIC, IHAVEOPT, 16-bit flags */
#define NBD_OPT_HDR_LEN	      16  /* IHAVEOPT, option, length */
#define NBD_OPT_REPLY_HDR_LEN 20  /* magic, option, type, length */
#define NBD_EXPORT_REPLY_LEN  134 /* size, flags, 124 zeros */
#define NBD_REQUEST_LEN	      28
#define NBD_SIMPLE_REPLY_LEN  16
#define NBD_STRUCT_REPLY_LEN  20
#define NBD_MAX_STRING	      4096  /* names, queries, messages */
#define NBD_MAX_BLOCK_MIN     65536 /* largest minimum block size allowed */

/* Metadata contexts this server knows, as bits; the context ID on the wire
 * is the bit number + 1 (IDs 0 is avoided, as qemu does). */
#define SV_NBD_CTX_BASE_ALLOCATION	(1u << 0)
#define SV_NBD_CTX_BASE_ALLOCATION_ID	1u
#define SV_NBD_CTX_BASE_ALLOCATION_NAME "base:allocation"
/* qemu:dirty-bitmap:SNAP, as qemu publishes it (flag 1 = dirty): chunks
 * changed since snapshot SNAP (engine.h, sv_view_dirty_*).  One per
 * connection; the name after the prefix is the snapshot's. */
#define SV_NBD_CTX_DIRTY_BITMAP	       (1u << 1)
#define SV_NBD_CTX_DIRTY_BITMAP_ID     2u
#define SV_NBD_CTX_DIRTY_BITMAP_PREFIX "qemu:dirty-bitmap:"
#define NBD_STATE_DIRTY		       (1u << 0)

/* ---- big-endian helpers ---- */
static inline void
sv_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void
sv_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline void
sv_put64(uint8_t *p, uint64_t v)
{
	sv_put32(p, (uint32_t)(v >> 32));
	sv_put32(p + 4, (uint32_t)v);
}
static inline uint16_t
sv_get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t
sv_get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t
sv_get64(const uint8_t *p)
{
	return ((uint64_t)sv_get32(p) << 32) | sv_get32(p + 4);
}

/* ---- names, for logs ---- */
const char *sv_nbd_opt_name(uint32_t opt);
const char *sv_nbd_cmd_name(uint16_t cmd);

/* ---- handshake ---- */

/* The server's first 18 bytes. */
void sv_nbd_encode_greeting(uint8_t out[NBD_GREETING_LEN]);
/* Judge the client's 32-bit flags: 0 and *no_zeroes, or -1 with *why (a
 * client that does not speak fixed newstyle, or sets unknown flags, is
 * refused: the spec says the server MUST drop it for unknown flags). */
int sv_nbd_check_client_flags(uint32_t cflags, bool *no_zeroes, const char **why);

struct sv_nbd_opt_hdr {
	uint32_t option;
	uint32_t len;
};
/* -1 if the magic is wrong. */
int sv_nbd_decode_option_header(const uint8_t in[NBD_OPT_HDR_LEN], struct sv_nbd_opt_hdr *h);
void sv_nbd_encode_option_reply(uint8_t out[NBD_OPT_REPLY_HDR_LEN], uint32_t option, uint32_t type,
				uint32_t len);
/* The reply to NBD_OPT_EXPORT_NAME; returns its length (10 or 134). */
size_t sv_nbd_encode_export_reply(uint8_t out[NBD_EXPORT_REPLY_LEN], uint64_t size, uint16_t flags,
				  bool no_zeroes);
/* NBD_REP_INFO payloads; each returns its length. */
size_t sv_nbd_encode_info_export(uint8_t out[12], uint64_t size, uint16_t flags);
size_t sv_nbd_encode_info_block_size(uint8_t out[14], uint32_t min, uint32_t pref, uint32_t max);
/* Block size constraints to advertise, from the configured minimum, the
 * volume's chunk size and the request limit (each rounded into what the
 * spec allows: powers of 2, pref >= max(min, 512), max a multiple of min). */
void sv_nbd_block_sizes(uint32_t min_block, uint32_t chunk, uint32_t max_request, uint32_t *min,
			uint32_t *pref, uint32_t *max);

/* NBD_OPT_INFO / NBD_OPT_GO data. */
struct sv_nbd_info_req {
	const char *name; /* points into the option data; not NUL-terminated */
	uint32_t name_len;
	bool want_name, want_description, want_block_size;
};
int sv_nbd_parse_info_request(const uint8_t *data, uint32_t len, struct sv_nbd_info_req *out,
			      const char **why);

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data.  The whole
 * structure is checked up front; queries are then walked with
 * sv_nbd_meta_next_query. */
struct sv_nbd_meta_req {
	const char *name;
	uint32_t name_len;
	uint32_t n_queries;
	const uint8_t *queries; /* n_queries x (be32 length, bytes) */
	uint32_t queries_len;
};
int sv_nbd_parse_meta_request(const uint8_t *data, uint32_t len, struct sv_nbd_meta_req *out,
			      const char **why);
/* Iterate: *pos starts at 0; returns false at the end. */
bool sv_nbd_meta_next_query(const struct sv_nbd_meta_req *r, uint32_t *pos, const char **q,
			    uint32_t *q_len);
/* Contexts a query selects (SV_NBD_CTX_* bits).  In a LIST, "base:" is a
 * wildcard for every base: context; in a SET it selects nothing.  Unknown
 * namespaces and leaf names select nothing (the spec says ignore them). */
unsigned sv_nbd_meta_match(const char *q, uint32_t q_len, bool is_list);

/* ---- transmission ---- */

uint16_t sv_nbd_transmission_flags(bool readonly, bool structured);

struct sv_nbd_request {
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
};
/* -1 if the magic is wrong (the stream cannot be resynchronised). */
int sv_nbd_decode_request(const uint8_t in[NBD_REQUEST_LEN], struct sv_nbd_request *r);
void sv_nbd_encode_request(uint8_t out[NBD_REQUEST_LEN], const struct sv_nbd_request *r);

/* What a connection negotiated, for validating its requests. */
struct sv_nbd_export_state {
	uint64_t size;
	bool readonly;
	bool structured;    /* NBD_OPT_STRUCTURED_REPLY was acknowledged */
	unsigned contexts;  /* SV_NBD_CTX_* selected for this export */
	uint32_t min_block; /* power of 2; 1 = no alignment constraint */
	uint32_t max_request;
};
/* Judge a request.  Returns NBD_SUCCESS, or the NBD error to send (with
 * *why set): unknown command or flag, bad range, alignment, size, a write
 * to a read-only export, block status without a context... */
uint32_t sv_nbd_validate_request(const struct sv_nbd_request *r,
				 const struct sv_nbd_export_state *st, const char **why);
/* Payload bytes that follow the header on the wire (WRITE's length). */
static inline uint32_t
sv_nbd_request_payload(const struct sv_nbd_request *r)
{
	return r->type == NBD_CMD_WRITE ? r->len : 0;
}
/* errno (from the engine) to one of the protocol's error values. */
uint32_t sv_nbd_errno_to_nbd(int err);

void sv_nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_LEN], uint32_t error, uint64_t cookie);
void sv_nbd_encode_structured_hdr(uint8_t out[NBD_STRUCT_REPLY_LEN], uint16_t flags, uint16_t type,
				  uint64_t cookie, uint32_t len);
/* A complete NBD_REPLY_TYPE_ERROR chunk with NBD_REPLY_FLAG_DONE (header and
 * payload) in out; msg is truncated to fit cap.  Returns the length. */
size_t sv_nbd_encode_error_chunk(uint8_t *out, size_t cap, uint64_t cookie, uint32_t nbd_err,
				 const char *msg);
/* Turn engine extents starting at off into base:allocation descriptors
 * (8 bytes each: length, flags) in out.  Descriptors never go past
 * off+len, are multiples of min_block except when a short one is the only
 * way to make progress, and number at most max_desc (1 with req_one).
 * Returns how many were written (at least 1 when len > 0 and n > 0). */
size_t sv_nbd_encode_extents(const struct sv_extent *ext, size_t n, uint64_t off, uint32_t len,
			     uint32_t min_block, bool req_one, uint8_t *out, size_t max_desc);

#endif
