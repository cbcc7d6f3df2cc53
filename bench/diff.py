#!/usr/bin/python3
"""diff.py: the parts of bench/diff.sh that talk NBD (libnbd).

  diff.py mark URI SIZE CHUNK PERCENT SEED
      Touch PERCENT of the volume's chunks in scattered runs (1 to 31
      chunks, 16 on average, at random places), by NBD TRIM of a sparse
      volume: each run becomes changed without taking space.  Prints the
      runs' count and chunks as JSON.
  diff.py map URI CONTEXT
      A plain libnbd block-status loop over the whole export on CONTEXT,
      as a backup client does; prints the time, the number of requests and
      the dirty extents and bytes as JSON.
"""

import json
import random
import sys
import time

import nbd


def mark(uri, size, chunk, percent, seed):
    rnd = random.Random(seed)
    nchunks = size // chunk
    target = int(nchunks * percent / 100)
    h = nbd.NBD()
    h.connect_uri(uri)
    done = runs = 0
    inflight = 0
    t0 = time.time()
    while done < target:
        n = min(rnd.randint(1, 31), target - done)
        c = rnd.randrange(0, nchunks - n)
        while inflight >= 64:
            h.poll(-1)
            inflight = h.aio_in_flight()
        h.aio_trim(n * chunk, c * chunk)
        inflight += 1
        done += n
        runs += 1
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
    h.shutdown()
    print(json.dumps({"runs": runs, "chunks": done, "seconds": round(time.time() - t0, 2)}))


def blockmap(uri, context):
    h = nbd.NBD()
    h.add_meta_context(context)
    h.connect_uri(uri)
    size = h.get_size()
    pos = requests = extents = dirty = 0
    t0 = time.time()
    while pos < size:
        end = [pos]

        def cb(ctx, offset, entries, err):
            nonlocal extents, dirty
            if ctx != context:
                return 0
            p = offset
            for i in range(0, len(entries), 2):
                if entries[i + 1] & 1:
                    extents += 1
                    dirty += entries[i]
                p += entries[i]
            end[0] = p
            return 0
        h.block_status(min(size - pos, (1 << 32) - 4096), pos, cb)
        requests += 1
        if end[0] <= pos:
            raise SystemExit("no progress")
        pos = end[0]
    dt = time.time() - t0
    h.shutdown()
    print(json.dumps({"seconds": round(dt, 3), "requests": requests, "dirty_extents": extents,
                      "dirty_bytes": dirty}))


if __name__ == "__main__":
    if sys.argv[1] == "mark":
        mark(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
             int(sys.argv[6]))
    elif sys.argv[1] == "map":
        blockmap(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
