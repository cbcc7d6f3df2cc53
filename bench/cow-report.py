#!/usr/bin/env python3
"""cow-report.py: the numbers side of bench/cow.sh (stdlib only).

cow.sh runs the servers, fio and the snapshot drivers and keeps raw figures
in three TSV files; everything that needs arithmetic, JSON or fio's logs is
here, so the tables can be rebuilt from kept files at any time:

  cow-report.py row FIO.json
      one fio run: iops, p99 us, p50 us, max us, I/Os, seconds (tab-separated)
  cow-report.py stalls TARGET LAT.log EVENTS.json
      one line per snapshot step of a cowbench.py 'cycles' run (events TSV,
      without header): how long the call took and the longest write in
      flight during it, next to equal-length control windows (see below)
  cow-report.py phases TARGET LAT.log EVENTS.json
      write latency (n, p50, p99, p99.9, max us) by what the driver was doing
      while the write was in flight: take, drop, hold or idle gap
  cow-report.py loadrow LAT.log EVENTS.json
      the whole background load of a cycles run: iops, p99, p99.9, max us
  cow-report.py trace SERVER.log
      the server's trace of each create (cow.sh TRACE=1), summed up
  cow-report.py md RUNS.tsv EVENTS.tsv MEM.tsv PHASES.tsv   the Markdown
  cow-report.py dat RUNS.tsv EVENTS.tsv MEM.tsv DIR         gnuplot data for cow.gp

Stalls.  fio's per-I/O latency log (write_lat_log, log_avg_msec=0,
log_unix_epoch=1) gives each write's completion time (Unix ms, truncated to
the ms) and its latency (ns, submission to completion); its submission time
is completion - latency.  A write "sees" a snapshot step [t0, t1] (Unix ms
from cowbench.py, same clock) when it was submitted before t1 and completed
after t0.  For each step we report the longest such write, and the longest
stretch without any completion that overlaps the step ("pause": a drain
shows up there).  The same is measured in two control windows of the same
length: in the middle of the idle gap next to the step (no snapshot) and in
the middle of the hold next to it (snapshot live: writes pay their first
copies there too).  "excess" = the step's longest write minus the longer of
the two controls: what the step itself added.  Timestamps have 1 ms
resolution, so figures under ~1 ms are at the edge of what this can see.
Each step and control window also counts its writes in flight over 1 and
2 ms (step_slow, idle_slow, live_slow: window ms, then the counts); summed
over the steps, per second of window, they tell whether takes make slow
writes more frequent than equal windows without one (a second line under
the goal's figure, which the maximum over 30 takes alone cannot tell).
And two placebo windows per step, as long as it, with nothing in them (a
quarter into the idle gap, three quarters into the hold; placebo_*_max_lat_us)
get the goal's excess against the same controls: what the machine's own
stalls give that figure with no create at all.
"""
import bisect
import csv
import json
import os
import re
import statistics
import sys

TARGET_NAME = {
    "snapvol": "snapvol",
    "snapvol-nosnap": "snapvol, no snapshot",
    "qsd-cbw": "qemu CBW (qcow2 fleecing)",
    "qsd-nosnap": "qemu-storage-daemon, no snapshot",
}
FIRST_TARGETS = ["snapvol", "qsd-cbw", "snapvol-nosnap", "qsd-nosnap"]
COLOR = {"snapvol": "#e76f51", "qsd-cbw": "#457b9d", "snapvol-nosnap": "#f4a261",
         "qsd-nosnap": "#a8dadc"}


# ---------------------------------------------------------------- fio

def load_fio_json(path):
    text = open(path).read()
    # fio prints "fio: terminating on signal 2" etc. before the JSON
    return json.loads(text[text.index("{"):])


def fio_row(path):
    d = load_fio_json(path)
    job = d["jobs"][0]
    w = job["write"]
    pct = (w.get("lat_ns", {}).get("percentile") or w["clat_ns"]["percentile"])
    mx = w.get("lat_ns", {}).get("max") or w["clat_ns"]["max"]
    secs = w.get("runtime", 0) / 1000.0
    print("%.0f\t%.0f\t%.0f\t%.0f\t%d\t%.2f" % (w["iops"], pct["99.000000"] / 1e3,
                                                pct["50.000000"] / 1e3, mx / 1e3,
                                                w["total_ios"], secs))


# ---------------------------------------------------------------- stalls

