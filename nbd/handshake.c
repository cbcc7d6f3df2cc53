/*
 * handshake.c: the fixed-newstyle handshake (option haggling).
 *
 * The server greets with NBDMAGIC/IHAVEOPT and the FIXED_NEWSTYLE and
 * NO_ZEROES flags, refuses a client that does not answer FIXED_NEWSTYLE (or
 * sets flags it does not know), then answers options until one of them
 * (EXPORT_NAME or a successful GO) enters transmission, or the client
 * aborts or breaks the rules.  Every option's payload is read whole (at
 * most cfg->max_option_len bytes; longer ones get NBD_REP_ERR_TOO_BIG and
 * the connection is closed) and parsed by the pure functions of
 * protocol.c, so a malformed option costs an error reply and nothing else.
 * The whole handshake runs against a deadline (io.c).
 *
 * TLS (NBD_OPT_STARTTLS, tls.c): on a listener that requires TLS, every
 * option before it but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD (and
 * EXPORT_NAME, which has no error reply, closes the connection), so a
 * client without the key learns nothing about the exports, not even their
 * names.  STARTTLS is acknowledged, then the TLS handshake runs; a client
 * that then talks plaintext fails it and is closed.  A second STARTTLS
 * gets NBD_REP_ERR_INVALID.  Option state from before TLS (structured
 * replies, meta contexts) is forgotten once TLS is up, as the spec asks:
 * a man in the middle could have sent it.  A listener without TLS answers
 * STARTTLS with NBD_REP_ERR_POLICY.
 *
 * Export names are passed to the engine as bytes and a length: the engine
 * decides what names exist and what they may contain; its message goes
 * back to the client in NBD_REP_ERR_UNKNOWN.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

/* A client's bytes made safe for a log line. */
static const char *
printable(const char *s, size_t len, char *out, size_t cap)
{
	size_t k = 0;
	for (size_t i = 0; i < len && k + 4 < cap; i++) {
		unsigned char ch = (unsigned char)s[i];
		out[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
	}
	if (k + 4 >= cap && len > k) {
		memcpy(out + k, "...", 3);
		k += 3;
	}
	out[k] = 0;
	return out;
}

static int
reply(struct sv_nbd_conn *c, uint32_t option, uint32_t type, const void *payload, size_t len)
{
	uint8_t hdr[NBD_OPT_REPLY_HDR_LEN];
	sv_nbd_encode_option_reply(hdr, option, type, (uint32_t)len);
	struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)payload, len}};
	if (c->io->sendv(c, iov, len ? 2 : 1) == -1) {
		sv_log_debug("conn %u: sending option reply: %m", c->id);
		return -1;
	}
	return 0;
}

/* An error reply with a message for the user. */
static int __attribute__((format(printf, 4, 5)))
reply_err(struct sv_nbd_conn *c, uint32_t option, uint32_t type, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	sv_log_debug("conn %u: option %s: error 0x%" PRIx32 ": %s", c->id, sv_nbd_opt_name(option),
		     type, msg);
	return reply(c, option, type, msg, (size_t)n);
}

static bool
server_stopping(struct sv_nbd_server *srv)
{
	SV_LOCK_SCOPE(&srv->lock);
	return srv->stopping;
}

/* Open the view a name names; on failure, the engine's message is in the
 * thread's last error. */
static int
open_view(struct sv_nbd_conn *c, const char *name, uint32_t len, struct sv_view **v)
{
	sv_clear_error();
	if (sv_view_open(c->srv->pool, name, len, v) == -1)
		return -1;
	return 0;
}

static uint32_t
open_error_type(void)
{
	return sv_last_errno() == ESHUTDOWN ? NBD_REP_ERR_SHUTDOWN : NBD_REP_ERR_UNKNOWN;
}

static void
block_sizes(struct sv_nbd_conn *c, struct sv_view *v, uint32_t *min, uint32_t *pref, uint32_t *max)
{
	sv_nbd_block_sizes(c->srv->cfg.min_block_size, sv_view_chunk_size(v),
			   c->srv->cfg.max_request, min, pref, max);
}

/* Everything transmission needs, fixed once the export is chosen. */
static void
enter_export(struct sv_nbd_conn *c, struct sv_view *v, const char *name, uint32_t len)
{
	uint32_t min, pref, max;
	block_sizes(c, v, &min, &pref, &max);
	bool same =
	    c->meta_export && c->meta_export_len == len && memcmp(c->meta_export, name, len) == 0;
	c->view = v;
	c->st.size = sv_view_size(v);
	c->st.readonly = sv_view_readonly(v);
	c->st.structured = c->structured;
	c->st.contexts = same ? c->contexts : 0;
	c->st.min_block = min;
	c->st.max_request = max;
	c->tflags = sv_nbd_transmission_flags(c->st.readonly, c->structured);
	char pn[sizeof c->export_name];
	printable(name, len, pn, sizeof pn);
	SV_LOCK_SCOPE(&c->srv->lock);
	memcpy(c->export_name, pn, sizeof pn);
}

