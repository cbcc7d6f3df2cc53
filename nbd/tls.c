/*
 * tls.c: TLS for NBD connections, through GnuTLS (NBD_OPT_STARTTLS).
 *
 * The server loads its credentials once, at sv_nbd_server_new: a PSK file
 * in the psktool format that nbdkit and qemu read ("username:hexkey" per
 * line; GnuTLS looks the client's name up in it at each handshake, so keys
 * may be added while the server runs), and/or an X.509 directory named the
 * way nbdkit and qemu name it (ca-cert.pem, server-cert.pem,
 * server-key.pem, optional ca-crl.pem), with client certificates required
 * and verified against the CA when verify_peer is set.
 *
 * After the handshake answers STARTTLS with ACK, sv_nbd_tls_start runs the
 * TLS handshake on the connection's socket and swaps the connection's io
 * ops (io.c) for the ones here: every byte after that goes through
 * gnutls_record_recv/send, and sendfile is off (can_sendfile false), since
 * the kernel cannot encrypt for us.  GnuTLS's own socket calls go through
 * the plain io functions, so the handshake deadline (a client that stalls
 * mid-TLS-handshake is dropped like one that stalls in option haggling)
 * and the stop path (shutdown(2) on the fd wakes a blocked reader) work
 * the same with and without TLS.
 *
 * Threads: a GnuTLS session may be used by one receiving and one sending
 * thread at once (GnuTLS manual, "Thread safety"); that is exactly the
 * transmission phase's discipline: one reader role, and sends under
 * send_lock.  Small replies are corked into one TLS record; large ones go
 * out record by record, without a copy of the whole payload.
 */
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "util.h"

/* Replies up to this size are corked into one record. */
#define CORK_MAX (64u * 1024u)

struct sv_nbd_tls_creds {
	gnutls_psk_server_credentials_t psk;
	gnutls_certificate_credentials_t x509;
	gnutls_priority_t prio;
	bool verify_peer;
};

static int
tls_error(int gerr, const char *what)
{
	return sv_error(EINVAL, "%s: %s", what, gnutls_strerror(gerr));
}

static int
readable_file(const char *path)
{
	if (access(path, R_OK) == -1)
		return sv_error_errno("TLS: cannot read %s", path);
	return 0;
}

void
sv_nbd_tls_creds_kinds(const struct sv_nbd_tls_creds *t, bool *psk, bool *x509)
{
	*psk = t && t->psk;
	*x509 = t && t->x509;
}

void
sv_nbd_tls_creds_free(struct sv_nbd_tls_creds *t)
{
	if (!t)
		return;
	if (t->psk)
		gnutls_psk_free_server_credentials(t->psk);
	if (t->x509)
		gnutls_certificate_free_credentials(t->x509);
	if (t->prio)
		gnutls_priority_deinit(t->prio);
	free(t);
}

static int
load_x509(struct sv_nbd_tls_creds *t, const char *dir)
{
	char ca[4096], cert[4096], key[4096], crl[4096];
	struct stat st;
	if (stat(dir, &st) == -1)
		return sv_error_errno("TLS certificates directory %s", dir);
	if (!S_ISDIR(st.st_mode))
		return sv_error(ENOTDIR, "TLS certificates: %s is not a directory", dir);
	snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir);
	snprintf(cert, sizeof cert, "%s/server-cert.pem", dir);
	snprintf(key, sizeof key, "%s/server-key.pem", dir);
	snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir);
	if (readable_file(cert) == -1 || readable_file(key) == -1)
		return -1;
	int r = gnutls_certificate_allocate_credentials(&t->x509);
	if (r < 0)
		return tls_error(r, "TLS");
	bool have_ca = access(ca, R_OK) == 0;
	if (t->verify_peer && !have_ca)
		return sv_error(ENOENT, "TLS: verifying client certificates needs %s", ca);
	if (have_ca) {
		r = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
		if (r < 0)
			return tls_error(r, ca);
	}
	if (access(crl, R_OK) == 0) {
		r = gnutls_certificate_set_x509_crl_file(t->x509, crl, GNUTLS_X509_FMT_PEM);
		if (r < 0)
			return tls_error(r, crl);
	}
	r = gnutls_certificate_set_x509_key_file(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
	if (r < 0)
		return tls_error(r, cert);
	gnutls_certificate_set_known_dh_params(t->x509, GNUTLS_SEC_PARAM_MEDIUM);
	return 0;
}

