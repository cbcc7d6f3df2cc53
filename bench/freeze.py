#!/usr/bin/env python3
"""freeze.py: the timed part of bench/freeze.sh (stdlib only).

  freeze.py run OUT.tsv N MODE...   take N snapshots per MODE, interleaved,
                                    while fio writes inside the filesystem;
                                    one line per event to OUT.tsv
  freeze.py report EVENTS.tsv LAT.log... > STALLS.tsv
                                    join the events with fio's per-I/O
                                    latency logs: the longest write stall of
                                    each event, and of control windows
  freeze.py md STALLS.tsv           the Markdown summary (p50/p99, ratios)
  freeze.py dat STALLS.tsv DIR      histogram data for freeze.gp
  freeze.py phases EVENTS.jsonl [FLUSHES.txt [SERVE.log]]
                                    where snapvol's window goes, per phase
                                    (p50/p99), with the NBD FLUSHes the
                                    server served in each (perf uprobes) and
                                    the server's own steps (its trace log)

Modes (the environment gives the paths: SNAPVOL, POOL, SV_MNT, QSD_QMP,
QSD_MNT, TMP):
  snapvol   snapvol snapshot create vol@N --fsfreeze SV_MNT: the window is
            the watchdog's FIFREEZE-to-FITHAW, from the command's JSON (its
            syncfs before FIFREEZE is outside the window, and reported apart)
  byhand    FIFREEZE SV_MNT; snapvol snapshot create vol@N; FITHAW, the
            ioctls fsfreeze -f/-u make, issued from here so that the window
            is measured exactly as snapvol's: from calling FIFREEZE to FITHAW
            returning (no process start-up of fsfreeze(8) inside it)
  qsd       FIFREEZE QSD_MNT; a QMP transaction (blockdev-backup sync=none
            into a qcow2 fleecing image: qemu's copy-before-write snapshot);
            FITHAW.  Window as for byhand.
The peers freeze the way a user does by hand: no sync before the freeze.
Every event is followed by clean-up outside the window (snapshot delete,
block-job-cancel) and a pause, so events do not overlap.

A write stall of an event: the longest latency of a write that was in
flight at some instant of the window (issued before its end, completed after
its start: completion - latency <= end and completion >= start).  The
control figure is the same measure over a window of the same length that
ends 300 ms before the event, when nothing is frozen (events are 2.5 s
apart after the previous clean-up).
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qmp  # noqa: E402

GAP_S = 2.5        # pause before each event (after the previous clean-up)
CONTROL_GAP_MS = 300  # the control window ends this long before the event


def now_ms():
    return time.time() * 1e3


# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def fs_ioctl(fd, req):
    import fcntl
    fcntl.ioctl(fd, req, 0)


def run_snapvol(i, env):
    t0 = now_ms()
    out = subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "--json", "snapshot", "create",
                          "vol@f%d" % i, "--fsfreeze", env["SV_MNT"]],
                         check=True, capture_output=True, text=True).stdout
    t1 = now_ms()
    j = json.loads(out)
    with open(os.path.join(env["TMP"], "snapvol-events.jsonl"), "a") as f:
        f.write(json.dumps(j) + "\n")
    fr = j["freeze"]
    if j["consistency"] != "frozen":
        print("warning: vol@f%d is %s" % (i, j["consistency"]), file=sys.stderr)
    # The window as the watchdog measured it, placed inside the call.
    return t0, t1, fr["window_us"] / 1e3, fr["fifreeze_us"] / 1e3


def frozen_around(mnt, fn):
    """FIFREEZE mnt, fn(), FITHAW: (start, end, FIFREEZE ms), wall ms."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = now_ms()
        fs_ioctl(fd, FIFREEZE)
        f = now_ms() - t0
        try:
            fn()
        finally:
            fs_ioctl(fd, FITHAW)
        t1 = now_ms()
    finally:
        os.close(fd)
    return t0, t1, f


def run_byhand(i, env):
    cmd = [env["SNAPVOL"], "--pool", env["POOL"], "snapshot", "create", "vol@h%d" % i]
    t0, t1, f = frozen_around(env["SV_MNT"],
                              lambda: subprocess.run(cmd, check=True, capture_output=True))
    return t0, t1, t1 - t0, f


