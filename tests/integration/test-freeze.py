#!/usr/bin/python3
"""test-freeze.py: block-level freeze with leases, against a real server.

DESIGN invariants 6 and 7: reads never wait for a freeze, and writes that
arrive during one are queued and completed after it, never failed (even
when a client queues far more writes on one connection than the server has
workers for it); a freeze always ends: at thaw, when its lease is not
renewed (the holder stopped), when the holder's control connection closes
(the holder was killed), or at its maximum.  Clients are libnbd (aio, so
many requests are in flight at once on one connection), `snapvol freeze`
and a raw control-socket client.  Bad input (thaw of something not
frozen, a heartbeat for a lapsed lease, a lease of 0 or of a year, no
server) gets a clear error and leaves nothing frozen.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10


class Ctl:
    """A control connection: one JSON object per line."""

    def __init__(self, srv):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(30)
        self.s.connect(srv.ctl_sock)
        self.f = self.s.makefile("rb")
        self.greeting = json.loads(self.f.readline())

    def call(self, cmd, **args):
        self.s.sendall((json.dumps({"execute": cmd, "arguments": args}) + "\n").encode())
        return json.loads(self.f.readline())

    def ok(self, cmd, **args):
        r = self.call(cmd, **args)
        check("return" in r, f"{cmd} {args}: {r}")
        return r["return"]

    def close(self):
        self.f.close()
        self.s.close()


def status(pool):
    return json.loads(pool.cli("--json", "status").stdout)


def frozen_ids(pool):
    return [f["id"] for f in status(pool)["freezes"]]


def connect(srv, export="vm1"):
    h = nbd.NBD()
    h.connect_uri(srv.uri(export))
    return h


def pattern(i, n):
    return bytes([(i * 7 + 1) & 0xFF]) * n


class Pending:
    """aio commands on one handle, each with a completion flag."""

    def __init__(self, h):
        self.h = h
        self.done = {}

    def _cb(self, key):
        def cb(err):
            self.done[key] = getattr(err, "value", err)  # a ctypes.c_int errno
            return 1
        return cb

    def pwrite(self, key, buf, off):
        self.done.pop(key, None)
        self.h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf)), off,
                          completion=self._cb(key))

    def zero(self, key, n, off):
        self.h.aio_zero(n, off, completion=self._cb(key))

    def pread(self, key, n, off):
        b = nbd.Buffer(n)
        self.h.aio_pread(b, off, completion=self._cb(key))
        return b

    def run_until(self, keys, timeout):
        """Serve the handle until all keys completed; seconds taken or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if all(k in self.done for k in keys):
                return time.monotonic() - t0
            self.h.poll(1 if self.h.aio_in_flight() else 0)
            if not self.h.aio_in_flight():
                time.sleep(0.002)
        return None

    def settle(self, secs):
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            if self.h.aio_in_flight():
                # poll with a short timeout: poll(1) may block indefinitely
                self.h.poll(0)
            time.sleep(0.005)


def held_writes_and_reads(pool, srv):
    """48 writes (plus a zero and a rewrite of the same block, to check
    order) queued on one connection while frozen; reads on that connection
    complete meanwhile; after the thaw every write completes with its data."""
    h = connect(srv)
    h.pwrite(b"R" * (1 * MiB), 32 * MiB)  # what the reads will see
    h.flush()
    ctl = Ctl(srv)
    fr = ctl.ok("freeze", names=["vm1"], lease="20s")
    check(fr["volumes"] == ["vm1"] and fr["lease_ms"] == 20000, f"freeze reply {fr}")
    p = Pending(h)
    n = 48
    for i in range(n):
        p.pwrite(("w", i), pattern(i, 64 * KiB), i * 64 * KiB)
    # order on one block: write A, zero it, write B -> B
    p.pwrite("a", b"A" * 4096, 16 * MiB)
    p.zero("z", 4096, 16 * MiB)
    p.pwrite("b", b"B" * 4096, 16 * MiB)
    p.settle(0.3)
    held = [k for k in p.done]
    check(not held, f"writes completed during the freeze: {held[:5]}")
    bufs = [p.pread(("r", i), 64 * KiB, 32 * MiB + i * 64 * KiB) for i in range(16)]
    t = p.run_until([("r", i) for i in range(16)], 10)
    check(t is not None, "reads did not complete while writes were held")
    print(f"    16 reads completed in {t * 1000:.1f} ms with {n + 3} writes held")
    for i, b in enumerate(bufs):
        check(p.done[("r", i)] == 0 and b.to_bytearray() == bytearray(b"R" * (64 * KiB)),
              f"read {i} returned wrong data or an error")
    check(not any(isinstance(k, tuple) and k[0] == "w" for k in p.done),
          "a write completed while frozen")
    st = status(pool)
    check([f["volumes"] for f in st["freezes"]] == [["vm1"]], f"status freezes {st['freezes']}")
    ctl.ok("thaw", id=fr["id"])
    keys = [("w", i) for i in range(n)] + ["a", "z", "b"]
    t = p.run_until(keys, 20)
    check(t is not None, "held writes did not complete after the thaw")
    check(all(p.done[k] == 0 for k in keys), "a held write failed")
    print(f"    {len(keys)} held writes completed {t * 1000:.1f} ms after the thaw")
    for i in range(n):
        check(h.pread(64 * KiB, i * 64 * KiB) == pattern(i, 64 * KiB), f"write {i} data")
    check(h.pread(4096, 16 * MiB) == b"B" * 4096, "held writes applied out of order")
    check(frozen_ids(pool) == [], "still frozen after thaw")
    ctl.close()
    h.shutdown()