static int
opt_export_name(struct sv_nbd_conn *c, const uint8_t *data, uint32_t len)
{
	char pn[80];
	if (len > NBD_MAX_STRING) {
		sv_log_warn("conn %u: export name longer than 4096 bytes, closing", c->id);
		return -1;
	}
	struct sv_view *v;
	if (open_view(c, (const char *)data, len, &v) == -1) {
		/* NBD_OPT_EXPORT_NAME has no error reply: the spec says close. */
		sv_log_warn("conn %u: export '%s': %s", c->id,
			    printable((const char *)data, len, pn, sizeof pn), sv_last_error());
		return -1;
	}
	enter_export(c, v, (const char *)data, len);
	uint8_t out[NBD_EXPORT_REPLY_LEN];
	size_t n = sv_nbd_encode_export_reply(out, c->st.size, c->tflags, c->no_zeroes);
	if (sv_nbd_send_full(c, out, n) == -1)
		return -1;
	return 1;
}

static int
opt_info_go(struct sv_nbd_conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	struct sv_nbd_info_req rq;
	const char *why;
	if (sv_nbd_parse_info_request(data, len, &rq, &why) == -1)
		return reply_err(c, option, NBD_REP_ERR_INVALID, "%s", why);

	struct sv_view *v;
	if (open_view(c, rq.name, rq.name_len, &v) == -1)
		return reply_err(c, option, open_error_type(), "%s", sv_last_error());

	bool ro = sv_view_readonly(v);
	uint8_t buf[16];
	size_t n = sv_nbd_encode_info_export(buf, sv_view_size(v),
					     sv_nbd_transmission_flags(ro, c->structured));
	if (reply(c, option, NBD_REP_INFO, buf, n) == -1)
		goto fail;
	if (rq.want_name) {
		uint8_t *p = malloc(2 + (size_t)rq.name_len);
		if (!p)
			goto fail;
		sv_put16(p, NBD_INFO_NAME);
		memcpy(p + 2, rq.name, rq.name_len);
		int r = reply(c, option, NBD_REP_INFO, p, 2 + (size_t)rq.name_len);
		free(p);
		if (r == -1)
			goto fail;
	}
	if (rq.want_description) {
		const char *d = sv_view_description(v);
		size_t dl = strnlen(d, NBD_MAX_STRING);
		uint8_t p[2 + NBD_MAX_STRING];
		sv_put16(p, NBD_INFO_DESCRIPTION);
		memcpy(p + 2, d, dl);
		if (reply(c, option, NBD_REP_INFO, p, 2 + dl) == -1)
			goto fail;
	}
	/* Block sizes are sent whether asked for or not: clients ignore what
	 * they did not ask for, and those that honour them do better. */
	uint32_t min, pref, max;
	block_sizes(c, v, &min, &pref, &max);
	n = sv_nbd_encode_info_block_size(buf, min, pref, max);
	if (reply(c, option, NBD_REP_INFO, buf, n) == -1)
		goto fail;
	if (reply(c, option, NBD_REP_ACK, NULL, 0) == -1)
		goto fail;
	if (option == NBD_OPT_INFO) {
		sv_view_close(v);
		return 0;
	}
	enter_export(c, v, rq.name, rq.name_len);
	return 1;
fail:
	sv_view_close(v);
	return -1;
}

struct list_ctx {
	struct sv_nbd_conn *c;
	bool send_failed;
};

static int
list_one(void *opaque, const char *name, const char *description)
{
	struct list_ctx *lc = opaque;
	size_t nl = strnlen(name, NBD_MAX_STRING);
	size_t dl = strnlen(description, NBD_MAX_STRING);
	uint8_t *p = malloc(4 + nl + dl);
	if (!p) {
		lc->send_failed = true;
		return -1;
	}
	sv_put32(p, (uint32_t)nl);
	memcpy(p + 4, name, nl);
	memcpy(p + 4 + nl, description, dl);
	int r = reply(lc->c, NBD_OPT_LIST, NBD_REP_SERVER, p, 4 + nl + dl);
	free(p);
	if (r == -1) {
		lc->send_failed = true;
		return -1;
	}
	return 0;
}

