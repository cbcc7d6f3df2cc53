#!/usr/bin/python3
"""radosbench.py: the measuring and reporting parts of bench/rados.sh.

rados.sh starts the cluster, the server and fio; what needs a client
library, precise timing or arithmetic lives here.  Every measurement is one
line of the run's TSV (columns below); the report and the plot are made
from that file alone, so `radosbench.py md FILE.tsv` rebuilds them.

  radosbench.py fio FIO.json KIND ROW TARGET REP
        one fio pass (JSON output) as a TSV line
  radosbench.py diff --from A --to B --reps N --rep R --snapvol BIN
        time `rbd diff --from-snap A rbd/img@B` (also --whole-object) and
        `snapvol diff vm1@A vm1@B --json`, N runs each, interleaved; then the
        same through the APIs (python3-rbd diff_iterate on an open image;
        the control socket's paged `diff`): three + three TSV lines
  radosbench.py create --n N --snapvol BIN --ctl SOCK
        N snapshot creates per target through the CLIs (`rbd snap create`,
        `snapvol snapshot create`), alternating, then N per target through
        the APIs (rbd.Image.create_snap on an image opened once; the control
        socket's snapshot-create); deletes them all after; four TSV lines
  radosbench.py md RUNS.tsv --command CMD --machine TEXT --load TEXT [--prefix P]
        the Markdown report: goals, IOPS and ratios, create, diff
  radosbench.py dat RUNS.tsv DIR
        data files for rados.gp

TSV columns: kind row target rep iops mibs p50_us p99_us n note
  kind prefill|none|first|snap (fio passes: IOPS, MiB/s, completion latency
  percentiles, I/Os), create|diff (wall times: p50, p99 (diff: the worst),
  n runs; iops and mibs empty; note: what was listed).

Needs Debian's /usr/bin/python3 (python3-rbd, python3-rados); the CEPH_CONF
environment variable names the cluster, the pools are rbd (image img) and
blk (snapvol's volume vm1), as rados.sh sets them up.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

COLS = ["kind", "row", "target", "rep", "iops", "mibs", "p50_us", "p99_us", "n", "note"]
TARGETS = ("rbd", "snapvol")


def line(*vals):
    print("\t".join("" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
                    for v in vals), flush=True)


def pct(xs, p):
    """The p-th percentile (nearest rank) of xs."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------- fio

def cmd_fio(a):
    with open(a.json) as f:
        text = f.read()
    d = json.loads(text[text.index("{"):])   # fio may print a warning first
    j = d["jobs"][0]
    io = j["write"] if j["write"]["total_ios"] else j["read"]
    lat = io.get("clat_ns", {}).get("percentile") or io.get("lat_ns", {}).get("percentile", {})
    p50 = lat.get("50.000000", 0) / 1000.0
    p99 = lat.get("99.000000", 0) / 1000.0
    line(a.kind, a.row, a.target, a.rep, io["iops"], io["bw"] / 1024.0, p50, p99,
         io["total_ios"], "")


# ---------------------------------------------------------------- diff

def wall(argv):
    t = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: status {r.returncode}: {r.stderr.strip()}")
    return dt * 1e6, r.stdout


def rbd_extents(out):
    ext = json.loads(out)
    return len(ext), sum(e["length"] for e in ext)