def start_holder(pool, *args):
    p = subprocess.Popen([SNAPVOL, "--pool", pool.path, "freeze", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    line = p.stdout.readline()
    check(line.startswith("frozen:"), f"snapvol freeze said {line!r} {p.stderr.read() if p.poll() is not None else ''}")
    return p


def time_until_write_done(srv, timeout=20):
    """Start a write, then the time until it completes (it is held now)."""
    h = connect(srv)
    p = Pending(h)
    p.pwrite("w", b"K" * 4096, 40 * MiB)
    p.settle(0.2)
    check("w" not in p.done, "the write was not held: the volume is not frozen")
    return h, p


def kill9_thaws(pool, srv):
    holder = start_holder(pool, "vm1", "--lease", "30s")
    check(len(frozen_ids(pool)) == 1, "status shows the freeze")
    h, p = time_until_write_done(srv)
    t0 = time.monotonic()
    holder.kill()  # SIGKILL: no chance to thaw itself
    holder.wait()
    t = p.run_until(["w"], 20)
    check(t is not None, "kill -9 of the holder did not thaw")
    dt = time.monotonic() - t0
    print(f"    kill -9 of the holder: writable again after {dt * 1000:.1f} ms")
    check(dt < 5, f"thaw took {dt:.2f} s")
    check(p.done["w"] == 0, "the held write failed")
    check(frozen_ids(pool) == [], "still frozen")
    h.shutdown()


def lease_lapses(pool, srv):
    holder = start_holder(pool, "vm1", "--lease", "500ms")
    h, p = time_until_write_done(srv)
    t0 = time.monotonic()
    holder.send_signal(signal.SIGSTOP)
    t = p.run_until(["w"], 20)
    dt = time.monotonic() - t0
    check(t is not None, "a lease that was not renewed did not lapse")
    print(f"    holder stopped: lease of 500 ms lapsed, writable after {dt * 1000:.1f} ms")
    check(dt < 5, f"lapse took {dt:.2f} s")
    check("lapsed" in srv.log_tail(20), "the lapse is logged")
    holder.send_signal(signal.SIGCONT)
    out, err = holder.communicate(timeout=20)
    check(holder.returncode == 0 and "thawed" in out and "ended" in out,
          f"resumed holder: rc {holder.returncode}, {out!r} {err!r}")
    h.shutdown()


def thaw_elsewhere(pool, srv):
    holder = start_holder(pool, "vm1")
    r = pool.cli("thaw", "vm1")
    check("thawed vm1 (1 freeze)" in r.stdout, f"thaw said {r.stdout!r}")
    out, err = holder.communicate(timeout=20)
    check(holder.returncode == 0 and out.strip().startswith("thawed"),
          f"holder after thaw: rc {holder.returncode} {out!r} {err!r}")
    check(frozen_ids(pool) == [], "still frozen")


def holder_sigterm(pool, srv):
    holder = start_holder(pool, "vm1")
    holder.send_signal(signal.SIGTERM)
    out, _ = holder.communicate(timeout=20)
    check(holder.returncode == 0 and "thawed" in out, f"holder: {holder.returncode} {out!r}")
    check(frozen_ids(pool) == [], "still frozen")


def run_command(pool, srv):
    script = f"{SNAPVOL} --pool {pool.path} --json status > {pool.tmp}/st.json; exit 3"
    r = pool.cli("freeze", "vm1", "--lease", "1s", "--", "sh", "-c", script, check=False)
    check(r.returncode == 3, f"exit status {r.returncode}, expected CMD's 3: {r.stderr}")
    with open(f"{pool.tmp}/st.json") as f:
        st = json.load(f)
    check(len(st["freezes"]) == 1 and st["freezes"][0]["volumes"] == ["vm1"],
          f"CMD did not run frozen: {st['freezes']}")
    check(frozen_ids(pool) == [], "still frozen after CMD")
    # SIGTERM to snapvol is passed on to CMD; the status is CMD's, and it thaws
    p = subprocess.Popen([SNAPVOL, "--pool", pool.path, "freeze", "vm1", "--", "sleep", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    check(p.stdout.readline().startswith("frozen:"), "freeze -- sleep did not freeze")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=20)
    check(p.returncode == 128 + signal.SIGTERM, f"SIGTERM: exit status {p.returncode}")
    check(frozen_ids(pool) == [], "still frozen after CMD was terminated")
    r = pool.cli("freeze", "vm1", "--", "/nonexistent/cmd", check=False)
    check(r.returncode == 127, f"a command that cannot run: {r.returncode}")
    check(frozen_ids(pool) == [], "still frozen after a command that could not run")


def maximum(pool, srv):
    t0 = time.monotonic()
    r = pool.cli("freeze", "vm1", "--lease", "300ms", "--max", "1s", check=False)
    dt = time.monotonic() - t0
    check(r.returncode == 0 and "maximum" in r.stdout, f"{r.returncode} {r.stdout!r}")
    check(0.8 < dt < 5, f"a freeze with a 1 s maximum lasted {dt:.2f} s")


def connection_drop(pool, srv):
    ctl = Ctl(srv)
    ctl.ok("freeze", names=["vm1"], lease=30000)
    h, p = time_until_write_done(srv)
    t0 = time.monotonic()
    ctl.close()
    t = p.run_until(["w"], 20)
    check(t is not None, "closing the control connection did not thaw")
    print(f"    control connection closed: writable after "
          f"{(time.monotonic() - t0) * 1000:.1f} ms")
    h.shutdown()


def nesting(pool, srv):
    a, b = Ctl(srv), Ctl(srv)
    fa = a.ok("freeze", names=["vm1"], lease="10s")
    fb = b.ok("freeze", names=["vm1", "vm2"], lease="10s")
    check(fb["holds"] == 2, f"nesting count {fb}")
    h, p = time_until_write_done(srv)
    a.ok("thaw", id=fa["id"])
    p.settle(0.3)
    check("w" not in p.done, "writes flowed while one freeze still held the volume")
    b.ok("heartbeat", id=fb["id"])
    b.ok("thaw", id=fb["id"])
    check(p.run_until(["w"], 10) is not None, "writes held after the last thaw")
    a.close()
    b.close()
    h.shutdown()


def bad_input(pool, srv):
    r = pool.cli("thaw", "vm1", check=False)
    check(r.returncode == 1 and "vm1 is not frozen" in r.stderr, f"thaw unfrozen: {r.stderr!r}")
    r = pool.cli("thaw", "--id", "999", check=False)
    check(r.returncode == 1 and "no freeze 999" in r.stderr, f"thaw --id 999: {r.stderr!r}")
    r = pool.cli("freeze", "vm1", "--lease", "0", check=False)
    check(r.returncode == 1 and "lease of 0 ms is too short" in r.stderr, r.stderr)
    r = pool.cli("freeze", "vm1", "--lease", "8760h", check=False)
    check(r.returncode == 1 and "longer than the freeze's maximum" in r.stderr, r.stderr)
    r = pool.cli("freeze", "vm1", "--max", "8760h", check=False)
    check(r.returncode == 1 and "out of range" in r.stderr, r.stderr)
    r = pool.cli("freeze", "nosuch", check=False)
    check(r.returncode == 1 and "nosuch" in r.stderr, r.stderr)
    r = pool.cli("freeze", "vm1", "vm1", check=False)
    check(r.returncode == 1 and "twice" in r.stderr, r.stderr)
    r = pool.cli("freeze", "vm1", "--lease", "soon", check=False)
    check(r.returncode == 2, f"--lease soon: {r.returncode}")
    ctl = Ctl(srv)
    fr = ctl.ok("freeze", names=["vm1"], lease=150)
    time.sleep(0.6)
    r = ctl.call("heartbeat", id=fr["id"])
    check(r.get("error", {}).get("class") == "ENOENT" and "has ended" in r["error"]["desc"]
          and "lease lapsed" in r["error"]["desc"], f"heartbeat after lapse: {r}")
    r = ctl.call("thaw")
    check(r.get("error", {}).get("class") == "EINVAL", f"thaw without id or name: {r}")
    r = ctl.call("freeze", names=["vm1"], lease=-1)
    check(r.get("error", {}).get("class") == "EINVAL", f"negative lease: {r}")
    ctl.close()
    check(frozen_ids(pool) == [], "something was left frozen")
    h = connect(srv)
    h.pwrite(b"x" * 4096, 0)  # and writes flow
    h.shutdown()


def snapshots(pool, srv):
    """snapshot-create with quiesce while writes run; snapshot-set."""
    h = connect(srv)
    p = Pending(h)
    for i in range(32):
        p.pwrite(("w", i), pattern(i, 4096), 48 * MiB + i * 4096)
    ctl = Ctl(srv)
    ctl.ok("snapshot-create", snapshots=["vm1@q"], quiesce=True)
    check(p.run_until([("w", i) for i in range(32)], 20) is not None, "writes stuck")
    check(all(v == 0 for v in p.done.values()), "a write failed around a quiesced snapshot")
    ctl.ok("snapshot-set", snapshot="vm1@q", consistency="frozen")
    r = ctl.call("snapshot-set", snapshot="vm1@q", consistency="solid")
    check(r.get("error", {}).get("class") == "EINVAL", f"bad consistency: {r}")
    r = ctl.call("snapshot-set", snapshot="vm1@none", consistency="frozen")
    check(r.get("error", {}).get("class") == "ENOENT", f"no such snapshot: {r}")
    ctl.close()
    h.shutdown()
    out = json.loads(pool.cli("--json", "snapshot", "list", "vm1").stdout)
    cons = {s["name"]: s["consistency"] for s in out["snapshots"]}
    check(cons.get("q") == "frozen", f"consistency after snapshot-set: {cons}")


def no_server(pool):
    p2 = Pool()
    try:
        p2.create("vm1", 1 * MiB)
        r = p2.cli("freeze", "vm1", check=False)
        check(r.returncode == 1 and "start `snapvol serve`" in r.stderr, r.stderr)
        r = p2.cli("call", "freeze", '{"names": ["vm1"]}', check=False)
        check(r.returncode == 1 and "start `snapvol serve`" in r.stderr, r.stderr)
    finally:
        p2.cleanup()


def main(pool, runner):
    pool.create("vm1", 64 * MiB)
    pool.create("vm2", 8 * MiB)
    srv = pool.serve()
    runner.case("reads go on while 51 writes on one connection are held; "
                "the writes complete after the thaw, in order, with their data",
                held_writes_and_reads, pool, srv)
    runner.case("kill -9 of the holder thaws", kill9_thaws, pool, srv)
    runner.case("a lease not renewed (holder stopped) lapses", lease_lapses, pool, srv)
    runner.case("thaw from elsewhere ends the holder", thaw_elsewhere, pool, srv)
    runner.case("SIGTERM to the holder thaws", holder_sigterm, pool, srv)
    runner.case("freeze -- CMD runs CMD frozen, exits with its status", run_command, pool, srv)
    runner.case("the maximum ends a renewed freeze", maximum, pool, srv)
    runner.case("a dropped control connection thaws", connection_drop, pool, srv)
    runner.case("freezes nest", nesting, pool, srv)
    runner.case("bad input: clear errors, nothing left frozen", bad_input, pool, srv)
    runner.case("quiesced snapshot, snapshot-set", snapshots, pool, srv)
    runner.case("no server: freeze is refused", no_server, pool)
    srv.stop()
    # consistency set over the control socket is persisted
    out = json.loads(pool.cli("--json", "snapshot", "list", "vm1").stdout)
    runner.case("snapshot-set survives a restart",
                check, {s["name"]: s["consistency"] for s in out["snapshots"]}.get("q")
                == "frozen", "consistency not persisted")


if __name__ == "__main__":
    run_main(main)
