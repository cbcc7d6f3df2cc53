#!/usr/bin/python3
"""soak.py: many clients, every kind of request, snapshots coming and going.

    bench/soak.py [--duration 600] [--conns 64] [--blocks 256] [--snap-every 1]
                  [--keep 4] [--verify-conns 16] [--seed N]
                  [--snapvol BUILD/cli/snapvol] [--json FILE]

Starts "snapvol serve" on a temporary pool (loopback only: unix sockets)
with one volume, and runs --conns libnbd connections against it, each in
its own thread, mixing reads, writes, write-zeroes, trims, flushes and
block-status queries, while another thread takes a snapshot every
--snap-every seconds, on a fixed schedule (a tick the previous create
overran is counted as missed, not made up), a second one deletes the
oldest beyond --keep once it has been verified, and a third verifies each
snapshot, oldest first, while the load goes on, so neither deleting nor
verifying delays the schedule; if they fall behind, snapshots wait for them
(the summary gives the most that were ever alive at once).

Everything is checked, exactly:
  - Each connection owns a region of --blocks 4 KiB blocks and is the only
    writer there, one request at a time, so it knows what every block must
    hold: every read is compared with that, and every block-status "hole"
    must be a block that reads as zeros.
  - Every block written carries (connection, block, sequence number), and
    each block's history of versions is kept with the times the write was
    issued and acknowledged.  A snapshot created by a call that started at
    t0 and returned at t1 must hold, for every block, a version that was
    issued before t1 and not superseded by a write acknowledged before t0
    (DESIGN: every write acknowledged before the switch is in the snapshot;
    none started after it is).  Each snapshot is read in full and checked
    before it is deleted, and every one still alive is checked (again) at
    the end, after the load has stopped.
  - The server's resident size is sampled every 5 s: the report gives the
    figure at 1 min, after warm-up (the first fifth of the run) and at the
    end, and every sample.
  - At the end the server is stopped with SIGTERM and must exit cleanly (in
    an ASan build, LeakSanitizer turns any leak into a failed exit).

Prints a summary (operations by kind, rate, snapshots verified, RSS) and
exits 1 on the first mismatch or error.  tests/integration/test-soak.py runs
a short variant in CI; the 10-minute run is a benchmark (bench/README.md).
"""

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import svtest  # noqa: E402

BLOCK = 4096
MAGIC = 0x536f616b  # "Soak"
ZERO = bytes(BLOCK)
HDR = struct.Struct("<IIQQ")
# The 251 possible tails of a block (see block_image), built once: checking
# a 64 MiB snapshot must cost little Python time while 64 clients run.
TAILS = [bytes([i + 1]) * (BLOCK - HDR.size) for i in range(251)]


def block_image(conn, blk, seq):
    """The contents of version seq of a block: a header, then a pattern."""
    return HDR.pack(MAGIC, conn, blk, seq) + TAILS[(seq * 7 + blk) % 251]


def block_seq(data, conn, blk):
    """The version of block blk (owned by conn) that data is, 0 for zeros,
    None if it is neither zeros nor a well-formed version of that block."""
    if data == ZERO:
        return 0
    magic, c, b, seq = HDR.unpack_from(data)
    if magic != MAGIC or c != conn or b != blk or seq == 0:
        return None
    return seq if data[HDR.size:] == TAILS[(seq * 7 + blk) % 251] else None


def describe(data):
    if data == ZERO:
        return "zeros"
    magic, conn, blk, seq = HDR.unpack_from(data)
    if magic != MAGIC:
        return "garbage"
    return f"conn {conn} block {blk} seq {seq}"


class History:
    """Versions of one block: (seq, issued, acked); seq 0 = zeros
    (the initial contents, a trim, write-zeroes)."""
    __slots__ = ("versions",)

    def __init__(self):
        self.versions = [(0, 0.0, 0.0)]

    def add(self, seq, issued, acked):
        self.versions.append((seq, issued, acked))

    def allowed(self, t0, t1):
        """Sequence numbers a snapshot taken by a call in [t0, t1] may show."""
        out = []
        v = self.versions
        for i, (seq, issued, _) in enumerate(v):
            superseded = i + 1 < len(v) and v[i + 1][2] < t0
            if issued < t1 and not superseded:
                out.append(seq)
        return out

    def prune(self, before):
        """Forget versions superseded before time before (no snapshot that
        is still to be checked can show them)."""
        v = self.versions
        i = 0
        while i + 1 < len(v) and v[i + 1][2] < before:
            i += 1
        if i:
            del v[:i]


