#!/usr/bin/python3
"""cowbench.py: the snapshot-side drivers of bench/cow.sh.

cow.sh runs fio and the servers; what needs precise timing or many quick
steps lives here:

  cowbench.py call CTL EXECUTE [ARGS-JSON]
        one control command to snapvol's control socket; prints its return
  cowbench.py space CTL VOL
        MiB the snapshots hold: the sum of 'snapshot-list' spaces, and
        'info' snapshot_space (they should agree)
  cowbench.py clear CTL VOL
        delete every snapshot of VOL, oldest first; prints how many and how
        long it took
  cowbench.py snaps CTL VOL N PREFIX URI FILL SEED
        take N snapshots of VOL (VOL@PREFIX1..N); between two snapshots write
        FILL random 4 KiB blocks through URI (libnbd, 16 in flight) so that
        every epoch holds pre-images, as on a volume whose snapshots were
        taken over time; nothing is written after the last one
  cowbench.py cycles KIND OUT.json N HOLD GAP [options]
        N snapshot take/drop cycles while something else (cow.sh: fio with a
        per-I/O latency log) writes to the volume: GAP seconds of nothing,
        take, HOLD seconds with the snapshot live, drop (then, with
        --settle DIR, an fsync of DIR so the filesystem frees the dropped
        space before the next gap, as a step of its own).  Every step is
        recorded with its start and end in Unix ms (time.time(), the clock
        fio's log_unix_epoch uses), so cow-report.py can find the writes
        that were in flight during each step.  KIND:
          snapvol  --ctl SOCK --vol VOL [--cli "SNAPVOL --pool P" --cli-n M]:
                   snapshot-create / snapshot-delete on the control socket
                   (M more cycles through the CLI, timed as a subprocess)
          qemu-reopen | qemu-txn  --qmp SOCK --dir DIR: qemu's
                   copy-before-write insertion (qmp.py), fresh qcow2
                   fleecing image per cycle

The control protocol is JSON lines (docs/control-protocol.md): a greeting,
then one request and one reply per line.  /usr/bin/python3 because the libnbd
module is Debian's (only 'snaps' with FILL > 0 needs it).
"""
import argparse
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qmp  # noqa: E402  (our own, next to this file)


class ControlError(RuntimeError):
    pass


