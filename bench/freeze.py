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
  freeze.py kphases EVENTS.jsonl KTRACE.txt [SERVER-TIDS.txt [FLUSHES.txt]]
                                    where the kernel's FIFREEZE and FITHAW
                                    spend their time, from an ftrace buffer
                                    (bench/freeze.sh, KTRACE=1): the
                                    watchdog's sched_switch stacks, classed
                                    by what it waits for, and the FUSE
                                    requests (loop device -> nbdfuse -> NBD)
                                    issued meanwhile; the slowest tenth of
                                    the events one by one; with the server's
                                    thread ids, how long its threads and the
                                    agent's waited for a CPU in the window

Modes (the environment gives the paths: SNAPVOL, POOL, SV_MNT, QSD_QMP,
QSD_MNT, TMP):
  snapvol   snapvol snapshot create vol@N --fsfreeze SV_MNT: the window is
            the watchdog's FIFREEZE-to-FITHAW, from the command's JSON (its
            syncfs before FIFREEZE is outside the window, and reported apart)
  plain     the same as snapvol with SNAPVOL_FREEZE_EXPEDITE=0 (FIFREEZE's
            RCU grace periods not expedited): that change's A/B, interleaved
  nort      the same as snapvol with SNAPVOL_FREEZE_RT=0 (the watchdog and
            the agent's thread not SCHED_FIFO in the window): that A/B
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

GAP_S = float(os.environ.get("GAP_S", "2.5"))  # pause before each event (after clean-up)
CONTROL_GAP_MS = 300  # the control window ends this long before the event


def now_ms():
    return time.time() * 1e3


# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def fs_ioctl(fd, req):
    import fcntl
    fcntl.ioctl(fd, req, 0)


def ktrace_on(env, on):
    """Record the ftrace instance (freeze.sh, KTRACE=1) only around snapvol's
    events, so that the buffer holds them and little else."""
    inst = env.get("SV_KTRACE")
    if inst:
        with open(os.path.join(inst, "tracing_on"), "w") as f:
            f.write("1" if on else "0")


# snapvol's variants: (snapshot name prefix, events file infix, environment)
VARIANTS = {
    "snapvol": ("f", "", {}),
    "plain": ("p", "plain-", {"SNAPVOL_FREEZE_EXPEDITE": "0"}),
    "nort": ("r", "nort-", {"SNAPVOL_FREEZE_RT": "0"}),
}


def run_snapvol(i, env, mode="snapvol"):
    """plain: SNAPVOL_FREEZE_EXPEDITE=0 (FIFREEZE's RCU grace periods not
    expedited); nort: SNAPVOL_FREEZE_RT=0 (the watchdog and the agent not
    SCHED_FIFO in the window); the same otherwise: the A/B of one change."""
    prefix, infix, extra = VARIANTS[mode]
    name = "vol@%s%d" % (prefix, i)
    cenv = dict(env)
    cenv.update(extra)
    ktrace_on(env, True)
    t0 = now_ms()
    cmd = [env["SNAPVOL"], "--pool", env["POOL"], "--json", "snapshot", "create", name,
           "--fsfreeze", env["SV_MNT"]]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cenv)
    out, err = p.communicate()
    t1 = now_ms()
    ktrace_on(env, False)
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, cmd, out, err)
    j = json.loads(out)
    j["bench_agent_tid"] = p.pid  # its main thread: the one that drives the freeze
    with open(os.path.join(env["TMP"], "snapvol-%sevents.jsonl" % infix), "a") as f:
        f.write(json.dumps(j) + "\n")
    fr = j["freeze"]
    if j["consistency"] != "frozen":
        print("warning: %s is %s" % (name, j["consistency"]), file=sys.stderr)
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
    if mode in VARIANTS:
        subprocess.run([env["SNAPVOL"], "--pool", env["POOL"], "snapshot", "delete",
                        "vol@%s%d" % (VARIANTS[mode][0], i)], check=True,
                       capture_output=True)
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
                if mode in VARIANTS:
                    t0, t1, w, fz = run_snapvol(i, env, mode)
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
    "plain": "the same, FIFREEZE without expedited RCU grace periods "
             "(`SNAPVOL_FREEZE_EXPEDITE=0`)",
    "nort": "the same, the watchdog and the agent not SCHED_FIFO in the window "
            "(`SNAPVOL_FREEZE_RT=0`)",
    "byhand": "by hand: FIFREEZE; `snapvol snapshot create`; FITHAW",
    "qsd": "qemu-storage-daemon CBW (QMP transaction), by hand: FIFREEZE; QMP; FITHAW",
}


