#!/usr/bin/python3
"""record-nbd-session.py: capture real NBD client sessions as fuzz seeds.

A unix-socket proxy: clients connect to LISTEN, bytes are passed both ways
to the server at SERVER, and what each client sent (everything after the
server's greeting, which is exactly what fuzz-nbd-session feeds the server)
is written to OUTDIR/PREFIX-N when the session ends.  The seeds in
corpus/nbd-session/ came from nbdinfo, nbdsh, nbdcopy and qemu-img sessions
against "snapvol serve" on a pool holding a 1 MiB volume "v" (the fuzzer's
volume), through this proxy:

    snapvol --pool /tmp/p create v --size 1M && snapvol --pool /tmp/p serve &
    ./record-nbd-session.py /tmp/rec.sock /tmp/p/nbd.sock /tmp/seeds s &
    nbdinfo --map 'nbd+unix:///v?socket=/tmp/rec.sock'
"""
import itertools
import os
import socket
import sys
import threading

listen, server, outdir, prefix = sys.argv[1:5]
try:
    os.unlink(listen)
except FileNotFoundError:
    pass
ls = socket.socket(socket.AF_UNIX)
ls.bind(listen)
ls.listen(16)
counter = itertools.count()


def pump(src, dst, record):
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            if record is not None:
                record.append(d)
            dst.sendall(d)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def handle(client):
    srv = socket.socket(socket.AF_UNIX)
    srv.connect(server)
    record = []
    up = threading.Thread(target=pump, args=(client, srv, record))
    down = threading.Thread(target=pump, args=(srv, client, None))
    up.start()
    down.start()
    up.join()
    down.join()
    with open(os.path.join(outdir, "%s-%d" % (prefix, next(counter))), "wb") as f:
        f.write(b"".join(record))
    client.close()
    srv.close()


while True:
    c, _ = ls.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
