"""test-limits.py: the NBD server's limits, each exceeded by one client
while another keeps working (issue 6, "Security").

Each case starts a server with one limit set low, has a hostile client go
one past it, and checks: the hostile client is refused (closed before the
greeting, an option error, or a request error) as the limit says; the
server logs it; and a well-behaved libnbd client connected at the same
time keeps reading and writing, unaware.

- --max-connections: the N+1th connection is closed before the greeting;
  a slot freed is usable again.
- --max-connections-per-client, TCP: per source address (127.0.0.2 is
  refused its third connection while 127.0.0.1 still connects).
- --max-connections-per-client, unix socket: per uid (SO_PEERCRED): root is
  refused its third connection while uid 65534 still connects.
- --handshake-timeout: a client that stops mid-handshake, or trickles one
  byte at a time, is dropped on time.
- --max-request: advertised as NBD_INFO_BLOCK_SIZE's maximum; a larger
  READ or WRITE gets EINVAL (the write's payload is skipped: the session
  stays in step), a write far beyond it closes the connection.
- --max-option-length: a longer option gets NBD_REP_ERR_TOO_BIG and the
  connection is closed; a shorter one is answered normally.
- --max-name-length: a longer export name gets NBD_REP_ERR_TOO_BIG (GO,
  INFO, meta contexts) or a close (EXPORT_NAME); the session goes on.
- --threads (requests in flight per connection): a client that pipelines
  thousands of requests without reading replies is held back by flow
  control (the server reads no more than it serves): the server's memory
  stays bounded, other clients are served, and every request is answered.
- --group: both sockets are 0600 by default; with --group they are 0660 in
  that group, and only a member of it (or root) may connect.
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F401,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tcp_raw(port, src="127.0.0.1", timeout=10.0):
    r = RawNBD.__new__(RawNBD)
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    r.s = s
    r.hflags = None
    r.structured = r.no_zeroes = False
    r.pending, r.partial = {}, {}
    r.next_handle = 1
    r.export = None
    return r


def refused_before_greeting(c):
    """The server closed c without sending the greeting."""
    try:
        c.greeting()
    except Closed:
        return True
    return False


class Bystander:
    """A libnbd client that must not notice anything."""

    def __init__(self, srv, offset):
        self.h = nbd.NBD()
        self.h.connect_uri(srv.uri("vm1"))
        self.off = offset
        self.n = 0

    def works(self):
        self.n += 1
        b = bytes([self.n & 0xFF]) * 4096
        self.h.pwrite(b, self.off)
        check(self.h.pread(4096, self.off) == b, "the other client's read-back differs")

    def close(self):
        self.h.shutdown()


def log_has(srv, text):
    with open(srv.log, errors="replace") as f:
        return text in f.read()


def wait_log(srv, text, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log_has(srv, text):
            return True
        time.sleep(0.05)
    return False


def max_connections(pool):
    srv = pool.serve("--max-connections", "3")
    try:
        b = Bystander(srv, 0)
        held = [RawNBD(srv.nbd_sock) for _ in range(2)]
        for c in held:
            c.greeting()
        extra = RawNBD(srv.nbd_sock)
        check(refused_before_greeting(extra), "the 4th connection (max 3) was served")
        check(wait_log(srv, "(the maximum)"), "no log line for the refused connection")
        b.works()
        held[0].close()
        time.sleep(0.3)
        again = RawNBD(srv.nbd_sock)
        again.greeting()  # a freed slot is usable
        again.close()
        held[1].close()
        b.works()
        b.close()
    finally:
        srv.stop()


def per_client_tcp(pool):
    port = free_port()
    srv = pool.serve("--insecure", "--listen", f"127.0.0.1:{port}",
                     "--max-connections-per-client", "2")
    try:
        b = Bystander(srv, 4096)
        held = [tcp_raw(port, "127.0.0.2") for _ in range(2)]
        for c in held:
            c.greeting()
        check(refused_before_greeting(tcp_raw(port, "127.0.0.2")),
              "127.0.0.2's third connection (max 2 per client) was served")
        check(wait_log(srv, "client 127.0.0.2 has 2 connections"), "no log line for it")
        # Another address is another client.
        mine = [tcp_raw(port, "127.0.0.1") for _ in range(2)]
        for c in mine:
            c.greeting()
        b.works()
        for c in held + mine:
            c.close()
        # Once the server has seen them go, 127.0.0.2 may connect again.
        deadline = time.time() + 5
        while True:
            c = tcp_raw(port, "127.0.0.2")
            if not refused_before_greeting(c):
                break
            check(time.time() < deadline, "127.0.0.2 still refused after its connections closed")
            time.sleep(0.1)
        c.close()
        b.close()
    finally:
        srv.stop()


CHILD = r"""
import os, socket, sys
os.setgid(65534); os.setgroups([]); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
b = b""
while len(b) < 18:
    x = s.recv(18 - len(b))
    if not x: break
    b += x
