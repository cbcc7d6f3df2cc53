#!/usr/bin/python3
"""test-snapshot-release.py: a backup reader frees a snapshot behind itself.

A TRIM on a snapshot's (otherwise read-only) export releases whole chunks of
that snapshot: they read as zeros from then on, the space their pre-images
hold is given back, and writes to those chunks of the live volume copy
nothing more while no other snapshot needs them.  A range an older snapshot
still needs keeps its copies.  WRITE and WRITE_ZEROES stay refused (EPERM).
libnbd refuses trim on a read-only export in its own strict checks, so the
client clears STRICT_COMMANDS, as a backup tool using this would.
"""

import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20


def info(pool, vol):
    return json.loads(pool.cli("--json", "info", vol).stdout)


def connect(srv, export):
    h = nbd.NBD()
    h.connect_uri(srv.uri(export))
    return h


def main(pool, runner):
    pool.create("vm1", 64 * MiB)
    srv = pool.serve()
    h = connect(srv, "vm1")
    h.pwrite(b"A" * (16 * MiB), 0)
    h.flush()
    pool.cli("snapshot", "create", "vm1@old")
    pool.cli("snapshot", "create", "vm1@new")
    h.pwrite(b"B" * (8 * MiB), 0)  # copies 8 MiB, kept for both snapshots
    h.flush()

    def release_newest():
        before = pool.snapshots("vm1")["new"]["space"]
        check(before >= 8 * MiB, f"vm1@new holds {before} bytes, expected >= 8 MiB")
        s = connect(srv, "vm1@new")
        check(s.is_read_only() and s.can_trim(), "snapshot export: read-only and trimmable")
        s.set_strict_mode(s.get_strict_mode() & ~nbd.STRICT_COMMANDS)
        s.trim(4 * MiB, 0)
        check(s.pread(4096, 0) == bytes(4096), "released range reads as zeros")
        check(s.pread(4096, 4 * MiB) == b"A" * 4096, "unreleased range unchanged")
        for fn in (lambda: s.pwrite(b"x" * 512, 0), lambda: s.zero(4096, 0)):
            try:
                fn()
                raise AssertionError("a write to a snapshot export succeeded")
            except nbd.Error as e:
                check(e.errnum == errno.EPERM, f"write refused with EPERM, got {e}")
        s.shutdown()
        # vm1@old still needs those chunks' old contents: nothing was freed
        o = connect(srv, "vm1@old")
        check(o.pread(4096, 0) == b"A" * 4096, "the older snapshot keeps its contents")
        o.shutdown()
        after = pool.snapshots("vm1")["new"]["space"] + pool.snapshots("vm1")["old"]["space"]
        check(after >= 8 * MiB, "space still held for the older snapshot")
    runner.case("release on the newest snapshot keeps what an older one needs",
                release_newest)

    def release_both():
        for name in ("old", "new"):
            s = connect(srv, "vm1@" + name)
            s.set_strict_mode(s.get_strict_mode() & ~nbd.STRICT_COMMANDS)
            s.trim(16 * MiB, 0)
            s.shutdown()
        sp = pool.snapshots("vm1")
        check(sp["old"]["space"] + sp["new"]["space"] == 0,
              f"all pre-images freed, still held: {sp}")
        copied = info(pool, "vm1")["cow"]["copied_bytes"]
        h.pwrite(b"C" * (16 * MiB), 0)
        h.flush()
        check(info(pool, "vm1")["cow"]["copied_bytes"] == copied,
              "writes to released chunks copy nothing")
        check(h.pread(4096, 12 * MiB) == b"C" * 4096, "the live volume has the new data")
    runner.case("released from every snapshot: space given back, no more copies",
                release_both)

    def survives_restart():
        srv.stop()
        srv2 = pool.serve()
        s = connect(srv2, "vm1@old")
        check(s.pread(4096, 8 * MiB) == bytes(4096), "release persisted across a restart")
        s.shutdown()
        h2 = connect(srv2, "vm1")
        copied = info(pool, "vm1")["cow"]["copied_bytes"]
        h2.pwrite(b"D" * MiB, 0)
        h2.flush()
        check(info(pool, "vm1")["cow"]["copied_bytes"] == copied,
              "still no copies after a restart")
        h2.shutdown()
        srv2.stop()
    h.shutdown()
    runner.case("releases survive a restart", survives_restart)


if __name__ == "__main__":
    import errno  # noqa: E402
    run_main(main)