def run_qsd(i, env, q):
    fleece = os.path.join(env["TMP"], "fleece.qcow2")
    qmp.make_qcow2(fleece, qmp.node_size(q))
    t0, t1, f = frozen_around(env["QSD_MNT"], lambda: qmp.insert_txn(q, fleece))
    return t0, t1, t1 - t0, f


def cleanup(mode, i, env, q):
    if mode == "snapvol":
        subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "snapshot", "delete",
                        "vol@f%d" % i], check=True, capture_output=True)
    elif mode == "byhand":
        subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "snapshot", "delete",
                        "vol@h%d" % i], check=True, capture_output=True)
    else:
        qmp.remove_txn(q)


def cmd_run(out, n, modes):
    env = os.environ
    q = qmp.QMP(env["QSD_QMP"]) if "qsd" in modes else None
    with open(out, "w") as f:
        f.write("mode\ti\tt0_ms\tt1_ms\twindow_ms\tcall_ms\tfifreeze_ms\n")
        for i in range(n):
            for mode in modes:
                time.sleep(GAP_S)  # room for a quiet control window before it
                if mode == "snapvol":
                    t0, t1, w, fz = run_snapvol(i, env)
                elif mode == "byhand":
                    t0, t1, w, fz = run_byhand(i, env)
                else:
                    t0, t1, w, fz = run_qsd(i, env, q)
                f.write("%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\n" %
                        (mode, i, t0, t1, w, t1 - t0, fz))
                f.flush()
                print("%s %d: window %.1f ms (FIFREEZE %.1f ms, call %.1f ms)" %
                      (mode, i, w, fz, t1 - t0), file=sys.stderr)
                cleanup(mode, i, env, q)


def load_lat(paths):
    """(completion ms, latency ms) of every write, sorted by completion."""
    ios = []
    for p in paths:
        with open(p) as f:
            for line in f:
                parts = line.split(",")
                if len(parts) < 3 or parts[2].strip() != "1":
                    continue
                ios.append((float(parts[0]), int(parts[1]) / 1e6))
    ios.sort()
    return ios


def longest(ios, start, end):
    """The longest write in flight at some instant of [start, end]."""
    import bisect
    k = bisect.bisect_left(ios, (start, -1.0))
    m = 0.0
    # completions from start on; stop once even a 10 s write could not have
    # started before end
    while k < len(ios) and ios[k][0] <= end + 10000:
        c, lat = ios[k]
        if c - lat <= end and lat > m:
            m = lat
        k += 1
    return m


def cmd_report(events, lats):
    ios = load_lat(lats)
    print("mode\ti\twindow_ms\tcall_ms\tstall_ms\tcontrol_ms\tfifreeze_ms")
    with open(events) as f:
        next(f)
        for line in f:
            mode, i, t0, t1, w, call, fz = line.rstrip("\n").split("\t")
            t0, t1, w, call = float(t0), float(t1), float(w), float(call)
            stall = longest(ios, t0, t1)
            ctl = longest(ios, t0 - CONTROL_GAP_MS - (t1 - t0), t0 - CONTROL_GAP_MS)
            print("%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%s" % (mode, i, w, call, stall, ctl, fz))


def pct(v, p):
    v = sorted(v)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def load_stalls(path):
    rows = {}
    with open(path) as f:
        next(f)
        for line in f:
            mode, i, w, call, stall, ctl, fz = line.rstrip("\n").split("\t")
            rows.setdefault(mode, []).append((float(w), float(call), float(stall), float(ctl),
                                              float(fz)))
    return rows


NAMES = {
    "snapvol": "snapvol `snapshot create --fsfreeze`",
    "byhand": "by hand: FIFREEZE; `snapvol snapshot create`; FITHAW",
    "qsd": "qemu-storage-daemon CBW (QMP transaction), by hand: FIFREEZE; QMP; FITHAW",
}