print("greeting" if len(b) == 18 else "closed")
"""


def per_client_unix(pool):
    if os.getuid() != 0:
        raise Skip("needs root to connect as another uid")
    # The socket in a directory every uid may search (the pool's parents
    # may not be), made world-writable below so that uid 65534 may connect.
    d = tempfile.mkdtemp(prefix="snapvol-limits.")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "nbd.sock")
    srv = pool.serve("--socket", sock, "--max-connections-per-client", "2",
                     wait_for=[sock, os.path.join(pool.path, "control.sock")])
    srv.nbd_sock = sock
    try:
        b = Bystander(srv, 8192)  # root's first connection
        held = RawNBD(srv.nbd_sock)
        held.greeting()  # root's second
        check(refused_before_greeting(RawNBD(srv.nbd_sock)),
              "root's third connection (max 2 per uid) was served")
        check(wait_log(srv, "client uid 0 has 2 connections"), "no log line for it")
        os.chmod(sock, 0o666)
        r = subprocess.run([sys.executable, "-c", CHILD, srv.nbd_sock], capture_output=True,
                           text=True, timeout=30)
        check(r.stdout.strip() == "greeting",
              f"uid 65534 was refused while root held its limit: {r.stdout} {r.stderr}")
        b.works()
        held.close()
        b.close()
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def handshake_timeout(pool):
    srv = pool.serve("--handshake-timeout", "2")
    try:
        b = Bystander(srv, 12288)
        stalled = RawNBD(srv.nbd_sock, timeout=15)
        stalled.greeting()
        t0 = time.time()
        # A trickler: one byte of the client flags per 0.5 s, then more.
        trickle = RawNBD(srv.nbd_sock, timeout=15)
        trickle.greeting()
        closed = False
        for i in range(20):
            try:
                trickle.s.send(b"\0")
            except OSError:
                closed = True
                break
            b.works()
            time.sleep(0.5)
            if i > 3 and trickle.closed_by_server(timeout=0.01):
                closed = True
                break
        check(closed, "a client trickling bytes was not dropped")
        check(stalled.closed_by_server(timeout=8), "a stalled client was not dropped")
        dt = time.time() - t0
        check(dt <= 7, f"stalled client dropped after {dt:.1f} s (limit 2 s)")
        check(wait_log(srv, "handshake not finished in 2 s"), "no log line for the timeout")
        b.works()
        b.close()
    finally:
        srv.stop()


def max_request(pool):
    srv = pool.serve("--max-request", "64K")
    try:
        b = Bystander(srv, 16384)
        check(b.h.get_block_size(nbd.SIZE_MAXIMUM) == 65536,
              f"advertised maximum {b.h.get_block_size(nbd.SIZE_MAXIMUM)}, want 65536")
        with RawNBD(srv.nbd_sock) as c:
            c.connect_export("vm1")
            err, _ = c.cmd(CMD_READ, 0, 65536 + 4096)
            check(err == EINVAL, f"READ over the maximum -> {errno_name(err)}")
            err, _ = c.cmd(CMD_WRITE, 0, 128 * 1024, payload=b"w" * (128 * 1024))
            check(err == EINVAL, f"WRITE over the maximum -> {errno_name(err)}")
            check(len(c.read(0, 65536)) == 65536, "a read after the refused requests")
            b.works()
            # Far beyond (more than 64 MiB): the payload is not worth reading.
            c.request(CMD_WRITE, 0, 100 * MiB)
            check(c.closed_by_server(), "a 100 MiB write header did not close the connection")
        check(wait_log(srv, f"write of {100 * MiB} bytes refused ("),
              "no log line for the huge write")
        b.works()
        b.close()
    finally:
        srv.stop()


def max_option_length(pool):
    srv = pool.serve("--max-option-length", "5000")
    try:
        b = Bystander(srv, 20480)
        with RawNBD(srv.nbd_sock) as c:
            c.handshake()
            t = c.final(99, b"x" * 4900)
            check(t == REP_ERR_UNSUP, f"a 4900-byte unknown option -> {rep_name(t)}")
            c.send_opt(99, b"x" * 5001)
            _, t, _ = c.read_opt_reply()
            check(t == REP_ERR_TOO_BIG, f"a 5001-byte option -> {rep_name(t)}")
            check(c.closed_by_server(), "the connection stayed open after a too-long option")
        check(wait_log(srv, "of 5001 bytes is too long"), "no log line for the long option")
        b.works()
        b.close()
    finally:
        srv.stop()


def max_name_length(pool):
    srv = pool.serve("--max-name-length", "16")
    try:
        b = Bystander(srv, 24576)
        with RawNBD(srv.nbd_sock) as c:
            c.handshake()
            long_name = b"v" * 17
            t, _ = c.go(long_name, opt=OPT_INFO)
            check(t == REP_ERR_TOO_BIG, f"INFO with a 17-byte name -> {rep_name(t)}")
            t, _ = c.go(long_name)
            check(t == REP_ERR_TOO_BIG, f"GO with a 17-byte name -> {rep_name(t)}")
            c.negotiate_structured()
            r = c.set_meta(long_name, [b"base:allocation"])
            check(r[-1][0] == REP_ERR_TOO_BIG, f"SET_META_CONTEXT -> {rep_name(r[-1][0])}")
            t, _ = c.go("vm1")  # a 3-byte name: the session goes on
            check(t == REP_ACK, f"GO vm1 after the refusals -> {rep_name(t)}")
        with RawNBD(srv.nbd_sock) as c:
            c.handshake()
            c.send_opt(OPT_EXPORT_NAME, b"w" * 40)
            check(c.closed_by_server(), "EXPORT_NAME with a 40-byte name was not refused")
        check(wait_log(srv, "export name longer than 16 bytes"), "no log line for long names")
        b.works()
        b.close()
    finally:
        srv.stop()


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def requests_in_flight(pool):
    srv = pool.serve("--threads", "2")
    try:
        b = Bystander(srv, 28672)
        pid = srv.pid()
        rss0 = vm_rss_kib(pid)
        N, L = 4000, 65536
        with RawNBD(srv.nbd_sock, timeout=30) as c:
            c.connect_export("vm1", structured=False)
            data = b"".join(c.prepare(CMD_READ, (i * L) % SIZE, L)[1] for i in range(N))
            t, box = c.send_in_thread(data)  # 4000 x 64 KiB reads = 250 MiB of replies
            time.sleep(1.0)  # the server fills the socket and must stop reading
            b.works()
            rss1 = vm_rss_kib(pid)
            check(rss1 - rss0 < 64 * 1024,
                  f"server RSS grew {(rss1 - rss0) >> 10} MiB with requests piled up")
            got = 0
            while c.pending:
                h, err, d, _ = c.reply()
                check(err == 0 and len(d) == L, f"reply {h}: {errno_name(err)}")
                got += 1
            t.join(10)
            check("error" not in box, f"sending the requests failed: {box.get('error')}")
            check(got == N, f"{got} replies for {N} requests")
        print(f"  {N} pipelined 64 KiB reads answered; RSS {rss0} -> {rss1} KiB while queued")
        b.works()
        b.close()
    finally:
        srv.stop()


GROUP_CHILD = r"""
import os, socket, sys
groups = [int(g) for g in sys.argv[2:]]
os.setgroups(groups); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.settimeout(10)
try:
    s.connect(sys.argv[1])
    print("connected")
