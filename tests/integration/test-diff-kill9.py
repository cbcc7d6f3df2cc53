#!/usr/bin/python3
"""test-diff-kill9.py: change tracking survives kill -9 exactly.

Each round takes a snapshot rN, then two writer threads (each on its own
NBD connection) write, trim and zero random ranges and record the chunks of
every request that completed; the main thread kill -9's snapvol at a random
moment.  After a restart:
  - `snapvol diff vm1@rN vm1` covers every chunk a request of the round
    touched that was acknowledged before a FLUSH that completed (those
    reached the origin, and DESIGN invariant 8 says a killed server still
    reports exactly; a write acknowledged but not flushed may be lost with
    the server's memory, as NBD allows (engine/writebehind.c), and then
    the chunk did not change);
  - every chunk whose contents differ between vm1@rN as it was taken and
    vm1 is in it too (also those of requests cut by the kill that reached
    the origin); in every other round, every live snapshot first releases
    a range (TRIM on its export), so writes there record their changes
    without copies, and must still show;
  - the diff from the first snapshot covers every chunk written in all
    rounds since;
  - and the check is shown to work: the same check of the diff with one
    reported chunk taken out finds exactly that chunk missing.
SNAPVOL_SEED=N replays the choices; SNAPVOL_ROUNDS sets the rounds (6).
"""

import json
import os
import random
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 32 * MiB
CHUNK = 4096
SEED = int(os.environ.get("SNAPVOL_SEED") or random.SystemRandom().randrange(1, 2**31))
ROUNDS = int(os.environ.get("SNAPVOL_ROUNDS") or 6)


def diff_chunks(pool, frm, to="vm1"):
    d = json.loads(pool.cli("diff", f"vm1@{frm}", to, "--json").stdout)
    s = set()
    for off, ln in d["extents"]:
        check(off % CHUNK == 0 and (ln % CHUNK == 0 or off + ln == SIZE), "whole chunks")
        s.update(range(off // CHUNK, (off + ln) // CHUNK))
    return s


def missed(reported, written):
    """The check: chunks written that the diff does not report."""
    return written - reported


def writer(uri, rnd, acked, stop):
    h = nbd.NBD()
    pending = set()  # acknowledged, not yet covered by a completed FLUSH
    try:
        h.connect_uri(uri)
        while not stop.is_set():
            off = rnd.randrange(SIZE // CHUNK) * CHUNK + (rnd.randrange(CHUNK) if rnd.random() < .3 else 0)
            ln = min(rnd.choice([1, 512, CHUNK, 2 * CHUNK, 64 * 1024]), SIZE - off)
            k = rnd.random()
            if k < .75:
                h.pwrite(rnd.randbytes(ln), off)
            elif k < .85:
                h.trim(ln, off)
            elif k < .92:
                h.zero(ln, off)
            else:
                h.flush()
                acked.update(pending)
                pending.clear()
                continue
            pending.update(range(off // CHUNK, (off + ln - 1) // CHUNK + 1))
    except nbd.Error:
        pass  # the server was killed
    finally:
        try:
            h.close()
        except Exception:
            pass


def read_all(srv, export):
    h = nbd.NBD()
    h.connect_uri(srv.uri(export))
    data = bytearray()
    for off in range(0, SIZE, 4 * MiB):
        data += h.pread(4 * MiB, off)
    h.shutdown()
    return bytes(data)


def main(pool, runner):
    print(f"seed {SEED} (replay with SNAPVOL_SEED={SEED}), {ROUNDS} rounds", flush=True)
    rnd = random.Random(SEED)
    pool.create("vm1", SIZE)
    pool.cli("snapshot", "create", "vm1@r0")
    everything = set()
    srv = pool.serve()

    def round_(n):
        nonlocal srv
        snap = f"r{n}"
        if n > 0:
            pool.cli("snapshot", "create", f"vm1@{snap}")
        if n > 3:
            pool.cli("snapshot", "delete", f"vm1@r{n - 3}")
        old = read_all(srv, f"vm1@{snap}")  # as taken, before any release
        if n % 2:
            # Every live snapshot releases one range (a TRIM on its
            # export): writes there copy nothing, but must still show.
            a = rnd.randrange(SIZE // 2 // CHUNK) * CHUNK
            ln = rnd.randrange(1, SIZE // 2 // CHUNK) * CHUNK
            for k in range(max(0, n - 2), n + 1):
                r = nbd.NBD()
                r.connect_uri(srv.uri(f"vm1@r{k}"))
                r.set_strict_mode(r.get_strict_mode() & ~nbd.STRICT_COMMANDS)
                r.trim(ln, a)
                r.shutdown()
        acked = [set(), set()]
        stop = threading.Event()
        ts = [threading.Thread(target=writer, args=(srv.uri("vm1"), random.Random(rnd.random()),
                                                    acked[i], stop)) for i in range(2)]
        for t in ts:
            t.start()
        # Kill at a random moment once some flushed writes exist (a loaded
        # machine may take a while to complete the first flushes).
        deadline = time.time() + 30
        while len(acked[0]) + len(acked[1]) <= 40 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.05, 0.6))
        pid = srv.pid()
        check(pid, "server pid")
        os.kill(pid, signal.SIGKILL)
        for t in ts:
            t.join(30)
        stop.set()
        srv.proc.wait(10)
        written = acked[0] | acked[1]
        everything.update(written)
        check(len(written) > 20, f"only {len(written)} chunks flushed before the kill")

        srv = pool.serve()
        d = diff_chunks(pool, snap)
        m = missed(d, written)
        check(not m, f"round {n}: chunks flushed before kill -9 missing from the diff: "
              f"{sorted(m)[:10]}")
        live = read_all(srv, "vm1")
        changed = {c for c in range(SIZE // CHUNK)
                   if live[c * CHUNK:(c + 1) * CHUNK] != old[c * CHUNK:(c + 1) * CHUNK]}
        m = missed(d, changed)
        check(not m, f"round {n}: chunks that differ from vm1@{snap} missing: {sorted(m)[:10]}")
        m = missed(diff_chunks(pool, "r0"), everything)
        check(not m, f"round {n}: since r0, missing {sorted(m)[:10]}")
        # The check catches a miss: take one reported chunk out.
        x = sorted(written & d)[len(written & d) // 2]
        check(missed(d - {x}, written) == {x}, "the check finds a chunk left out")
        print(f"  round {n}: {len(written)} chunks flushed, {len(d)} in the diff, "
              f"{len(changed)} differ", flush=True)

    for n in range(ROUNDS):
        if not runner.case(f"round {n}: kill -9 during writes, diff since r{n} complete",
                           round_, n):
            break
    srv.stop()


if __name__ == "__main__":
    run_main(main)