def cmd_md(path):
    rows = load_stalls(path)
    print("| method | n | window p50 ms | window p99 ms | FIFREEZE p50 ms | stall p50 ms | "
          "stall p99 ms | control stall p50 ms | control stall p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in ("snapvol", "byhand", "qsd"):
        if mode not in rows:
            continue
        r = rows[mode]
        print("| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            NAMES[mode], len(r), pct([x[0] for x in r], 50), pct([x[0] for x in r], 99),
            pct([x[4] for x in r], 50), pct([x[2] for x in r], 50), pct([x[2] for x in r], 99),
            pct([x[3] for x in r], 50), pct([x[3] for x in r], 99)))
    print()
    if "snapvol" in rows:
        sv = rows["snapvol"]
        for peer in ("byhand", "qsd"):
            if peer not in rows:
                continue
            pr = rows[peer]
            print("- snapvol / %s: window p50 %.2f, p99 %.2f; stall p50 %.2f, p99 %.2f" % (
                peer, pct([x[0] for x in sv], 50) / pct([x[0] for x in pr], 50),
                pct([x[0] for x in sv], 99) / pct([x[0] for x in pr], 99),
                pct([x[2] for x in sv], 50) / max(pct([x[2] for x in pr], 50), 1e-9),
                pct([x[2] for x in sv], 99) / max(pct([x[2] for x in pr], 99), 1e-9)))
        p99 = pct([x[0] for x in sv], 99)
        print("- goal: snapvol's window p99 under 50 ms: %s (%.1f ms)" % (
            "**met**" if p99 < 50 else "**not met**", p99))
        if "qsd" in rows:
            # Both percentiles: a peer's p99 alone can be one outlier.
            r50 = pct([x[0] for x in sv], 50) / pct([x[0] for x in rows["qsd"]], 50)
            r99 = p99 / pct([x[0] for x in rows["qsd"]], 99)
            print("- goal: snapvol's window at most a quarter of the by-hand qemu peer's, at "
                  "p50 and p99: %s (%.2f at p50, %.2f at p99)" % (
                      "**met**" if max(r50, r99) <= 0.25 else "**not met**", r50, r99))


