#!/usr/bin/python3
"""test-diff-interop.py: change tracking as backup tools read it.

A volume gets random writes, trims and zero-writes through NBD between
snapshots s1..s4.  Then, for several snapshot pairs (and to the live
volume):
  - `snapvol diff --json`, `nbdinfo --map=qemu:dirty-bitmap:FROM` on the
    export of TO, and `qemu-img map` with `x-dirty-bitmap` (which prints
    dirty ranges inverted, as "data": false) report the same extents, and
    they are exactly the chunks the test wrote between the two;
  - LIST_META_CONTEXT lists the bitmaps an export has ("qemu:" and
    "qemu:dirty-bitmap:" are wildcards; a snapshot's export lists only older
    snapshots); SET_META_CONTEXT with base:allocation and a bitmap answers
    BLOCK_STATUS with one chunk per context;
  - a plain libnbd incremental-backup client (incremental() below) copies
    only the dirty ranges of each snapshot into a qcow2 overlay of the
    previous backup (qemu-img create -b ... -F ..., written through
    qemu-nbd), and `qemu-img compare` of each overlay against its snapshot
    passes; the bytes it read are exactly the diff's.
"""

import json
import os
import random
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB
CHUNK = 4096
SEED = int(os.environ.get("SNAPVOL_SEED") or random.SystemRandom().randrange(1, 2**31))
ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))


