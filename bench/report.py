#!/usr/bin/env python3
"""report.py: the numbers side of bench/nbd-matrix.sh (stdlib only).

The shell script runs fio and keeps one TSV line per run; everything that
needs arithmetic or JSON lives here, so the shell stays a plain sequence of
runs and the report can be rebuilt from a kept TSV at any time:

  report.py row FIO.json read|write   one run's figures, tab-separated:
                                      iops, MiB/s, p99 us, p50 us, I/Os
  report.py md RESULTS.tsv            the Markdown tables (stdout)
  report.py dat RESULTS.tsv DIR       gnuplot data for nbd-matrix.gp in DIR

Every figure is compared with two rows of the same workload, queue depth and
job count from the same run: `raw` (fio on the file itself, the physical
limit) and `null` (nbdkit's null plugin through fio's nbd engine, the ceiling
of the protocol and of the client).
"""
import csv
import json
import os
import sys

REF_RAW = "raw"
REF_NULL = "null"
PEERS = ("nbdkit-file", "qemu-nbd")
# one colour per target in every panel of the plot
COLOR = {"raw": "#505050", "null": "#9a9a9a", "nbdkit-file": "#2a9d8f",
         "qemu-nbd": "#457b9d", "snapvol": "#e76f51"}
WL_NAME = {
    "rr4k": "4 KiB rand read",
    "rw4k": "4 KiB rand write",
    "sr1m": "1 MiB seq read",
    "sw1m": "1 MiB seq write",
}


def fio_row(path, ddir):
    d = json.load(open(path))
    j = d["jobs"][0][ddir]
    # lat_ns (submission to completion) when lat_percentiles=1, else clat
    pct = j.get("lat_ns", {}).get("percentile") or j["clat_ns"]["percentile"]
    print("%.0f\t%.1f\t%.0f\t%.0f\t%d" % (j["iops"], j["bw_bytes"] / 1048576.0,
                                          pct["99.000000"] / 1000.0,
                                          pct["50.000000"] / 1000.0, j["total_ios"]))


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def ratio(a, b):
    a, b = num(a), num(b)
    return a / b if a is not None and b else None


def fr(x):
    return "-" if x is None else "%.2f" % x


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    keys, targets, by = [], [], {}
    for r in rows:
        k = (r["wl"], r["qd"], r["jobs"])
        if k not in keys:
            keys.append(k)
        if r["target"] not in targets:
            targets.append(r["target"])
        by[k + (r["target"],)] = r
    return keys, targets, by


def label(k):
    wl, qd, jobs = k
    return "%s QD%s j%s" % (WL_NAME.get(wl, wl), qd, jobs)


def short(k):
    wl, qd, jobs = k
    return "%s q%s j%s" % (wl, qd, jobs)


def goals(keys, targets, by):
    """The issue's goals for snapvol, row by row (only when it ran)."""
    if "snapvol" not in targets:
        return []
    out = []
    for k in keys:
        sv = by.get(k + ("snapvol",))
        if not sv:
            continue
        best = None
        for p in PEERS:
            r = by.get(k + (p,))
            if r and num(r["iops"]) is not None and (best is None or num(r["iops"]) > num(best["iops"])):
                best = r
        if best is not None:
            x = ratio(sv["iops"], best["iops"])
            out.append([label(k), "IOPS >= better of nbdkit-file, qemu-nbd (%s)" % best["target"],
                        fr(x), ">= 1.00", "yes" if x is not None and x >= 1.0 else "**no**"])
        wl, qd, _ = k
        nul = by.get(k + (REF_NULL,))
        if wl in ("rr4k", "rw4k") and qd == "16" and nul:
            x = ratio(sv["iops"], nul["iops"])
            out.append([label(k), "IOPS within 10% of the null ceiling", fr(x), ">= 0.90",
                        "yes" if x is not None and x >= 0.9 else "**no**"])
        raw = by.get(k + (REF_RAW,))
        if wl == "sr1m" and raw:
            x = ratio(sv["iops"], raw["iops"])
            out.append([label(k), "MiB/s >= 60% of raw fio", fr(x), ">= 0.60",
                        "yes" if x is not None and x >= 0.6 else "**no**"])
    return out