int
sv_nbd_tls_creds_new(const struct sv_nbd_config *cfg, struct sv_nbd_tls_creds **out)
{
	*out = NULL;
	if (!cfg->tls_psk_file && !cfg->tls_certs_dir)
		return 0;
	struct sv_nbd_tls_creds *t = calloc(1, sizeof *t);
	if (!t)
		return sv_error(ENOMEM, "out of memory");
	t->verify_peer = cfg->tls_verify_peer;
	int r;
	if (cfg->tls_psk_file) {
		if (readable_file(cfg->tls_psk_file) == -1)
			goto fail;
		struct stat st;
		if (stat(cfg->tls_psk_file, &st) == 0 && (st.st_mode & 0077))
			sv_log_warn("TLS: %s is readable by others (mode %03o): anyone who can "
				    "read it can connect",
				    cfg->tls_psk_file, (unsigned)(st.st_mode & 0777));
		if ((r = gnutls_psk_allocate_server_credentials(&t->psk)) < 0) {
			tls_error(r, "TLS");
			goto fail;
		}
		if ((r = gnutls_psk_set_server_credentials_file(t->psk, cfg->tls_psk_file)) < 0) {
			tls_error(r, cfg->tls_psk_file);
			goto fail;
		}
		gnutls_psk_set_server_known_dh_params(t->psk, GNUTLS_SEC_PARAM_MEDIUM);
	}
	if (cfg->tls_certs_dir && load_x509(t, cfg->tls_certs_dir) == -1)
		goto fail;
	/* What nbdkit and libnbd use: the system's defaults, plus the PSK key
	 * exchanges when a PSK file is configured. */
	const char *prio = t->psk ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
	if ((r = gnutls_priority_init(&t->prio, prio, NULL)) < 0) {
		tls_error(r, "TLS priority");
		goto fail;
	}
	*out = t;
	return 0;
fail:
	sv_nbd_tls_creds_free(t);
	return -1;
}

/* ---- the transport under GnuTLS: the plain socket calls of io.c ----
 * They report failure through errno (GnuTLS reads it when no errno
 * function is set), not gnutls_transport_set_errno, which writes one field
 * of the session from whichever thread fails: the reader and a sender may
 * fail at once.  The plain calls never fail with EINTR or EAGAIN (they
 * retry), so GnuTLS sees EIO, and the socket's own errno is kept per side
 * for the log. */

static ssize_t
pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
	struct sv_nbd_conn *c = p;
	ssize_t r = sv_nbd_plain_io.recv(c, buf, len);
	if (r < 0) {
		c->tls_pull_errno = errno;
		errno = EIO;
	}
	return r;
}

static ssize_t
push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
	struct sv_nbd_conn *c = p;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	if (sv_nbd_plain_io.sendv(c, &iov, 1) == -1) {
		c->tls_push_errno = errno;
		errno = EIO;
		return -1;
	}
	return (ssize_t)len;
}

/* errno for a GnuTLS error: the socket's own error when the transport
 * failed (ETIMEDOUT past the deadline, ECONNRESET...), else EPROTO.  The
 * receiving and the sending thread each keep their own. */
static void
set_errno(struct sv_nbd_conn *c, int gerr)
{
	if (gerr == GNUTLS_E_PULL_ERROR && c->tls_pull_errno)
		errno = c->tls_pull_errno;
	else if (gerr == GNUTLS_E_PUSH_ERROR && c->tls_push_errno)
		errno = c->tls_push_errno;
	else if (gerr == GNUTLS_E_PREMATURE_TERMINATION)
		errno = ECONNRESET;
	else
		errno = EPROTO;
}

