#!/usr/bin/python3
"""test-multiconn-flush.py: NBD multi-conn, as nbdfuse and qemu use it.

Four libnbd connections to one volume, each with 32 pipelined writes in
flight, write interleaved 64 KiB blocks (connection i writes every block
j with j % 4 == i, so neighbours come from different connections).  Then a
FLUSH on ONE connection, and:
  - every connection reads back every block exactly as written (replies
    matched to their requests under any interleaving),
  - the volume's raw file holds all of it (the flush reached the file,
    not a per-connection cache),
  - a FUA write on one connection is visible at once on the others,
  - a later FLUSH on a connection that wrote nothing still succeeds.
The server must advertise CAN_MULTI_CONN and FLUSH/FUA.
"""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

MiB = 1 << 20
SIZE = 32 * MiB
BLK = 64 * 1024
NCONN = 4
INFLIGHT = 32


def main(pool, runner):
    pool.create("vm1", SIZE)
    srv = pool.serve()
    hs = []
    for _ in range(NCONN):
        h = nbd.NBD()
        h.connect_uri(srv.uri("vm1"))
        hs.append(h)

    def flags():
        for i, h in enumerate(hs):
            check(h.can_multi_conn(), f"connection {i}: CAN_MULTI_CONN not advertised")
            check(h.can_flush(), f"connection {i}: FLUSH not advertised")
            check(h.can_fua(), f"connection {i}: FUA not advertised")
    runner.case("multi-conn, flush and FUA advertised", flags)

    expect = bytearray(SIZE)
    nblocks = SIZE // BLK

    def parallel_writes():
        # Two passes, so that the second overwrites the first everywhere:
        # a reordered or lost write shows up as first-pass data.
        for p in range(2):
            bufs = {}
            for j in range(nblocks):
                data = os.urandom(BLK)
                expect[j * BLK:(j + 1) * BLK] = data
                bufs[j] = nbd.Buffer.from_bytearray(bytearray(data))
            queues = [[j for j in range(nblocks) if j % NCONN == i] for i in range(NCONN)]
            errors = []

            def done(err, j=None):
                if err.value:
                    errors.append((j, err.value))
                return 1   # retire the command
            # Round-robin over connections, keeping INFLIGHT per connection.
            while any(queues) or any(h.aio_in_flight() for h in hs):
                for i, h in enumerate(hs):
                    while queues[i] and h.aio_in_flight() < INFLIGHT:
                        j = queues[i].pop(0)
                        h.aio_pwrite(bufs[j], j * BLK,
                                     completion=lambda err, j=j: done(err, j))
                    if h.aio_in_flight():
                        h.poll(0)
                for h in hs:
                    if h.aio_in_flight():
                        h.poll(1)
            check(not errors, f"writes failed (block, errno): {errors[:5]}")
        hs[0].flush()
    runner.case("4 connections x 32 writes in flight, then FLUSH on one", parallel_writes)

    def read_back_everywhere():
        for i, h in enumerate(hs):
            for off in range(0, SIZE, 4 * MiB):
                got = h.pread(4 * MiB, off)
                if got != expect[off:off + 4 * MiB]:
                    bad = next(k for k in range(0, 4 * MiB, BLK)
                               if got[k:k + BLK] != expect[off + k:off + k + BLK])
                    raise AssertionError(f"connection {i} reads wrong data at block "
                                         f"{(off + bad) // BLK} (written by connection "
                                         f"{((off + bad) // BLK) % NCONN})")
    runner.case("every connection reads every block back", read_back_everywhere)

    def raw_file_has_it():
        with open(pool.origin("vm1"), "rb") as f:
            check(f.read() == expect, "origin.raw differs from what was written and flushed")
    runner.case("the flushed data is in origin.raw", raw_file_has_it)

    def fua_visible():
        for i in range(NCONN):
            data = os.urandom(4096)
            off = 12345 * 512 + i * 8192
            hs[i].pwrite(data, off, nbd.CMD_FLAG_FUA)
            expect[off:off + 4096] = data
            for k, h in enumerate(hs):
                check(h.pread(4096, off) == data,
                      f"FUA write on connection {i} not visible on connection {k}")
        hs[NCONN - 1].flush()   # a connection that wrote nothing since
        hs[2].trim(4 * MiB, 8 * MiB)
        expect[8 * MiB:12 * MiB] = bytes(4 * MiB)
        hs[1].flush()
        for k, h in enumerate(hs):
            check(h.pread(4 * MiB, 8 * MiB) == bytes(4 * MiB),
                  f"trim on connection 2 not visible on connection {k} after flush")
    runner.case("FUA write visible on all connections at once; trim after flush", fua_visible)

    def sub_chunk_writes():
        # 512-byte writes from all 4 connections into the same 4 KiB chunks
        # (connection i owns sectors j with j % 4 == i), many in flight: a
        # server that read-modify-writes whole chunks would lose some.
        base = 16 * MiB
        nsec = 8192                      # 4 MiB of sectors, 1024 chunks
        errors = []
        data = {}
        for j in range(nsec):
            data[j] = os.urandom(512)
            expect[base + j * 512:base + (j + 1) * 512] = data[j]
        queues = [[j for j in range(nsec) if j % NCONN == i] for i in range(NCONN)]

        def done(err):
            if err.value:
                errors.append(err.value)
            return 1
        while any(queues) or any(h.aio_in_flight() for h in hs):
            for i, h in enumerate(hs):
                while queues[i] and h.aio_in_flight() < INFLIGHT:
                    j = queues[i].pop(0)
                    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data[j])),
                                 base + j * 512, completion=done)
                if h.aio_in_flight():
                    h.poll(0)
        check(not errors, f"sub-chunk writes failed: {errors[:5]}")
        got = hs[0].pread(nsec * 512, base)
        bad = [j for j in range(nsec) if got[j * 512:(j + 1) * 512] != data[j]]
        check(not bad, f"{len(bad)} of {nsec} sectors lost or torn, e.g. sector {bad[:3]} "
                       f"(written by connection {bad[0] % NCONN if bad else ''})")
    runner.case("512-byte writes from 4 connections into the same chunks", sub_chunk_writes)

    for h in hs:
        h.shutdown()
    runner.case("server stops cleanly", srv.stop)


if __name__ == "__main__":
    run_main(main)