class Soak:
    def __init__(self, a, server):
        self.a = a
        self.server = server
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.ops = {}
        self.hist = {}  # absolute block -> History (guarded by lock)
        # Live snapshots, oldest first: [name, t0, t1, verified] (guarded by
        # lock; the snapshotter appends and deletes, the verifier verifies).
        self.snaps = []
        self.more = threading.Condition(self.lock)  # self.snaps changed
        self.verified = 0  # verifications done (a snapshot may count twice:
        self.verified_names = set()  # while running and at the end)
        self.created = 0
        self.deleted = 0
        self.missed_ticks = 0
        self.max_live = 0
        self.create_s = []  # snapshot-create latencies
        self.delete_s = []
        self.verify_s = []
        self.rss = []  # (t, kB)
        self.seq = 0
        self.inflight = [None] * a.conns  # per connection: see issue()

    def fail(self, msg):
        with self.lock:
            self.errors.append(msg)
        self.stop.set()

    def count(self, kind, n=1):
        with self.lock:
            self.ops[kind] = self.ops.get(kind, 0) + n

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    # ---- one client ----

    def client(self, conn):
        import nbd
        rng = random.Random(self.a.seed * 1000 + conn)
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_uri(self.server.uri("soak"))
        R = self.a.blocks
        base = conn * R
        cur = [0] * R  # seq each block holds (0: zeros)
        try:
            while not self.stop.is_set():
                op = rng.random()
                b = rng.randrange(R)
                n = min(rng.randint(1, 4), R - b)
                off = (base + b) * BLOCK
                if op < 0.30:
                    data = memoryview(h.pread(n * BLOCK, off))
                    for i in range(n):
                        got = data[i * BLOCK:(i + 1) * BLOCK]
                        if block_seq(got, conn, base + b + i) != cur[b + i]:
                            raise AssertionError(
                                f"read of block {base + b + i}: {describe(got)}, "
                                f"want seq {cur[b + i]} (0 = zeros)")
                    self.count("read")
                elif op < 0.70:
                    seqs = [self.next_seq() for _ in range(n)]
                    buf = b"".join(block_image(conn, base + b + i, s)
                                   for i, s in enumerate(seqs))
                    t_issue = self.issue(conn)
                    h.pwrite(buf, off)
                    self.record(conn, base + b, seqs, t_issue)
                    for i, s in enumerate(seqs):
                        cur[b + i] = s
                    self.count("write")
                elif op < 0.77:
                    t_issue = self.issue(conn)
                    if rng.random() < 0.5:
                        h.trim(n * BLOCK, off)
                        self.count("trim")
                    else:
                        h.zero(n * BLOCK, off)
                        self.count("zero")
                    self.record(conn, base + b, [0] * n, t_issue)
                    for i in range(n):
                        cur[b + i] = 0
                elif op < 0.82:
                    h.flush()
                    self.count("flush")
                else:
                    holes = []

                    def extent(metacontext, offset, entries, err):
                        if metacontext != "base:allocation":
                            return 0
                        pos = offset
                        for i in range(0, len(entries), 2):
                            if entries[i + 1] & 1:
                                holes.append((pos, entries[i]))
                            pos += entries[i]
                        if pos <= offset:
                            raise AssertionError("block status made no progress")
                        return 0

                    ln = rng.randint(1, R - b) * BLOCK
                    h.block_status(ln, off, extent)
                    for hoff, hlen in holes:
                        for blk in range(max(hoff, off) // BLOCK,
                                         min(hoff + hlen, off + ln) // BLOCK):
                            if cur[blk - base] != 0:
                                raise AssertionError(f"block status says block {blk} is a "
                                                     f"hole, it holds seq {cur[blk - base]}")
                    self.count("block-status")
            h.flush()
            h.shutdown()
        except Exception as e:  # noqa: BLE001
            self.fail(f"connection {conn}: {type(e).__name__}: {e}")

    def issue(self, conn):
        """The issue time of a write about to be sent; until record(), the
        connection's in-flight mark holds a time no later than it."""
        self.inflight[conn] = time.monotonic()
        return time.monotonic()

    def record(self, conn, first, seqs, t_issue):
        t_ack = time.monotonic()
        with self.lock:
            for i, s in enumerate(seqs):
                self.hist.setdefault(first + i, History()).add(s, t_issue, t_ack)
        self.inflight[conn] = None

    def settled(self, t1):
        """Wait until every write issued before t1 is in the histories (a
        write in flight across a snapshot may or may not be in it, and
        until it is acknowledged it is not recorded).  A mark set after
        this looked is later than t1, and so is its write's issue time."""
        while any(t is not None and t < t1 for t in self.inflight):
            if self.stop.wait(0.005):
                return

    # ---- snapshots ----

    def control(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.server.ctl_sock)
        f = s.makefile("rwb")
        f.readline()  # greeting
        return s, f

    def call(self, f, cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        f.flush()
        r = json.loads(f.readline())
        if "error" in r:
            raise AssertionError(f"{cmd}: {r['error']['desc']}")
        return r["return"]

    def verify(self, name, t0, t1):
        """Read snapshot name (created by a call in [t0, t1]) in full and
        check every block against the histories, over --verify-conns
        connections at once (one among 64 busy ones gets a 64th of the
        server: a 64 MiB snapshot would take seconds)."""
        started = time.monotonic()
        total = self.a.conns * self.a.blocks
        nv = max(1, self.a.verify_conns)
        part = -(-total // nv)
        errs = []

        def one(lo, hi):
            try:
                self.verify_part(name, t0, t1, lo, hi)
            except Exception as e:  # noqa: BLE001
                errs.append(e)

        ts = [threading.Thread(target=one, args=(lo, min(lo + part, total)))
              for lo in range(0, total, part)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            raise errs[0]
        with self.lock:
            self.verified += 1
            self.verified_names.add(name)
            self.verify_s.append(time.monotonic() - started)

    def verify_part(self, name, t0, t1, lo, hi):
        import nbd
        h = nbd.NBD()
        h.connect_uri(self.server.uri("soak@" + name))
        step = 256
        for first in range(lo, hi, step):
            n = min(step, hi - first)
            data = memoryview(h.pread(n * BLOCK, first * BLOCK))
            with self.lock:
                allowed = [self.hist[b].allowed(t0, t1) if b in self.hist else [0]
                           for b in range(first, first + n)]
            for i in range(n):
                got = data[i * BLOCK:(i + 1) * BLOCK]
                blk = first + i
                if block_seq(got, blk // self.a.blocks, blk) not in allowed[i]:
                    raise AssertionError(
                        f"snapshot {name}: block {blk} holds {describe(got)}; allowed "
                        f"sequence numbers {allowed[i]} (0 = zeros)")
        h.shutdown()

    def snapshotter(self):
        """A snapshot every --snap-every seconds on a fixed schedule."""
        try:
            s, f = self.control()
            k = 0
            tick = time.monotonic() + self.a.snap_every
            while not self.stop.wait(max(0.0, tick - time.monotonic())):
                now = time.monotonic()
                while tick + self.a.snap_every <= now:  # the last call overran
                    tick += self.a.snap_every
                    self.missed_ticks += 1
                tick += self.a.snap_every
                name = f"s{k}"
                k += 1
                t0 = time.monotonic()
                self.call(f, "snapshot-create", snapshots=["soak@" + name])
                t1 = time.monotonic()
                with self.lock:
                    self.snaps.append([name, t0, t1, False])
                    self.created += 1
                    self.create_s.append(t1 - t0)
                    self.max_live = max(self.max_live, len(self.snaps))
                    self.more.notify_all()
                self.count("snapshot-create")
            s.close()
        except Exception as e:  # noqa: BLE001
            self.fail(f"snapshots: {type(e).__name__}: {e}")
        with self.lock:
            self.more.notify_all()

    def deleter(self):
        """Delete the oldest snapshot while more than --keep are alive and
        the oldest has been verified (its own control connection, so a slow
        delete never delays a create)."""
        try:
            s, f = self.control()
            while True:
                with self.lock:
                    while not self.stop.is_set() and not (len(self.snaps) > self.a.keep
                                                          and self.snaps[0][3]):
                        self.more.wait()
                    if self.stop.is_set():
                        break
                    old = self.snaps[0][0]
                t = time.monotonic()
                self.call(f, "snapshot-delete", snapshot="soak@" + old)
                with self.lock:
                    self.delete_s.append(time.monotonic() - t)
                    self.snaps.pop(0)
                    self.deleted += 1
                    horizon = self.snaps[0][1]
                    for hh in self.hist.values():
                        hh.prune(horizon)
                self.count("snapshot-delete")
            s.close()
        except Exception as e:  # noqa: BLE001
            self.fail(f"deleter: {type(e).__name__}: {e}")

    def verifier(self):
        """Verify each snapshot once, oldest first, while the load runs."""
        try:
            while True:
                with self.lock:
                    while not self.stop.is_set() and all(sn[3] for sn in self.snaps):
                        self.more.wait()
                    if self.stop.is_set():
                        return
                    sn = next(sn for sn in self.snaps if not sn[3])
                    name, t0, t1 = sn[:3]
                self.settled(t1)
                if self.stop.is_set():
                    return
                self.verify(name, t0, t1)  # the snapshotter deletes only verified ones
                with self.lock:
                    sn[3] = True
                    self.more.notify_all()
        except Exception as e:  # noqa: BLE001
            self.fail(f"verifier: {type(e).__name__}: {e}")

    def sampler(self, t_start):
        pid = self.server.pid()
        while not self.stop.wait(5):
            try:
                with open(f"/proc/{pid}/status") as st:
                    for line in st:
                        if line.startswith("VmRSS:"):
                            self.rss.append((time.monotonic() - t_start, int(line.split()[1])))
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=256, help="4 KiB blocks per connection")
    ap.add_argument("--snap-every", type=float, default=1.0)
    ap.add_argument("--keep", type=int, default=4, help="live snapshots kept")
    ap.add_argument("--verify-conns", type=int, default=16,
                    help="connections that read a snapshot to verify it")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--snapvol", default=os.environ.get("SNAPVOL"))
    ap.add_argument("--json", help="write the summary here too")
    a = ap.parse_args()
    if not a.snapvol:
        ap.error("--snapvol (or $SNAPVOL) is required")
    svtest.SNAPVOL = os.path.realpath(a.snapvol)
    svtest.SERVER_TIMEOUT = int(a.duration) + 600
    svtest.require_nbd_module()
    print(f"soak: {a.conns} connections x {a.blocks} blocks, {a.duration:.0f} s, "
          f"a snapshot every {a.snap_every} s (keeping {a.keep}), seed {a.seed}", flush=True)

    pool = svtest.Pool()
    rc = 1
    try:
        pool.create("soak", a.conns * a.blocks * BLOCK, 4096)
        server = pool.serve("--max-connections", str(a.conns + a.verify_conns + 16))
        soak = Soak(a, server)
        t_start = time.monotonic()
        threads = [threading.Thread(target=soak.client, args=(c,)) for c in range(a.conns)]
        threads += [threading.Thread(target=soak.snapshotter),
                    threading.Thread(target=soak.verifier),
                    threading.Thread(target=soak.deleter),
                    threading.Thread(target=soak.sampler, args=(t_start,))]
        for t in threads:
            t.start()
        soak.stop.wait(a.duration)
        soak.stop.set()
        with soak.lock:
            soak.more.notify_all()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t_start
        if not soak.errors:
            try:
                for sn in list(soak.snaps):
                    soak.verify(*sn[:3])
                server.stop()
            except Exception as e:  # noqa: BLE001
                soak.errors.append(f"at the end: {type(e).__name__}: {e}")
        total = sum(v for k, v in soak.ops.items() if not k.startswith("snapshot"))
        warm = [kb for t, kb in soak.rss if t >= elapsed / 5]
        at60 = [kb for t, kb in soak.rss if t >= 60]

        def stats(xs):
            xs = sorted(xs)
            if not xs:
                return None
            return {"n": len(xs), "median": round(xs[len(xs) // 2], 3),
                    "p99": round(xs[min(len(xs) - 1, len(xs) * 99 // 100)], 3),
                    "max": round(xs[-1], 3)}

        summary = {
            "duration_s": round(elapsed, 1), "connections": a.conns, "seed": a.seed,
            "blocks_per_connection": a.blocks, "snap_every_s": a.snap_every, "keep": a.keep,
            "ops": soak.ops, "ops_per_s": round(total / elapsed),
            "snapshots_created": soak.created, "snapshots_deleted": soak.deleted,
            "snapshot_ticks_missed": soak.missed_ticks,
            "snapshots_alive_max": soak.max_live,
            "snapshots_verified": soak.verified,
            "snapshots_verified_distinct": len(soak.verified_names),
            "snapshots_unverified": soak.created - len(soak.verified_names),
            "create_s": stats(soak.create_s), "delete_s": stats(soak.delete_s),
            "verify_s": stats(soak.verify_s),
            "rss_kb_at_60s": at60[0] if at60 else None,
            "rss_kb_after_warmup": warm[0] if warm else None,
            "rss_kb_end": soak.rss[-1][1] if soak.rss else None,
            "rss_kb_max": max((kb for _, kb in soak.rss), default=None),
            "rss_kb_samples": [[round(t), kb] for t, kb in soak.rss],
            "errors": soak.errors,
        }
        print(json.dumps(summary, indent=1))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(summary, f, indent=1)
        if not soak.errors and soak.created - len(soak.verified_names):
            soak.errors.append(f"{soak.created - len(soak.verified_names)} snapshots "
                               "were never verified")
        if soak.errors:
            print("soak: FAILED: " + soak.errors[0], file=sys.stderr)
            print(server.log_tail(), file=sys.stderr)
        else:
            rc = 0
    finally:
        pool.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