def cmd_diff(a):
    import rados
    import rbd
    from cowbench import Control

    ctl = Control(a.ctl)
    rbd_cli = ["rbd", "diff", "--from-snap", a.frm, f"rbd/img@{a.to}", "--format", "json"]
    runs = {
        ("cli", "rbd"): rbd_cli,
        ("cli-whole-object", "rbd"): rbd_cli + ["--whole-object"],
        ("cli", "snapvol"): [a.snapvol, "--pool", "rados:blk", "diff", f"vm1@{a.frm}",
                             f"vm1@{a.to}", "--json"],
    }
    times = {k: [] for k in runs}
    notes = {}
    for _ in range(a.reps):
        for k, argv in runs.items():
            us, out = wall(argv)
            times[k].append(us)
            if k[1] == "rbd":
                e, b = rbd_extents(out)
            else:
                d = json.loads(out)
                e, b = d["extent_count"], d["changed_bytes"]
            notes[k] = f"{e} extents, {b} bytes"

    # The APIs, without process start-up and cluster connection.
    cluster = rados.Rados(conffile=os.environ.get("CEPH_CONF", ""))
    cluster.connect()
    api = {("api", "rbd"): [], ("api-whole-object", "rbd"): [], ("api", "snapvol"): []}
    try:
        ioctx = cluster.open_ioctx("rbd")
        img = rbd.Image(ioctx, "img", snapshot=a.to, read_only=True)
        size = img.size()
        for _ in range(a.reps):
            for whole, key in ((False, ("api", "rbd")), (True, ("api-whole-object", "rbd"))):
                ext = []
                t = time.monotonic()
                img.diff_iterate(0, size, a.frm, lambda o, n, e: ext.append((o, n, e)),
                                 whole_object=whole)
                api[key].append((time.monotonic() - t) * 1e6)
                notes[key] = f"{len(ext)} extents, {sum(n for _, n, e in ext if e)} bytes"
            t = time.monotonic()
            n_ext, nbytes, off = 0, 0, 0
            while off is not None:
                r = ctl.call("diff", **{"from": f"vm1@{a.frm}", "to": f"vm1@{a.to}",
                                        "offset": off})
                n_ext += len(r["extents"])
                nbytes += r["changed_bytes"]
                off = r["next"]
            api[("api", "snapvol")].append((time.monotonic() - t) * 1e6)
            notes[("api", "snapvol")] = f"{n_ext} extents, {nbytes} bytes"
        img.close()
        ioctx.close()
    finally:
        cluster.shutdown()
    times.update(api)
    for (row, target), ts in times.items():
        line("diff", row, target, a.rep, None, None, statistics.median(ts), max(ts), len(ts),
             notes[(row, target)])


# ---------------------------------------------------------------- create

def cmd_create(a):
    import rados
    import rbd
    from cowbench import Control

    cli = {"rbd": [], "snapvol": []}
    for i in range(a.n):
        for t in (TARGETS if i % 2 == 0 else TARGETS[::-1]):
            if t == "rbd":
                argv = ["rbd", "snap", "create", "--no-progress", f"rbd/img@c{i}"]
            else:
                argv = [a.snapvol, "--pool", "rados:blk", "snapshot", "create", f"vm1@c{i}"]
            us, _ = wall(argv)
            cli[t].append(us)
    ctl = Control(a.ctl)
    api = {"rbd": [], "snapvol": [], "snapvol-server": []}
    cluster = rados.Rados(conffile=os.environ.get("CEPH_CONF", ""))
    cluster.connect()
    try:
        ioctx = cluster.open_ioctx("rbd")
        img = rbd.Image(ioctx, "img")
        for i in range(a.n):
            for t in (TARGETS if i % 2 == 0 else TARGETS[::-1]):
                t0 = time.monotonic()
                if t == "rbd":
                    img.create_snap(f"d{i}")
                    api["rbd"].append((time.monotonic() - t0) * 1e6)
                else:
                    r = ctl.call("snapshot-create", snapshots=[f"vm1@d{i}"])
                    api["snapvol"].append((time.monotonic() - t0) * 1e6)
                    api["snapvol-server"].append(r.get("duration_us", 0))
        # clean up: every c* and d* snapshot of both
        for s in list(img.list_snaps()):
            img.remove_snap(s["name"])
        img.close()
        ioctx.close()
    finally:
        cluster.shutdown()
    for s in ctl.snapshots("vm1"):
        ctl.call("snapshot-delete", snapshot=f"vm1@{s}")
    for t in TARGETS:
        line("create", "cli", t, 1, None, None, pct(cli[t], 50), pct(cli[t], 99), len(cli[t]), "")
    for t in TARGETS:
        note = ""
        if t == "snapvol":
            st = api["snapvol-server"]
            note = f"server's own time (duration_us) p50 {pct(st, 50):.0f} us, p99 {pct(st, 99):.0f} us"
        line("create", "api", t, 1, None, None, pct(api[t], 50), pct(api[t], 99), len(api[t]),
             note)


# ---------------------------------------------------------------- report

def load(path):
    rows = []
    with open(path) as f:
        for ln in f:
            v = ln.rstrip("\n").split("\t")
            if len(v) < len(COLS) - 1:
                continue
            r = dict(zip(COLS, v + [""] * (len(COLS) - len(v))))
            for k in ("iops", "mibs", "p50_us", "p99_us"):
                r[k] = float(r[k]) if r[k] else None
            rows.append(r)
    return rows


