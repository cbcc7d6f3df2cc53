#!/usr/bin/python3
"""test-slow-reader.py: a client that stops reading its replies holds up
only its own connection.

One raw connection sends 256 READs of 1 MiB and never reads a reply, so
the server's replies to it back up in the socket.  Meanwhile a second
client (libnbd) must read the whole volume, with the right bytes, within
60 s; then the stalled connection is dropped and the server must still
serve.  On a RADOS pool (SNAPVOL_TEST_POOL=rados:NAME, run by
test-rados-suite.sh slowreader) READs complete in librados's own thread,
which every connection shares: this proves a completion never sends to a
client itself (nbd/transmission.c, struct inflight).

Then a deep queue: one client keeps 2048 READs of 4 KiB and 32 of 1 MiB in
flight at once (random offsets, the same handle) and checks every one's
bytes.  On RADOS the replier sends a burst of ended READs gathered into one
sendmsg (REPLIER_GATHER): each reply's header must still go with its own
data.
"""

import hashlib
import os
import random
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svtest  # noqa: E402
from svtest import CMD_READ, RawNBD, check  # noqa: E402

svtest.require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB
POOL_SPEC = os.environ.get("SNAPVOL_TEST_POOL") or None


def read_all(uri, out):
    h = nbd.NBD()
    h.connect_uri(uri)
    out["data"] = b"".join(h.pread(4 * MiB, off) for off in range(0, SIZE, 4 * MiB))
    h.shutdown()


def deep_queue(uri, data):
    """Many READs in flight on one connection; every reply's bytes checked."""
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(int(os.environ.get("SNAPVOL_SEED", "7")))
    reqs = [(rnd.randrange(SIZE // 4096) * 4096, 4096) for _ in range(2048)]
    reqs += [(rnd.randrange(SIZE // MiB) * MiB, MiB) for _ in range(32)]
    rnd.shuffle(reqs)
    bufs = []
    for off, n in reqs:
        b = nbd.Buffer(n)
        h.aio_pread(b, off)
        bufs.append((off, n, b))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for off, n, b in bufs:
        check(bytes(b.to_bytearray()) == data[off:off + n],
              f"a READ of {n} bytes at {off} returned wrong bytes with "
              f"{len(reqs)} in flight")
    h.shutdown()
    return len(reqs)


def main():
    pool = svtest.Pool(POOL_SPEC)
    try:
        pool.create("vm1", SIZE)
        srv = pool.serve()
        pool.wait_export(srv, "vm1")
        data = os.urandom(SIZE)
        h = nbd.NBD()
        h.connect_uri(srv.uri("vm1"))
        for off in range(0, SIZE, 4 * MiB):
            h.pwrite(data[off:off + 4 * MiB], off)
        h.flush()
        h.shutdown()

        stalled = RawNBD(srv.nbd_sock)
        stalled.connect_export("vm1")
        stalled.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reqs = b"".join(stalled.prepare(CMD_READ, (i % 64) * MiB, MiB)[1] for i in range(256))
        sender, _ = stalled.send_in_thread(reqs)
        time.sleep(2)  # the server's replies to it fill the socket

        out = {}
        t0 = time.time()
        reader = threading.Thread(target=read_all, args=(srv.uri("vm1"), out), daemon=True)
        reader.start()
        reader.join(60)
        check(not reader.is_alive(),
              "a second client's reads did not finish in 60 s while another client "
              "stopped reading its replies\n" + srv.log_tail())
        check(out.get("data") == data, "the second client read wrong bytes")
        print(f"second client read {SIZE >> 20} MiB in {time.time() - t0:.2f} s "
              "beside a stalled connection", flush=True)

        stalled.close()
        sender.join(10)
        check(srv.alive(), "the server died\n" + srv.log_tail())
        t0 = time.time()
        n = deep_queue(srv.uri("vm1"), data)
        print(f"{n} READs in flight on one connection, all right, in {time.time() - t0:.2f} s",
              flush=True)
        check(svtest.sha_export(srv, "vm1") == hashlib.sha256(data).hexdigest(),
              "the volume changed")
        print(f"{svtest.TEST_NAME}: ok on {POOL_SPEC or 'a local pool'}")
    finally:
        pool.cleanup()


if __name__ == "__main__":
    main()
