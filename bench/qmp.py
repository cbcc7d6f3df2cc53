#!/usr/bin/env python3
"""qmp.py: a small QMP client and qemu's live-snapshot ("image fleecing")
steps, for bench/cow.sh (stdlib only).

qemu-storage-daemon is the peer snapvol's snapshots are compared with. cow.sh
starts it with two nodes and one NBD export:

    export 'vol' -> node 'top' (raw) -> node 'orig-file' (file: the volume)

A point-in-time snapshot in qemu is a copy-before-write (CBW) filter put
between 'top' and 'orig-file': every first write to a 64 KiB cluster first
copies the old cluster into a fleecing image.  Two ways to put it there, both
timed here because they behave very differently under load:

  reopen  blockdev-add the fleecing image (file + qcow2 nodes) and a
          copy-before-write node over 'orig-file', then blockdev-reopen 'top'
          with file=cbw (the switch: it drains and flushes the node), then a
          snapshot-access node over the filter, exported read-only as 'snap'.
          Removal undoes it in reverse (reopen back to 'orig-file').
  txn     the classic fleecing recipe: a qcow2 target backed by 'top', and a
          QMP 'transaction' with one blockdev-backup sync=none job, which
          inserts the same filter inside a block job; removal cancels the job.

Each step returns its wall time seen from the client (time.monotonic), and
its start/end in Unix milliseconds (time.time), so they can be matched with
fio's latency logs (log_unix_epoch).

Command line (for trying things by hand):
  qmp.py SOCK exec JSON...          raw commands, one JSON object each
  qmp.py SOCK insert FLEECE.qcow2   reopen-method insert; prints timings
  qmp.py SOCK remove                remove it; prints timings
"""
import json
import os
import socket
import subprocess
import sys
import time


class QMPError(RuntimeError):
    pass


class QMP:
    """One QMP connection: greeting, qmp_capabilities, then commands."""

    def __init__(self, path, timeout=60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")
        self.events = []
        greeting = self._recv()
        if "QMP" not in greeting:
            raise QMPError("not a QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def close(self):
        self.rfile.close()
        self.sock.close()

    def _recv(self):
        line = self.rfile.readline()
        if not line:
            raise QMPError("QMP connection closed by qemu")
        return json.loads(line)

    def cmd(self, name, args=None):
        """Run one command; return its 'return' value or raise QMPError.
        Events that arrive meanwhile are queued for wait_event()."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall((json.dumps(msg) + "\n").encode())
        while True:
            r = self._recv()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise QMPError("%s: %s" % (name, r["error"].get("desc", r["error"])))
            else:
                return r.get("return")

    def wait_event(self, name, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise QMPError("no %s event within %.0f s" % (name, timeout))
            r = self._recv()
            if "event" in r:
                self.events.append(r)


def make_qcow2(path, size, backing=None):
    """A fresh, empty qcow2 fleecing image (outside any timed window)."""
    if os.path.exists(path):
        os.unlink(path)
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        cmd += ["-F", "raw", "-b", backing]
    subprocess.run(cmd + [path, str(size)], check=True)


class Timer:
    """Start/end of a step, both as Unix ms (to match fio's logs) and as a
    monotonic duration in ms."""

    def __init__(self):
        self.t0 = time.time() * 1e3
        self.m0 = time.monotonic()

    def stop(self):
        self.ms = (time.monotonic() - self.m0) * 1e3
        self.t1 = self.t0 + self.ms
        return self


def insert_reopen(q, fleece, export=True):
    """Take a snapshot: CBW filter between 'top' and 'orig-file'.
    Returns (Timer of the whole insertion, ms of the blockdev-reopen)."""
    t = Timer()
    q.cmd("blockdev-add", {"driver": "file", "node-name": "fl-file", "filename": fleece})
    q.cmd("blockdev-add", {"driver": "qcow2", "node-name": "fl", "file": "fl-file"})
    q.cmd("blockdev-add", {"driver": "copy-before-write", "node-name": "cbw",
                           "file": "orig-file", "target": "fl"})
    s = Timer()
    q.cmd("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "top",
                                           "file": "cbw"}]})
    s.stop()
    if export:
        q.cmd("blockdev-add", {"driver": "snapshot-access", "node-name": "snap",
                               "file": "cbw"})
        q.cmd("block-export-add", {"type": "nbd", "id": "snapexp", "node-name": "snap",
                                   "name": "snap", "writable": False})
    return t.stop(), s.ms


def remove_reopen(q, export=True):
    """Drop the snapshot taken by insert_reopen. Returns (Timer, reopen ms)."""
    t = Timer()
    if export:
        q.cmd("block-export-del", {"id": "snapexp"})
        q.wait_event("BLOCK_EXPORT_DELETED")
        q.cmd("blockdev-del", {"node-name": "snap"})
    s = Timer()
    q.cmd("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "top",
                                           "file": "orig-file"}]})
    s.stop()
    for n in ("cbw", "fl", "fl-file"):
        q.cmd("blockdev-del", {"node-name": n})
    return t.stop(), s.ms


def insert_txn(q, fleece):
    """Classic fleecing: qcow2 target backed by 'top', transaction with
    blockdev-backup sync=none. Returns (Timer, ms of the transaction)."""
    t = Timer()
    q.cmd("blockdev-add", {"driver": "file", "node-name": "fl-file", "filename": fleece})
    q.cmd("blockdev-add", {"driver": "qcow2", "node-name": "fl", "file": "fl-file",
                           "backing": "top"})
    s = Timer()
    q.cmd("transaction", {"actions": [{"type": "blockdev-backup", "data": {
        "job-id": "fleece0", "device": "top", "target": "fl", "sync": "none"}}]})
    s.stop()
    return t.stop(), s.ms


def remove_txn(q):
    """Cancel the fleecing job and drop the target. Returns (Timer, ms of the
    cancel until the job is gone)."""
    t = Timer()
    s = Timer()
    q.cmd("block-job-cancel", {"device": "fleece0"})
    deadline = time.monotonic() + 120
    while True:
        jobs = [j for j in q.cmd("query-jobs") if j["id"] == "fleece0"]
        if not jobs:
            break
        if jobs[0]["status"] == "concluded":
            q.cmd("job-dismiss", {"id": "fleece0"})
        elif time.monotonic() > deadline:
            raise QMPError("fleece0 job not gone 120 s after cancel: %s" % jobs[0])
        time.sleep(0.002)
    s.stop()
    q.cmd("blockdev-del", {"node-name": "fl"})
    q.cmd("blockdev-del", {"node-name": "fl-file"})
    return t.stop(), s.ms


def node_size(q, node="top"):
    for n in q.cmd("query-named-block-nodes", {"flat": True}):
        if n["node-name"] == node:
            return n["image"]["virtual-size"]
    raise QMPError("no node %s" % node)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    q = QMP(sys.argv[1])
    op, args = sys.argv[2], sys.argv[3:]
    if op == "exec":
        for a in args:
            m = json.loads(a)
            print(json.dumps(q.cmd(m["execute"], m.get("arguments"))))
    elif op == "insert" and len(args) == 1:
        make_qcow2(args[0], node_size(q))
        t, sw = insert_reopen(q, args[0])
        print("insert %.2f ms (reopen %.2f ms)" % (t.ms, sw))
    elif op == "remove" and not args:
        t, sw = remove_reopen(q)
        print("remove %.2f ms (reopen %.2f ms)" % (t.ms, sw))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