def med(rows, kind, row, target, key):
    xs = [r[key] for r in rows
          if r["kind"] == kind and r["row"] == row and r["target"] == target and r[key] is not None]
    return statistics.median(xs) if xs else None


FIO_ROWS = [  # (kind, row, label, goal)
    ("none", "rw4k", "4 KiB random write, QD16", "within20"),
    ("none", "rr4k", "4 KiB random read, QD16", "within20"),
    ("none", "sw1m", "1 MiB sequential write, QD16", "within20"),
    ("none", "sr1m", "1 MiB sequential read, QD16", "within20"),
    ("first", "rw4k", "4 KiB random first writes after a snapshot, QD16", "ahead"),
    ("first", "sw1m", "1 MiB sequential first writes after a snapshot (one pass)", "ahead"),
    ("snap", "rr4k", "4 KiB random read, snapshots exist, QD16", ""),
    ("snap", "sr1m", "1 MiB sequential read, snapshots exist, QD16", ""),
    ("prefill", "sw1m", "prefill: 1 MiB sequential write of a new image (one pass)", ""),
]


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cmd_md(a):
    rows = load(a.tsv)
    out = []
    w = out.append
    w(f"# {a.prefix}snapvol on a RADOS pool against librbd, same cluster, same run")
    w("")
    w(f"Command: `{a.command}`")
    w("")
    w("Machine: " + " ".join(a.machine.split("\n")) + ".")
    w(f"Load average (1/5/15 min) at the start -> at the end: {a.load}.")
    w("")
    w("Both targets on one single-node cluster (`tests/integration/ceph-cluster.sh`: one monitor,")
    w("one memstore OSD: data in RAM, so these figures measure the clients, the OSD's CPU and the")
    w("messenger, not a disk). librbd through fio's rbd engine (librbd in fio's process; its cache")
    w("as the machine line says), snapvol through fio's nbd engine over a unix socket to")
    w("`snapvol --pool rados:blk serve`. One fio job, one connection, depth 16 for both.")
    w("Ratios are snapvol / librbd for IOPS (above 1: snapvol faster) and librbd / snapvol for")
    w("times (above 1: snapvol faster). Medians over repetitions.")
    w("")

    # goals
    goals = []
    within = []
    for kind, row, label, g in FIO_ROWS:
        r = ratio(med(rows, kind, row, "snapvol", "iops"), med(rows, kind, row, "rbd", "iops"))
        if g == "within20" and r is not None:
            within.append((row, r))
    if within:
        ok = all(r >= 0.8 for _, r in within)
        goals.append(("within 20% of librbd's IOPS without a snapshot (every row >= 0.80x)",
                      ", ".join(f"{row} {r:.2f}x" for row, r in within), ok))
    ahead = []
    for kind, row, label, g in FIO_ROWS:
        r = ratio(med(rows, kind, row, "snapvol", "iops"), med(rows, kind, row, "rbd", "iops"))
        if g == "ahead" and r is not None:
            ahead.append((row, r))
    if ahead:
        goals.append(("ahead of RBD on first writes after a snapshot (> 1.00x)",
                      ", ".join(f"{row} {r:.2f}x" for row, r in ahead),
                      all(r > 1 for _, r in ahead)))
    for way in ("cli", "api"):
        # The goal compares listings of equal precision: `rbd diff` lists the
        # same extents as snapvol; --whole-object (the object map) lists whole
        # 4 MiB objects, shown apart.
        sv = med(rows, "diff", way, "snapvol", "p50_us")
        rb = med(rows, "diff", way, "rbd", "p50_us")
        wo = med(rows, "diff", way + "-whole-object", "rbd", "p50_us")
        if sv is not None and rb is not None:
            m = f"snapvol {sv / 1000:.1f} ms vs rbd {rb / 1000:.1f} ms: {rb / sv:.2f}x"
            if wo is not None:
                m += (f" (rbd --whole-object, whole 4 MiB objects: {wo / 1000:.1f} ms, "
                      f"{wo / sv:.2f}x)")
            goals.append((f"ahead of RBD on change listing ({'commands' if way == 'cli' else 'APIs'}"
                          ", `rbd diff` vs `snapvol diff`)", m, sv < rb))
    if goals:
        w("## Goals (issue 7)")
        w("")
        w("| goal | measured | met |")
        w("|---|---|---|")
        for g, m, ok in goals:
            w(f"| {g} | {m} | {'yes' if ok else 'no'} |")
        w("")

    w("## fio")
    w("")
    w("| workload | librbd IOPS | snapvol IOPS | snapvol / librbd | librbd MiB/s | snapvol MiB/s "
      "| p50 us librbd / snapvol | p99 us librbd / snapvol | goal |")
    w("|---|---|---|---|---|---|---|---|---|")
    for kind, row, label, g in FIO_ROWS:
        vals = {t: {k: med(rows, kind, row, t, k) for k in ("iops", "mibs", "p50_us", "p99_us")}
                for t in TARGETS}
        if all(v["iops"] is None for v in vals.values()):
            continue
        r = ratio(vals["snapvol"]["iops"], vals["rbd"]["iops"])
        goal = {"within20": ">= 0.80", "ahead": "> 1.00"}.get(g, "")
        if goal and r is not None:
            goal += " " + ("met" if (r >= 0.8 if g == "within20" else r > 1) else "not met")
        w(f"| {label} | {fmt(vals['rbd']['iops'])} | {fmt(vals['snapvol']['iops'])} | "
          f"{fmt(r, '.2f')} | {fmt(vals['rbd']['mibs'], '.1f')} | "
          f"{fmt(vals['snapvol']['mibs'], '.1f')} | {fmt(vals['rbd']['p50_us'])} / "
          f"{fmt(vals['snapvol']['p50_us'])} | {fmt(vals['rbd']['p99_us'])} / "
          f"{fmt(vals['snapvol']['p99_us'])} | {goal} |")
    w("")

    # qemu-nbd over librbd (QEMU=1): the NBD hop's own cost next to snapvol's
    qrows = [(kind, row, label) for kind, row, label, g in FIO_ROWS
             if med(rows, kind, row, "qemu", "iops") is not None]
    if qrows:
        w("## qemu-nbd over librbd (a second image), the NBD hop's cost")
        w("")
        w("| workload | librbd IOPS | qemu-nbd IOPS | snapvol IOPS | qemu-nbd / librbd "
          "| snapvol / qemu-nbd |")
        w("|---|---|---|---|---|---|")
        for kind, row, label in qrows:
            v = {t: med(rows, kind, row, t, "iops") for t in ("rbd", "qemu", "snapvol")}
            w(f"| {label} | {fmt(v['rbd'])} | {fmt(v['qemu'])} | {fmt(v['snapvol'])} | "
              f"{fmt(ratio(v['qemu'], v['rbd']), '.2f')} | "
              f"{fmt(ratio(v['snapvol'], v['qemu']), '.2f')} |")
        w("")

    # the spread: each repetition's ratio, where a row ran more than once
    spread = []
    for kind, row, label, g in FIO_ROWS:
        reps = sorted({r["rep"] for r in rows if r["kind"] == kind and r["row"] == row})
        rs = []
        for rep in reps:
            x = {t: next((r["iops"] for r in rows if r["kind"] == kind and r["row"] == row
                          and r["target"] == t and r["rep"] == rep), None)
                 for t in TARGETS}
            rs.append(ratio(x["snapvol"], x["rbd"]))
        rs = [r for r in rs if r is not None]
        if len(rs) > 1:
            spread.append((label, rs))
    if spread:
        w("## Spread: snapvol / librbd in each repetition")
        w("")
        w("| workload | per repetition | min | median | max |")
        w("|---|---|---|---|---|")
        for label, rs in spread:
            w(f"| {label} | {' '.join(f'{r:.2f}' for r in rs)} | {min(rs):.2f} | "
              f"{statistics.median(rs):.2f} | {max(rs):.2f} |")
        w("")

    cr = [r for r in rows if r["kind"] == "create"]
    if cr:
        w("## Snapshot create (idle volume)")
        w("")
        w("| how | rbd p50 / p99 ms | snapvol p50 / p99 ms | rbd / snapvol at p50 | n | note |")
        w("|---|---|---|---|---|---|")
        for way, label in (("cli", "command: `rbd snap create` vs `snapvol snapshot create`"),
                           ("api", "API: python3-rbd `Image.create_snap` vs control socket "
                                   "`snapshot-create`")):
            v = {t: (med(rows, "create", way, t, "p50_us"), med(rows, "create", way, t, "p99_us"))
                 for t in TARGETS}
            if v["rbd"][0] is None:
                continue
            n = next((r["n"] for r in cr if r["row"] == way), "")
            note = next((r["note"] for r in cr if r["row"] == way and r["note"]), "")
            w(f"| {label} | {v['rbd'][0] / 1000:.1f} / {v['rbd'][1] / 1000:.1f} | "
              f"{v['snapvol'][0] / 1000:.1f} / {v['snapvol'][1] / 1000:.1f} | "
              f"{fmt(ratio(v['rbd'][0], v['snapvol'][0]), '.2f')} | {n} | {note} |")
        w("")

    df = [r for r in rows if r["kind"] == "diff"]
    if df:
        w("## Listing the changes between two snapshots")
        w("")
        w("The first-writes pass (`FIRST_IOS` random 4 KiB writes) and the reads after it lie")
        w("between the two snapshots. `rbd diff` lists extents (a list-snaps call per object:")
        w("the same precision as `snapvol diff`, which the goal compares); with `--whole-object` it")
        w("reads its object map (fast-diff) and lists whole 4 MiB objects instead.")
        w("")
        w("| how | target | wall ms median / worst | n | what it listed |")
        w("|---|---|---|---|---|")
        seen = []
        for r in df:
            k = (r["row"], r["target"])
            if k in seen:
                continue
            seen.append(k)
            w(f"| {r['row']} | {r['target']} | "
              f"{med(rows, 'diff', r['row'], r['target'], 'p50_us') / 1000:.1f} / "
              f"{med(rows, 'diff', r['row'], r['target'], 'p99_us') / 1000:.1f} | {r['n']} | "
              f"{r['note']} |")
        w("")
    w("Raw figures: the `.tsv` next to this file (`bench/radosbench.py md FILE.tsv` rebuilds these"
      " tables); plot: the `.png`.")
    print("\n".join(out))