class LatLog:
    def __init__(self, path):
        rows = []
        with open(path) as f:
            for line in f:
                p = line.split(",", 2)
                if len(p) >= 2:
                    rows.append((int(p[0]), int(p[1])))
        rows.sort()
        self.comp = [r[0] for r in rows]             # completion, Unix ms
        self.sub = [r[0] - r[1] / 1e6 for r in rows]  # submission, Unix ms
        self.lat = [r[1] / 1e3 for r in rows]         # latency, us
        self.lmax_ms = max(self.lat) / 1e3 if rows else 0.0

    def window(self, t0, t1):
        """(longest write in flight during [t0, t1] in us, writes seen,
        longest stretch without completions overlapping it, ms)."""
        lo = bisect.bisect_left(self.comp, t0 - 1)  # -1: completion ms is truncated
        hi = bisect.bisect_right(self.comp, t1 + self.lmax_ms + 1)
        mx, n = 0.0, 0
        for k in range(lo, hi):
            if self.sub[k] <= t1:
                n += 1
                if self.lat[k] > mx:
                    mx = self.lat[k]
        a = max(bisect.bisect_left(self.comp, t0) - 1, 0)
        b = min(bisect.bisect_right(self.comp, t1), len(self.comp) - 1)
        pause = 0
        for k in range(a, b):
            pause = max(pause, self.comp[k + 1] - self.comp[k])
        return mx, n, pause

    def slow(self, t0, t1, us):
        """Writes in flight during [t0, t1] that took over us."""
        lo = bisect.bisect_left(self.comp, t0 - 1)
        hi = bisect.bisect_right(self.comp, t1 + self.lmax_ms + 1)
        return sum(1 for k in range(lo, hi) if self.sub[k] <= t1 and self.lat[k] > us)


SLOW_US = (1000, 2000)  # the "slow writes" counted in each window


def placed(span, d, f):
    """A window of length d (at most half the span) centred at fraction f
    of span."""
    mid = span["t0"] + f * (span["t1"] - span["t0"])
    d = min(d, (span["t1"] - span["t0"]) / 2)
    return mid - d / 2, mid + d / 2


def centered(span, d):
    """A window of length d in the middle of span, at most half the span
    long, so that a quarter of the span separates it from the steps on
    either side (a stall that outlasts a step must not count as control)."""
    mid = (span["t0"] + span["t1"]) / 2
    d = min(d, (span["t1"] - span["t0"]) / 2)
    return mid - d / 2, mid + d / 2


def stalls(target, latpath, evpath):
    log = LatLog(latpath)
    ev = json.load(open(evpath))["events"]
    idx = {"create": 0, "delete": 0, "unlink": 0, "settle": 0}
    for j, e in enumerate(ev):
        if e["event"] not in idx:
            continue
        i = idx[e["event"]]
        idx[e["event"]] += 1
        mx, n, pause = log.window(e["t0"], e["t1"])
        d = max(e["t1"] - e["t0"], 1.0)
        # control windows: the idle gap and the live hold next to the step
        before = ev[j - 1] if j > 0 else None
        after = ev[j + 1] if j + 1 < len(ev) else None
        spans = {}
        for s in (before, after):
            if s and s["event"] in ("gap", "hold"):
                spans.setdefault(s["event"], s)
        if e["event"] == "unlink" and before and before["event"] == "delete" and j >= 2:
            spans.setdefault("hold", ev[j - 2])
        ctl, slow, placebo = {}, {}, {}
        slow["step"] = (d, [log.slow(e["t0"], e["t1"], u) for u in SLOW_US])
        # placebos: windows as long as the step with no step in them, a
        # quarter into the gap and three quarters into the hold
        for kind, f in (("gap", 0.25), ("hold", 0.75)):
            if kind in spans:
                placebo[kind] = log.window(*placed(spans[kind], d, f))[0]
        for kind in ("gap", "hold"):
            if kind in spans:
                w = centered(spans[kind], d)
                ctl[kind] = log.window(*w)
                slow[kind] = (w[1] - w[0], [log.slow(w[0], w[1], u) for u in SLOW_US])
        # window ms, then the slow writes of each SLOW_US, for the step and each control
        sl = lambda k: ",".join(["%.2f" % slow[k][0]] + [str(x) for x in slow[k][1]]) \
            if k in slow else ""
        f = lambda x: "%.0f" % x
        print("\t".join([
            target, e["via"], e["event"], str(i), "%.1f" % e["t0"], "%.2f" % e["ms"],
            "%.2f" % e["server_ms"] if "server_ms" in e else "",
            "%.2f" % e["switch_ms"] if "switch_ms" in e else "",
            f(mx), str(n), str(pause),
            f(ctl["gap"][0]) if "gap" in ctl else "", str(ctl["gap"][2]) if "gap" in ctl else "",
            f(ctl["hold"][0]) if "hold" in ctl else "",
            str(ctl["hold"][2]) if "hold" in ctl else "",
            str(e.get("bytes", "")), sl("step"), sl("gap"), sl("hold"),
            f(placebo["gap"]) if "gap" in placebo else "",
            f(placebo["hold"]) if "hold" in placebo else ""]))


PHASE_ORDER = ["gap", "create", "hold", "delete", "unlink", "settle"]


