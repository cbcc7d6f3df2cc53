#!/usr/bin/python3
"""test-freeze-stop.py: stopping a server while freezes come and go.

Several control clients take, renew and end freezes at random (thaw by
id, thaw by volume, close the connection while holding one, let the lease
lapse, renew right up to a maximum equal to the lease so the reaper and the
heartbeat race at the end), an NBD client writes through them, and the
server is stopped (SIGTERM) at a random moment in the middle of it.  The
stop must end every freeze (the control sessions', then the pool's), stop
cleanly within Server.stop's 20 s and exit 0: under ASan/UBSan (`make
asan`) a use after free in the freeze code (a heartbeat reading a freeze
the reaper has freed, the pool closing under a freeze being ended) exits
non-zero, and the log is checked for sanitizer reports too.  After the
rounds, a new server has no freeze, takes writes, and `snapvol check`
finds the pool clean.  Nothing here asserts timing.

SNAPVOL_SEED=N replays a run; SNAPVOL_ROUNDS sets the number of stops.
"""

import json
import os
import random
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
VOLS = ["va", "vb", "vc"]


class Ctl:
    """A control connection: one JSON object per line."""

    def __init__(self, srv):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(30)
        self.s.connect(srv.ctl_sock)
        self.f = self.s.makefile("rb")
        json.loads(self.f.readline())  # greeting

    def call(self, cmd, **args):
        self.s.sendall((json.dumps({"execute": cmd, "arguments": args}) + "\n").encode())
        line = self.f.readline()
        if not line:
            raise ConnectionError("closed")
        return json.loads(line)

    def close(self):
        self.f.close()
        self.s.close()


def freezer(srv, rng, stop, stats):
    """Freezes until the server goes away (any socket error ends it)."""
    ctl = None
    try:
        ctl = Ctl(srv)
        while not stop.is_set():
            names = rng.sample(VOLS, rng.randint(1, 2))
            lease = rng.choice([100, 150, 300])
            args = {"names": names, "lease": lease}
            race_max = rng.random() < 0.3
            if race_max:
                args["max"] = lease  # renewals cannot push the end later
            r = ctl.call("freeze", **args)
            if "return" not in r:
                stats["refused"] += 1  # e.g. the pool is closing
                continue
            fid = r["return"]["id"]
            stats["frozen"] += 1
            how = rng.choice(["id", "volume", "lapse", "close", "renew"])
            if race_max or how == "renew":
                # heartbeat until it ends by itself (maximum or lease)
                while "return" in ctl.call("heartbeat", id=fid):
                    time.sleep(rng.choice([0, 0, 0.01, 0.03]))
                stats["ended_by_itself"] += 1
            elif how == "id":
                time.sleep(rng.random() * lease / 2000)
                ctl.call("heartbeat", id=fid)
                ctl.call("thaw", id=fid)
            elif how == "volume":
                ctl.call("thaw", name=names[0])
            elif how == "lapse":
                time.sleep(lease / 1000 * rng.choice([0.9, 1.0, 1.1, 2]))
                ctl.call("heartbeat", id=fid)
            else:
                ctl.close()
                ctl = Ctl(srv)
    except (OSError, ValueError, ConnectionError):
        pass  # the server stopped under us: expected
    finally:
        if ctl:
            try:
                ctl.close()
            except OSError:
                pass


def writer(srv, rng, stop, stats):
    """Writes to the volumes, each write waiting out any freeze."""
    hs = []
    try:
        for v in VOLS:
            h = nbd.NBD()
            h.connect_uri(srv.uri(v))
            hs.append(h)
        buf = bytes(rng.getrandbits(8) for _ in range(4096))
        while not stop.is_set():
            h = rng.choice(hs)
            h.pwrite(buf, rng.randrange(0, 4 * MiB // 4096) * 4096)
            stats["writes"] += 1
    except nbd.Error:
        pass  # the server stopped under us
    finally:
        for h in hs:
            try:
                h.shutdown()
            except nbd.Error:
                pass


def clean_log(srv, mark):
    with open(srv.log, errors="replace") as f:
        f.seek(mark)
        text = f.read()
    for bad in ("AddressSanitizer", "ThreadSanitizer", "runtime error", "LeakSanitizer"):
        check(bad not in text, f"{bad} in the server log:\n" + text[-4000:])


def rounds(pool, seed):
    rng = random.Random(seed)
    n = int(os.environ.get("SNAPVOL_ROUNDS", "6"))
    total = {"frozen": 0, "refused": 0, "ended_by_itself": 0, "writes": 0}
    for rnd in range(n):
        mark = os.path.getsize(pool.tmp + "/serve.log") if os.path.exists(
            pool.tmp + "/serve.log") else 0
        srv = pool.serve()
        stop = threading.Event()
        stats = {k: 0 for k in total}
        threads = [threading.Thread(target=freezer,
                                    args=(srv, random.Random(rng.random()), stop, stats))
                   for _ in range(4)]
        threads.append(threading.Thread(target=writer,
                                        args=(srv, random.Random(rng.random()), stop, stats)))
        for t in threads:
            t.start()
        time.sleep(0.3 + rng.random() * 1.2)
        srv.stop()  # must exit 0 within 20 s, whatever is frozen
        stop.set()
        for t in threads:
            t.join(60)
            check(not t.is_alive(), "a client thread hangs after the stop")
        clean_log(srv, mark)
        for k in total:
            total[k] += stats[k]
        print(f"round {rnd}: {stats}", flush=True)
    print(f"total: {total}", flush=True)
    check(total["frozen"] > 0, "no freeze was taken at all")


def after(pool):
    srv = pool.serve()
    try:
        st = json.loads(pool.cli("--json", "status").stdout)
        check(not st.get("freezes"), f"freezes after a restart: {st.get('freezes')}")
        for v in VOLS:
            h = nbd.NBD()
            h.connect_uri(srv.uri(v))
            h.pwrite(b"x" * 4096, 0)
            h.flush()
            h.shutdown()
    finally:
        srv.stop()
    r = pool.cli("check", check=False)
    check(r.returncode == 0, f"check after the rounds: {r.stdout}{r.stderr}")


def main(pool, runner):
    seed = int(os.environ.get("SNAPVOL_SEED", str(random.randrange(1 << 30))))
    print(f"seed {seed} (SNAPVOL_SEED={seed} replays it)", flush=True)
    for v in VOLS:
        pool.create(v, 4 * MiB)
    runner.case("stop while freezing", rounds, pool, seed)
    runner.case("after the stops", after, pool)


run_main(main)