class Control:
    """A connection to snapvol's control socket."""

    def __init__(self, path, timeout=300.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")
        self.next_id = 1
        g = self._recv()
        if "snapvol" not in g:
            raise ControlError("not a snapvol greeting: %r" % g)

    def _recv(self):
        line = self.rfile.readline()
        if not line:
            raise ControlError("snapvol closed the control connection")
        return json.loads(line)

    def call(self, execute, **args):
        msg = {"execute": execute, "id": self.next_id}
        self.next_id += 1
        if args:
            msg["arguments"] = args
        self.sock.sendall((json.dumps(msg) + "\n").encode())
        r = self._recv()
        if "error" in r:
            e = r["error"]
            raise ControlError("%s: %s (%s)" % (execute, e.get("desc"), e.get("class")))
        return r["return"]

    def snapshots(self, vol):
        return [s["name"] for s in self.call("snapshot-list", name=vol)["snapshots"]]


def now_ms():
    return time.time() * 1e3


def clear(ctl, vol):
    t = time.monotonic()
    names = ctl.snapshots(vol)
    for s in names:
        ctl.call("snapshot-delete", snapshot="%s@%s" % (vol, s))
    return len(names), (time.monotonic() - t) * 1e3


def fill(uri, n, seed, size, depth=16, bs=4096):
    """n random bs-aligned writes over the volume, depth in flight."""
    import nbd  # Debian's python3-libnbd

    h = nbd.NBD()
    h.connect_uri(uri)
    rng = random.Random(seed)
    buf = nbd.Buffer.from_bytearray(bytearray(rng.randbytes(bs)))
    errors = []

    def done(err):
        if err.value:
            errors.append(err.value)
        return 1  # retire the command

    blocks = size // bs
    sent = 0
    while sent < n or h.aio_in_flight() > 0:
        while sent < n and h.aio_in_flight() < depth:
            h.aio_pwrite(buf, rng.randrange(blocks) * bs, completion=done)
            sent += 1
        h.poll(-1)
    h.shutdown()
    if errors:
        raise ControlError("%d fill writes failed (errno %d)" % (len(errors), errors[0]))


def snaps(ctl, vol, n, prefix, uri, nfill, seed):
    size = ctl.call("info", name=vol)["size"]
    create_ms, fill_s = [], 0.0
    for i in range(1, n + 1):
        t = time.monotonic()
        ctl.call("snapshot-create", snapshots=["%s@%s%d" % (vol, prefix, i)])
        create_ms.append((time.monotonic() - t) * 1e3)
        if i < n and nfill > 0:
            t = time.monotonic()
            fill(uri, nfill, seed * 100003 + i, size)
            fill_s += time.monotonic() - t
    return {"n": n, "create_ms": create_ms, "fill_s": fill_s}


# ---- take/drop cycles under load ----

def sleep_until(deadline):
    d = deadline - time.monotonic()
    if d > 0:
        time.sleep(d)


def record(events, kind, via, t, **extra):
    e = {"event": kind, "via": via, "t0": t.t0, "t1": t.t1, "ms": t.ms}
    e.update(extra)
    events.append(e)


class Span:
    """A stretch of time the driver only waited (a control window's home)."""

    def __init__(self, kind):
        self.kind = kind
        self.t0 = now_ms()
        self.m0 = time.monotonic()

    def end(self, events):
        ms = (time.monotonic() - self.m0) * 1e3
        events.append({"event": self.kind, "via": "", "t0": self.t0, "t1": self.t0 + ms,
                       "ms": ms})


def settle(a, events, via):
    """fsync a directory on the pool's filesystem after a drop: ext4 then
    commits its journal, and with 'discard' frees the dropped snapshot's
    blocks now, as its own step, instead of during the next take."""
    if not a.settle:
        return
    t = qmp.Timer()
    fd = os.open(a.settle, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    record(events, "settle", via, t.stop())


def cycles_snapvol(a, events):
    ctl = Control(a.ctl)
    if ctl.snapshots(a.vol):
        raise ControlError("volume %s has snapshots; clear them first" % a.vol)
    cli = shlex.split(a.cli) if a.cli else None
    total = a.n + (a.cli_n if cli else 0)
    for i in range(total):
        via = "socket" if i < a.n else "cli"
        name = "%s@cyc%d" % (a.vol, i)
        g = Span("gap")
        sleep_until(g.m0 + a.gap)
        g.end(events)
        t = qmp.Timer()
        if via == "socket":
            r = ctl.call("snapshot-create", snapshots=[name])
            t.stop()
            record(events, "create", via, t, server_ms=r.get("duration_us", 0) / 1e3)
        else:
            subprocess.run(cli + ["snapshot", "create", name], check=True,
                           stdout=subprocess.DEVNULL)
            t.stop()
            record(events, "create", via, t)
        h = Span("hold")
        sleep_until(h.m0 + a.hold)
        h.end(events)
        t = qmp.Timer()
        if via == "socket":
            ctl.call("snapshot-delete", snapshot=name)
        else:
            subprocess.run(cli + ["snapshot", "delete", name], check=True,
                           stdout=subprocess.DEVNULL)
        record(events, "delete", via, t.stop())
        print("cycle %d (%s): create %.2f ms, delete %.2f ms" %
              (i, via, events[-3]["ms"], events[-1]["ms"]), file=sys.stderr)
        settle(a, events, via)
    g = Span("gap")
    sleep_until(g.m0 + a.gap)
    g.end(events)


def cycles_qemu(a, events):
    q = qmp.QMP(a.qmp)
    size = qmp.node_size(q)
    fleece = os.path.join(a.dir, "cyc-fleece.qcow2")
    method = a.kind.split("-", 1)[1]
    for i in range(a.n):
        g = Span("gap")
        qmp.make_qcow2(fleece, size)  # in the gap, outside the timed steps
        sleep_until(g.m0 + a.gap)
        g.end(events)
        if method == "reopen":
            t, sw = qmp.insert_reopen(q, fleece)
        else:
            t, sw = qmp.insert_txn(q, fleece)
        record(events, "create", method, t, switch_ms=sw)
        h = Span("hold")
        sleep_until(h.m0 + a.hold)
        h.end(events)
        if method == "reopen":
            t, sw = qmp.remove_reopen(q)
        else:
            t, sw = qmp.remove_txn(q)
        record(events, "delete", method, t, switch_ms=sw)
        copied = os.stat(fleece).st_blocks * 512
        t = qmp.Timer()
        os.unlink(fleece)  # the user's job in qemu, not the daemon's: its own step
        record(events, "unlink", method, t.stop(), bytes=copied)
        print("cycle %d (%s): insert %.2f ms (switch %.2f), remove %.2f ms, fleece %d MiB" %
              (i, method, events[-4]["ms"], events[-4]["switch_ms"], events[-2]["ms"],
               copied >> 20), file=sys.stderr)
        settle(a, events, method)
    g = Span("gap")
    sleep_until(g.m0 + a.gap)
    g.end(events)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    op = sys.argv[1]
    args = sys.argv[2:]
    if op == "call" and len(args) in (2, 3):
        r = Control(args[0]).call(args[1], **(json.loads(args[2]) if len(args) == 3 else {}))
        print(json.dumps(r))
    elif op == "space" and len(args) == 2:
        ctl = Control(args[0])
        snaps_ = ctl.call("snapshot-list", name=args[1])["snapshots"]
        info = ctl.call("info", name=args[1])
        print("%.1f %.1f" % (sum(x["space"] for x in snaps_) / 1048576.0,
                             info["snapshot_space"] / 1048576.0))
    elif op == "clear" and len(args) == 2:
        n, ms = clear(Control(args[0]), args[1])
        print("%d %.1f" % (n, ms))
    elif op == "snaps" and len(args) == 7:
        ctl, vol, n, prefix, uri, nfill, seed = args
        print(json.dumps(snaps(Control(ctl), vol, int(n), prefix, uri, int(nfill), int(seed))))
    elif op == "cycles":
        p = argparse.ArgumentParser(prog="cowbench.py cycles")
        p.add_argument("kind", choices=["snapvol", "qemu-reopen", "qemu-txn"])
        p.add_argument("out")
        p.add_argument("n", type=int)
        p.add_argument("hold", type=float)
        p.add_argument("gap", type=float)
        p.add_argument("--ctl")
        p.add_argument("--vol", default="vol")
        p.add_argument("--cli")
        p.add_argument("--cli-n", type=int, default=0)
        p.add_argument("--qmp")
        p.add_argument("--dir")
        p.add_argument("--settle", help="directory to fsync after each drop")
        a = p.parse_args(args)
        events = []
        try:
            if a.kind == "snapvol":
                cycles_snapvol(a, events)
            else:
                cycles_qemu(a, events)
        finally:
            # whatever happened, keep what was measured (cow.sh reports a
            # failure from the exit status)
            with open(a.out, "w") as f:
                json.dump({"kind": a.kind, "events": events}, f)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