def markdown(path):
    keys, targets, by = load(path)
    g = goals(keys, targets, by)
    if g:
        met = sum(1 for r in g if r[-1] == "yes")
        print("## snapvol against the goals of issue 2: %d of %d met\n" % (met, len(g)))
        print(table(["workload", "goal", "snapvol ratio", "needed", "met"], g))
        print()
    print("## Summary: IOPS per workload (x raw fio / x null ceiling)\n")
    print("Each cell: IOPS (IOPS divided by the `raw` row / by the `null` row of the same "
          "workload). MiB/s ratios are the same (same block size).\n")
    head = ["workload"] + targets
    rows = []
    for k in keys:
        raw, nul = by.get(k + (REF_RAW,)), by.get(k + (REF_NULL,))
        cells = [label(k)]
        for t in targets:
            r = by.get(k + (t,))
            if not r or num(r["iops"]) is None:
                cells.append("failed" if r else "-")
                continue
            rr = [fr(ratio(r["iops"], raw["iops"])) if raw and t != REF_RAW else None,
                  fr(ratio(r["iops"], nul["iops"])) if nul and t != REF_NULL else None]
            rr = [x for x in rr if x is not None]
            if t == REF_RAW and nul:
                rr = ["1.00", fr(ratio(r["iops"], nul["iops"]))]
            if t == REF_NULL and raw:
                rr = [fr(ratio(r["iops"], raw["iops"])), "1.00"]
            cells.append("%s (%s)" % (r["iops"], " / ".join(rr)) if rr else r["iops"])
        rows.append(cells)
    print(table(head, rows))
    print("\n## All figures\n")
    print("`x raw` / `x null`: the figure divided by the same figure of the `raw` / `null` row "
          "of the same workload, QD and jobs in this run. For IOPS and MiB/s higher is better; "
          "for p99 latency (submission to completion) lower is better. `srv CPU %`: CPU time "
          "the server process used during the fio run (ramp included), in % of one core.\n")
    head = ["workload", "QD", "jobs", "target", "IOPS", "MiB/s", "p99 us",
            "IOPS, MiB/s x raw", "IOPS, MiB/s x null", "p99 x raw", "p99 x null",
            "srv CPU %", "note"]
    rows = []
    for k in keys:
        raw, nul = by.get(k + (REF_RAW,)), by.get(k + (REF_NULL,))
        for t in targets:
            r = by.get(k + (t,))
            if not r:
                continue
            rows.append([WL_NAME.get(k[0], k[0]), k[1], k[2], t,
                         r["iops"] or "-", r["mibs"] or "-", r["p99_us"] or "-",
                         fr(ratio(r["iops"], raw["iops"])) if raw else "-",
                         fr(ratio(r["iops"], nul["iops"])) if nul else "-",
                         fr(ratio(r["p99_us"], raw["p99_us"])) if raw else "-",
                         fr(ratio(r["p99_us"], nul["p99_us"])) if nul else "-",
                         r["srv_cpu_pct"] or "-", r["note"]])
    print(table(head, rows))


def dat(path, outdir):
    """Three data files (one row per workload, one column per target) and
    vars.gp with their column count, for nbd-matrix.gp."""
    keys, targets, by = load(path)
    os.makedirs(outdir, exist_ok=True)
    servers = [t for t in targets if t != REF_RAW]

    def write(name, cols, f):
        with open(os.path.join(outdir, name), "w") as o:
            o.write("workload\t" + "\t".join(cols) + "\n")
            for k in keys:
                vals = []
                for t in cols:
                    v = f(k, t)
                    vals.append("NaN" if v is None else "%.4g" % v)
                o.write('"%s"\t%s\n' % (short(k), "\t".join(vals)))

    def xref(ref):
        def f(k, t):
            r, b = by.get(k + (t,)), by.get(k + (ref,))
            return ratio(r["iops"], b["iops"]) if r and b else None
        return f

    write("xraw.dat", servers, xref(REF_RAW))
    others = [t for t in servers if t != REF_NULL]
    write("xnull.dat", others, xref(REF_NULL))
    write("p99.dat", targets,
          lambda k, t: num(by[k + (t,)]["p99_us"]) if k + (t,) in by else None)
    def colors(cols):
        return '"%s"' % " ".join(COLOR.get(t, "#808080") for t in cols)

    with open(os.path.join(outdir, "vars.gp"), "w") as o:
        o.write("n_rows = %d\n" % len(keys))
        o.write("n_xraw = %d\nc_xraw = %s\n" % (len(servers), colors(servers)))
        o.write("n_xnull = %d\nc_xnull = %s\n" % (len(others), colors(others)))
        o.write("n_p99 = %d\nc_p99 = %s\n" % (len(targets), colors(targets)))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "row":
        fio_row(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "md":
        markdown(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "dat":
        dat(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