def cmd_md(path):
    rows = load_stalls(path)
    print("| method | n | window p50 ms | window p99 ms | FIFREEZE p50 ms | stall p50 ms | "
          "stall p99 ms | control stall p50 ms | control stall p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in ("snapvol", "nort", "plain", "byhand", "qsd"):
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
        for peer in ("nort", "plain", "byhand", "qsd"):
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
    modes = [m for m in ("snapvol", "nort", "byhand", "qsd") if m in rows]
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
    print(width, len(modes))


# snapvol's phases, in the order they happen (freeze.phases_us of its JSON).
PHASES = [
    ("presync", "syncfs + ext4 journal checkpoint before FIFREEZE (outside the window)", False),
    ("checkpoint", "  of which the journal checkpoint", False),
    ("fifreeze", "FIFREEZE", True),
    ("to_owner", "watchdog -> agent: frozen", True),
    ("fsmap", "GETFSMAP (free-space map)", True),
    ("create", "snapshot-create to the event SNAPSHOT_TAKEN (the control round trip)", True),
    ("to_thaw", "agent -> watchdog: frozen throughout? + thaw (one message)", True),
    ("fithaw", "FITHAW", True),
    ("durable_after_thaw", "snapshot durable (create's reply) after FITHAW (outside)", False),
]


def load_flushes(path):
    """[(start ns, end ns, write-behind bytes at arrival, thread id)] of the server's
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
                out.append((t0, t, wb, tid))
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
            # "drain N us, switch N us, ...; at the sync: ...": the steps
            # come before the first "; "
            for part in m.group(2).split("; ")[0].split(", "):
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
    print("Where snapvol's window goes (%d events, %d with the watchdog and the agent "
          "SCHED_FIFO in the window; ms; the window is FIFREEZE to FITHAW):" %
          (len(ev), sum(1 for e in ev if e["freeze"].get("realtime"))))
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


# What the watchdog waits for inside FIFREEZE/FITHAW, from its kernel stack
# at each sched_switch (innermost frame first; the first rule that matches).
KCLASSES = [
    ("synchronize_rcu", "RCU grace period (percpu_down_write of a freeze level)"),
    ("rcu_sync_enter", "RCU grace period (percpu_down_write of a freeze level)"),
    ("percpu_rwsem_wait", "writes in flight (sb_wait_write: fio's AIO, page faults, handles)"),
    ("percpu_down_write", "writes in flight (sb_wait_write: fio's AIO, page faults, handles)"),
    ("jbd2_journal_lock_updates", "running journal handles (jbd2_journal_lock_updates)"),
    ("jbd2_log_wait_commit", "journal commit (sync_filesystem -> ext4_sync_fs)"),
    ("sync_inodes_sb", "data writeback (sync_filesystem)"),
    ("wb_wait_for_completion", "data writeback (sync_filesystem)"),
    ("filemap_write_and_wait_range", "block device writeback (sync_blockdev)"),
    ("sync_blockdev", "block device writeback (sync_blockdev)"),
    ("jbd2_mark_journal_empty", "journal marked empty (jbd2 superblock write)"),
    ("jbd2_journal_flush", "journal checkpoint (ext4_freeze -> jbd2_journal_flush)"),
    ("ext4_commit_super", "ext4 superblock write (ext4_freeze / ext4_unfreeze)"),
]
RUNNABLE = "runnable, waiting for a CPU"


def kclass(stack):
    for fr in stack:
        for key, name in KCLASSES:
            if fr.startswith(key):
                return name
    generic = ("trace_event", "__traceiter", "__schedule", "schedule", "io_schedule",
               "wait_for_completion", "bit_wait", "__wait_on_bit", "out_of_line_wait",
               "submit_bio_wait", "folio_wait", "__filemap_fdatawait", "rwsem_down",
               "down_", "mutex_lock", "__mutex_lock")
    for fr in stack:
        if not fr.startswith(generic):
            return "other: " + fr
    return "other"


def load_ktrace(path):
    """The watchdog's off-CPU intervals [(out, wake, in, state, stack)] and
    the FUSE requests [(send, end, opcode)], CLOCK_MONOTONIC seconds."""
    import re
    rx = re.compile(r"^\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\S+): (.*)$")
    offs, fuse, sends = [], [], {}
    cur = None   # the open off-CPU interval: [out, wake, in, state, stack]
    stack_of = None
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith("=>"):
                if stack_of is not None:
                    stack_of.append(line.strip()[3:].strip().split("+")[0])
                continue
            stack_of = None
            if line.rstrip().endswith("<stack trace>"):
                # the trigger's stack, right after the sched_switch it is for
                if cur is not None and not cur[4] and cur[2] is None:
                    stack_of = cur[4]
                continue
            m = rx.match(line)
            if not m:
                continue
            ts, ev, rest = float(m.group(3)), m.group(4), m.group(5)
            if ev == "sched_switch":
                prev = rest.split(" ==> ")[0]
                if "prev_comm=snapvol-wdog " in prev + " ":
                    st = re.search(r"prev_state=(\S+)", prev)
                    cur = [ts, None, None, st.group(1) if st else "?", []]
                    offs.append(cur)
                elif "next_comm=snapvol-wdog " in rest + " " and cur is not None:
                    cur[2] = ts
                    cur = None
            elif ev == "sched_wakeup" and "comm=snapvol-wdog " in rest + " ":
                if cur is not None and cur[1] is None:
                    cur[1] = ts
            elif ev == "fuse_request_send":
                r = re.search(r"req (\d+) opcode \d+ \((\w+)\)", rest)
                if r:
                    sends[r.group(1)] = (ts, r.group(2))
            elif ev == "fuse_request_end":
                r = re.search(r"req (\d+) ", rest)
                if r and r.group(1) in sends:
                    t0, op = sends.pop(r.group(1))
                    fuse.append((t0, ts, op))
    return [o for o in offs if o[2] is not None], fuse


def load_runnable(path):
    """{tid: [(start, end)]}: when each "snapvol" thread (the server's, the
    agent's) was runnable but not running: from its wake-up, or from being
    preempted, to being switched in; CLOCK_MONOTONIC seconds."""
    import re
    rx = re.compile(r"^\s*.+?-\d+\s+\[\d+\]\s+\S+\s+([\d.]+): (sched_switch|sched_wakeup): (.*)$")
    since, out = {}, {}
    with open(path) as f:
        for line in f:
            m = rx.match(line)
            if not m:
                continue
            ts, ev, rest = float(m.group(1)), m.group(2), m.group(3)
            if ev == "sched_wakeup":
                w = re.search(r"comm=snapvol pid=(\d+) ", rest)
                if w and w.group(1) not in since:
                    since[w.group(1)] = ts
                continue
            prev, _, nxt = rest.partition(" ==> ")
            p = re.search(r"prev_comm=snapvol prev_pid=(\d+) .*prev_state=(\S+)", prev)
            if p:
                since.pop(p.group(1), None)
                if p.group(2).startswith("R"):  # preempted: runnable from now
                    since[p.group(1)] = ts
            n = re.search(r"next_comm=snapvol next_pid=(\d+) ", nxt + " ")
            if n and n.group(1) in since:
                out.setdefault(int(n.group(1)), []).append((since.pop(n.group(1)), ts))
    return out


def runnable_in(runs, tids, a, b, want):
    """(sum, longest) seconds of runnable time in [a, b] of the threads in
    tids (want=True) or not in tids (want=False)."""
    tot, big = 0.0, 0.0
    for tid, ivs in runs.items():
        if (tid in tids) != want:
            continue
        for lo, hi in ivs:
            d = min(b, hi) - max(a, lo)
            if d > 0:
                tot += d
                big = max(big, d)
    return tot, big


def kspan(offs, a, b):
    """{class: seconds} of [a, b]: blocked by class, runnable, on a CPU."""
    out = {}
    off = 0.0
    for t_out, wake, t_in, state, stack in offs:
        lo, hi = max(a, t_out), min(b, t_in)
        if hi <= lo:
            continue
        off += hi - lo
        if state.startswith("R"):  # preempted
            out[RUNNABLE] = out.get(RUNNABLE, 0) + hi - lo
            continue
        w = wake if wake is not None else t_in
        blk = max(0.0, min(hi, w) - lo)
        name = kclass(stack)
        out[name] = out.get(name, 0) + blk
        out[RUNNABLE] = out.get(RUNNABLE, 0) + (hi - lo - blk)
    out["on a CPU (the ioctl's own work)"] = max(0.0, (b - a) - off)
    return out


def cmd_kphases(events, ktrace, tids_path=None, flushes=None):
    ev = []
    with open(events) as f:
        for line in f:
            if line.strip():
                ev.append(json.loads(line))
    ev = [e for e in ev if "phases_us" in e.get("freeze", {})]
    offs, fuse = load_ktrace(ktrace)
    spans = {"fifreeze": [], "fithaw": []}
    reqs = {"fifreeze": [], "fithaw": []}
    traced = []  # (event, FIFREEZE span, FITHAW span)
    for e in ev:
        fr = e["freeze"]
        st = fr["start_ns"] / 1e9
        ph = fr["phases_us"]
        end = st + fr["window_us"] / 1e6
        # In the buffer: the watchdog slept in this event's FIFREEZE (it
        # always does; a quick FITHAW may not sleep at all).
        if not any(o[0] < st + ph["fifreeze"] / 1e6 and o[2] > st for o in offs):
            continue
        for k, (a, b) in (("fifreeze", (st, st + ph["fifreeze"] / 1e6)),
                          ("fithaw", (end - ph["fithaw"] / 1e6, end))):
            spans[k].append(kspan(offs, a, b))
            if k == "fithaw":
                traced.append((e, spans["fifreeze"][-1], spans[k][-1]))
            mine = [x for x in fuse if a <= x[0] < b]
            reqs[k].append((sum(1 for x in mine if x[2] == "FUSE_FSYNC"),
                            sum(1 for x in mine if x[2] == "FUSE_WRITE"),
                            sum(x[1] - x[0] for x in mine if x[2] == "FUSE_FSYNC")))
    for k, title in (("fifreeze", "FIFREEZE"), ("fithaw", "FITHAW")):
        rows = spans[k]
        if not rows:
            continue
        names = sorted({n for r in rows for n in r},
                       key=lambda n: -sum(r.get(n, 0) for r in rows))
        print()
        print("Inside the kernel's %s (%d events; ftrace: the watchdog's sched_switch "
              "stacks, classed by what it waited for; ms):" % (title, len(rows)))
        print()
        print("| waiting for | p50 | p99 | max | share of the total |")
        print("|---|---|---|---|---|")
        tot = sum(sum(r.values()) for r in rows)
        for n in names:
            v = [r.get(n, 0) * 1e3 for r in rows]
            print("| %s | %.1f | %.1f | %.1f | %.0f%% |" % (
                n, pct(v, 50), pct(v, 99), max(v), 100 * sum(v) / 1e3 / tot if tot else 0))
        q = reqs[k]
        print()
        print("FUSE requests from the loop device meanwhile, per event: FLUSHes (FUSE_FSYNC) "
              "p50 %d, max %d, their round trips %.1f ms p50 / %.1f ms p99; writes p50 %d, "
              "max %d." % (pct([x[0] for x in q], 50), max(x[0] for x in q),
                           pct([x[2] * 1e3 for x in q], 50), pct([x[2] * 1e3 for x in q], 99),
                           pct([x[1] for x in q], 50), max(x[1] for x in q)))
    slow_events(traced)
    if tids_path:
        server_runnable(ev, ktrace, tids_path, flushes)


# A FLUSH's thread woken this long before sv_view_flush's entry was woken
# for it (the request's arrival; reading and parsing it takes microseconds).
FLUSH_WAKE_S = 0.0005


def server_runnable(ev, ktrace, tids_path, flushes=None):
    """Did the server's threads (serving the FLUSHes FIFREEZE and FITHAW
    send) or the agent's main thread wait for a CPU inside the window?"""
    with open(tids_path) as f:
        tids = {int(x) for x in f.read().split()}
    runs = load_runnable(ktrace)
    fl = load_flushes(flushes) if flushes and os.path.exists(flushes) else []
    rows = {}
    for e in ev:
        fr = e["freeze"]
        st = fr["start_ns"] / 1e9
        ph = fr["phases_us"]
        end = st + fr["window_us"] / 1e6
        if not any(lo < end and hi > st for ivs in runs.values() for lo, hi in ivs):
            continue  # not in the buffer
        for k, (a, b) in (("FIFREEZE", (st, st + ph["fifreeze"] / 1e6)),
                          ("FITHAW", (end - ph["fithaw"] / 1e6, end)),
                          ("window", (st, end))):
            rows.setdefault((k, "server, all threads"), []).append(
                runnable_in(runs, tids, a, b, True))
            agent = e.get("bench_agent_tid")
            if agent:
                rows.setdefault((k, "agent"), []).append(
                    runnable_in(runs, {agent}, a, b, True))
            if fl:
                # the threads serving this span's FLUSHes, from the wake-up
                # for each to its return
                tot, big = 0.0, 0.0
                for f0, f1, _, tid in fl:
                    f0, f1 = f0 / 1e9, f1 / 1e9
                    if not a <= f0 < b:
                        continue
                    t, g = runnable_in(runs, {tid}, f0 - FLUSH_WAKE_S, f1, True)
                    tot, big = tot + t, max(big, g)
                rows.setdefault((k, "server, serving its FLUSHes"), []).append((tot, big))
    if not rows:
        return
    n = len(rows[("window", "server, all threads")])
    print()
    print("Waiting for a CPU inside the window (%d events; ftrace sched_switch/sched_wakeup of "
          "every \"snapvol\" thread: runnable from its wake-up or preemption to running; "
          "the server's threads by id (all, and those serving the span's FLUSHes, from "
          "%.1f ms before each to its end), the agent's main thread; ms, summed over the "
          "threads, and the longest single wait):" % (n, FLUSH_WAKE_S * 1e3))
    print()
    print("| span | threads | sum p50 | sum p99 | sum max | longest wait p50 | longest wait p99 |")
    print("|---|---|---|---|---|---|---|")
    for k in ("FIFREEZE", "FITHAW", "window"):
        for who in ("server, all threads", "server, serving its FLUSHes", "agent"):
            v = rows.get((k, who), [])
            if not v:
                continue
            tot = [x[0] * 1e3 for x in v]
            big = [x[1] * 1e3 for x in v]
            print("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (
                k, who, pct(tot, 50), pct(tot, 99), max(tot), pct(big, 50), pct(big, 99)))