def cmd_dat(path, outdir):
    """freeze-hist.dat: one row per 5 ms bin (log-spaced above 100 ms is not
    needed here), columns: bin start, count per mode of windows, of stalls."""
    rows = load_stalls(path)
    modes = [m for m in ("snapvol", "byhand", "qsd") if m in rows]
    allv = [x[k] for m in modes for x in rows[m] for k in (0, 2)]
    top = max(allv) if allv else 10
    width = max(5.0, round(top / 40.0 / 5.0) * 5.0)
    nb = int(top // width) + 1
    for k, what in ((0, "window"), (2, "stall")):
        with open(os.path.join(outdir, "freeze-%s.dat" % what), "w") as f:
            f.write("bin_ms " + " ".join(modes) + "\n")
            for b in range(nb):
                lo = b * width
                cnt = [sum(1 for x in rows[m] if lo <= x[k] < lo + width) for m in modes]
                f.write("%g %s\n" % (lo, " ".join(str(c) for c in cnt)))
    print(width)


# snapvol's phases, in the order they happen (freeze.phases_us of its JSON).
PHASES = [
    ("presync", "syncfs + ext4 journal checkpoint before FIFREEZE (outside the window)", False),
    ("checkpoint", "  of which the journal checkpoint", False),
    ("fifreeze", "FIFREEZE", True),
    ("to_owner", "watchdog -> agent: frozen", True),
    ("fsmap", "GETFSMAP (free-space map)", True),
    ("create", "snapshot-create to the event SNAPSHOT_TAKEN (the control round trip)", True),
    ("query", "watchdog query: frozen throughout?", True),
    ("to_thaw", "agent -> watchdog: thaw", True),
    ("fithaw", "FITHAW", True),
    ("durable_after_thaw", "snapshot durable (create's reply) after FITHAW (outside)", False),
]


def load_flushes(path):
    """[(start ns, end ns, write-behind bytes at arrival)] of the server's
    NBD FLUSHes (sv_view_flush), from perf script -F tid,time,event,trace
    with -k CLOCK_MONOTONIC."""
    out, open_ = [], {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 3:
                continue
            try:
                tid, t = int(p[0]), float(p[1].rstrip(":")) * 1e9
            except ValueError:
                continue
            ev = p[2].rstrip(":").split(":")[-1]
            if ev == "flush":
                wb = 0
                for kv in p[3:]:
                    if kv.startswith("wbbytes="):
                        wb = int(kv.split("=")[1])
                open_[tid] = (t, wb)
            elif ev.startswith("flush_ret") and tid in open_:
                t0, wb = open_.pop(tid)
                out.append((t0, t, wb))
    out.sort()
    return out


def load_server_trace(path):
    """{snapshot: {step: us}} from the server's SNAPVOL_TRACE_FREEZE lines."""
    import re
    steps = {}
    rx = re.compile(r"trace: snapshot (\S+): (.*)$")
    with open(path) as f:
        for line in f:
            m = rx.search(line)
            if not m:
                continue
            d = {}
            for part in m.group(2).split(", "):
                k, _, v = part.rpartition(" ")
                if k.endswith(" us") or v == "us":
                    k, v = part[:-3].rsplit(" ", 1)
                d[k] = int(v)
            steps[m.group(1)] = d
    return steps


def row(name, vals, unit_div=1e3):
    v = [x / unit_div for x in vals]
    return "| %s | %.1f | %.1f | %.1f |" % (name, pct(v, 50), pct(v, 99), max(v) if v else 0)


def cmd_phases(events, flushes=None, serve_log=None):
    ev = []
    with open(events) as f:
        for line in f:
            if line.strip():
                ev.append(json.loads(line))
    ev = [e for e in ev if "phases_us" in e.get("freeze", {})]
    print("Where snapvol's window goes (%d events; ms; the window is FIFREEZE to FITHAW):" %
          len(ev))
    print()
    print("| phase | p50 | p99 | max |")
    print("|---|---|---|---|")
    for key, name, inside in PHASES:
        vals = [e["freeze"]["phases_us"].get(key, 0) for e in ev]
        print(row(name if inside else "_%s_" % name, vals))
    print(row("**window**", [e["freeze"]["window_us"] for e in ev]))
    if flushes and os.path.exists(flushes):
        fl = load_flushes(flushes)
        per = {"pre": [], "fz": [], "rest": []}
        each, wbs = {"pre": [], "fz": [], "rest": []}, []
        for e in ev:
            fr = e["freeze"]
            st = fr["start_ns"]
            ph = fr["phases_us"]
            spans = {"pre": (st - ph["presync"] * 1000, st),
                     "fz": (st, st + ph["fifreeze"] * 1000),
                     "rest": (st + ph["fifreeze"] * 1000, st + fr["window_us"] * 1000)}
            for k, (a, b) in spans.items():
                mine = [x for x in fl if a <= x[0] < b]
                per[k].append((len(mine), sum(x[1] - x[0] for x in mine)))
                each[k] += [x[1] - x[0] for x in mine]
                if k != "pre":
                    wbs += [x[2] for x in mine]
        print()
        print("NBD FLUSHes the server served (perf uprobes on sv_view_flush: write-behind "
              "wait + origin fdatasync), per event:")
        print()
        print("| when | flushes p50 | flushes max | server ms p50 | server ms p99 | "
              "one flush ms p50 | one flush ms p99 |")
        print("|---|---|---|---|---|---|---|")
        names = {"pre": "_before FIFREEZE (presync)_", "fz": "during FIFREEZE",
                 "rest": "after FIFREEZE, to FITHAW's end"}
        for k in ("pre", "fz", "rest"):
            n = [x[0] for x in per[k]]
            ms_ = [x[1] / 1e6 for x in per[k]]
            one = [x / 1e6 for x in each[k]]
            print("| %s | %d | %d | %.1f | %.1f | %.2f | %.2f |" % (
                names[k], pct(n, 50), max(n) if n else 0, pct(ms_, 50), pct(ms_, 99),
                pct(one, 50), pct(one, 99)))
        print()
        print("Write-behind buffer at the arrival of a FLUSH inside the window: max %d bytes "
              "(%d FLUSHes)." % (max(wbs) if wbs else 0, len(wbs)))
    if serve_log and os.path.exists(serve_log):
        tr = load_server_trace(serve_log)
        names = [s for e in ev for s in e.get("snapshots", [])]
        got = [tr[n] for n in names if n in tr]
        if got:
            print()
            print("The server's quiesced snapshot-create (SNAPVOL_TRACE_FREEZE; ms); only "
                  "drain and switch are inside the window, the rest follows "
                  "SNAPSHOT_TAKEN:")
            print()
            print("| step | p50 | p99 | max |")
            print("|---|---|---|---|")
            for k in got[0]:
                print(row(k, [g.get(k, 0) for g in got]))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    op = sys.argv[1]
    if op == "run":
        cmd_run(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif op == "report":
        cmd_report(sys.argv[2], sys.argv[3:])
    elif op == "md":
        cmd_md(sys.argv[2])
    elif op == "dat":
        cmd_dat(sys.argv[2], sys.argv[3])
    elif op == "phases":
        cmd_phases(*sys.argv[2:5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
