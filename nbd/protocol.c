/*
 * protocol.c: encoders, decoders and request validation for the NBD wire
 * format (see protocol.h).
 *
 * Pure functions only: they see bytes and small structs, never a socket or
 * the engine, so each rule the server enforces on a client (DESIGN
 * invariant 9) is a line here that the unit tests can hit directly.
 */
#include <errno.h>
#include <string.h>

#include "protocol.h"

const char *
sv_nbd_opt_name(uint32_t opt)
{
	switch (opt) {
	case NBD_OPT_EXPORT_NAME:
		return "EXPORT_NAME";
	case NBD_OPT_ABORT:
		return "ABORT";
	case NBD_OPT_LIST:
		return "LIST";
	case NBD_OPT_PEEK_EXPORT:
		return "PEEK_EXPORT";
	case NBD_OPT_STARTTLS:
		return "STARTTLS";
	case NBD_OPT_INFO:
		return "INFO";
	case NBD_OPT_GO:
		return "GO";
	case NBD_OPT_STRUCTURED_REPLY:
		return "STRUCTURED_REPLY";
	case NBD_OPT_LIST_META_CONTEXT:
		return "LIST_META_CONTEXT";
	case NBD_OPT_SET_META_CONTEXT:
		return "SET_META_CONTEXT";
	case NBD_OPT_EXTENDED_HEADERS:
		return "EXTENDED_HEADERS";
	default:
		return "unknown";
	}
}

const char *
sv_nbd_cmd_name(uint16_t cmd)
{
	switch (cmd) {
	case NBD_CMD_READ:
		return "READ";
	case NBD_CMD_WRITE:
		return "WRITE";
	case NBD_CMD_DISC:
		return "DISC";
	case NBD_CMD_FLUSH:
		return "FLUSH";
	case NBD_CMD_TRIM:
		return "TRIM";
	case NBD_CMD_CACHE:
		return "CACHE";
	case NBD_CMD_WRITE_ZEROES:
		return "WRITE_ZEROES";
	case NBD_CMD_BLOCK_STATUS:
		return "BLOCK_STATUS";
	default:
		return "unknown";
	}
}

/* ---- handshake ---- */

void
sv_nbd_encode_greeting(uint8_t out[NBD_GREETING_LEN])
{
	sv_put64(out, NBD_MAGIC);
	sv_put64(out + 8, NBD_IHAVEOPT);
	sv_put16(out + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
}

int
sv_nbd_check_client_flags(uint32_t cflags, bool *no_zeroes, const char **why)
{
	if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		*why = "client set unknown handshake flags";
		return -1;
	}
	if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE)) {
		*why = "client does not support fixed newstyle negotiation";
		return -1;
	}
	*no_zeroes = (cflags & NBD_FLAG_C_NO_ZEROES) != 0;
	return 0;
}

int
sv_nbd_decode_option_header(const uint8_t in[NBD_OPT_HDR_LEN], struct sv_nbd_opt_hdr *h)
{
	if (sv_get64(in) != NBD_IHAVEOPT)
		return -1;
	h->option = sv_get32(in + 8);
	h->len = sv_get32(in + 12);
	return 0;
}

void
sv_nbd_encode_option_reply(uint8_t out[NBD_OPT_REPLY_HDR_LEN], uint32_t option, uint32_t type,
			   uint32_t len)
{
	sv_put64(out, NBD_REP_MAGIC);
	sv_put32(out + 8, option);
	sv_put32(out + 12, type);
	sv_put32(out + 16, len);
}

size_t
sv_nbd_encode_export_reply(uint8_t out[NBD_EXPORT_REPLY_LEN], uint64_t size, uint16_t flags,
			   bool no_zeroes)
{
	sv_put64(out, size);
	sv_put16(out + 8, flags);
	if (no_zeroes)
		return 10;
	memset(out + 10, 0, 124);
	return NBD_EXPORT_REPLY_LEN;
}

size_t
sv_nbd_encode_info_export(uint8_t out[12], uint64_t size, uint16_t flags)
{
	sv_put16(out, NBD_INFO_EXPORT);
	sv_put64(out + 2, size);
	sv_put16(out + 10, flags);
	return 12;
}

size_t
sv_nbd_encode_info_block_size(uint8_t out[14], uint32_t min, uint32_t pref, uint32_t max)
{
	sv_put16(out, NBD_INFO_BLOCK_SIZE);
	sv_put32(out + 2, min);
	sv_put32(out + 6, pref);
	sv_put32(out + 10, max);
	return 14;
}