def cmd_dat(a):
    rows = load(a.tsv)
    with open(os.path.join(a.dir, "fio.dat"), "w") as f:
        f.write("workload\tlibrbd\tsnapvol\tratio\n")
        for kind, row, label, g in FIO_ROWS:
            if kind == "prefill":
                continue
            rb, sv = med(rows, kind, row, "rbd", "iops"), med(rows, kind, row, "snapvol", "iops")
            if rb is None and sv is None:
                continue
            r = ratio(sv, rb)
            f.write(f"{kind} {row}\t{fmt(rb, '.1f')}\t{fmt(sv, '.1f')}\t"
                    f"{'NaN' if r is None else f'{r:.3f}'}\n".replace("\t-", "\tNaN"))
    with open(os.path.join(a.dir, "times.dat"), "w") as f:
        f.write("what\trbd\tsnapvol\n")
        for kind, way, key, label in (("create", "cli", "p50_us", "create cmd p50"),
                                      ("create", "cli", "p99_us", "create cmd p99"),
                                      ("create", "api", "p50_us", "create API p50"),
                                      ("create", "api", "p99_us", "create API p99"),
                                      ("diff", "cli", "p50_us", "diff cmd"),
                                      ("diff", "api", "p50_us", "diff API")):
            rb = med(rows, kind, way, "rbd", key)
            sv = med(rows, kind, way, "snapvol", key)
            if rb is None and sv is None:
                continue
            f.write(f"{label}\t{ms(rb)}\t{ms(sv)}\n")


def ms(us):
    return "NaN" if us is None else f"{us / 1000:.3f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("fio")
    for k in ("json", "kind", "row", "target", "rep"):
        s.add_argument(k)
    s = sub.add_parser("diff")
    s.add_argument("--from", dest="frm", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--rep", type=int, default=1)
    s.add_argument("--snapvol", required=True)
    s.add_argument("--ctl", required=True)
    s = sub.add_parser("create")
    s.add_argument("--n", type=int, default=30)
    s.add_argument("--snapvol", required=True)
    s.add_argument("--ctl", required=True)
    s = sub.add_parser("md")
    s.add_argument("tsv")
    s.add_argument("--command", default="")
    s.add_argument("--machine", default="")
    s.add_argument("--load", default="")
    s.add_argument("--prefix", default="")
    s = sub.add_parser("dat")
    s.add_argument("tsv")
    s.add_argument("dir")
    a = p.parse_args()
    {"fio": cmd_fio, "diff": cmd_diff, "create": cmd_create, "md": cmd_md, "dat": cmd_dat}[a.cmd](a)


if __name__ == "__main__":
    main()
