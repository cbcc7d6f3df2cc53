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

Modes (the environment gives the paths: SNAPVOL, POOL, SV_MNT, QSD_QMP,
QSD_MNT, TMP):
  snapvol   snapvol snapshot create vol@N --fsfreeze SV_MNT: the window is
            the watchdog's FIFREEZE-to-FITHAW, from the command's JSON
  byhand    fsfreeze -f SV_MNT; snapvol snapshot create vol@N; fsfreeze -u:
            the window is from starting fsfreeze -f to fsfreeze -u returning
  qsd       fsfreeze -f QSD_MNT; a QMP transaction (blockdev-backup
            sync=none into a qcow2 fleecing image: qemu's copy-before-write
            snapshot); fsfreeze -u.  Window as for byhand.
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


def run_snapvol(i, env):
    t0 = now_ms()
    out = subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "--json", "snapshot", "create",
                          "vol@f%d" % i, "--fsfreeze", env["SV_MNT"]],
                         check=True, capture_output=True, text=True).stdout
    t1 = now_ms()
    j = json.loads(out)
    fr = j["freeze"]
    if j["consistency"] != "frozen":
        print("warning: vol@f%d is %s" % (i, j["consistency"]), file=sys.stderr)
    # The window as the watchdog measured it, placed inside the call.
    return t0, t1, fr["window_us"] / 1e3, fr["fifreeze_us"] / 1e3


def timed(cmd):
    t = now_ms()
    subprocess.run(cmd, check=True)
    return now_ms() - t


def run_byhand(i, env):
    t0 = now_ms()
    f = timed(["fsfreeze", "-f", env["SV_MNT"]])
    try:
        subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "snapshot", "create",
                        "vol@h%d" % i], check=True, capture_output=True)
    finally:
        subprocess.run(["fsfreeze", "-u", env["SV_MNT"]], check=True)
    t1 = now_ms()
    return t0, t1, t1 - t0, f


def run_qsd(i, env, q):
    fleece = os.path.join(env["TMP"], "fleece.qcow2")
    qmp.make_qcow2(fleece, qmp.node_size(q))
    t0 = now_ms()
    f = timed(["fsfreeze", "-f", env["QSD_MNT"]])
    try:
        qmp.insert_txn(q, fleece)
    finally:
        subprocess.run(["fsfreeze", "-u", env["QSD_MNT"]], check=True)
    t1 = now_ms()
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
    "byhand": "by hand: `fsfreeze -f`; `snapvol snapshot create`; `fsfreeze -u`",
    "qsd": "qemu-storage-daemon CBW (QMP transaction), by hand with `fsfreeze -f/-u`",
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
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