static int
opt_list(struct sv_nbd_conn *c, uint32_t len)
{
	if (len != 0)
		return reply_err(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
				 "NBD_OPT_LIST takes no data");
	struct list_ctx lc = {.c = c};
	sv_clear_error();
	if (sv_pool_list_exports(c->srv->pool, list_one, &lc) == -1) {
		if (lc.send_failed)
			return -1;
		sv_log_error("conn %u: listing exports: %s", c->id, sv_last_error());
		return reply_err(c, NBD_OPT_LIST, NBD_REP_ERR_PLATFORM, "cannot list exports: %s",
				 sv_last_error());
	}
	return reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int
reply_context(struct sv_nbd_conn *c, uint32_t option, uint32_t id, const char *name)
{
	size_t nl = strlen(name);
	uint8_t p[4 + sizeof SV_NBD_CTX_DIRTY_BITMAP_PREFIX + SV_NAME_MAX];
	if (nl > sizeof p - 4)
		return reply_err(c, option, NBD_REP_ERR_INVALID, "context name too long");
	sv_put32(p, id);
	memcpy(p + 4, name, nl);
	return reply(c, option, NBD_REP_META_CONTEXT, p, 4 + nl);
}

/* qemu:dirty-bitmap:SNAP contexts (engine.h, sv_view_dirty_*).  A query
 * "qemu:" or "qemu:dirty-bitmap:" is a wildcard in a LIST (every snapshot
 * the export has a bitmap for) and selects nothing in a SET, as in qemu. */
static const char DIRTY[] = SV_NBD_CTX_DIRTY_BITMAP_PREFIX;
#define DIRTY_LEN (sizeof DIRTY - 1)

static bool
is_dirty_wildcard(const char *q, uint32_t ql)
{
	return (ql == 5 && !memcmp(q, "qemu:", 5)) || (ql == DIRTY_LEN && !memcmp(q, DIRTY, ql));
}

struct dirty_list {
	struct sv_nbd_conn *c;
	uint32_t option;
	bool send_failed;
};

static int
list_dirty_one(void *opaque, const char *snap)
{
	struct dirty_list *dl = opaque;
	char name[sizeof DIRTY + SV_NAME_MAX];
	snprintf(name, sizeof name, "%s%s", DIRTY, snap);
	if (reply_context(dl->c, dl->option, 0, name) == -1) {
		dl->send_failed = true;
		return -1;
	}
	return 0;
}

/* The dirty-bitmap part of a LIST or SET on view v: replies sent; for a
 * SET, the first valid query is selected into c->dirty_snap.  0, or -1 if
 * a reply could not be sent. */
static int
meta_dirty(struct sv_nbd_conn *c, uint32_t option, struct sv_view *v,
	   const struct sv_nbd_meta_req *rq, bool *selected)
{
	bool is_list = option == NBD_OPT_LIST_META_CONTEXT;
	bool all = is_list && rq->n_queries == 0;
	uint32_t pos = 0, ql;
	const char *q;
	while (is_list && !all && sv_nbd_meta_next_query(rq, &pos, &q, &ql))
		all = is_dirty_wildcard(q, ql);
	if (all) {
		struct dirty_list dl = {.c = c, .option = option};
		if (sv_view_dirty_names(v, list_dirty_one, &dl) == -1 && dl.send_failed)
			return -1;
		return 0;
	}
	pos = 0;
	while (sv_nbd_meta_next_query(rq, &pos, &q, &ql)) {
		if (ql <= DIRTY_LEN || memcmp(q, DIRTY, DIRTY_LEN) ||
		    sv_view_dirty_check(v, q + DIRTY_LEN, ql - DIRTY_LEN) == -1)
			continue; /* not ours, or no such bitmap: ignored, as the spec says */
		char name[sizeof DIRTY + SV_NAME_MAX];
		snprintf(name, sizeof name, "%s%.*s", DIRTY, (int)(ql - DIRTY_LEN), q + DIRTY_LEN);
		if (is_list) {
			if (reply_context(c, option, 0, name) == -1)
				return -1;
			continue;
		}
		if (reply_context(c, option, SV_NBD_CTX_DIRTY_BITMAP_ID, name) == -1)
			return -1;
		snprintf(c->dirty_snap, sizeof c->dirty_snap, "%.*s", (int)(ql - DIRTY_LEN),
			 q + DIRTY_LEN);
		*selected = true;
		break; /* one bitmap per connection */
	}
	return 0;
}

static int
opt_meta(struct sv_nbd_conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	bool is_list = option == NBD_OPT_LIST_META_CONTEXT;
	if (!is_list) {
		/* SET replaces the selection, even when it fails. */
		c->contexts = 0;
		c->dirty_snap[0] = '\0';
		free(c->meta_export);
		c->meta_export = NULL;
		c->meta_export_len = 0;
	}
	if (!c->structured)
		return reply_err(c, option, NBD_REP_ERR_INVALID,
				 "structured replies must be negotiated first");
	struct sv_nbd_meta_req rq;
	const char *why;
	if (sv_nbd_parse_meta_request(data, len, &rq, &why) == -1)
		return reply_err(c, option, NBD_REP_ERR_INVALID, "%s", why);

	struct sv_view *v;
	if (open_view(c, rq.name, rq.name_len, &v) == -1)
		return reply_err(c, option, open_error_type(), "%s", sv_last_error());

	unsigned sel = 0;
	if (is_list && rq.n_queries == 0) {
		sel = SV_NBD_CTX_BASE_ALLOCATION;
	} else {
		uint32_t pos = 0, ql;
		const char *q;
		while (sv_nbd_meta_next_query(&rq, &pos, &q, &ql))
			sel |= sv_nbd_meta_match(q, ql, is_list);
	}
	if (sel & SV_NBD_CTX_BASE_ALLOCATION) {
		uint32_t id = is_list ? 0 : SV_NBD_CTX_BASE_ALLOCATION_ID;
		if (reply_context(c, option, id, SV_NBD_CTX_BASE_ALLOCATION_NAME) == -1) {
			sv_view_close(v);
			return -1;
		}
	}
	bool dirty = false;
	int r = meta_dirty(c, option, v, &rq, &dirty);
	sv_view_close(v);
	if (r == -1)
		return -1;
	if (dirty)
		sel |= SV_NBD_CTX_DIRTY_BITMAP;
	if (!is_list && sel) {
		c->meta_export = malloc(rq.name_len ? rq.name_len : 1);
		if (!c->meta_export)
			return reply_err(c, option, NBD_REP_ERR_TOO_BIG, "out of memory");
		memcpy(c->meta_export, rq.name, rq.name_len);
		c->meta_export_len = rq.name_len;
		c->contexts = sel;
	}
	return reply(c, option, NBD_REP_ACK, NULL, 0);
}

static int
opt_starttls(struct sv_nbd_conn *c, uint32_t len)
{
	if (len != 0)
		return reply_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
				 "NBD_OPT_STARTTLS takes no data");
	if (c->tls_mode == SV_NBD_TLS_OFF || !c->srv->tls)
		return reply_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
				 "TLS is not enabled on this server");
	if (c->tls) {
		sv_log_warn("conn %u: NBD_OPT_STARTTLS again inside TLS", c->id);
		return reply_err(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
				 "TLS is already negotiated");
	}
	if (reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0) == -1)
		return -1;
	if (sv_nbd_tls_start(c) == -1)
		return -1;
	c->structured = false;
	c->contexts = 0;
	free(c->meta_export);
	c->meta_export = NULL;
	c->meta_export_len = 0;
	return 0;
}