def top_classes(span, k=3):
    """'class a.b, class c.d' for the k largest classes of a kspan, in ms."""
    short = {RUNNABLE: "a CPU"}
    items = sorted(span.items(), key=lambda x: -x[1])[:k]
    return ", ".join("%s %.1f" % (short.get(n, n.split(" (")[0]), v * 1e3)
                     for n, v in items if v * 1e3 >= 0.05)


def slow_events(traced):
    """The slowest tenth of the traced events (at least 2), one line each:
    where their window went, FIFREEZE and FITHAW classed as above, the
    agent's steps between them apart."""
    if not traced:
        return
    traced = sorted(traced, key=lambda t: -t[0]["freeze"]["window_us"])
    k = max(2, len(traced) // 10)
    print()
    print("The slowest %d of %d traced events (p90 and up; ms): FIFREEZE and FITHAW by what "
          "the watchdog waited for (largest 3), the agent's steps in between "
          "(to_owner + fsmap + create + to_thaw):" % (min(k, len(traced)), len(traced)))
    print()
    print("| window | FIFREEZE | its largest waits | agent steps | of which create | FITHAW "
          "| its largest waits |")
    print("|---|---|---|---|---|---|---|")
    for e, fz, th in traced[:k]:
        ph = e["freeze"]["phases_us"]
        agent = sum(ph[x] for x in ("to_owner", "fsmap", "create", "to_thaw"))
        print("| %.1f | %.1f | %s | %.1f | %.1f | %.1f | %s |" % (
            e["freeze"]["window_us"] / 1e3, ph["fifreeze"] / 1e3, top_classes(fz),
            agent / 1e3, ph["create"] / 1e3, ph["fithaw"] / 1e3, top_classes(th)))


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
    elif op == "kphases":
        cmd_kphases(sys.argv[2], sys.argv[3], *sys.argv[4:6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