static ssize_t
tls_recv(struct sv_nbd_conn *c, void *buf, size_t len)
{
	for (;;) {
		ssize_t r = gnutls_record_recv(c->tls, buf, len);
		if (r >= 0)
			return r;
		if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
			continue;
		if (r == GNUTLS_E_PREMATURE_TERMINATION)
			return 0; /* the peer closed without close_notify: end of stream */
		sv_log_debug("conn %u: TLS receive: %s", c->id, gnutls_strerror((int)r));
		set_errno(c, (int)r);
		return -1;
	}
}

static int
send_all(struct sv_nbd_conn *c, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t r = gnutls_record_send(c->tls, p, len);
		if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
			continue;
		if (r < 0) {
			set_errno(c, (int)r);
			return -1;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

static int
tls_sendv(struct sv_nbd_conn *c, struct iovec *iov, int iovcnt)
{
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	bool cork = iovcnt > 1 && total <= CORK_MAX;
	if (cork)
		gnutls_record_cork(c->tls);
	for (int i = 0; i < iovcnt; i++) {
		if (send_all(c, iov[i].iov_base, iov[i].iov_len) == -1) {
			if (cork)
				gnutls_record_uncork(c->tls, 0); /* drop what was corked */
			return -1;
		}
	}
	if (cork) {
		for (;;) {
			int r = gnutls_record_uncork(c->tls, GNUTLS_RECORD_WAIT);
			if (r >= 0)
				break;
			if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
				continue;
			set_errno(c, r);
			return -1;
		}
	}
	return 0;
}

static const struct sv_nbd_io_ops tls_io = {
    .recv = tls_recv,
    .sendv = tls_sendv,
    .can_sendfile = false,
};

int
sv_nbd_tls_start(struct sv_nbd_conn *c)
{
	struct sv_nbd_tls_creds *t = c->srv->tls;
	gnutls_session_t s;
	int r = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NO_SIGNAL);
	if (r < 0) {
		sv_log_error("conn %u: TLS: %s", c->id, gnutls_strerror(r));
		return -1;
	}
	c->tls = s;
	if ((r = gnutls_priority_set(s, t->prio)) < 0)
		goto fail;
	if (t->psk && (r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->psk)) < 0)
		goto fail;
	if (t->x509) {
		if ((r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->x509)) < 0)
			goto fail;
		if (t->verify_peer) {
			gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
			gnutls_session_set_verify_cert(s, NULL, 0);
		}
	}
	gnutls_transport_set_ptr(s, c);
	gnutls_transport_set_pull_function(s, pull);
	gnutls_transport_set_push_function(s, push);
	c->tls_pull_errno = c->tls_push_errno = 0;
	do {
		r = gnutls_handshake(s);
	} while (r < 0 && !gnutls_error_is_fatal(r));
	if (r < 0)
		goto fail;

	char *desc = gnutls_session_get_desc(s);
	const char *user = t->psk ? gnutls_psk_server_get_username(s) : NULL;
	sv_log_info("conn %u: TLS established: %s%s%s", c->id, desc ? desc : "?",
		    user ? ", PSK user " : "", user ? user : "");
	snprintf(c->tls_desc, sizeof c->tls_desc, "%s", desc ? desc : "TLS");
	atomic_store(&c->encrypted, true);
	gnutls_free(desc);
	c->io = &tls_io;
	return 0;
fail:
	if ((r == GNUTLS_E_PULL_ERROR && c->tls_pull_errno == ETIMEDOUT) ||
	    (r == GNUTLS_E_PUSH_ERROR && c->tls_push_errno == ETIMEDOUT))
		sv_log_warn("conn %u: TLS handshake not finished in time, closing", c->id);
	else
		sv_log_warn("conn %u: TLS handshake failed: %s, closing", c->id,
			    gnutls_strerror(r));
	return -1;
}

void
sv_nbd_tls_end(struct sv_nbd_conn *c)
{
	if (!c->tls)
		return;
	if (c->io == &tls_io) {
		/* close_notify, best effort, bounded by a short deadline. */
		c->deadline_ns = sv_now_ns() + 1000000000u;
		gnutls_bye(c->tls, GNUTLS_SHUT_WR);
		c->deadline_ns = 0;
	}
	gnutls_deinit(c->tls);
	c->tls = NULL;
	c->io = &sv_nbd_plain_io;
}
