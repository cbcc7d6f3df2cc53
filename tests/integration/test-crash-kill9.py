"""test-crash-kill9.py: kill -9 the server at random moments under a
workload of writes, flushes and snapshot create/delete; after every restart
every snapshot reads as it did when created and no flushed write is lost.

The workload, per round (ROUNDS rounds, 20 by default):
  - WRITERS threads, each on its own NBD connection, write 512-byte-aligned
    runs (512 B to 64 KiB) at random offsets in their own stripes of the
    volume (so the order of writes to any sector is known), and flush now
    and then;
  - one thread creates snapshots through the control socket every few tens
    of milliseconds, reads each one through NBD right after "snapshot-create"
    returned and records a checksum of every 64 KiB block, and deletes the
    oldest when there are more than MAX_SNAPS;
  - the main thread sleeps a random time and kill -9's snapvol.

Every sector the workload writes is self-describing: a header (magic, write
id, sector number) and filler derived from the seed and the write id, so a
sector read back names the write it came from and is checked byte for byte.
The client keeps, per sector, the value at the round's start and the
writes of the round with the order of events (submitted, completed, flush
started, flush returned).  From that:
  - the volume after a restart: each sector holds the last write that
    completed before a successful flush was sent (a FLUSH on any connection
    covers writes completed on all of them: multi-conn), or a write
    submitted after it ("may hold old or new data");
  - a snapshot right after create returned: each sector holds the last write
    completed before the create was sent, or a write submitted after it but
    before the create returned (nothing later);
  - after every restart: every snapshot whose create returned reads exactly
    as recorded (block checksums); a snapshot whose create or delete was cut
    by the kill either is absent or reads as allowed; a deleted one stays
    deleted; none is listed that nobody created; none is marked invalid;
  - reading the volume again after a flush gives the same bytes.

The seed is printed; SNAPVOL_SEED=N replays the same choices (thread timing
still varies).  SNAPVOL_ROUNDS overrides the number of rounds.
SNAPVOL_TEST_POOL=rados:NAME runs it on a pool in the Ceph cluster CEPH_CONF
names instead of a temporary directory (test-rados-suite.sh): after each
kill the next server waits until the dead one's claim has lapsed
(SNAPVOL_RADOS_CLAIM), then everything is checked the same way.
"""

import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svtest  # noqa: E402

svtest.require_nbd_module()
import nbd  # noqa: E402

SEED = int(os.environ.get("SNAPVOL_SEED") or random.SystemRandom().randrange(1, 2**31))
ROUNDS = int(os.environ.get("SNAPVOL_ROUNDS") or 20)
POOL_SPEC = os.environ.get("SNAPVOL_TEST_POOL") or None
print(f"{svtest.TEST_NAME}: seed {SEED} (replay with SNAPVOL_SEED={SEED}), {ROUNDS} rounds"
      + (f", pool {POOL_SPEC}" if POOL_SPEC else ""), flush=True)

SECTOR = 512
VOL_SIZE = 4 << 20
NSEC = VOL_SIZE // SECTOR
STRIPE = 128 << 10          # writer t owns the stripes i with i % WRITERS == t
WRITERS = 3
MAX_SNAPS = 6
BLOCK = 64 << 10            # unit of the recorded snapshot checksums
MAGIC = b"SVKILL9!"
HDR = struct.Struct("<8sQQ")  # magic, write id, sector
ZERO_SECTOR = bytes(SECTOR)


class Fail(Exception):
    pass


# ---- self-describing sectors ----

_filler = {}


def filler(wid):
    f = _filler.get(wid)
    if f is None:
        f = hashlib.shake_256(f"{SEED}:{wid}".encode()).digest(SECTOR - HDR.size)
        if len(_filler) > 100000:
            _filler.clear()
        _filler[wid] = f
    return f


def sector_bytes(wid, s):
    return HDR.pack(MAGIC, wid, s) + filler(wid)


def write_bytes(wid, first, n):
    f = filler(wid)
    return b"".join(HDR.pack(MAGIC, wid, s) + f for s in range(first, first + n))