/* Options whose data starts with an export name's length: a name longer
 * than cfg->max_name_len is refused (NBD_REP_ERR_TOO_BIG) before it is
 * parsed.  One longer than the protocol allows is left to the parser,
 * whose answer to that is NBD_REP_ERR_INVALID. */
static bool
name_too_long(struct sv_nbd_conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	uint32_t max = c->srv->cfg.max_name_len;
	switch (option) {
	case NBD_OPT_EXPORT_NAME:
		return len > max;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return len >= 4 && sv_get32(data) > max && sv_get32(data) <= NBD_MAX_STRING;
	default:
		return false;
	}
}

/* One option: 0 = go on, 1 = transmission, -1 = close. */
static int
handle_option(struct sv_nbd_conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	if (c->tls_mode == SV_NBD_TLS_REQUIRE && !c->tls && option != NBD_OPT_STARTTLS &&
	    option != NBD_OPT_ABORT) {
		if (option == NBD_OPT_EXPORT_NAME) {
			sv_log_warn("conn %u: NBD_OPT_EXPORT_NAME without TLS (required), closing",
				    c->id);
			return -1;
		}
		sv_log_info("conn %u: option %s refused: TLS is required", c->id,
			    sv_nbd_opt_name(option));
		return reply_err(c, option, NBD_REP_ERR_TLS_REQD,
				 "TLS is required: send NBD_OPT_STARTTLS first");
	}
	if (name_too_long(c, option, data, len)) {
		sv_log_warn("conn %u: option %s: export name longer than %" PRIu32 " bytes", c->id,
			    sv_nbd_opt_name(option), c->srv->cfg.max_name_len);
		if (option == NBD_OPT_EXPORT_NAME)
			return -1;
		return reply_err(c, option, NBD_REP_ERR_TOO_BIG,
				 "export name longer than %" PRIu32 " bytes",
				 c->srv->cfg.max_name_len);
	}
	if (option != NBD_OPT_ABORT && option != NBD_OPT_EXPORT_NAME && server_stopping(c->srv))
		return reply_err(c, option, NBD_REP_ERR_SHUTDOWN, "server is shutting down");

	switch (option) {
	case NBD_OPT_EXPORT_NAME:
		return opt_export_name(c, data, len);
	case NBD_OPT_ABORT:
		reply(c, option, NBD_REP_ACK, NULL, 0);
		return -1;
	case NBD_OPT_LIST:
		return opt_list(c, len);
	case NBD_OPT_STARTTLS:
		return opt_starttls(c, len);
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info_go(c, option, data, len);
	case NBD_OPT_STRUCTURED_REPLY:
		if (len != 0)
			return reply_err(c, option, NBD_REP_ERR_INVALID,
					 "NBD_OPT_STRUCTURED_REPLY takes no data");
		if (c->structured)
			return reply_err(c, option, NBD_REP_ERR_INVALID,
					 "structured replies already negotiated");
		c->structured = true;
		return reply(c, option, NBD_REP_ACK, NULL, 0);
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return opt_meta(c, option, data, len);
	default:
		return reply_err(c, option, NBD_REP_ERR_UNSUP, "option %" PRIu32 " not supported",
				 option);
	}
}