static uint32_t
pow2_floor(uint32_t v)
{
	uint32_t p = 1;
	while (p <= v / 2)
		p *= 2;
	return p;
}

void
sv_nbd_block_sizes(uint32_t min_block, uint32_t chunk, uint32_t max_request, uint32_t *min,
		   uint32_t *pref, uint32_t *max)
{
	uint32_t mn = min_block ? pow2_floor(min_block) : 1;
	if (mn > NBD_MAX_BLOCK_MIN)
		mn = NBD_MAX_BLOCK_MIN;
	uint32_t pf = chunk ? pow2_floor(chunk) : 4096;
	if (pf < 4096)
		pf = 4096;
	if (pf < mn)
		pf = mn;
	uint32_t mx = max_request & ~(mn - 1);
	if (mx < mn)
		mx = mn;
	if (pf > mx)
		pf = pow2_floor(mx) < 512 ? 512 : pow2_floor(mx);
	if (mx < pf)
		mx = pf;
	*min = mn;
	*pref = pf;
	*max = mx;
}

int
sv_nbd_parse_info_request(const uint8_t *data, uint32_t len, struct sv_nbd_info_req *out,
			  const char **why)
{
	memset(out, 0, sizeof *out);
	if (len < 6) {
		*why = "option data too short";
		return -1;
	}
	uint32_t nl = sv_get32(data);
	if (nl > len - 6) {
		*why = "export name length exceeds the option length";
		return -1;
	}
	if (nl > NBD_MAX_STRING) {
		*why = "export name longer than 4096 bytes";
		return -1;
	}
	uint16_t nreq = sv_get16(data + 4 + nl);
	if ((uint64_t)4 + nl + 2 + 2 * (uint64_t)nreq != len) {
		*why = "number of information requests does not match the option length";
		return -1;
	}
	out->name = (const char *)data + 4;
	out->name_len = nl;
	const uint8_t *p = data + 4 + nl + 2;
	for (uint16_t i = 0; i < nreq; i++) {
		switch (sv_get16(p + 2 * i)) {
		case NBD_INFO_NAME:
			out->want_name = true;
			break;
		case NBD_INFO_DESCRIPTION:
			out->want_description = true;
			break;
		case NBD_INFO_BLOCK_SIZE:
			out->want_block_size = true;
			break;
		default: /* NBD_INFO_EXPORT is always sent; others ignored */
			break;
		}
	}
	return 0;
}

int
sv_nbd_parse_meta_request(const uint8_t *data, uint32_t len, struct sv_nbd_meta_req *out,
			  const char **why)
{
	memset(out, 0, sizeof *out);
	if (len < 8) {
		*why = "option data too short";
		return -1;
	}
	uint32_t nl = sv_get32(data);
	if (nl > len - 8) {
		*why = "export name length exceeds the option length";
		return -1;
	}
	if (nl > NBD_MAX_STRING) {
		*why = "export name longer than 4096 bytes";
		return -1;
	}
	uint32_t nq = sv_get32(data + 4 + nl);
	const uint8_t *q = data + 8 + nl;
	uint32_t rest = len - 8 - nl;
	/* Walk every query once, so later iteration needs no checks. */
	uint32_t pos = 0;
	for (uint32_t i = 0; i < nq; i++) {
		if (rest - pos < 4) {
			*why = "query list exceeds the option length";
			return -1;
		}
		uint32_t ql = sv_get32(q + pos);
		pos += 4;
		if (ql > rest - pos) {
			*why = "query length exceeds the option length";
			return -1;
		}
		if (ql > NBD_MAX_STRING) {
			*why = "query longer than 4096 bytes";
			return -1;
		}
		pos += ql;
	}
	if (pos != rest) {
		*why = "trailing bytes after the last query";
		return -1;
	}
	out->name = (const char *)data + 4;
	out->name_len = nl;
	out->n_queries = nq;
	out->queries = q;
	out->queries_len = rest;
	return 0;
}

bool
sv_nbd_meta_next_query(const struct sv_nbd_meta_req *r, uint32_t *pos, const char **q,
		       uint32_t *q_len)
{
	if (*pos + 4 > r->queries_len)
		return false;
	uint32_t ql = sv_get32(r->queries + *pos);
	*q = (const char *)r->queries + *pos + 4;
	*q_len = ql;
	*pos += 4 + ql;
	return true;
}