def run(*args, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=ENV, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def merge(runs):
    out = []
    for off, ln in sorted(runs):
        if ln == 0:
            continue
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += ln
        else:
            out.append([off, ln])
    return out


def snapvol_diff(pool, frm, to):
    d = json.loads(pool.cli("diff", f"vm1@{frm}", to, "--json").stdout)
    check(d["changed_bytes"] == sum(e[1] for e in d["extents"]), "changed_bytes is the sum")
    check(d["extent_count"] == len(d["extents"]), "extent_count")
    return merge(d["extents"])


def nbdinfo_map(srv, frm, export):
    out = run("nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{frm}", srv.uri(export))
    ext = json.loads(out)
    pos = 0
    for e in ext:
        check(e["offset"] == pos, f"nbdinfo map not contiguous at {pos}")
        pos += e["length"]
    check(pos == SIZE, f"nbdinfo map covers {pos} of {SIZE}")
    return merge([e["offset"], e["length"]] for e in ext if e["type"] & 1)


def qemu_map(srv, frm, export):
    opts = (f"driver=nbd,export={export},server.type=unix,server.path={srv.nbd_sock},"
            f"x-dirty-bitmap=qemu:dirty-bitmap:{frm}")
    out = run("qemu-img", "map", "--output=json", "--image-opts", opts)
    ext = json.loads(out)
    return merge([e["start"], e["length"]] for e in ext if not e["data"])


def chunks_of(runs):
    s = set()
    for off, ln in runs:
        s.update(range(off // CHUNK, (off + ln + CHUNK - 1) // CHUNK))
    return s


def workload(h, rnd, written, n):
    """n random writes, trims and zero-writes; records the chunks touched."""
    for _ in range(n):
        off = rnd.randrange(0, SIZE // CHUNK) * CHUNK + (rnd.randrange(CHUNK) if rnd.random() < .3 else 0)
        ln = min(rnd.choice([1, 512, CHUNK, 3 * CHUNK, 64 * 1024, 300 * 1024]), SIZE - off)
        k = rnd.random()
        if k < .7:
            h.pwrite(rnd.randbytes(ln), off)
        elif k < .85:
            h.trim(ln, off)
        else:
            h.zero(ln, off)
        written.update(range(off // CHUNK, (off + ln - 1) // CHUNK + 1))
    h.flush()


def incremental(uri_src, frm, overlay_sock, size):
    """The plain incremental-backup client: block status on the bitmap
    context of the source, copy the dirty ranges into the overlay (served
    by qemu-nbd).  Returns the bytes read from the source."""
    src = nbd.NBD()
    src.add_meta_context(f"qemu:dirty-bitmap:{frm}")
    src.connect_uri(uri_src)
    check(src.can_meta_context(f"qemu:dirty-bitmap:{frm}"), "server has the bitmap context")
    dst = nbd.NBD()
    dst.connect_uri(f"nbd+unix:///?socket={overlay_sock}")
    dirty = []
    pos = 0
    while pos < size:
        ends = []

        def cb(metacontext, offset, entries, err):
            if metacontext == f"qemu:dirty-bitmap:{frm}":
                p = offset
                for i in range(0, len(entries), 2):
                    if entries[i + 1] & 1:
                        dirty.append([p, entries[i]])
                    p += entries[i]
                ends.append(p)
            return 0
        src.block_status(min(size - pos, 1 << 30), pos, cb)
        check(ends and ends[-1] > pos, "block status made progress")
        pos = ends[-1]
    read = 0
    for off, ln in dirty:
        done = 0
        while done < ln:
            piece = min(ln - done, 4 * MiB)
            dst.pwrite(src.pread(piece, off + done), off + done)
            done += piece
            read += piece
    dst.flush()
    dst.shutdown()
    src.shutdown()
    return read, merge(dirty)


def main(pool, runner):
    print(f"seed {SEED} (replay with SNAPVOL_SEED={SEED})", flush=True)
    rnd = random.Random(SEED)
    pool.create("vm1", SIZE)
    srv = pool.serve()
    h = nbd.NBD()
    h.connect_uri(srv.uri("vm1"))
    h.pwrite(rnd.randbytes(8 * MiB), 0)
    h.flush()
    epochs = []  # chunks written after each snapshot, until the next one
    for i in range(1, 5):
        pool.cli("snapshot", "create", f"vm1@s{i}")
        epochs.append(set())
        workload(h, rnd, epochs[-1], 40)

    def expected(frm, to):
        a = int(frm[1:]) - 1
        b = int(to[1:]) - 1 if to != "vm1" else len(epochs)
        s = set()
        for e in epochs[a:b]:
            s |= e
        return s

    pairs = [("s1", "s2"), ("s1", "s4"), ("s2", "s3"), ("s2", "vm1"), ("s3", "vm1"),
             ("s4", "vm1")]

    def agree():
        for frm, to in pairs:
            export = to if to == "vm1" else f"vm1@{to}"
            d = snapvol_diff(pool, frm, export)
            m = nbdinfo_map(srv, frm, export)
            q = qemu_map(srv, frm, export)
            check(d == m, f"{frm}->{to}: snapvol diff {d[:4]}... != nbdinfo {m[:4]}...")
            check(d == q, f"{frm}->{to}: snapvol diff {d[:4]}... != qemu-img map {q[:4]}...")
            want = expected(frm, to)
            got = chunks_of(d)
            check(got == want, f"{frm}->{to}: missed {sorted(want - got)[:5]}, "
                  f"extra {sorted(got - want)[:5]}")
            check(len(d) > 1, f"{frm}->{to}: a trivial diff ({d}) tests nothing")
    runner.case("snapvol diff, nbdinfo --map and qemu-img map agree, exactly", agree)

    def paging():
        """The control command pages: max_extents per reply, "next" to go
        on; the pages put together are the whole diff; a range clips."""
        whole = snapvol_diff(pool, "s1", "vm1@s4")
        got, off, pages = [], 0, 0
        while off is not None:
            r = json.loads(pool.cli("call", "diff", json.dumps(
                {"from": "vm1@s1", "to": "vm1@s4", "offset": off, "max_extents": 7})).stdout)
            check(len(r["extents"]) <= 7, "max_extents honoured")
            check(r["changed_bytes"] == sum(e[1] for e in r["extents"]), "page bytes")
            got += r["extents"]
            off = r["next"]
            pages += 1
        check(pages > 3 and merge(got) == whole, f"{pages} pages put together != the diff")
        a, b = whole[1][0] + 1, whole[-2][0] + whole[-2][1] - 1
        r = json.loads(pool.cli("call", "diff", json.dumps(
            {"from": "vm1@s1", "to": "vm1@s4", "offset": a, "length": b - a})).stdout)
        want = [[max(o, a), min(o + n, b) - max(o, a)] for o, n in whole if o + n > a and o < b]
        check(r["extents"] == want and r["next"] is None, "a byte range clips the runs")
        for bad in ({"from": "vm1@s1", "max_extents": 0}, {"from": "vm1@s1", "to": "vm2"},
                    {"from": "vm1@s4", "to": "vm1@s1"}, {"from": "vm1"},
                    {"from": "vm1@s1", "offset": SIZE + 1}, {"from": "vm1@nope"}):
            r = pool.cli("call", "diff", json.dumps(bad), check=False)
            check(r.returncode != 0 and "error" in r.stderr, f"{bad} refused: {r.stderr}")
    runner.case("the diff control command pages and checks its arguments", paging)

    def listing():
        def names(export, queries):
            g = nbd.NBD()
            g.set_opt_mode(True)
            g.connect_uri(srv.uri(export))
            for q in queries:
                g.add_meta_context(q)
            got = []
            g.opt_list_meta_context(lambda name: got.append(name) or 0)
            g.opt_abort()
            return sorted(got)
        bm = [f"qemu:dirty-bitmap:s{i}" for i in range(1, 5)]
        check(names("vm1", ["qemu:"]) == bm, f"'qemu:' on vm1: {names('vm1', ['qemu:'])}")
        check(names("vm1", ["qemu:dirty-bitmap:"]) == bm, "'qemu:dirty-bitmap:' on vm1")
        check(names("vm1@s3", ["qemu:"]) == bm[:2], "vm1@s3 has bitmaps of s1, s2 only")
        check(names("vm1", []) == sorted(["base:allocation"] + bm), "no query: everything")
        check(names("vm1", ["qemu:dirty-bitmap:s2", "qemu:dirty-bitmap:nope"]) == [bm[1]],
              "exact names; unknown ignored")
        check(names("vm1@s2", ["qemu:dirty-bitmap:s3", "qemu:dirty-bitmap:s2"]) == [],
              "no bitmap of a newer or the same snapshot")
        check(names("vm1", ["qemu:dirty-bitmap:../x", "qemu:dirty-bitmap:"]) == bm,
              "a bad name selects nothing")
    runner.case("LIST_META_CONTEXT", listing)

    def two_contexts():
        g = nbd.NBD()
        g.add_meta_context("base:allocation")
        g.add_meta_context("qemu:dirty-bitmap:s2")
        g.connect_uri(srv.uri("vm1@s4"))
        check(g.can_meta_context("base:allocation") and
              g.can_meta_context("qemu:dirty-bitmap:s2"), "both contexts negotiated")
        seen = {}

        def cb(ctx, offset, entries, err):
            seen[ctx] = (offset, list(entries))
            return 0
        g.block_status(SIZE, 0, cb)
        check(set(seen) == {"base:allocation", "qemu:dirty-bitmap:s2"}, f"chunks: {set(seen)}")
        off, ent = seen["qemu:dirty-bitmap:s2"]
        runs, pos = [], off
        for i in range(0, len(ent), 2):
            if ent[i + 1] & 1:
                runs.append([pos, ent[i]])
            pos += ent[i]
        d = snapvol_diff(pool, "s2", "vm1@s4")
        check(merge(runs) == [e for e in d if e[0] < pos] or merge(runs) == d,
              "bitmap chunk matches the diff")
        # REQ_ONE: one extent per context
        seen.clear()
        g.block_status(SIZE, 0, cb, nbd.CMD_FLAG_REQ_ONE)
        check(all(len(v[1]) == 2 for v in seen.values()) and len(seen) == 2, f"REQ_ONE {seen}")
        g.shutdown()
    runner.case("base:allocation and a bitmap in one BLOCK_STATUS", two_contexts)

    def hostile():
        """Bad bitmap names select nothing; a bitmap whose snapshot is
        deleted after negotiation gets an error reply, not a crash."""
        with RawNBD(srv.nbd_sock) as c:
            c.handshake()
            c.negotiate_structured()
            r = c.set_meta(b"vm1", [b"qemu:dirty-bitmap:" + b"x" * 5000])
            check([t for t, _ in r] in ([REP_ERR_INVALID], [REP_ERR_TOO_BIG], [REP_ACK]),
                  f"a 5000-byte query: {[rep_name(t) for t, _ in r]}")
            bad = [b"qemu:dirty-bitmap:" + b"x" * 200, b"qemu:dirty-bitmap:s1\0",
                   b"qemu:dirty-bitmap:vm1@s1", b"qemu:dirty-bitmap:.", b"qemu:dirty-bitmap",
                   b"qemu:dirty-bitmap:s1/../s2", b"qemu:\xff", b"qemu:dirty-bitmap:"]
            r = c.set_meta(b"vm1", bad)
            check([t for t, _ in r] == [REP_ACK], f"bad names: {[rep_name(t) for t, _ in r]}")
            r = c.set_meta(b"vm1@s2", [b"qemu:dirty-bitmap:s2", b"qemu:dirty-bitmap:s4"])
            check([t for t, _ in r] == [REP_ACK], "no bitmap of itself or a newer snapshot")
        pool.cli("snapshot", "create", "vm1@tmp")
        with RawNBD(srv.nbd_sock) as c:
            c.connect_export("vm1", meta=[b"qemu:dirty-bitmap:tmp", b"base:allocation"])
            check(set(c.meta_ids) == {"qemu:dirty-bitmap:tmp", "base:allocation"},
                  f"ids {c.meta_ids}")
            err, _ = c.cmd(CMD_BLOCK_STATUS, 0, 1 << 20)
            check(err == 0, f"BLOCK_STATUS -> {errno_name(err)}")
            pool.cli("snapshot", "delete", "vm1@tmp")
            err, _ = c.cmd(CMD_BLOCK_STATUS, 0, 1 << 20)
            check(err != 0, "BLOCK_STATUS on a deleted snapshot's bitmap must fail")
            check(c.read(0, 4096) is not None, "the connection goes on")
    runner.case("hostile names; a bitmap whose snapshot went away", hostile)

    def backup_chain():
        tmp = pool.tmp
        full = os.path.join(tmp, "full-s1.img")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri("vm1@s1"), full)
        run("qemu-img", "compare", "-f", "raw", full, srv.uri("vm1@s1"))
        prev, prev_fmt = full, "raw"
        for i in range(2, 5):
            ov = os.path.join(tmp, f"inc-s{i}.qcow2")
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", prev, "-F", prev_fmt, ov)
            sock = os.path.join(tmp, f"qnbd-{i}.sock")
            q = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "--socket", sock,
                                  "--cache=writeback", ov], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
            try:
                t0 = time.time()
                while not os.path.exists(sock) and time.time() - t0 < 10:
                    time.sleep(0.05)
                read, dirty = incremental(srv.uri(f"vm1@s{i}"), f"s{i-1}", sock, SIZE)
            finally:
                q.terminate()
                q.wait(10)
            d = snapvol_diff(pool, f"s{i-1}", f"vm1@s{i}")
            check(read == sum(e[1] for e in d), f"read {read} bytes, diff has "
                  f"{sum(e[1] for e in d)}: only the dirty ranges are read")
            check(dirty == d, "the client's dirty ranges are the diff")
            run("qemu-img", "compare", "-f", "qcow2", ov, srv.uri(f"vm1@s{i}"))
            prev, prev_fmt = ov, "qcow2"
    runner.case("incremental backups into qcow2 overlays pass qemu-img compare", backup_chain)
    h.shutdown()
    srv.stop()


if __name__ == "__main__":
    run_main(main)