def decode(buf, first_sector=0):
    """The write id of every sector of buf (0 for a zero sector); raises
    Fail on a sector that is neither zero nor exactly what a write put."""
    out = []
    for i in range(len(buf) // SECTOR):
        s = first_sector + i
        sec = buf[i * SECTOR:(i + 1) * SECTOR]
        if sec == ZERO_SECTOR:
            out.append(0)
            continue
        magic, wid, ss = HDR.unpack_from(sec)
        if magic != MAGIC or ss != s or sec != sector_bytes(wid, s):
            raise Fail(f"sector {s} (offset {s * SECTOR}) is corrupt or torn: "
                       f"header {sec[:HDR.size].hex()}")
        out.append(wid)
    return out


def read_all(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        size = h.get_size()
        if size != VOL_SIZE:
            raise Fail(f"{uri}: size {size}, expected {VOL_SIZE}")
        parts = []
        for off in range(0, size, 2 << 20):
            parts.append(h.pread(min(2 << 20, size - off), off))
        return b"".join(parts)
    finally:
        try:
            h.shutdown()
        except nbd.Error:
            pass


def block_hashes(buf):
    return [hashlib.sha256(buf[o:o + BLOCK]).digest() for o in range(0, len(buf), BLOCK)]


# ---- the client's record of one round ----

class Write:
    __slots__ = ("wid", "first", "n", "submit", "complete")

    def __init__(self, wid, first, n, submit):
        self.wid, self.first, self.n, self.submit, self.complete = wid, first, n, submit, None


class Round:
    def __init__(self, number, base):
        self.number = number
        self.base = base                 # write id per sector at the start
        self.hist = [[] for _ in range(NSEC)]   # Writes per sector, in order
        self.flushed = 0                 # max event number at which a flush that succeeded was sent

    def allowed(self, s, horizon, until):
        """Write ids sector s may hold: the last write completed before
        event `horizon` (or the base), and any submitted after it and before
        event `until`."""
        h = self.hist[s]
        k = -1
        for i, w in enumerate(h):
            if w.complete is not None and w.complete < horizon:
                k = i
        ok = {h[k].wid if k >= 0 else self.base[s]}
        for w in h[k + 1:]:
            if w.submit < until:
                ok.add(w.wid)
        return ok

    def durable(self, s):
        """The write id sector s must hold if nothing after the last
        flush reached the disk."""
        h = self.hist[s]
        for w in reversed(h):
            if w.complete is not None and w.complete < self.flushed:
                return w.wid
        return self.base[s]


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.event = 0
        self.next_wid = 1
        self.writes = 0
        self.flushes = 0

    def tick(self):
        with self.lock:
            self.event += 1
            return self.event


INF = float("inf")


class Snap:
    """What the client knows of one snapshot."""

    def __init__(self, name, rnd, c0, c1):
        self.name = name
        self.round = rnd
        self.c0, self.c1 = c0, c1        # events: create sent, create returned (INF: cut)
        self.hashes = None               # recorded block checksums, once read
        self.status = "maybe"            # maybe | valid | deleting | deleted

    def check_semantics(self, wids):
        for s in range(NSEC):
            ok = self.round.allowed(s, self.c0, self.c1)
            if wids[s] not in ok:
                raise Fail(f"snapshot {self.name}: sector {s} holds write {wids[s]}, expected one "
                           f"of {sorted(ok)} (round {self.round.number})")


# ---- control socket ----

def control(pool, command, args):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    try:
        s.connect(os.path.join(pool.sockdir, "control.sock"))
        f = s.makefile("rw")
        if not f.readline():
            raise OSError("no greeting")
        f.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        f.flush()
        line = f.readline()
        if not line:
            raise OSError("connection closed")
        return json.loads(line)
    finally:
        s.close()


# ---- the workload ----

def writer(t, st, rnd, uri, rng, stop):
    h = nbd.NBD()
    h.connect_uri(uri)
    mine = [i for i in range(VOL_SIZE // STRIPE) if i % WRITERS == t]
    per_stripe = STRIPE // SECTOR
    while not stop.is_set():
        if rng.random() < 0.08:
            f0 = st.tick()
            h.flush()
            with st.lock:
                rnd.flushed = max(rnd.flushed, f0)
                st.flushes += 1
            continue
        n = rng.choice((1, 1, 3, 8, 8, 8, 16, 24, 64, 128))
        first = rng.choice(mine) * per_stripe + rng.randrange(per_stripe - n + 1)
        with st.lock:
            wid = st.next_wid
            st.next_wid += 1
            st.event += 1
            w = Write(wid, first, n, st.event)
            for s in range(first, first + n):
                rnd.hist[s].append(w)
        h.pwrite(write_bytes(wid, first, n), first * SECTOR)
        with st.lock:
            st.event += 1
            w.complete = st.event
            st.writes += 1


def snapshotter(pool, st, rnd, snaps, uri_of, rng, stop, counter, errors):
    while not stop.is_set():
        time.sleep(rng.uniform(0.02, 0.12))
        live = [x for x in snaps.values() if x.status in ("valid", "maybe")]
        if len(live) >= MAX_SNAPS:
            victim = min(live, key=lambda x: x.c0)
            victim.status = "deleting"
            r = control(pool, "snapshot-delete", {"snapshot": "vm1@" + victim.name})
            if "error" in r:
                errors.append(f"snapshot-delete {victim.name}: {r['error']}")
                return
            victim.status = "deleted"
            continue
        counter[0] += 1
        name = f"r{rnd.number}-{counter[0]}"
        c0 = st.tick()
        snap = Snap(name, rnd, c0, INF)
        snaps[name] = snap
        r = control(pool, "snapshot-create", {"snapshots": ["vm1@" + name]})
        if "error" in r:
            errors.append(f"snapshot-create {name}: {r['error']}")
            return
        snap.c1 = st.tick()
        snap.status = "valid"
        buf = read_all(uri_of("vm1@" + name))
        wids = decode(buf)
        with st.lock:
            snap.check_semantics(wids)
        snap.hashes = block_hashes(buf)


def run_thread(fn, args, errors):
    def body():
        try:
            fn(*args)
        except (nbd.Error, OSError, ConnectionError, json.JSONDecodeError):
            pass   # the server was killed under us
        except Fail as e:
            errors.append(str(e))
        except Exception as e:  # a bug in the test itself
            errors.append(f"{type(e).__name__}: {e}")
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


# ---- checks after a restart ----

def verify(pool, server, st, rnd, snaps, stats):
    uri = server.uri("vm1")
    buf = read_all(uri)
    wids = decode(buf)
    lost = []
    for s in range(NSEC):
        ok = rnd.allowed(s, rnd.flushed, INF)
        if wids[s] not in ok:
            lost.append((s, wids[s], sorted(ok)))
        elif len(ok) > 1:
            stats["unflushed_new" if wids[s] != rnd.durable(s) else "unflushed_old"] += 1
            # Allowed, but worth knowing: an acknowledged (unflushed) write
            # that a kill -9 lost although no later write was in flight.
            done = [w for w in rnd.hist[s] if w.complete is not None]
            if (done and wids[s] != done[-1].wid and
                    all(w.wid != wids[s] for w in rnd.hist[s] if w.complete is None)):
                stats["acked_lost"] += 1
    if lost:
        s, got, ok = lost[0]
        raise Fail(f"round {rnd.number}: {len(lost)} sectors lost a flushed write or hold "
                   f"something never written; first: sector {s} holds write {got}, expected "
                   f"one of {ok}")

    r = control(pool, "snapshot-list", {"name": "vm1"})
    if "error" in r:
        raise Fail(f"snapshot-list: {r['error']}")
    listed = {x["name"]: x for x in r["return"]["snapshots"]}
    for name, x in listed.items():
        if name not in snaps:
            raise Fail(f"snapshot {name} is listed but was never created")
        if x["invalid"]:
            raise Fail(f"snapshot {name} is marked invalid")
        if snaps[name].status == "deleted":
            raise Fail(f"snapshot {name} was deleted (the delete returned) but is back")
    for name, snap in list(snaps.items()):
        if snap.status == "deleted":
            del snaps[name]
            continue
        if name not in listed:
            if snap.status == "valid":
                raise Fail(f"snapshot {name} (created, create returned) is gone after the crash")
            del snaps[name]          # cut by the kill: never made it, or its delete did
            stats["cut_absent"] += 1
            continue
        if snap.status in ("maybe", "deleting"):
            stats["cut_present"] += 1
        sbuf = read_all(server.uri("vm1@" + name))
        if snap.hashes is not None:
            got = block_hashes(sbuf)
            bad = [i for i, (a, b) in enumerate(zip(got, snap.hashes)) if a != b]
            if bad:
                raise Fail(f"snapshot {name} changed: {len(bad)} blocks of 64 KiB differ from "
                           f"the checksums recorded at its creation, first at offset "
                           f"{bad[0] * BLOCK}")
        else:
            snap.check_semantics(decode(sbuf))
            snap.hashes = block_hashes(sbuf)
        snap.status = "valid"
        stats["snap_checks"] += 1
        if sbuf != buf:
            stats["snap_differs"] += 1

    # What the kill left is what the volume holds from now on.
    h = nbd.NBD()
    h.connect_uri(uri)
    h.flush()
    h.shutdown()
    if read_all(uri) != buf:
        raise Fail("the volume's contents changed between two reads around a flush")
    return wids


def main():
    rng = random.Random(SEED)
    pool = svtest.Pool(POOL_SPEC)
    server = None
    try:
        pool.create("vm1", VOL_SIZE)
        server = pool.serve()
        pool.wait_export(server, "vm1")
        st = State()
        snaps = {}
        stats = {"snap_checks": 0, "snap_differs": 0, "kills": 0, "unflushed_old": 0,
                 "unflushed_new": 0, "cut_present": 0, "cut_absent": 0, "acked_lost": 0}
        counter = [0]
        base = [0] * NSEC
        t_start = time.time()
        for number in range(1, ROUNDS + 1):
            rnd = Round(number, base)
            stop = threading.Event()
            errors = []
            threads = [run_thread(writer, (t, st, rnd, server.uri("vm1"),
                                           random.Random(f"{SEED}/{number}/w{t}"), stop),
                                  errors) for t in range(WRITERS)]
            threads.append(run_thread(snapshotter,
                                      (pool, st, rnd, snaps, server.uri,
                                       random.Random(f"{SEED}/{number}/s"), stop, counter,
                                       errors), errors))
            time.sleep(rng.uniform(0.1, 1.0))
            pid = server.pid()
            if pid is None or not server.alive():
                raise Fail(f"round {number}: the server died by itself\n{server.log_tail()}")
            os.kill(pid, signal.SIGKILL)
            server.proc.wait()
            stats["kills"] += 1
            stop.set()
            for t in threads:
                t.join(30)
                if t.is_alive():
                    raise Fail(f"round {number}: a client thread hangs after the kill")
            if errors:
                raise Fail(f"round {number}: " + "; ".join(errors))
            server = pool.serve()
            waited = pool.wait_export(server, "vm1")
            base = verify(pool, server, st, rnd, snaps, stats)
            print(f"round {number}: {st.writes} writes, {st.flushes} flushes, "
                  f"{len(snaps)} snapshots alive, ok"
                  + (f" (claim lapsed after {waited:.1f} s)" if POOL_SPEC else ""), flush=True)
        info = pool.cli("--json", "info", "vm1").stdout
        server.stop()
        dt = time.time() - t_start
        print(f"{svtest.TEST_NAME}: {stats['kills']} kills, {st.writes} writes, "
              f"{st.flushes} flushes, {counter[0]} snapshots taken, {stats['snap_checks']} "
              f"snapshot checks after restarts ({stats['snap_differs']} differed from the volume), "
              f"{dt:.1f} s; sectors with unflushed writes at a kill: {stats['unflushed_new']} "
              f"held a new write, {stats['unflushed_old']} the flushed one; snapshot creates or "
              f"deletes cut by a kill: {stats['cut_present']} present after, "
              f"{stats['cut_absent']} absent; sectors of acknowledged unflushed writes lost: "
              f"{stats['acked_lost']}; last server's cow: {json.loads(info)['cow']}",
              flush=True)
        if stats["snap_differs"] == 0:
            raise Fail("no snapshot ever differed from the volume: copy-on-write was not "
                       "exercised")
        return 0
    except (Fail, AssertionError, nbd.Error, OSError) as e:
        # AssertionError: a server that would not start (svtest); nbd.Error:
        # an export that cannot be read after a restart.
        print(f"{svtest.TEST_NAME}: FAIL (seed {SEED}): {type(e).__name__}: {e}", flush=True)
        if server is not None:
            print(server.log_tail(60))
        return 1
    finally:
        pool.cleanup()


if __name__ == "__main__":
    sys.exit(main())