except PermissionError:
    print("denied")
"""


def socket_modes(pool):
    """Both sockets 0600 by default; --group G makes them 0660, group G:
    a member of G may connect, others may not."""
    if os.getuid() != 0:
        raise Skip("needs root to connect as another uid")
    import grp
    try:
        gid = grp.getgrnam("daemon").gr_gid
    except KeyError:
        raise Skip("no group 'daemon'")
    d = tempfile.mkdtemp(prefix="snapvol-group.")
    os.chmod(d, 0o755)
    try:
        for group in (None, "daemon"):
            sock, ctl = os.path.join(d, "nbd.sock"), os.path.join(d, "control.sock")
            args = ["--socket", sock, "--control", ctl] + (["--group", group] if group else [])
            srv = pool.serve(*args, wait_for=[sock, ctl])
            try:
                for path in (sock, ctl):
                    st = os.stat(path)
                    mode = st.st_mode & 0o777
                    if group:
                        check(mode == 0o660 and st.st_gid == gid,
                              f"--group daemon: {path} mode {mode:o} gid {st.st_gid}")
                    else:
                        check(mode == 0o600, f"default: {path} mode {mode:o}, want 600")
                    for groups, want in (([gid], "connected" if group else "denied"),
                                         ([], "denied")):
                        r = subprocess.run([sys.executable, "-c", GROUP_CHILD, path]
                                           + [str(g) for g in groups],
                                           capture_output=True, text=True, timeout=30)
                        check(r.stdout.strip() == want,
                              f"{path} (--group {group}), uid 65534 groups {groups}: "
                              f"{r.stdout.strip()} {r.stderr.strip()}, want {want}")
            finally:
                srv.stop()
        r = pool.cli("serve", "--socket", os.path.join(d, "x.sock"), "--group",
                     "no-such-group-here", check=False)
        check(r.returncode == 2 and "no-such-group-here" in r.stderr,
              f"--group with an unknown group: {r.returncode} {r.stderr.strip()}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    r = Runner()
    pool = Pool()
    try:
        pool.create("vm1", SIZE)
        r.case("max-connections", max_connections, pool)
        r.case("max-connections-per-client-tcp", per_client_tcp, pool)
        r.case("max-connections-per-client-unix", per_client_unix, pool)
        r.case("handshake-timeout", handshake_timeout, pool)
        r.case("max-request", max_request, pool)
        r.case("max-option-length", max_option_length, pool)
        r.case("max-name-length", max_name_length, pool)
        r.case("requests-in-flight", requests_in_flight, pool)
        r.case("socket-modes-and-group", socket_modes, pool)
    finally:
        pool.cleanup()
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
