#!/usr/bin/python3
"""backup.py: the writer of bench/backup.sh.

  backup.py write URI SIZE PERCENT SEED
writes PERCENT % of the volume's bytes as data in scattered runs of 16 KiB
to 512 KiB (4 KiB aligned, random offsets, random non-zero bytes so nothing
reads as a hole), 32 writes in flight; prints the bytes written and the
number of runs.  Run with Debian's /usr/bin/python3 (it has the nbd module).
"""
import os
import random
import sys

import nbd

KiB = 1024


def write(uri, size, percent, seed):
    rnd = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    pool = bytearray(os.urandom(1 << 20)) * 2  # slices of it are the data
    target = int(size * percent / 100)
    done = runs = 0
    inflight = []
    while done < target:
        ln = min(rnd.randrange(4, 129) * 4 * KiB, target - done + 4 * KiB)
        ln -= ln % (4 * KiB)
        off = rnd.randrange(0, (size - ln) // (4 * KiB)) * 4 * KiB
        start = rnd.randrange(0, 1 << 20)
        buf = nbd.Buffer.from_bytearray(pool[start:start + ln])
        inflight.append(h.aio_pwrite(buf, off))
        done += ln
        runs += 1
        while len(inflight) >= 32:
            h.poll(-1)
            inflight = [c for c in inflight if not h.aio_command_completed(c)]
    while inflight:
        h.poll(-1)
        inflight = [c for c in inflight if not h.aio_command_completed(c)]
    h.flush()
    h.shutdown()
    print(done, runs)


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "write":
        sys.exit(__doc__)
    write(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