int
sv_nbd_handshake(struct sv_nbd_conn *c)
{
	const struct sv_nbd_config *cfg = &c->srv->cfg;
	int ret = -1;
	uint8_t *data = NULL;
	if (cfg->handshake_timeout_s)
		c->deadline_ns = sv_now_ns() + (uint64_t)cfg->handshake_timeout_s * 1000000000u;

	uint8_t greet[NBD_GREETING_LEN];
	sv_nbd_encode_greeting(greet);
	uint8_t cf[4];
	if (sv_nbd_send_full(c, greet, sizeof greet) == -1 ||
	    sv_nbd_recv_full(c, cf, sizeof cf) == -1)
		goto io_error;
	const char *why;
	if (sv_nbd_check_client_flags(sv_get32(cf), &c->no_zeroes, &why) == -1) {
		sv_log_warn("conn %u: %s (flags 0x%" PRIx32 "), closing", c->id, why, sv_get32(cf));
		return -1;
	}

	for (unsigned nopt = 0;; nopt++) {
		if (nopt >= SV_NBD_MAX_OPTIONS) {
			sv_log_warn("conn %u: more than %u options, closing", c->id,
				    SV_NBD_MAX_OPTIONS);
			goto out;
		}
		uint8_t h[NBD_OPT_HDR_LEN];
		struct sv_nbd_opt_hdr oh;
		if (sv_nbd_recv_full(c, h, sizeof h) == -1)
			goto io_error;
		if (sv_nbd_decode_option_header(h, &oh) == -1) {
			sv_log_warn("conn %u: bad option magic, closing", c->id);
			goto out;
		}
		sv_log_debug("conn %u: option %s (%" PRIu32 "), %" PRIu32 " bytes", c->id,
			     sv_nbd_opt_name(oh.option), oh.option, oh.len);
		if (oh.len > cfg->max_option_len) {
			sv_log_warn("conn %u: option %s of %" PRIu32 " bytes is too long, closing",
				    c->id, sv_nbd_opt_name(oh.option), oh.len);
			if (oh.option != NBD_OPT_EXPORT_NAME)
				reply_err(c, oh.option, NBD_REP_ERR_TOO_BIG,
					  "option data longer than %" PRIu32 " bytes",
					  cfg->max_option_len);
			goto out;
		}
		data = malloc(oh.len ? oh.len : 1);
		if (!data) {
			sv_log_error("conn %u: out of memory", c->id);
			goto out;
		}
		if (sv_nbd_recv_full(c, data, oh.len) == -1)
			goto io_error;
		int r = handle_option(c, oh.option, data, oh.len);
		free(data);
		data = NULL;
		if (r == -1)
			goto out;
		if (r == 1)
			break;
	}
	c->deadline_ns = 0;
	return 0;

io_error:
	if (errno == ETIMEDOUT)
		sv_log_warn("conn %u: handshake not finished in %u s, closing", c->id,
			    cfg->handshake_timeout_s);
	else
		sv_log_debug("conn %u: handshake: %m", c->id);
out:
	free(data);
	return ret;
}
