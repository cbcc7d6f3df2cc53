"""test-tls.py: NBD over TLS (NBD_OPT_STARTTLS, GnuTLS), with PSK and X.509.

Keys and certificates are made here with psktool and certtool (gnutls-bin).

PSK server (--tls-psk, TCP and unix socket, --tls require):
- libnbd over TCP and over the unix socket, and qemu-img over TCP, with
  the key: a data round trip, including large reads (no sendfile under TLS;
  records sent one by one) and the bytes landing in the origin file; many
  requests of mixed sizes in flight at once on one TLS connection;
- a plaintext client gets NBD_REP_ERR_TLS_REQD for LIST, INFO, GO and meta
  contexts, EXPORT_NAME closes the connection, and no reply names an export;
- libnbd with a wrong key, an unknown user, or without TLS cannot connect;
- downgrades: STARTTLS with data is invalid; plaintext after STARTTLS's ACK
  closes the connection; a client that stalls in the TLS handshake is
  dropped at the handshake timeout while another keeps working.
X.509 server (--tls-certs, --tls-verify-peer, --tls on for the unix socket):
- libnbd and qemu-img with a client certificate: round trip;
- without a client certificate, or with one from another CA: refused;
- a raw client over Python's ssl: STARTTLS twice is NBD_REP_ERR_INVALID,
  and option state negotiated in plaintext before STARTTLS (structured
  replies) is forgotten once TLS is up;
- with --tls on, the unix socket still serves plaintext clients.
Start-up: "serve --listen" without TLS refuses to start (exit 2) and says
why; "--tls require" without credentials is a usage error.
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F401,F403

require_nbd_module()
import nbd  # noqa: E402

for tool in ("psktool", "certtool", "qemu-img"):
    if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
        skip_test(f"{tool} is not installed")

MiB = 1 << 20
SIZE = 16 * MiB


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(*args, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kw)
    if r.returncode:
        raise AssertionError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


# ---- credentials ----

def make_psk(d):
    os.makedirs(d, exist_ok=True)
    f = os.path.join(d, "keys.psk")
    run("psktool", "-u", "alice", "-p", f)
    return f


def make_ca(d, cn):
    os.makedirs(d, exist_ok=True)
    key, cert, tmpl = (os.path.join(d, n) for n in ("ca-key.pem", "ca-cert.pem", "ca.info"))
    with open(tmpl, "w") as f:
        f.write(f"cn = {cn}\nca\ncert_signing_key\nexpiration_days = 2\n")
    run("certtool", "--generate-privkey", "--outfile", key)
    run("certtool", "--generate-self-signed", "--load-privkey", key, "--template", tmpl,
        "--outfile", cert)
    return key, cert


def make_cert(d, ca, name, server):
    key, cert, tmpl = (os.path.join(d, f"{name}-{n}") for n in ("key.pem", "cert.pem", "info"))
    with open(tmpl, "w") as f:
        f.write(f"cn = {name}\nexpiration_days = 2\nsigning_key\nencryption_key\n")
        if server:
            f.write("dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n")
        else:
            f.write("tls_www_client\n")
    run("certtool", "--generate-privkey", "--outfile", key)
    run("certtool", "--generate-certificate", "--load-privkey", key, "--load-ca-certificate",
        ca[1], "--load-ca-privkey", ca[0], "--template", tmpl, "--outfile", cert)
    return key, cert


def copy(src, dst):
    with open(src, "rb") as a, open(dst, "wb") as b:
        b.write(a.read())


# ---- clients ----

def libnbd_handle(psk=None, user="alice", certs=None, tls=nbd.TLS_REQUIRE, verify=True):
    h = nbd.NBD()
    h.set_tls(tls)
    if psk:
        h.set_tls_psk_file(psk)
        h.set_tls_username(user)
    if certs:
        h.set_tls_certificates(certs)
        h.set_tls_verify_peer(verify)
    h.set_export_name("vm1")
    return h


def round_trip(h, pool, seed):
    """Write patterns (small and large requests), read them back, flush;
    the origin file must hold them."""
    rnd = os.urandom(4 * MiB)
    h.pwrite(rnd, seed * 4 * MiB % (SIZE - 4 * MiB))
    small = bytes([seed & 0xFF]) * 4096
    h.pwrite(small, SIZE - 8192)
    h.flush()
    off = seed * 4 * MiB % (SIZE - 4 * MiB)
    check(h.pread(4 * MiB, off) == rnd, "4 MiB read back over TLS differs")
    check(h.pread(4096, SIZE - 8192) == small, "4 KiB read back over TLS differs")
    with open(pool.origin("vm1"), "rb") as f:
        f.seek(off)
        check(f.read(4 * MiB) == rnd, "origin.raw does not hold what was written over TLS")


def raw_tcp(port, timeout=10.0):
    """A RawNBD (svtest.py) over TCP."""
    r = RawNBD.__new__(RawNBD)
    r.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    r.hflags = None
    r.structured = False
    r.no_zeroes = False
    r.pending, r.partial = {}, {}
    r.next_handle = 1
    r.export = None
    return r


def no_export_named(replies):
    for _, data in replies:
        check(b"vm1" not in data, f"a reply before TLS names the export: {data!r}")


def qemu_img(*args):
    return run("qemu-img", *args)


# ---- the cases ----

def psk_libnbd_tcp(pool, port, psk):
    h = libnbd_handle(psk=psk)
    h.connect_tcp("127.0.0.1", str(port))
    check(h.get_tls_negotiated(), "libnbd did not negotiate TLS")
    check(h.get_size() == SIZE, f"size {h.get_size()}")
    round_trip(h, pool, 1)
    h.shutdown()


def psk_parallel(pool, port, psk):
    """Many requests in flight over one TLS connection, of every size: the
    reader batching small replies while workers send large ones, all
    through one GnuTLS session (one thread receiving, others sending in
    turn)."""
    h = libnbd_handle(psk=psk)
    h.connect_tcp("127.0.0.1", str(port))
    sizes = [512, 4096, 65536, 200 * 1024, MiB]
    expect = {}
    bufs = []
    off = 0
    for i in range(60):
        n = sizes[i % len(sizes)]
        data = os.urandom(n)
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        bufs.append(buf)
        h.aio_pwrite(buf, off)
        expect[off] = data
        off += n
        while h.aio_in_flight() >= 32:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
    reads = []
    for o, data in expect.items():
        buf = nbd.Buffer(len(data))
        reads.append((o, buf, h.aio_pread(buf, o)))
        while h.aio_in_flight() >= 32:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for o, buf, cookie in reads:
        check(h.aio_command_completed(cookie), f"read at {o} not completed")
        check(buf.to_bytearray() == expect[o], f"parallel read at {o} differs over TLS")
    h.shutdown()


def psk_libnbd_unix(pool, srv, psk):
    h = libnbd_handle(psk=psk)
    h.connect_unix(srv.nbd_sock)
    check(h.get_tls_negotiated(), "libnbd did not negotiate TLS on the unix socket")
    round_trip(h, pool, 2)
    h.shutdown()


def psk_qemu_img(pool, port, pskdir, tmp):
    data = os.path.join(tmp, "qemu-in.raw")
    back = os.path.join(tmp, "qemu-out.raw")
    with open(data, "wb") as f:
        f.write(os.urandom(SIZE))
    obj = f"tls-creds-psk,id=tls0,endpoint=client,dir={pskdir},username=alice"
    target = f"driver=nbd,host=127.0.0.1,port={port},export=vm1,tls-creds=tls0"
    qemu_img("convert", "-n", "--object", obj, "-f", "raw", data, "--target-image-opts", target)
    qemu_img("convert", "--object", obj, "--image-opts", target, "-O", "raw", back)
    with open(data, "rb") as a, open(back, "rb") as b:
        check(a.read() == b.read(), "qemu-img round trip over TLS (PSK) differs")
    r = qemu_img("info", "--object", obj, "--image-opts", target)
    check(str(SIZE) in r.stdout, f"qemu-img info over TLS: {r.stdout}")


def plaintext_refused(port, sock_path):
    for where in ("tcp", "unix"):
        c = raw_tcp(port) if where == "tcp" else RawNBD(sock_path)
        with c:
            c.handshake()
            replies = c.opt(OPT_LIST)
            check(replies[-1][0] == REP_ERR_TLS_REQD,
                  f"{where}: plaintext LIST -> {rep_name(replies[-1][0])}, want ERR_TLS_REQD")
            check(len(replies) == 1, f"{where}: LIST sent {len(replies)} replies before TLS")
            no_export_named(replies)
            for opt, data in ((OPT_INFO, RawNBD.go_data(b"vm1")),
                              (OPT_GO, RawNBD.go_data(b"vm1")),
                              (OPT_GO, RawNBD.go_data(b"no-such-volume")),
                              (OPT_STRUCTURED_REPLY, b""),
                              (OPT_LIST_META_CONTEXT,
                               struct.pack(">I", 3) + b"vm1" + struct.pack(">I", 0))):
                replies = c.opt(opt, data)
                check(replies[-1][0] == REP_ERR_TLS_REQD,
                      f"{where}: plaintext option {opt} -> {rep_name(replies[-1][0])}")
                check(len(replies) == 1, f"{where}: option {opt}: extra replies before TLS")
                no_export_named(replies)
            # EXPORT_NAME has no error reply: the connection is closed.
            c.send_opt(OPT_EXPORT_NAME, b"vm1")
            check(c.closed_by_server(), f"{where}: EXPORT_NAME without TLS was not refused")
    # libnbd refusing TLS cannot reach the export either.
    h = libnbd_handle(tls=nbd.TLS_DISABLE)
    try:
        h.connect_tcp("127.0.0.1", str(port))
        raise AssertionError("libnbd without TLS connected to a TLS-only server")
    except nbd.Error:
        pass


def bad_keys(port, tmp):
    wrong = os.path.join(tmp, "wrong", "keys.psk")
    os.makedirs(os.path.dirname(wrong), exist_ok=True)
    run("psktool", "-u", "alice", "-p", wrong)   # same user, another key
    other = os.path.join(tmp, "other", "keys.psk")
    os.makedirs(os.path.dirname(other), exist_ok=True)
    run("psktool", "-u", "mallory", "-p", other)  # a user the server does not know
    for name, psk, user in (("wrong key", wrong, "alice"), ("unknown user", other, "mallory")):
        h = libnbd_handle(psk=psk, user=user)
        try:
            h.connect_tcp("127.0.0.1", str(port))
            raise AssertionError(f"libnbd with a {name} connected")
        except nbd.Error as e:
            print(f"  {name}: refused: {e}")
    # No key at all: X.509 with no certificates against a PSK-only server.
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(os.path.join(tmp, "empty-dir"))
    os.makedirs(os.path.join(tmp, "empty-dir"), exist_ok=True)
    h.set_export_name("vm1")
    try:
        h.connect_tcp("127.0.0.1", str(port))
        raise AssertionError("libnbd without any key connected")
    except nbd.Error as e:
        print(f"  no key: refused: {e}")


def downgrades(port, psk):
    # STARTTLS with data: invalid; the session goes on.
    with raw_tcp(port) as c:
        c.handshake()
        t = c.final(OPT_STARTTLS, b"x")
        check(t == REP_ERR_INVALID, f"STARTTLS with data -> {rep_name(t)}")
        t = c.final(OPT_LIST)
        check(t == REP_ERR_TLS_REQD, f"LIST after a bad STARTTLS -> {rep_name(t)}")
        # STARTTLS acknowledged, then plaintext instead of a TLS ClientHello.
        t = c.final(OPT_STARTTLS)
        check(t == REP_ACK, f"STARTTLS -> {rep_name(t)}")
        c.send_opt(OPT_LIST)
        check(c.closed_by_server(), "plaintext after STARTTLS was not refused")
    # libnbd still connects after all that.
    h = libnbd_handle(psk=psk)
    h.connect_tcp("127.0.0.1", str(port))
    check(len(h.pread(4096, 0)) == 4096, "read after the downgrade attempts")
    h.shutdown()


def tls_handshake_stall(srv, port, psk):
    """STARTTLS, then nothing: dropped at --handshake-timeout (3 s) while
    another client works."""
    with raw_tcp(port, timeout=15) as c:
        c.handshake()
        check(c.final(OPT_STARTTLS) == REP_ACK, "STARTTLS not acknowledged")
        t0 = time.time()
        h = libnbd_handle(psk=psk)
        h.connect_tcp("127.0.0.1", str(port))
        h.pwrite(b"z" * 4096, 0)
        check(h.pread(4096, 0) == b"z" * 4096, "other client during the stall")
        check(c.closed_by_server(timeout=10), "a client stalled in the TLS handshake was kept")
        dt = time.time() - t0
        check(2.0 <= dt <= 8.0, f"stalled TLS client dropped after {dt:.1f} s (limit 3 s)")
        h.shutdown()
    with open(srv.log, errors="replace") as f:
        check("TLS handshake not finished in time" in f.read(),
              "no log line for the stalled TLS handshake")


def x509_libnbd(pool, port, cdir):
    h = libnbd_handle(certs=cdir)
    h.connect_tcp("127.0.0.1", str(port))
    check(h.get_tls_negotiated(), "libnbd did not negotiate TLS (X.509)")
    round_trip(h, pool, 3)
    h.shutdown()


def x509_qemu_img(port, cdir, tmp):
    data = os.path.join(tmp, "qemu-x509-in.raw")
    back = os.path.join(tmp, "qemu-x509-out.raw")
    with open(data, "wb") as f:
        f.write(os.urandom(SIZE))
    obj = f"tls-creds-x509,id=tls0,endpoint=client,dir={cdir}"
    target = f"driver=nbd,host=127.0.0.1,port={port},export=vm1,tls-creds=tls0"
    qemu_img("convert", "-n", "--object", obj, "-f", "raw", data, "--target-image-opts", target)
    qemu_img("convert", "--object", obj, "--image-opts", target, "-O", "raw", back)
    with open(data, "rb") as a, open(back, "rb") as b:
        check(a.read() == b.read(), "qemu-img round trip over TLS (X.509) differs")


def x509_refused(port, nocert_dir, rogue_dir):
    for name, d in (("no client certificate", nocert_dir),
                    ("a certificate from another CA", rogue_dir)):
        h = libnbd_handle(certs=d)
        try:
            h.connect_tcp("127.0.0.1", str(port))
            raise AssertionError(f"libnbd with {name} connected")
        except nbd.Error as e:
            print(f"  {name}: refused: {e}")


def tls_context(cdir):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(cdir, "ca-cert.pem"))
    ctx.load_cert_chain(os.path.join(cdir, "client-cert.pem"), os.path.join(cdir, "client-key.pem"))
    ctx.check_hostname = False
    return ctx


def starttls_twice(port, cdir):
    with raw_tcp(port) as c:
        c.handshake()
        check(c.final(OPT_STARTTLS) == REP_ACK, "STARTTLS not acknowledged")
        c.s = tls_context(cdir).wrap_socket(c.s)
        t = c.final(OPT_STARTTLS)
        check(t == REP_ERR_INVALID, f"STARTTLS inside TLS -> {rep_name(t)}, want ERR_INVALID")
        check("vm1" in c.list_exports(), "LIST inside TLS does not show vm1")
        c.negotiate_structured()
        t, _ = c.go("vm1")
        check(t == REP_ACK, f"GO inside TLS -> {rep_name(t)}")
        c.cmd(CMD_WRITE, 8192, 4096, payload=b"t" * 4096)
        check(c.read(8192, 4096) == b"t" * 4096, "raw TLS client: read back")
        c.request(CMD_DISC, 0, 0)


def state_reset(sock_path, cdir):
    """--tls on (the unix socket here): structured replies negotiated in
    plaintext are forgotten after STARTTLS."""
    c = RawNBD(sock_path)
    with c:
        c.handshake()
        c.negotiate_structured()
        check(c.final(OPT_STARTTLS) == REP_ACK, "STARTTLS on the unix socket")
        c.s = tls_context(cdir).wrap_socket(c.s)
        r = c.set_meta(b"vm1", [b"base:allocation"])
        check(r[-1][0] == REP_ERR_INVALID,
              f"SET_META_CONTEXT after STARTTLS without renegotiating structured replies -> "
              f"{rep_name(r[-1][0])} (pre-TLS state kept)")
        c.negotiate_structured()
        r = c.set_meta(b"vm1", [b"base:allocation"])
        check(r[-1][0] == REP_ACK, f"SET_META_CONTEXT inside TLS -> {rep_name(r[-1][0])}")


def tls_on_plaintext_ok(srv):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_DISABLE)
    h.set_export_name("vm1")
    h.connect_unix(srv.nbd_sock)
    check(h.get_size() == SIZE, "plaintext client on a --tls on unix socket")
    h.shutdown()


def status_shows_tls(pool, srv, port, cdir):
    """snapvol status says how the server does TLS, and which connection is
    encrypted: one X.509 client over TCP, one plaintext on the unix socket."""
    tls = libnbd_handle(certs=cdir)
    tls.connect_tcp("127.0.0.1", str(port))
    plain = nbd.NBD()
    plain.set_tls(nbd.TLS_DISABLE)
    plain.set_export_name("vm1")
    plain.connect_unix(srv.nbd_sock)
    try:
        st = json.loads(pool.cli("--json", "status").stdout)
        want = {"unix": "on", "tcp": "require", "psk": False, "x509": True, "verify_peer": True}
        check(st.get("tls") == want, f"status tls {st.get('tls')}, expected {want}")
        conns = st["connections"]
        check(len(conns) == 2, f"{len(conns)} connections in status, expected 2")
        by_peer = {c["peer"] == "unix": c for c in conns}
        check(by_peer[True]["tls"] is None, f"plaintext unix connection shows {by_peer[True]}")
        check((by_peer[False]["tls"] or "").startswith("(TLS1."),
              f"TLS connection shows tls {by_peer[False]['tls']!r}")
        text = pool.cli("status").stdout
        check("tls:         unix on, tcp require; credentials: x509" in text, f"status text:\n{text}")
        check("client certificates required and verified" in text, f"status text:\n{text}")
        check(any(l.rstrip().endswith("TLS1.3") or l.rstrip().endswith("TLS1.2")
                  for l in text.splitlines()), f"no TLS column value in:\n{text}")
    finally:
        tls.shutdown()
        plain.shutdown()


def startup_refusals(pool, tmp):
    port = free_port()
    sock = os.path.join(tmp, "x.sock")
    ctl = os.path.join(tmp, "x-ctl.sock")
    for args, want in ((["--listen", f"127.0.0.1:{port}"], "TLS"),
                       (["--tls", "require"], "--tls"),
                       (["--tls", "sometimes", "--tls-psk", "/dev/null"], "--tls"),
                       (["--tls-verify-peer", "--tls-psk", "/dev/null"], "--tls-certs")):
        r = subprocess.run(["timeout", "20", SNAPVOL, "--pool", pool.path, "serve", "--socket",
                            sock, "--control", ctl, *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        check(r.returncode == 2, f"serve {' '.join(args)}: exit {r.returncode}, want 2 "
              f"(usage): {r.stderr.strip()}")
        check(want in r.stderr, f"serve {' '.join(args)}: message lacks '{want}': {r.stderr}")
        print(f"  serve {' '.join(args)}: {r.stderr.strip().splitlines()[0]}")
    # A PSK file that does not exist: refused at start, with a message.
    r = subprocess.run(["timeout", "20", SNAPVOL, "--pool", pool.path, "serve", "--socket", sock,
                        "--control", ctl, "--tls-psk", os.path.join(tmp, "nope.psk")],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    check(r.returncode == 1 and "nope.psk" in r.stderr,
          f"serve with a missing PSK file: exit {r.returncode}: {r.stderr.strip()}")
    check(not os.path.exists(sock), "a refused server left its socket")


def main():
    run_ = Runner()
    pool = Pool()
    try:
        tmp = pool.tmp
        pool.create("vm1", SIZE)
        pskdir = os.path.join(tmp, "psk")
        psk = make_psk(pskdir)
        run_.case("startup-refusals", startup_refusals, pool, tmp)

        port = free_port()
        srv = pool.serve("--tls-psk", psk, "--tls", "require", "--listen", f"127.0.0.1:{port}",
                         "--handshake-timeout", "3")
        run_.case("psk-libnbd-tcp", psk_libnbd_tcp, pool, port, psk)
        run_.case("psk-parallel", psk_parallel, pool, port, psk)
        run_.case("psk-libnbd-unix", psk_libnbd_unix, pool, srv, psk)
        run_.case("psk-qemu-img", psk_qemu_img, pool, port, pskdir, tmp)
        run_.case("plaintext-refused", plaintext_refused, port, srv.nbd_sock)
        run_.case("wrong-key-refused", bad_keys, port, tmp)
        run_.case("downgrades", downgrades, port, psk)
        run_.case("tls-handshake-stall", tls_handshake_stall, srv, port, psk)
        srv.stop()

        # X.509: a CA, the server's and a client's certificate; a rogue CA.
        ca = make_ca(os.path.join(tmp, "ca"), "snapvol test CA")
        sdir = os.path.join(tmp, "server-x509")
        os.makedirs(sdir)
        k, c = make_cert(os.path.join(tmp, "ca"), ca, "server", True)
        copy(ca[1], os.path.join(sdir, "ca-cert.pem"))
        copy(c, os.path.join(sdir, "server-cert.pem"))
        copy(k, os.path.join(sdir, "server-key.pem"))
        cdir = os.path.join(tmp, "client-x509")
        os.makedirs(cdir)
        k, c = make_cert(os.path.join(tmp, "ca"), ca, "client", False)
        copy(ca[1], os.path.join(cdir, "ca-cert.pem"))
        copy(c, os.path.join(cdir, "client-cert.pem"))
        copy(k, os.path.join(cdir, "client-key.pem"))
        nocert = os.path.join(tmp, "client-nocert")
        os.makedirs(nocert)
        copy(ca[1], os.path.join(nocert, "ca-cert.pem"))
        rogue_ca = make_ca(os.path.join(tmp, "rogue"), "rogue CA")
        rogue = os.path.join(tmp, "client-rogue")
        os.makedirs(rogue)
        k, c = make_cert(os.path.join(tmp, "rogue"), rogue_ca, "client", False)
        copy(ca[1], os.path.join(rogue, "ca-cert.pem"))
        copy(c, os.path.join(rogue, "client-cert.pem"))
        copy(k, os.path.join(rogue, "client-key.pem"))

        port = free_port()
        srv = pool.serve("--tls-certs", sdir, "--tls-verify-peer", "--tls", "on", "--listen",
                         f"127.0.0.1:{port}")
        run_.case("x509-libnbd", x509_libnbd, pool, port, cdir)
        run_.case("x509-qemu-img", x509_qemu_img, port, cdir, tmp)
        run_.case("x509-refused", x509_refused, port, nocert, rogue)
        run_.case("starttls-twice", starttls_twice, port, cdir)
        run_.case("state-reset-after-starttls", state_reset, srv.nbd_sock, cdir)
        run_.case("tls-on-unix-plaintext-ok", tls_on_plaintext_ok, srv)
        run_.case("status-shows-tls", status_shows_tls, pool, srv, port, cdir)
        srv.stop()
    finally:
        pool.cleanup()
    return run_.finish()


if __name__ == "__main__":
    sys.exit(main())