def phases(target, latpath, evpath):
    """Write latency by what the driver was doing while the write was in
    flight: a write that overlaps a take counts as 'create', else one that
    overlaps a drop as 'delete' (then 'unlink'), else 'hold' (snapshot live)
    or 'gap' (no snapshot)."""
    log = LatLog(latpath)
    ev = json.load(open(evpath))["events"]
    rank = {"create": 0, "delete": 1, "unlink": 2, "settle": 3, "hold": 4, "gap": 5}
    # steps in time order; each write takes the best-ranked step it overlaps
    spans = sorted((e["t0"], e["t1"], e["event"]) for e in ev)
    starts = [x[0] for x in spans]
    t_lo, t_hi = spans[0][0], spans[-1][1]
    lat = {k: [] for k in rank}
    j0 = 0
    for k in range(len(log.comp)):
        c, sb = log.comp[k], log.sub[k]
        if c < t_lo or sb > t_hi:
            continue
        # steps that start before this write completes and end after it began
        hi = bisect.bisect_right(starts, c + 1)
        best = None
        i = hi - 1
        while i >= 0 and i >= hi - 64:
            t0, t1, kind = spans[i]
            if t1 >= sb and t0 <= c + 1:
                if best is None or rank[kind] < rank[best]:
                    best = kind
            elif t1 < sb:
                break  # steps run one after another: all earlier ones end earlier
            i -= 1
        if best:
            lat[best].append(log.lat[k])
    for kind in PHASE_ORDER:
        v = sorted(lat[kind])
        if not v:
            continue
        print("%s\t%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f" % (target, kind, len(v), pctl(v, 50),
                                                   pctl(v, 99), pctl(v, 99.9), v[-1]))


def loadrow(latpath, evpath):
    log = LatLog(latpath)
    ev = json.load(open(evpath))["events"]
    # only the stretch the cycles ran (fio ran a little before and after)
    t0, t1 = ev[0]["t0"], ev[-1]["t1"]
    lo, hi = bisect.bisect_left(log.comp, t0), bisect.bisect_right(log.comp, t1)
    lat = sorted(log.lat[lo:hi])
    n = len(lat)
    secs = (t1 - t0) / 1e3
    if not n:
        print("0\t\t\t\t0\t%.1f" % secs)
        return
    print("%.0f\t%.0f\t%.0f\t%.0f\t%d\t%.1f" % (n / secs, pctl(lat, 99), pctl(lat, 99.9),
                                                lat[-1], n, secs))


# ---------------------------------------------------------------- tables

def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def pctl(vals, p):
    """Nearest-rank percentile of a sorted or unsorted list."""
    v = sorted(vals)
    if not v:
        return None
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def med(vals):
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def fr(x, fmt="%.2f"):
    return "-" if x is None else fmt % x