static bool
str_eq(const char *s, uint32_t len, const char *lit)
{
	size_t n = strlen(lit);
	return len == n && memcmp(s, lit, n) == 0;
}

unsigned
sv_nbd_meta_match(const char *q, uint32_t q_len, bool is_list)
{
	if (str_eq(q, q_len, SV_NBD_CTX_BASE_ALLOCATION_NAME))
		return SV_NBD_CTX_BASE_ALLOCATION;
	if (is_list && str_eq(q, q_len, "base:"))
		return SV_NBD_CTX_BASE_ALLOCATION;
	return 0;
}

/* ---- transmission ---- */

uint16_t
sv_nbd_transmission_flags(bool readonly, bool structured)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN |
		     NBD_FLAG_SEND_CACHE;
	/* A read-only export is a snapshot: a trim there releases the range
	 * (engine.h, sv_view_trim), so a backup reader can free the snapshot
	 * behind itself.  The spec only says a server SHOULD refuse it. */
	if (readonly)
		f |= NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_TRIM;
	else
		f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
		     NBD_FLAG_SEND_FAST_ZERO;
	if (structured)
		f |= NBD_FLAG_SEND_DF;
	return f;
}

int
sv_nbd_decode_request(const uint8_t in[NBD_REQUEST_LEN], struct sv_nbd_request *r)
{
	if (sv_get32(in) != NBD_REQUEST_MAGIC)
		return -1;
	r->flags = sv_get16(in + 4);
	r->type = sv_get16(in + 6);
	r->cookie = sv_get64(in + 8);
	r->offset = sv_get64(in + 16);
	r->len = sv_get32(in + 24);
	return 0;
}

void
sv_nbd_encode_request(uint8_t out[NBD_REQUEST_LEN], const struct sv_nbd_request *r)
{
	sv_put32(out, NBD_REQUEST_MAGIC);
	sv_put16(out + 4, r->flags);
	sv_put16(out + 6, r->type);
	sv_put64(out + 8, r->cookie);
	sv_put64(out + 16, r->offset);
	sv_put32(out + 24, r->len);
}

uint32_t
sv_nbd_validate_request(const struct sv_nbd_request *r, const struct sv_nbd_export_state *st,
			const char **why)
{
	uint16_t allowed = NBD_CMD_FLAG_FUA; /* valid on every command (spec) */
	bool ranged = true, writes = false;

	switch (r->type) {
	case NBD_CMD_READ:
		if (st->structured)
			allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE:
	case NBD_CMD_TRIM:
		writes = true;
		break;
	case NBD_CMD_WRITE_ZEROES:
		writes = true;
		allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
		break;
	case NBD_CMD_CACHE:
		break;
	case NBD_CMD_BLOCK_STATUS:
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		break;
	case NBD_CMD_FLUSH:
	case NBD_CMD_DISC:
		ranged = false;
		break;
	default:
		*why = "unknown command";
		return NBD_EINVAL;
	}

	if (r->flags & ~allowed) {
		*why = "command flags not valid for this command";
		return NBD_EINVAL;
	}
	if (!ranged) {
		if (r->offset != 0 || r->len != 0) {
			*why = "offset and length must be zero";
			return NBD_EINVAL;
		}
		return NBD_SUCCESS;
	}
	if (writes && st->readonly && r->type != NBD_CMD_TRIM) {
		*why = "export is read-only";
		return NBD_EPERM;
	}
	if (r->type == NBD_CMD_BLOCK_STATUS && (!st->structured || !st->contexts)) {
		*why = "block status needs structured replies and a metadata context";
		return NBD_EINVAL;
	}
	if (r->len == 0) {
		*why = "length is zero";
		return NBD_EINVAL;
	}
	if (r->offset > st->size || r->len > st->size - r->offset) {
		*why = "offset and length are beyond the end of the export";
		return (r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES) ? NBD_ENOSPC
										     : NBD_EINVAL;
	}
	if (st->min_block > 1 && ((r->offset | r->len) & (st->min_block - 1))) {
		*why = "offset or length not aligned to the minimum block size";
		return NBD_EINVAL;
	}
	if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->len > st->max_request) {
		*why = "request larger than the maximum block size";
		return NBD_EINVAL;
	}
	return NBD_SUCCESS;
}

