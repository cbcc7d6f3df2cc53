#!/usr/bin/python3
"""test-backup.py: backup, restore, send and receive, end to end.

 - A backup chain: a volume under random writes and trims, six snapshots; a
   full backup of the first and five incrementals (each onto a copy of the
   previous backup), made through a server and again directly on the pool
   (no server); each backup file, and each volume restored from it, equals
   its snapshot byte for byte; an incremental reads no more than the changed
   bytes (--json "bytes_read" <= "changed_bytes"); a backup file that holds
   another base is refused.
 - send | receive between two pools served by two servers: a full stream
   then five incrementals; every received snapshot equals the sent one.
 - Refusals, each leaving the target as it was (contents and snapshots): a
   corrupted record, a truncated stream, a stream for another base (same
   name, other contents), a stream for another volume size, bad magic, a
   newer version, a full stream for an existing volume, a target changed
   since the base.
 - An interrupted receive (kill -9 mid-stream) is run again and succeeds.
 - send | receive again with no server on either pool.
 - After kill -9 of the server mid-writes, an incremental backup holds every change.
SNAPVOL_SEED=N replays the random writes.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB
SEED = int(os.environ.get("SNAPVOL_SEED", random.randrange(1 << 30)))
print(f"seed {SEED} (SNAPVOL_SEED={SEED} replays it)", flush=True)
rnd = random.Random(SEED)


def scribble(h, n):
    """n random writes and trims."""
    for _ in range(n):
        off = rnd.randrange(0, SIZE // 512) * 512
        ln = min(rnd.choice([512, 4096, 65536, 300 * 1024, MiB]), SIZE - off)
        if rnd.random() < 0.2:
            off &= ~4095
            ln = max(4096, ln & ~4095)
            ln = min(ln, SIZE - off)
            if rnd.random() < 0.5:
                h.trim(ln, off)
            else:
                h.zero(ln, off)
        else:
            h.pwrite(rnd.randbytes(ln), off)
    h.flush()


def copy_backup(src, dst):
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)
    shutil.copyfile(src + ".snapvol.json", dst + ".snapvol.json")


def run_json(pool, *args, stdin=None, stdout=None):
    r = subprocess.run([SNAPVOL, "--pool", pool.path, "--json", *args], stdin=stdin,
                       stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    r.stderr = r.stderr.decode(errors="replace")
    return r


def main(pool, runner):
    pool.create("vm1", SIZE)
    srv = pool.serve()
    h = nbd.NBD()
    h.connect_uri(srv.uri("vm1"))
    expect = {}
    for i in range(6):
        scribble(h, 40 if i == 0 else 15)
        pool.cli("snapshot", "create", f"vm1@s{i}")
        expect[f"s{i}"] = sha_export(srv, f"vm1@s{i}")
    h.shutdown()
    bdir = os.path.join(pool.tmp, "backups")
    os.makedirs(bdir)

    def chain(tag):
        files = []
        for i in range(6):
            f = os.path.join(bdir, f"{tag}-s{i}.img")
            if i == 0:
                r = run_json(pool, "backup", "vm1@s0", f)
            else:
                copy_backup(files[-1], f)
                r = run_json(pool, "backup", f"vm1@s{i}", f, "--since", f"vm1@s{i - 1}")
            check(r.returncode == 0, f"backup s{i}: {r.stderr}")
            out = json.loads(r.stdout)
            check(out["via"] == ("nbd" if tag == "server" else "direct"), f"via {out['via']}")
            # --json: progress lines on stderr, the last one final and complete.
            prog = [json.loads(ln)["progress"] for ln in r.stderr.splitlines()
                    if ln.startswith('{"progress"')]
            check(prog and prog[-1]["final"] and prog[-1]["done"] == out["bytes_read"]
                  and prog[-1]["total"] == out["bytes_read"], f"progress lines: {r.stderr}")
            check(out["bytes_read"] <= out["changed_bytes"],
                  f"s{i}: read {out['bytes_read']} > changed {out['changed_bytes']}")
            if i:
                check(out["incremental"] and out["changed_bytes"] < SIZE,
                      f"s{i}: not incremental: {out}")
                d = json.loads(pool.cli("--json", "diff", f"vm1@s{i - 1}", f"vm1@s{i}").stdout)
                check(out["changed_bytes"] == d["changed_bytes"],
                      f"s{i}: changed_bytes {out['changed_bytes']}, diff says {d['changed_bytes']}")
                check(out["bytes_read"] > 0, f"s{i}: nothing read")
            check(sha_file(f) == expect[f"s{i}"], f"{tag}: backup of s{i} differs from it")
            files.append(f)
        # Restore every one and compare through the volume.
        for i, f in enumerate(files):
            r = run_json(pool, "restore", f, f"{tag}r{i}")
            check(r.returncode == 0, f"restore {f}: {r.stderr}")
            out = json.loads(r.stdout)
            check(out["created"], "restore created the volume")
        return files

    def restored_equal(tag, server):
        for i in range(6):
            got = sha_export(server, f"{tag}r{i}")
            check(got == expect[f"s{i}"], f"{tag}r{i} differs from vm1@s{i}")

    files = []
    runner.case("backup chain through a server",
                lambda: (files.extend(chain("server")), restored_equal("server", srv)))

    def refusals():
        if not files:
            raise Skip("the chain failed")
        # A file holding another base.
        f = os.path.join(bdir, "wrong.img")
        copy_backup(files[1], f)
        r = run_json(pool, "backup", "vm1@s3", f, "--since", "vm1@s2")
        check(r.returncode == 1 and "not vm1@s2" in r.stderr, f"wrong base accepted: {r.stderr}")
        check(sha_file(f) == expect["s1"], "refused backup changed the file")
        # An interrupted update (the sidecar still says "writing") is refused by
        # restore, and the same backup run again completes it.
        f = os.path.join(bdir, "interrupted.img")
        copy_backup(files[1], f)
        side = json.load(open(f + ".snapvol.json"))
        side.update(state="writing", snapshot="s2", since="s1")
        json.dump(side, open(f + ".snapvol.json", "w"))
        r = run_json(pool, "restore", f, "never")
        check(r.returncode == 1 and "incomplete" in r.stderr, f"restore of a partial: {r.stderr}")
        r = run_json(pool, "backup", "vm1@s3", f, "--since", "vm1@s1")
        check(r.returncode == 1, "a partial update onto another target accepted")
        r = run_json(pool, "backup", "vm1@s2", f, "--since", "vm1@s1")
        check(r.returncode == 0, f"rerun of an interrupted backup: {r.stderr}")
        check(sha_file(f) == expect["s2"], "the rerun backup differs from vm1@s2")
        check(json.load(open(f + ".snapvol.json"))["state"] == "complete", "not complete")
        # Restore over an existing volume needs --force.
        r = run_json(pool, "restore", files[0], "serverr5")
        check(r.returncode == 1 and "exists" in r.stderr, f"restore over a volume: {r.stderr}")
        r = run_json(pool, "restore", files[2], "serverr5", "--force")
        check(r.returncode == 0, f"restore --force: {r.stderr}")
        check(sha_export(srv, "serverr5") == expect["s2"], "restore --force contents")

    runner.case("backup refusals", refusals)
    srv.stop()

    def direct():
        chain("direct")
        srv2 = pool.serve()
        try:
            restored_equal("direct", srv2)
        finally:
            srv2.stop()

    runner.case("backup chain directly on the pool", direct)

    # ---- send | receive between two pools ----
    pool_b = Pool()
    POOL_B.append(pool_b)
    srv = pool.serve()
    srv_b = pool_b.serve()
    sdir = os.path.join(pool.tmp, "streams")
    os.makedirs(sdir)

    def send(snap, since=None, name=None):
        path = os.path.join(sdir, name or f"{snap}.stream")
        args = ["send", f"vm1@{snap}"] + (["--since", f"vm1@{since}"] if since else [])
        with open(path, "wb") as out:
            r = run_json(pool, *args, stdout=out)
        check(r.returncode == 0, f"send {snap}: {r.stderr}")
        return path

    def receive(p, path, vol):
        with open(path, "rb") as inp:
            return run_json(p, "receive", vol, stdin=inp)

    def state(p, server, vol):
        try:
            names = list(p.snapshots(vol))
        except AssertionError:
            return None
        return (names, sha_export(server, vol))

    def replicate():
        streams = [send("s0")] + [send(f"s{i}", f"s{i - 1}") for i in range(1, 6)]
        for i, path in enumerate(streams):
            r = receive(pool_b, path, "rep")
            check(r.returncode == 0, f"receive s{i}: {r.stderr}")
            out = json.loads(r.stdout)
            check(out["snapshot"] == f"s{i}", f"received {out}")
        check(list(pool_b.snapshots("rep")) == [f"s{i}" for i in range(6)],
              f"snapshots {list(pool_b.snapshots('rep'))}")
        for i in range(6):
            check(sha_export(srv_b, f"rep@s{i}") == expect[f"s{i}"],
                  f"received rep@s{i} differs from vm1@s{i}")
        return streams

    streams = []
    ok = runner.case("send | receive between two servers",
                     lambda: streams.extend(replicate()))

    def mangled(src, name, fn):
        data = bytearray(open(src, "rb").read())
        data = fn(data)
        path = os.path.join(sdir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def refused(path, vol, words):
        before = state(pool_b, srv_b, vol)
        r = receive(pool_b, path, vol)
        check(r.returncode == 1, f"{os.path.basename(path)} accepted ({r.returncode}): {r.stderr}")
        check(any(w in r.stderr for w in words), f"unclear message: {r.stderr.strip()}")
        after = state(pool_b, srv_b, vol)
        check(before == after, f"target changed: {before} -> {after}")

    def refusals_stream():
        if not ok:
            raise Skip("replication failed")
        # Target: "t" holds s0..s2 received from the streams.
        for path in streams[:3]:
            r = receive(pool_b, path, "t")
            check(r.returncode == 0, f"receive: {r.stderr}")
        inc = streams[3]  # s2 -> s3
        size = os.path.getsize(inc)
        # A flipped byte in the middle (inside a record).
        refused(mangled(inc, "corrupt", lambda d: d[:size // 2] + bytes([d[size // 2] ^ 0x40])
                        + d[size // 2 + 1:]), "t", ["CRC", "corrupt"])
        refused(mangled(inc, "truncated", lambda d: d[:size * 2 // 3]), "t", ["truncated"])
        refused(mangled(inc, "badmagic", lambda d: b"X" + d[1:]), "t", ["magic"])
        refused(mangled(inc, "version", lambda d: d[:8] + b"\x09" + d[9:]), "t", ["version"])
        # A corrupt full stream creates nothing.
        full = streams[0]
        refused(mangled(full, "fullcorrupt", lambda d: d[:len(d) // 2] + bytes([d[len(d) // 2] ^ 1])
                        + d[len(d) // 2 + 1:]), "fresh", ["CRC", "corrupt"])
        check(state(pool_b, srv_b, "fresh") is None, "a refused full stream left a volume")
        refused(full, "t", ["exists"])
        # Wrong base: "w" has a snapshot s2 of the same size, other contents.
        pool_b.cli("create", "w", "--size", str(SIZE))
        hw = nbd.NBD()
        hw.connect_uri(srv_b.uri("w"))
        hw.pwrite(b"\x5a" * SIZE, 0)
        hw.flush()
        hw.shutdown()
        pool_b.cli("snapshot", "create", "w@s2")
        refused(inc, "w", ["base differs"])
        # Wrong size: "z" has s2 but is twice as large.
        pool_b.cli("create", "z", "--size", str(2 * SIZE))
        pool_b.cli("snapshot", "create", "z@s2")
        refused(inc, "z", ["byte volume"])
        # A base that is missing (stream s3->s4 onto t, which has s2 only).
        refused(streams[4], "t", ["no snapshot s3"])
        # A target changed since its base.
        hz = nbd.NBD()
        hz.connect_uri(srv_b.uri("t"))
        hz.pwrite(b"\x01" * 4096, 0)
        hz.flush()
        hz.shutdown()
        refused(inc, "t", ["changed since"])
        pool_b.cli("snapshot", "rollback", "t@s2")
        r = receive(pool_b, inc, "t")
        check(r.returncode == 0, f"the good stream after the refusals: {r.stderr}")
        check(sha_export(srv_b, "t@s3") == expect["s3"], "t@s3 differs")

    runner.case("bad streams are refused, target unchanged", refusals_stream)

    def interrupted(full):
        if not ok:
            raise Skip("replication failed")
        vol = "kf" if full else "ki"
        if not full:
            for path in streams[:2]:
                check(receive(pool_b, path, vol).returncode == 0, "setup receive")
        path = streams[0] if full else streams[2]
        data = open(path, "rb").read()
        p = subprocess.Popen([SNAPVOL, "--pool", pool_b.path, "receive", vol],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        p.stdin.write(data[:len(data) // 2])
        p.stdin.flush()
        # Wait until it has applied something: the marker snapshot exists.
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if "snapvol.receiving" in pool_b.snapshots(vol):
                    break
            except AssertionError:
                pass
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGKILL)
        p.wait()
        try:
            p.stdin.close()
        except OSError:
            pass
        check("snapvol.receiving" in pool_b.snapshots(vol), "no marker after the kill")
        r = receive(pool_b, path, vol)
        check(r.returncode == 0, f"rerun after kill -9: {r.stderr}")
        want = [f"s{i}" for i in range(1 if full else 3)]
        got = list(pool_b.snapshots(vol))
        check(got == want, f"snapshots after the rerun: {got}")
        last = want[-1]
        check(sha_export(srv_b, f"{vol}@{last}") == expect[last], "rerun result differs")

    runner.case("interrupted full receive is run again", interrupted, True)
    runner.case("interrupted incremental receive is run again", interrupted, False)
    srv_b.stop()
    srv.stop()

    def direct_replication():
        # No servers: both pools opened by the CLI itself.
        for i in range(3):
            path = send(f"s{i}", f"s{i - 1}" if i else None, name=f"direct-{i}")
            r = receive(pool_b, path, "dr")
            check(r.returncode == 0, f"direct receive s{i}: {r.stderr}")
            check(json.loads(r.stdout)["via"] == "direct", "not direct")
            check(sha_file(pool_b.origin("dr")) == expect[f"s{i}"],
                  f"directly received s{i} differs")
        got = list(pool_b.snapshots("dr"))
        check(got == ["s0", "s1", "s2"], f"snapshots {got}")

    runner.case("send | receive directly on the pools", direct_replication)

    def after_kill9():
        # Writes, then the server is killed (-9) with writes in flight; after
        # a restart an incremental backup still holds every change.
        pool.create("kv", SIZE)
        s1 = pool.serve()
        hk = nbd.NBD()
        hk.connect_uri(s1.uri("kv"))
        hk.pwrite(rnd.randbytes(SIZE), 0)
        hk.flush()
        pool.cli("snapshot", "create", "kv@a")
        f = os.path.join(bdir, "kv.img")
        check(run_json(pool, "backup", "kv@a", f).returncode == 0, "full backup")
        for _ in range(200):
            off = rnd.randrange(0, SIZE // 4096) * 4096
            hk.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(rnd.randbytes(4096))), off)
        while hk.aio_in_flight() > 100:
            hk.poll(-1)
        os.kill(s1.pid(), signal.SIGKILL)
        s1.proc.wait()
        s2 = pool.serve()
        try:
            pool.cli("snapshot", "create", "kv@b")
            r = run_json(pool, "backup", "kv@b", f, "--since", "kv@a")
            check(r.returncode == 0, f"incremental after kill -9: {r.stderr}")
            check(sha_file(f) == sha_export(s2, "kv@b"),
                  "the incremental backup after kill -9 misses changes")
        finally:
            s2.stop()

    runner.case("incremental backup after the server was killed", after_kill9)


POOL_B = []


if __name__ == "__main__":
    run_main(main, POOL_B)