def fi(x):
    return "-" if x is None else "%.0f" % x


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def read_tsv(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def spread(vals, fmt=fi):
    v = [x for x in vals if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return fmt(v[0])
    return "%s (%s-%s)" % (fmt(med(v)), fmt(min(v)), fmt(max(v)))


class Data:
    def __init__(self, runs, events, mem, phases=None):
        self.runs = read_tsv(runs)
        self.events = read_tsv(events)
        self.mem = read_tsv(mem)
        self.phases = read_tsv(phases)

    def sel(self, **kw):
        return [r for r in self.runs if all(r.get(k) == v for k, v in kw.items())]

    def iops(self, **kw):
        return [num(r["iops"]) for r in self.sel(**kw) if num(r["iops"]) is not None]

    def qds(self):
        out = []
        for r in self.runs:
            if r["section"] == "first" and r["qd"] not in out:
                out.append(r["qd"])
        return out

    def nsnaps(self):
        out = []
        for r in self.runs:
            if r["section"] == "snapn" and r["nsnap"] not in out:
                out.append(r["nsnap"])
        return sorted(out, key=int)

    def ev(self, **kw):
        return [e for e in self.events if all(e.get(k) == v for k, v in kw.items())]


def ratio(a, b):
    return a / b if a is not None and b else None


def paired(a_rows, b_rows):
    """Median of the ratios a/b of passes with the same repetition label:
    passes that ran close together in time, so a slow drift of the machine
    cancels out (the ratio of the medians does not have that property)."""
    b = {r["rep"]: num(r["iops"]) for r in b_rows}
    rs = [ratio(num(r["iops"]), b.get(r["rep"])) for r in a_rows]
    return med([x for x in rs if x is not None])


def goals(d):
    """Each goal: the ratio of the medians, and the median of the paired
    ratios (same repetition); the paired one decides, being the one that a
    drift of this shared machine disturbs least."""
    out = []

    def line(what, x, px, need, ok):
        y = px if px is not None else x
        shown = fr(x) if px is None else "%s (paired %s)" % (fr(x), fr(px))
        out.append([what, shown, need, "-" if y is None else ("yes" if ok(y) else "**no**")])

    for qd in d.qds():
        a = d.sel(section="first", target="snapvol", qd=qd, phase="first")
        b = d.sel(section="first", target="qsd-cbw", qd=qd, phase="first")
        sv, qc = med(d.iops(section="first", target="snapvol", qd=qd, phase="first")), \
            med(d.iops(section="first", target="qsd-cbw", qd=qd, phase="first"))
        if sv is not None and qc is not None:
            line("4 KiB first writes after a snapshot, QD%s: snapvol / qemu CBW IOPS" % qd,
                 ratio(sv, qc), paired(a, b), ">= 3.00", lambda x: x >= 3.0)
    for qd in d.qds():
        a = d.sel(section="first", target="snapvol", qd=qd, phase="rewrite")
        b = d.sel(section="first", target="snapvol-nosnap", qd=qd, phase="rewrite")
        sv = med(d.iops(section="first", target="snapvol", qd=qd, phase="rewrite"))
        ns = med(d.iops(section="first", target="snapvol-nosnap", qd=qd, phase="rewrite"))
        if sv is not None and ns is not None:
            line("rewrites, QD%s: snapvol / snapvol with no snapshot IOPS" % qd,
                 ratio(sv, ns), paired(a, b), ">= 0.95", lambda x: x >= 0.95)
    ns = d.nsnaps()
    if len(ns) >= 2:
        lo = med(d.iops(section="snapn", nsnap=ns[0], phase="first"))
        hi = med(d.iops(section="snapn", nsnap=ns[-1], phase="first"))
        line("first-write IOPS with %s snapshots / with %s" % (ns[-1], ns[0]),
             ratio(hi, lo), paired(d.sel(section="snapn", nsnap=ns[-1], phase="first"),
                                   d.sel(section="snapn", nsnap=ns[0], phase="first")),
             ">= 0.95", lambda x: x >= 0.95)
    cr = d.ev(target="snapvol", via="socket", event="create")
    if cr:
        ex = excess(cr)
        if ex:
            line("snapshot create under QD16 load: what it adds to the longest write, "
                 "p99 over %d creates (ms; max %.2f)" % (len(ex), max(ex) / 1e3),
                 pctl(ex, 99) / 1e3, None, "<= 1.00", lambda x: x <= 1.0)
        pg, ph = excess(cr, "placebo_idle_max_lat_us"), excess(cr, "placebo_live_max_lat_us")
        if pg and ph:
            out.append(["the same figure for windows as long with no create in them, a quarter "
                        "into the idle gap / three quarters into the hold, against the same "
                        "controls (not a goal: what the machine alone gives)",
                        "%s / %s (max %.2f / %.2f; over 1 ms: %d / %d of %d, takes %d)" % (
                            fr(pctl(pg, 99) / 1e3), fr(pctl(ph, 99) / 1e3), max(pg) / 1e3,
                            max(ph) / 1e3, sum(x > 1000 for x in pg),
                            sum(x > 1000 for x in ph), len(pg), sum(x > 1000 for x in ex)),
                        "-", "-"])
        sr = slow_rates(cr)
        if sr:
            out.append(["the same creates: writes over 1 / 2 ms in flight per second of "
                        "window, takes vs their equal-length idle / live controls (not a goal)",
                        sr, "-", "-"])
    hwm = [num(m["vm_hwm_kib"]) for m in d.mem if m["step"] != "main server"]
    hwm = [h for h in hwm if h is not None]
    if hwm:
        line("server peak resident size (VmHWM) in the memory test (MiB)",
             max(hwm) / 1024, None, "< 64", lambda x: x < 64)
    return out


def excess(evs, col="max_lat_us"):
    out = []
    for e in evs:
        mx = num(e.get(col) or "")
        c = [num(e["idle_max_lat_us"]), num(e["live_max_lat_us"])]
        c = [x for x in c if x is not None]
        if mx is not None and c:
            out.append(max(0.0, mx - max(c)))
    return out


def slow_rates(evs):
    """Slow writes in flight per second of window, summed over the steps:
    'take a / b vs idle c / d, live e / f' (over 1 / 2 ms), from the
    step_slow, idle_slow and live_slow columns (window ms, then a count per
    SLOW_US); "" for events files from before those columns."""
    tot = {}
    for e in evs:
        for k in ("step", "idle", "live"):
            v = e.get(k + "_slow") or ""
            if not v:
                continue
            f = [float(x) for x in v.split(",")]
            t = tot.setdefault(k, [0.0] * len(f))
            for i, x in enumerate(f):
                t[i] += x
    if "step" not in tot:
        return ""

    def r(k):
        t = tot.get(k)
        if not t or t[0] <= 0:
            return "-"
        return " / ".join("%.1f" % (x * 1e3 / t[0]) for x in t[1:])
    return "take %s vs idle %s, live %s (%.1f s of takes)" % (
        r("step"), r("idle"), r("live"), tot["step"][0] / 1e3)


def first_table(d):
    head = ["QD", "target", "pass", "IOPS median (min-max)", "p99 us", "max us",
            "x no snapshot", "x qemu CBW", "copied per write", "writes per journal commit", "runs"]
    rows = []
    for qd in d.qds():
        for phase in ("first", "rewrite"):
            base = {"snapvol": "snapvol-nosnap", "qsd-cbw": "qsd-nosnap"}
            qc = med(d.iops(section="first", target="qsd-cbw", qd=qd, phase=phase))
            for t in FIRST_TARGETS:
                rs = d.sel(section="first", target=t, qd=qd, phase=phase)
                if not rs:
                    continue
                io = [num(r["iops"]) for r in rs]
                m = med(io)
                ns = med(d.iops(section="first", target=base.get(t, ""), qd=qd, phase=phase))
                cp = [num(r["copied_mib"]) * 1048576 / num(r["ios"]) / 4096
                      for r in rs if num(r["copied_mib"]) is not None and num(r["ios"])]
                cm = [num(r["ios"]) / num(r["commits"]) for r in rs
                      if num(r["commits"]) and num(r["ios"])]
                fails = [r["note"] for r in rs if r["note"].startswith("FAILED")]
                rows.append([qd, TARGET_NAME.get(t, t), phase, spread(io),
                             fi(med([num(r["p99_us"]) for r in rs])),
                             fi(max([num(r["max_us"]) or 0 for r in rs])),
                             fr(ratio(m, ns)) if t in base else "-",
                             fr(ratio(m, qc)) if t != "qsd-cbw" else "1.00",
                             ("%.2f x 4 KiB" % med(cp)) if cp and med(cp) else "-",
                             fr(med(cm), "%.1f") if cm else "-",
                             "%d%s" % (len(rs), (" (" + "; ".join(fails) + ")") if fails else "")])
    return table(head, rows)


def snapn_table(d):
    ns = d.nsnaps()
    if not ns:
        return ""
    head = ["snapshots", "first-write IOPS median (min-max)", "p99 us", "x %s snapshot" % ns[0],
            "rewrite IOPS median (min-max)", "p99 us", "x %s snapshot" % ns[0],
            "time to take them, median s", "runs"]
    rows = []
    f0 = med(d.iops(section="snapn", nsnap=ns[0], phase="first"))
    r0 = med(d.iops(section="snapn", nsnap=ns[0], phase="rewrite"))
    for n in ns:
        rf = d.sel(section="snapn", nsnap=n, phase="first")
        rr = d.sel(section="snapn", nsnap=n, phase="rewrite")
        fio_ = [num(r["iops"]) for r in rf]
        rio = [num(r["iops"]) for r in rr]
        take = [num(r["note"].split("took ")[1].split(" s")[0]) for r in rf
                if "took " in r["note"]]
        rows.append([n, spread(fio_), fi(med([num(r["p99_us"]) for r in rf])),
                     fr(ratio(med(fio_), f0)), spread(rio),
                     fi(med([num(r["p99_us"]) for r in rr])), fr(ratio(med(rio), r0)),
                     fr(med(take), "%.1f"), len(rf)])
    return table(head, rows)


EV_NAME = {("snapvol", "socket"): "snapvol, control socket",
           ("snapvol", "cli"): "snapvol, CLI (`snapvol snapshot ...`)",
           ("qemu-reopen", "reopen"): "qemu CBW: blockdev-add + blockdev-reopen",
           ("qemu-txn", "txn"): "qemu CBW: transaction{blockdev-backup sync=none}"}


def create_table(d):
    head = ["method", "step", "n", "call ms p50 / p99 / max", "of which switch ms p50 / max",
            "longest write in flight, ms p50 / p99 / max", "control: idle / live, ms p99",
            "excess ms p50 / p99 / max", "longest pause ms (max)"]
    rows = []
    keys = []
    for e in d.events:
        k = (e["target"], e["via"], e["event"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        es = d.ev(target=k[0], via=k[1], event=k[2])
        call = [num(e["dur_ms"]) for e in es]
        sw = [num(e["switch_ms"]) for e in es if num(e["switch_ms"]) is not None]
        if not sw:
            sw = [num(e["server_ms"]) for e in es if num(e["server_ms"]) is not None]
        mx = [num(e["max_lat_us"]) / 1e3 for e in es]
        idle = [num(e["idle_max_lat_us"]) / 1e3 for e in es if num(e["idle_max_lat_us"]) is not None]
        live = [num(e["live_max_lat_us"]) / 1e3 for e in es if num(e["live_max_lat_us"]) is not None]
        ex = [x / 1e3 for x in excess(es)]
        pause = [num(e["pause_ms"]) for e in es]
        step = {"create": "take", "delete": "drop", "unlink": "rm fleecing image",
                "settle": "settle: fsync after the drop"}[k[2]]
        if k[2] == "create" and k[0] == "snapvol":
            swl = "server %s / %s" % (fr(med(sw)), fr(max(sw) if sw else None))
        else:
            swl = "%s / %s" % (fr(med(sw)), fr(max(sw) if sw else None)) if sw else "-"
        rows.append([EV_NAME.get(k[:2], "%s %s" % k[:2]), step, len(es),
                     "%s / %s / %s" % (fr(med(call)), fr(pctl(call, 99)), fr(max(call))),
                     swl,
                     "%s / %s / %s" % (fr(med(mx)), fr(pctl(mx, 99)), fr(max(mx))),
                     "%s / %s" % (fr(pctl(idle, 99)), fr(pctl(live, 99))),
                     "%s / %s / %s" % (fr(med(ex)), fr(pctl(ex, 99)), fr(max(ex) if ex else None)),
                     fi(max(pause)) if pause else "-"])
    return table(head, rows)


PHASE_NAME = {"gap": "idle gap (no snapshot)", "create": "in flight during a take",
              "hold": "snapshot live (first writes copy)", "delete": "in flight during a drop",
              "unlink": "in flight during rm of qemu's fleecing image",
              "settle": "in flight during the fsync that settles a drop"}


def phases_table(d):
    if not d.phases:
        return ""
    head = ["method", "writes", "n", "p50 us", "p99 us", "p99.9 us", "max us"]
    rows = []
    for r in d.phases:
        rows.append([r["target"], PHASE_NAME.get(r["phase"], r["phase"]), r["n"], r["p50_us"],
                     r["p99_us"], r["p999_us"], r["max_us"]])
    return table(head, rows)


def load_table(d):
    rs = d.sel(section="create-load")
    if not rs:
        return ""
    head = ["load under", "IOPS", "p99 us", "max us", "writes", "seconds", "note"]
    rows = [[r["target"], r["iops"], r["p99_us"], r["max_us"], r["ios"], r["secs"], r["note"]]
            for r in rs]
    return table(head, rows)


def mem_table(d):
    if not d.mem:
        return ""
    head = ["step", "written MiB", "snapshots", "VmRSS MiB", "VmHWM MiB", "RssAnon MiB",
            "RssFile MiB", "snapshot space MiB", "note"]
    rows = []
    for m in d.mem:
        mib = lambda k: fr(num(m[k]) / 1024 if num(m[k]) is not None else None, "%.1f")
        rows.append([m["step"], m["written_mib"], m["snapshots"], mib("vm_rss_kib"),
                     mib("vm_hwm_kib"), mib("rss_anon_kib"), mib("rss_file_kib"),
                     m["snapshot_space_mib"], m["note"]])
    return table(head, rows)


def all_runs(d):
    head = ["section", "target", "QD", "snapshots", "pass", "rep", "IOPS", "p99 us", "p50 us",
            "max us", "I/Os", "s", "copied MiB", "journal commits", "note"]
    rows = [[r["section"], r["target"], r["qd"], r["nsnap"], r["phase"], r["rep"], r["iops"],
             r["p99_us"], r["p50_us"], r["max_us"], r["ios"], r["secs"], r["copied_mib"],
             r["commits"], r["note"]] for r in d.runs if r["section"] != "create-load"]
    return table(head, rows)


def markdown(runs, events, mem, phases):
    d = Data(runs, events, mem, phases)
    g = goals(d)
    if g:
        met = sum(1 for r in g if r[-1] == "yes")
        print("## Goals of issue 3: %d of %d met\n" % (met, sum(1 for r in g if r[2] != "-")))
        print("Ratios of medians; `paired`: the median of the ratios of passes of the same "
              "repetition (run back to back), which decides: a drift of the machine cancels "
              "out of it.\n")
        print(table(["goal", "measured", "needed", "met"], g))
        print()
    if d.qds():
        print("## 1-2. 4 KiB random writes right after a snapshot (first), then the same "
              "blocks again (rewrite)\n")
        print("Every target writes the very same blocks (same seed, fio's random map, a fixed "
              "count). snapvol's copies are durable before the write is acknowledged (pre-image "
              "and journal record synced, group commit); qemu's fleecing copies are not. `copied "
              "per write`: data copied into the snapshot store per 4 KiB written (snapvol: "
              "4 KiB chunks; qemu: 64 KiB clusters). Median over the repetitions, min-max in "
              "brackets.\n")
        print(first_table(d))
        print()
    t = snapn_table(d)
    if t:
        print("## 3. Write IOPS with 1, 10 and 100 snapshots\n")
        print("Take N snapshots (with random writes between them, so every epoch holds "
              "pre-images), then first-write the same fixed set of blocks, then rewrite them. "
              "All on snapvol.\n")
        print(t)
        print()
    if d.events:
        print("## 4. Taking a snapshot under a 4 KiB random-write load at QD16\n")
        print("Each cycle: idle gap, take the snapshot, hold it, drop it. `longest write in "
              "flight`: the longest write (fio, per-I/O log) that was in flight at any moment of "
              "the call; `control`: the same in equal-length windows in the middle of the idle "
              "gap and of the hold next to it (p99 over the cycles); `excess` = the call's "
              "longest write minus the longer control; `pause`: the longest stretch with no "
              "write completing that overlaps the call (1 ms resolution). snapvol's switch "
              "column is the server's own duration of the create command.\n")
        print(create_table(d))
        print()
        t = phases_table(d)
        if t:
            print("Write latency by what was happening while the write was in flight (all "
                  "writes of the load during the cycles):\n")
            print(t)
            print()
        t = load_table(d)
        if t:
            print("The background load (fio, 4 KiB random writes, QD16) over each whole "
                  "cycles run:\n")
            print(t)
            print()
    t = rw_table(d)
    if t:
        print("## Rewrites with no snapshot, sustained (section rw)\n")
        print("fio 4 KiB random writes at QD16 on the volume that never has a snapshot, time "
              "based, ended by a FLUSH; `with the final flush` counts the flush's time too "
              "(writes a target left unsynced are paid for there).\n")
        print(t)
        print()
    t = mem_table(d)
    if t:
        print("## 5. Memory of the snapvol server\n")
        print(t)
        print()
    if d.runs:
        print("## All fio runs\n")
        print(all_runs(d))


def rw_table(d):
    rs = d.sel(section="rw")
    if not rs:
        return None
    rows = []
    for r in rs:
        m = re.search(r"wall (\d+) ms with the final flush: (\d+) IOPS", r["note"] or "")
        rows.append([r["rep"], r["iops"], m.group(2) if m else "-", r["p99_us"], r["max_us"],
                     r["ios"], m.group(1) if m else "-"])
    wall = [num(x[2]) for x in rows]
    rows.append(["median", fi(med(d.iops(section="rw"))), fi(med(wall)), "", "", "", ""])
    return table(["rep", "IOPS (fio)", "IOPS with the final flush", "p99 us", "max us", "writes",
                  "wall ms"], rows)


TRACE_RE = re.compile(r"trace: snapshot \S+: drain (\d+) us, switch (\d+) us, older writes "
                      r"(\d+) us, origin sync (\d+) us, metadata (\d+) us; at the sync: dirty "
                      r"(-?\d+) KiB, writeback (-?\d+) KiB; write-behind max (\d+) KiB, near "
                      r"full in (\d+) of (\d+) samples")


LANDING_WAIT_RE = re.compile(r"trace: volume \S+: (.+) waited (\d+) us for a landing write-behind")
COMMIT_RE = re.compile(r"trace: volume \S+: a commit took (\d+) us( during a snapshot's origin sync)?")
PRESYNC_RE = re.compile(r"trace: snapshot \S+: presync (\d+) us")
INPLACE_RE = re.compile(r"trace: volume \S+: write-behind (.+): a first write done in place "
                        r"took (\d+) us")


def trace(logpath):
    """The server's create trace (SNAPVOL_TRACE_FREEZE=1), summed up."""
    rows = [tuple(int(x) for x in m.groups())
            for m in (TRACE_RE.search(line) for line in open(logpath, errors="replace")) if m]
    if rows:
        cols = [("older writes ms", 2, 1e3), ("origin sync ms", 3, 1e3), ("metadata ms", 4, 1e3),
                ("kernel dirty MiB at the sync", 5, 1024), ("under writeback MiB", 6, 1024),
                ("write-behind max MiB", 7, 1024)]
        out = []
        for name, i, div in cols:
            v = [r[i] / div for r in rows]
            out.append([name, fr(pctl(v, 50)), fr(pctl(v, 99)), fr(max(v))])
        pre = [int(m.group(1)) / 1e3 for m in (PRESYNC_RE.search(line) for line in
                                                open(logpath, errors="replace")) if m]
        if pre:
            out_pre = ["presync ms (before the switch)", fr(pctl(pre, 50)), fr(pctl(pre, 99)),
                       fr(max(pre))]
        full = sum(1 for r in rows if r[8] > 0)
        print("Server trace of the %d creates (`SNAPVOL_TRACE_FREEZE=1`); write-behind was "
              "within 64 KiB of full during %d of the origin syncs.\n" % (len(rows), full))
        if pre:
            out.insert(0, out_pre)
        print(table(["phase", "p50", "p99", "max"], out))
    # Writes that waited over 1 ms for a landing write-behind of their
    # chunks (engine/cow.c traces each), by who waited.
    waits = {}
    for line in open(logpath, errors="replace"):
        m = LANDING_WAIT_RE.search(line)
        if m:
            waits.setdefault(m.group(1), []).append(int(m.group(2)) / 1e3)
        m = INPLACE_RE.search(line)
        if m:
            waits.setdefault("a first write done in place (write-behind %s)" % m.group(1),
                             []).append(int(m.group(2)) / 1e3)
        # Commits over 1 ms (engine/journal.c): what a landing waits for.
        m = COMMIT_RE.search(line)
        if m:
            waits.setdefault("a commit%s" % (" during a create's origin sync" if m.group(2)
                                             else ", no create syncing"),
                             []).append(int(m.group(1)) / 1e3)
    out = [[who, str(len(v)), fr(pctl(v, 50)), fr(pctl(v, 99)), fr(max(v))]
           for who, v in sorted(waits.items())]
    print("\nWrites the server held over 1 ms (a landing write-behind of the same chunks, or "
          "write-behind full), and commits over 1 ms, whole run: %s.\n" % (sum(len(v) for v in waits.values()) or "none"))
    if out:
        print(table(["who waited", "n", "p50 ms", "p99 ms", "max ms"], out))


# ---------------------------------------------------------------- plot data

def dat(runs, events, mem, outdir):
    d = Data(runs, events, mem)
    os.makedirs(outdir, exist_ok=True)
    v = []
    # panel 1: first / rewrite IOPS per target
    targets = [t for t in FIRST_TARGETS if d.sel(section="first", target=t)]
    with open(os.path.join(outdir, "first.dat"), "w") as f:
        f.write("pass\t" + "\t".join('"%s"' % TARGET_NAME[t] for t in targets) + "\n")
        for qd in d.qds():
            for phase in ("first", "rewrite"):
                vals = [med(d.iops(section="first", target=t, qd=qd, phase=phase))
                        for t in targets]
                f.write('"QD%s %s"\t%s\n' % (qd, phase, "\t".join(
                    "NaN" if x is None else "%.0f" % x for x in vals)))
    v.append("n_first = %d" % len(targets))
    v.append("have_first = %d" % (1 if targets and d.qds() else 0))
    v.append('c_first = "%s"' % " ".join(COLOR[t] for t in targets))
    # panel 2: IOPS vs snapshots
    with open(os.path.join(outdir, "snapn.dat"), "w") as f:
        f.write('snapshots\t"first write"\t"rewrite"\n')
        for n in d.nsnaps():
            a = med(d.iops(section="snapn", nsnap=n, phase="first"))
            b = med(d.iops(section="snapn", nsnap=n, phase="rewrite"))
            f.write('"%s"\t%s\t%s\n' % (n, fi(a).replace("-", "NaN"), fi(b).replace("-", "NaN")))
    v.append("have_snapn = %d" % (1 if d.nsnaps() else 0))
    # panel 3: take/drop call time and longest write
    keys = []
    for e in d.events:
        k = (e["target"], e["via"], e["event"])
        if k not in keys and e["event"] in ("create", "delete"):
            keys.append(k)
    with open(os.path.join(outdir, "create.dat"), "w") as f:
        f.write('step\t"call p50"\t"call p99"\t"longest write p99"\t"control p99"\n')
        for k in keys:
            es = d.ev(target=k[0], via=k[1], event=k[2])
            call = [num(e["dur_ms"]) for e in es]
            mx = [num(e["max_lat_us"]) / 1e3 for e in es]
            ctl = [max(x for x in (num(e["idle_max_lat_us"]), num(e["live_max_lat_us"]), 0)
                       if x is not None) / 1e3 for e in es]
            lbl = "%s %s %s" % ({"snapvol": "snapvol", "qemu-reopen": "qemu",
                                 "qemu-txn": "qemu"}[k[0]], k[1],
                                {"create": "take", "delete": "drop"}[k[2]])
            f.write('"%s"\t%.3f\t%.3f\t%.3f\t%.3f\n' % (lbl, med(call), pctl(call, 99),
                                                         pctl(mx, 99), pctl(ctl, 99)))
    v.append("have_create = %d" % (1 if keys else 0))
    # panel 4: memory steps
    with open(os.path.join(outdir, "mem.dat"), "w") as f:
        f.write('step\t"VmRSS"\t"VmHWM"\n')
        for m in d.mem:
            if m["step"] == "main server":
                continue
            f.write('"%s"\t%.1f\t%.1f\n' % (m["key"], num(m["vm_rss_kib"]) / 1024,
                                           num(m["vm_hwm_kib"]) / 1024))
    v.append("have_mem = %d" % (1 if [m for m in d.mem if m["step"] != "main server"] else 0))
    with open(os.path.join(outdir, "vars.gp"), "w") as f:
        f.write("\n".join(v) + "\n")


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "row":
        fio_row(a[1])
    elif len(a) == 4 and a[0] == "stalls":
        stalls(a[1], a[2], a[3])
    elif len(a) == 4 and a[0] == "phases":
        phases(a[1], a[2], a[3])
    elif len(a) == 3 and a[0] == "loadrow":
        loadrow(a[1], a[2])
    elif len(a) == 5 and a[0] == "md":
        markdown(a[1], a[2], a[3], a[4])
    elif len(a) == 2 and a[0] == "trace":
        trace(a[1])
    elif len(a) == 5 and a[0] == "dat":
        dat(a[1], a[2], a[3], a[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
