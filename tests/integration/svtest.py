"""svtest.py: what the Python integration tests share.

A temporary pool and a "snapvol serve" on it (the same conventions as
functions.sh: every server wrapped in "timeout 600", waited for until its
sockets accept connections, stopped with SIGTERM and its exit status
checked), a small test runner that runs named cases and keeps going after a
failure, and RawNBD: a deliberately minimal NBD client written from the
protocol text, byte by byte, so that tests can send what no real client
would (bad magic, truncated options, lying lengths) and see exactly what the
server answers.  Real-client tests use python3-libnbd instead.

Run with Debian's /usr/bin/python3 (it has the nbd module).  Environment:
SNAPVOL (the binary), BUILDDIR (build root, for temporary files).

Pool(spec) puts the pool elsewhere than a temporary directory: "rados:NAME"
is a pool in the Ceph cluster CEPH_CONF names (a test that takes
SNAPVOL_TEST_POOL passes it; tests/integration/test-rados-suite.sh).  Its
sockets then go in a run directory under the temporary one (the CLI's
XDG_RUNTIME_DIR convention for rados: pools); a server refused because a
killed one's claim has not lapsed yet is started again until it has, and
wait_export() waits out a volume's claim the same way.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SNAPVOL = os.path.realpath(os.environ["SNAPVOL"]) if "SNAPVOL" in os.environ else None
BUILDDIR = os.path.realpath(os.environ.get("BUILDDIR", os.getcwd()))
# Every server is killed after this many seconds, so none outlives its test.
SERVER_TIMEOUT = 600
TEST_NAME = os.path.basename(sys.argv[0])

# ---- protocol constants (NBD proto.md) ----
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 4, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_PLATFORM = REP_ERR + 4
REP_ERR_TLS_REQD = REP_ERR + 5
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_SHUTDOWN = REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8
REP_ERR_TOO_BIG = REP_ERR + 9
REP_NAMES = {REP_ACK: "ACK", REP_SERVER: "SERVER", REP_INFO: "INFO",
             REP_META_CONTEXT: "META_CONTEXT", REP_ERR_UNSUP: "ERR_UNSUP",
             REP_ERR_POLICY: "ERR_POLICY", REP_ERR_INVALID: "ERR_INVALID",
             REP_ERR_PLATFORM: "ERR_PLATFORM", REP_ERR_TLS_REQD: "ERR_TLS_REQD",
             REP_ERR_UNKNOWN: "ERR_UNKNOWN", REP_ERR_SHUTDOWN: "ERR_SHUTDOWN",
             REP_ERR_BLOCK_SIZE_REQD: "ERR_BLOCK_SIZE_REQD", REP_ERR_TOO_BIG: "ERR_TOO_BIG"}

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF, TF_CAN_MULTI_CONN = 32, 64, 128, 256
TF_SEND_CACHE, TF_SEND_FAST_ZERO = 1024, 2048

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 1, 2, 4, 8, 16

REPLY_FLAG_DONE = 1
RT_NONE, RT_OFFSET_DATA, RT_OFFSET_HOLE, RT_BLOCK_STATUS = 0, 1, 2, 5
RT_ERROR, RT_ERROR_OFFSET = (1 << 15) + 1, (1 << 15) + 2

EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108
ERRNO_NAMES = {0: "OK", 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
               75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}


def rep_name(t):
    return REP_NAMES.get(t, f"0x{t:x}")


def errno_name(e):
    return ERRNO_NAMES.get(e, str(e))


class Skip(Exception):
    pass


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


class Timeout(Exception):
    """The server neither answered nor closed in time."""


def skip_test(msg):
    print(f"{TEST_NAME}: SKIP: {msg}", file=sys.stderr)
    sys.exit(77)


def require_nbd_module():
    try:
        import nbd  # noqa: F401
    except ImportError:
        skip_test("python3-libnbd (module nbd) is not available to " + sys.executable)


def sha_export(srv, export):
    """SHA-256 of an export's whole contents, read over NBD."""
    import nbd
    h = nbd.NBD()
    h.connect_uri(srv.uri(export))
    d = hashlib.sha256()
    size = h.get_size()
    for off in range(0, size, 4 << 20):
        d.update(h.pread(min(4 << 20, size - off), off))
    h.shutdown()
    return d.hexdigest()