uint32_t
sv_nbd_errno_to_nbd(int err)
{
	switch (err) {
	case 0:
		return NBD_SUCCESS;
	case EPERM:
	case EROFS:
		return NBD_EPERM;
	case EIO:
		return NBD_EIO;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

void
sv_nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_LEN], uint32_t error, uint64_t cookie)
{
	sv_put32(out, NBD_SIMPLE_REPLY_MAGIC);
	sv_put32(out + 4, error);
	sv_put64(out + 8, cookie);
}

void
sv_nbd_encode_structured_hdr(uint8_t out[NBD_STRUCT_REPLY_LEN], uint16_t flags, uint16_t type,
			     uint64_t cookie, uint32_t len)
{
	sv_put32(out, NBD_STRUCTURED_REPLY_MAGIC);
	sv_put16(out + 4, flags);
	sv_put16(out + 6, type);
	sv_put64(out + 8, cookie);
	sv_put32(out + 16, len);
}

size_t
sv_nbd_encode_error_chunk(uint8_t *out, size_t cap, uint64_t cookie, uint32_t nbd_err,
			  const char *msg)
{
	size_t fixed = NBD_STRUCT_REPLY_LEN + 6;
	if (cap < fixed)
		return 0;
	size_t ml = msg ? strlen(msg) : 0;
	if (ml > cap - fixed)
		ml = cap - fixed;
	if (ml > NBD_MAX_STRING)
		ml = NBD_MAX_STRING;
	sv_nbd_encode_structured_hdr(out, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie,
				     (uint32_t)(6 + ml));
	sv_put32(out + NBD_STRUCT_REPLY_LEN, nbd_err ? nbd_err : NBD_EIO);
	sv_put16(out + NBD_STRUCT_REPLY_LEN + 4, (uint16_t)ml);
	if (ml)
		memcpy(out + fixed, msg, ml);
	return fixed + ml;
}

static uint32_t
ext_flags(const struct sv_extent *e)
{
	return e->hole ? (NBD_STATE_HOLE | NBD_STATE_ZERO) : 0;
}

/* Status of [a, b) where several extents meet: a bit holds only if it holds
 * for every byte (a gap in the engine's answer counts as plain data). */
static uint32_t
range_flags(const struct sv_extent *ext, size_t n, size_t i, uint64_t a, uint64_t b)
{
	uint32_t f = NBD_STATE_HOLE | NBD_STATE_ZERO;
	uint64_t pos = a;
	for (; i < n && pos < b; i++) {
		if (ext[i].offset + ext[i].length <= pos)
			continue;
		if (ext[i].offset > pos)
			return 0;
		f &= ext_flags(&ext[i]);
		pos = ext[i].offset + ext[i].length;
	}
	return pos < b ? 0 : f;
}

size_t
sv_nbd_encode_extents(const struct sv_extent *ext, size_t n, uint64_t off, uint32_t len,
		      uint32_t min_block, bool req_one, uint8_t *out, size_t max_desc)
{
	if (req_one && max_desc > 1)
		max_desc = 1;
	if (max_desc == 0 || len == 0)
		return 0;
	uint64_t mb = min_block > 1 ? min_block : 1;
	uint64_t pos = off, end = off + len;
	size_t k = 0, i = 0;
	while (pos < end && k < max_desc) {
		while (i < n && ext[i].offset + ext[i].length <= pos)
			i++;
		if (i == n || ext[i].offset > pos || ext[i].length == 0)
			break; /* the engine said nothing about pos */
		uint32_t st = ext_flags(&ext[i]);
		uint64_t e = ext[i].offset + ext[i].length;
		size_t j = i + 1;
		while (e < end && j < n && ext[j].offset == e && ext_flags(&ext[j]) == st) {
			e = ext[j].offset + ext[j].length;
			j++;
		}
		if (e > end)
			e = end;
		if (mb > 1 && e < end) {
			uint64_t ea = e - (e % mb);
			if (ea <= pos) {
				/* pos's block mixes states: report what all of it shares */
				ea = pos + mb < end ? pos + mb : end;
				st = range_flags(ext, n, i, pos, ea);
			}
			e = ea;
		}
		sv_put32(out + 8 * k, (uint32_t)(e - pos));
		sv_put32(out + 8 * k + 4, st);
		k++;
		pos = e;
	}
	if (k == 0) {
		/* Nothing usable: "allocated, contents unknown" is always true. */
		sv_put32(out, len);
		sv_put32(out + 4, 0);
		k = 1;
	}
	return k;
}