def sha_file(path):
    """SHA-256 of a file's contents."""
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 << 20), b""):
            d.update(b)
    return d.hexdigest()


# ---- pools and servers ----

class Pool:
    """A temporary directory holding a pool (not created until first used),
    or, with spec ("rados:NAME"), a pool in a Ceph cluster."""

    def __init__(self, spec=None):
        base = os.path.join(BUILDDIR, "tmp")
        if len(base) > 60:
            base = tempfile.gettempdir()
        os.makedirs(base, exist_ok=True)
        stem = os.path.splitext(TEST_NAME)[0]
        self.tmp = tempfile.mkdtemp(prefix=stem + ".", dir=base)
        self.spec = spec
        self.env = None           # the servers' and the CLI's (None: ours)
        if spec:
            self.path = spec
            run = os.path.join(self.tmp, "run")
            os.makedirs(run)
            self.env = dict(os.environ, XDG_RUNTIME_DIR=run)
            self.sockdir = os.path.join(run, "snapvol", spec)
        else:
            self.path = os.path.join(self.tmp, "pool")
            self.sockdir = self.path
        self.servers = []

    def cli(self, *args, check=True, timeout=60):
        r = subprocess.run([SNAPVOL, "--pool", self.path, *args], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=self.env)
        if check and r.returncode != 0:
            raise AssertionError(f"snapvol {' '.join(args)} failed ({r.returncode}): "
                                 f"{r.stderr.strip()}")
        return r

    def snapshots(self, vol):
        """The volume's snapshots (snapshot list --json), by name, oldest first."""
        out = json.loads(self.cli("--json", "snapshot", "list", vol).stdout)
        return {sn["name"]: sn for sn in out["snapshots"]}

    def create(self, name, size, chunk=None):
        args = ["create", name, "--size", str(size)]
        if chunk:
            args += ["--chunk-size", str(chunk)]
        self.cli(*args)

    def origin(self, name):
        return os.path.join(self.path, "volumes", name, "origin.raw")

    def sha(self, name):
        """A digest of a volume's contents (as read: holes are zeros),
        computed block by block; blocks that are holes in the raw file are
        not read, so a sparse volume is cheap to check."""
        B = 1 << 20
        zero = hashlib.sha256(bytes(B)).digest()
        fd = os.open(self.origin(name), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            data = []
            off = 0
            while off < size:
                try:
                    d = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                off = os.lseek(fd, d, os.SEEK_HOLE)
                data.append((d, off))
            top = hashlib.sha256(str(size).encode())
            i = 0
            for b in range(0, size, B):
                e = min(b + B, size)
                while i < len(data) and data[i][1] <= b:
                    i += 1
                if i < len(data) and data[i][0] < e:
                    top.update(hashlib.sha256(os.pread(fd, e - b, b)).digest())
                else:
                    top.update(zero if e - b == B else hashlib.sha256(bytes(e - b)).digest())
            return top.hexdigest()
        finally:
            os.close(fd)

    def serve(self, *args, wait_for=None):
        s = Server(self, args, wait_for)
        self.servers.append(s)
        s.start()
        return s

    def wait_export(self, server, export, timeout=60):
        """Until export can be opened over NBD: at once on a local pool; on
        a shared (RADOS) pool, once a killed server's claim on the volume
        has lapsed.  Returns the seconds waited."""
        import nbd
        t0 = time.time()
        while True:
            h = nbd.NBD()
            try:
                h.connect_uri(server.uri(export))
                h.shutdown()
                return time.time() - t0
            except nbd.Error as e:
                if not self.spec or time.time() - t0 > timeout:
                    raise AssertionError(f"cannot open {export}: {e}\n" + server.log_tail())
            time.sleep(0.2)

    def cleanup(self):
        for s in self.servers:
            s.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Server:
    def __init__(self, pool, args, wait_for):
        self.pool = pool
        self.args = list(args)
        self.nbd_sock = os.path.join(pool.sockdir, "nbd.sock")
        self.ctl_sock = os.path.join(pool.sockdir, "control.sock")
        self.wait_for = wait_for or [self.nbd_sock, self.ctl_sock]
        self.log = os.path.join(pool.tmp, "serve.log")
        self.proc = None

    def start(self):
        # A shared pool's claim held by a killed server: up to 60 s more.
        claim_deadline = time.time() + 60
        while True:
            mark = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            with open(self.log, "a") as lf:
                lf.write(f"=== {time.strftime('%T')} serve {' '.join(self.args)}\n")
                lf.flush()
                self.proc = subprocess.Popen(
                    ["timeout", str(SERVER_TIMEOUT), SNAPVOL, "--pool", self.pool.path, "serve",
                     *self.args],
                    stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.pool.env)
            deadline = time.time() + 30
            while time.time() < deadline:
                if all(self._accepts(a) for a in self.wait_for):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("server did not start listening in 30 s\n"
                                     + self.log_tail())
            with open(self.log, errors="replace") as f:
                f.seek(mark)
                refused = "claimed by" in f.read()
            if not (self.pool.spec and refused and time.time() < claim_deadline):
                raise AssertionError(f"server exited during start-up ({self.proc.returncode}):\n"
                                     + self.log_tail())
            time.sleep(0.2)

    @staticmethod
    def _accepts(path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def uri(self, export):
        return f"nbd+unix:///{export}?socket={self.nbd_sock}"

    def pid(self):
        """The pid of snapvol itself (child of timeout)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                c = f.read().split()
                return int(c[0]) if c else None
        except OSError:
            return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None and self.pid() is not None

    def log_tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM; the server must exit cleanly within 20 s."""
        if self.proc.poll() is not None:
            raise AssertionError(f"server had already exited ({self.proc.returncode})\n"
                                 + self.log_tail())
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("server did not stop within 20 s of SIGTERM")
        if rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            raise AssertionError(f"server exit status {rc} after SIGTERM\n" + self.log_tail())

    def kill(self):
        if self.proc and self.proc.poll() is None:
            child = self.pid()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                if child:
                    try:
                        os.kill(child, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.kill()
                self.proc.wait()


# ---- a runner of named cases ----

class Runner:
    def __init__(self):
        self.results = []   # (name, status, detail)

    def case(self, name, fn, *args):
        t0 = time.time()
        try:
            fn(*args)
            status, detail = "PASS", ""
        except Skip as e:
            status, detail = "SKIP", str(e)
        except Exception as e:  # report and go on with the next case
            status = "FAIL"
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, AssertionError):
                detail += "\n" + traceback.format_exc()
        dt = time.time() - t0
        self.results.append((name, status, detail))
        line = f"{status} {name} ({dt:.2f}s)"
        if detail:
            line += ": " + detail.strip().replace("\n", "\n    ")
        print(line, flush=True)
        return status == "PASS"

    def finish(self):
        fails = [r for r in self.results if r[1] == "FAIL"]
        n = {s: sum(1 for r in self.results if r[1] == s) for s in ("PASS", "FAIL", "SKIP")}
        print(f"{TEST_NAME}: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
        for name, _, detail in fails:
            print(f"  FAILED {name}: {detail.splitlines()[0] if detail else ''}")
        return 1 if fails else 0


def run_main(main, cleanups=()):
    """The usual end of a test script: main(pool, runner) on a new pool,
    then the runner's summary; an exception outside a case fails the test.
    Exits with the status (1 on any failure)."""
    pool = Pool()
    runner = Runner()
    try:
        main(pool, runner)
        rc = runner.finish()
    except Exception:
        traceback.print_exc()
        rc = 1
    finally:
        for c in cleanups:
            c.cleanup()
        pool.cleanup()
    sys.exit(rc)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---- a raw NBD client ----

class RawNBD:
    """One connection, driven message by message.  Every receive has a
    timeout: a server that neither answers nor closes raises Timeout."""

    def __init__(self, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.hflags = None
        self.structured = False
        self.no_zeroes = False
        self.pending = {}   # handle -> (cmd, offset, length)
        self.partial = {}   # handle -> structured chunks received so far
        self.next_handle = 1
        self.export = None  # dict from go()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- bytes --
    def send(self, b):
        try:
            self.s.sendall(b)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(f"server closed the connection while we sent ({e})")

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.s.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise Timeout(f"no data from server after {len(buf)}/{n} bytes")
            except (ConnectionResetError, BrokenPipeError):
                raise Closed(f"connection reset after {len(buf)}/{n} bytes")
            if not chunk:
                raise Closed(f"EOF after {len(buf)}/{n} bytes")
            buf += chunk
        return bytes(buf)

    def closed_by_server(self, timeout=5.0):
        """True if the server closes the connection within timeout (any
        data it sends first is read and discarded).  False if it is still
        open."""
        self.s.settimeout(0.2)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                try:
                    b = self.s.recv(65536)
                except socket.timeout:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    return True
                if not b:
                    return True
            return False
        finally:
            self.s.settimeout(10.0)

    # -- handshake --
    def greeting(self):
        m1, m2, hflags = struct.unpack(">QQH", self.recv_exact(18))
        check(m1 == NBDMAGIC, f"greeting magic {m1:#x}")
        check(m2 == IHAVEOPT, f"newstyle magic {m2:#x} (oldstyle server?)")
        self.hflags = hflags
        return hflags

    def handshake(self, cflags=None):
        self.greeting()
        if cflags is None:
            cflags = FLAG_FIXED_NEWSTYLE | (self.hflags & FLAG_NO_ZEROES)
        self.no_zeroes = bool(cflags & FLAG_NO_ZEROES)
        self.send(struct.pack(">I", cflags))

    def send_opt(self, opt, data=b"", length=None, magic=IHAVEOPT):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def read_opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        check(magic == OPT_REPLY_MAGIC, f"option reply magic {magic:#x}")
        check(length <= 16 << 20, f"option reply length {length} absurd")
        data = self.recv_exact(length) if length else b""
        return opt, rtype, data

    def opt(self, opt, data=b"", **kw):
        """Send an option; return the list of (type, data) replies up to and
        including the final one (ACK or an error)."""
        self.send_opt(opt, data, **kw)
        replies = []
        while True:
            ropt, rtype, rdata = self.read_opt_reply()
            check(ropt == opt, f"reply for option {ropt}, sent {opt}")
            replies.append((rtype, rdata))
            if rtype == REP_ACK or rtype & REP_ERR:
                return replies
            check(len(replies) < 10000, "endless option replies")

    def final(self, opt, data=b"", **kw):
        """The final reply type of an option."""
        return self.opt(opt, data, **kw)[-1][0]

    def list_exports(self):
        r = self.opt(OPT_LIST)
        check(r[-1][0] == REP_ACK, f"LIST ended with {rep_name(r[-1][0])}")
        names = []
        for t, d in r[:-1]:
            check(t == REP_SERVER, f"LIST reply type {rep_name(t)}")
            (n,) = struct.unpack(">I", d[:4])
            check(n <= len(d) - 4, "LIST: name length past reply")
            names.append(d[4:4 + n].decode("utf-8", "replace"))
        return names

    def negotiate_structured(self):
        t = self.final(OPT_STRUCTURED_REPLY)
        check(t == REP_ACK, f"STRUCTURED_REPLY -> {rep_name(t)}")
        self.structured = True

    def set_meta(self, export, queries):
        data = struct.pack(">I", len(export)) + export + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        return self.opt(OPT_SET_META_CONTEXT, data)

    @staticmethod
    def go_data(name, infos=()):
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
                + b"".join(struct.pack(">H", i) for i in infos))

    def go(self, name, infos=(INFO_BLOCK_SIZE, INFO_DESCRIPTION), opt=OPT_GO):
        """GO (or INFO).  Returns (final reply type, info dict)."""
        if isinstance(name, str):
            name = name.encode()
        r = self.opt(opt, self.go_data(name, infos))
        info = {}
        for t, d in r[:-1]:
            check(t == REP_INFO, f"GO reply type {rep_name(t)} before final")
            (it,) = struct.unpack(">H", d[:2])
            if it == INFO_EXPORT:
                check(len(d) == 12, f"INFO_EXPORT length {len(d)}")
                info["size"], info["flags"] = struct.unpack(">QH", d[2:])
            elif it == INFO_BLOCK_SIZE:
                check(len(d) == 14, f"INFO_BLOCK_SIZE length {len(d)}")
                info["block"] = struct.unpack(">III", d[2:])
            elif it == INFO_DESCRIPTION:
                info["description"] = d[2:].decode("utf-8", "replace")
            elif it == INFO_NAME:
                info["name"] = d[2:].decode("utf-8", "replace")
        final = r[-1][0]
        if final == REP_ACK:
            check("size" in info, "GO acknowledged without NBD_INFO_EXPORT")
            if opt == OPT_GO:
                self.export = info
        return final, info

    def export_name(self, name):
        """NBD_OPT_EXPORT_NAME: returns (size, flags) or raises Closed."""
        if isinstance(name, str):
            name = name.encode()
        self.send_opt(OPT_EXPORT_NAME, name)
        size, flags = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            self.recv_exact(124)
        self.export = {"size": size, "flags": flags}
        return size, flags

    def connect_export(self, name="vm1", structured=True, meta=()):
        self.handshake()
        if structured:
            self.negotiate_structured()
            if meta:
                r = self.set_meta(name.encode(), meta)
                check(r[-1][0] == REP_ACK, f"SET_META_CONTEXT -> {rep_name(r[-1][0])}")
                self.meta_ids = {}
                for t, d in r[:-1]:
                    check(t == REP_META_CONTEXT, f"SET_META_CONTEXT reply {rep_name(t)}")
                    (cid,) = struct.unpack(">I", d[:4])
                    self.meta_ids[d[4:].decode()] = cid
        t, info = self.go(name)
        check(t == REP_ACK, f"GO {name} -> {rep_name(t)}")
        return info

    # -- transmission --
    def prepare(self, cmd, offset, length, flags=0, payload=None):
        """Register a request and return (handle, its bytes) without sending
        it: for a sender thread, when replies must be read while requests
        are still being sent (the server stops reading requests when its
        replies back up, as it should)."""
        handle = self.next_handle
        self.next_handle += 1
        self.pending[handle] = (cmd, offset, length)
        return handle, struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle,
                                   offset & (2**64 - 1), length & 0xFFFFFFFF) + (payload or b"")

    def send_in_thread(self, data):
        """sendall(data) in a thread; returns (thread, box); box["error"] is
        set if sending failed."""
        box = {}

        def run():
            try:
                self.s.sendall(data)
            except Exception as e:  # the server may close mid-send
                box["error"] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, box

    def request(self, cmd, offset, length, flags=0, payload=None, magic=REQUEST_MAGIC,
                handle=None):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        hdr = struct.pack(">IHHQQI", magic, flags, cmd, handle, offset & (2**64 - 1),
                          length & 0xFFFFFFFF)
        self.pending[handle] = (cmd, offset, length)
        self.send(hdr + (payload or b""))
        return handle

    def reply(self):
        """Read until one request's reply is complete; return (handle,
        error, data, chunks).  data: the bytes of a successful READ
        (reassembled from structured chunks, which may come interleaved
        with other requests' chunks), else None."""
        while True:
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            if magic == SIMPLE_REPLY_MAGIC:
                err, handle = struct.unpack(">IQ", self.recv_exact(12))
                check(handle in self.pending, f"simple reply for unknown handle {handle:#x}")
                check(handle not in self.partial, "simple reply after structured chunks")
                cmd, offset, length = self.pending.pop(handle)
                data = None
                if cmd == CMD_READ:
                    check(not self.structured, "simple reply to READ with structured replies on")
                    if err == 0:
                        data = self.recv_exact(length)
                return handle, err, data, []
            check(magic == STRUCTURED_REPLY_MAGIC, f"reply magic {magic:#x}")
            check(self.structured, "structured reply without negotiation")
            flags, rtype, handle, length = struct.unpack(">HHQI", self.recv_exact(16))
            check(handle in self.pending, f"chunk for unknown handle {handle:#x}")
            check(length <= (64 << 20), f"chunk length {length} absurd")
            payload = self.recv_exact(length) if length else b""
            if rtype == RT_NONE:
                check(length == 0, "NONE chunk with a payload")
                check(flags & REPLY_FLAG_DONE, "NONE chunk without DONE")
            if rtype in (RT_ERROR, RT_ERROR_OFFSET):
                check(length >= 6, "error chunk too short")
                e, mlen = struct.unpack(">IH", payload[:6])
                check(mlen <= length - 6, "error message length past chunk")
                check(e != 0, "error chunk with error 0")
            self.partial.setdefault(handle, []).append((rtype, payload))
            if flags & REPLY_FLAG_DONE:
                break
        chunks = self.partial.pop(handle)
        cmd, offset, length = self.pending.pop(handle)
        err = 0
        for t, p in chunks:
            if t in (RT_ERROR, RT_ERROR_OFFSET):
                err = err or struct.unpack(">I", p[:4])[0]
        data = None
        if cmd == CMD_READ and err == 0:
            buf = bytearray(length)
            spans = []
            for t, p in chunks:
                if t == RT_OFFSET_DATA:
                    check(len(p) >= 9, f"OFFSET_DATA chunk of {len(p)} bytes")
                    (o,) = struct.unpack(">Q", p[:8])
                    n = len(p) - 8
                    check(offset <= o and o + n <= offset + length,
                          f"chunk {o}+{n} outside the request {offset}+{length}")
                    buf[o - offset:o - offset + n] = p[8:]
                elif t == RT_OFFSET_HOLE:
                    check(len(p) == 12, f"OFFSET_HOLE chunk of {len(p)} bytes")
                    o, n = struct.unpack(">QI", p)
                    check(n > 0, "OFFSET_HOLE of 0 bytes")
                    check(offset <= o and o + n <= offset + length,
                          f"chunk {o}+{n} outside the request {offset}+{length}")
                else:
                    check(t == RT_NONE, f"unexpected chunk type {t} in a READ reply")
                    continue
                spans.append((o, n))
            spans.sort()
            for (a, n), (b, _) in zip(spans, spans[1:]):
                check(a + n <= b, f"READ chunks overlap at {b}")
            covered = sum(n for _, n in spans)
            check(covered == length, f"read chunks cover {covered} of {length} bytes")
            data = bytes(buf)
        return handle, err, data, chunks

    def cmd(self, cmd, offset, length, flags=0, payload=None):
        """One request, its reply: (error, data bytes for reads)."""
        h = self.request(cmd, offset, length, flags, payload)
        rh, err, data, chunks = self.reply()
        check(rh == h, f"reply handle {rh}, sent {h}")
        return err, data

    def read(self, offset, length):
        err, data = self.cmd(CMD_READ, offset, length)
        check(err == 0, f"READ {offset}+{length} -> {errno_name(err)}")
        return data
