#!/usr/bin/env python3
"""test-cow-report.py: bench/cow-report.py's count of slow writes per window.

The create goal of issue 3 is the maximum, over 30 takes, of the longest
write in a take minus the longer of two equal control windows; that one
figure cannot tell a take that makes slow writes more frequent from a
machine that has them anyway.  So 'stalls' also counts, for each step and
each control window, the writes in flight over 1 and 2 ms, and the report
sums them per second of window under the goal's line; and the goal's own
figure is computed for placebo windows with no create in them, against the
same controls (neither is a goal: the count of goals met must not
change).  This test feeds the script a
made-up fio latency log and driver events, where the take holds three slow
writes, the idle gap one and the hold none, and checks the columns and the
rates it prints.  No server is started.
"""
import json
import os
import subprocess
import sys
import tempfile

SRC = os.environ.get("SRCDIR", os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(SRC, "..", "..", "bench", "cow-report.py")
EV_HEAD = ("target\tvia\tevent\ti\tt0_ms\tdur_ms\tserver_ms\tswitch_ms\tmax_lat_us\tn_ios\t"
           "pause_ms\tidle_max_lat_us\tidle_pause_ms\tlive_max_lat_us\tlive_pause_ms\tbytes\t"
           "step_slow\tidle_slow\tlive_slow\tplacebo_idle_max_lat_us\tplacebo_live_max_lat_us\n")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def main():
    with tempfile.TemporaryDirectory() as d:
        T = 1_000_000  # Unix ms, made up
        # driver: gap [T, T+1000], create [T+1000, T+1050], hold [T+1050, T+2050]
        ev = {"events": [
            {"event": "gap", "via": "", "t0": T, "t1": T + 1000, "ms": 1000},
            {"event": "create", "via": "socket", "t0": T + 1000, "t1": T + 1050, "ms": 50,
             "server_ms": 49},
            {"event": "hold", "via": "", "t0": T + 1050, "t1": T + 2050, "ms": 1000},
            {"event": "delete", "via": "socket", "t0": T + 2050, "t1": T + 2060, "ms": 10},
        ]}
        evp = os.path.join(d, "ev.json")
        json.dump(ev, open(evp, "w"))
        # fio log: completion ms, latency ns; a fast write every ms ...
        rows = [(t, 200_000) for t in range(T, T + 2100)]
        # ... and slow ones: three in the take (1.5, 2.5, 3 ms), one in the
        # middle of the gap (1.2 ms), and one 2.5 ms write in the hold,
        # outside its centered control window but in its placebo window
        # (three quarters in)
        rows += [(T + 1020, 1_500_000), (T + 1030, 2_500_000), (T + 1045, 3_000_000),
                 (T + 500, 1_200_000), (T + 1800, 2_500_000)]
        rows.sort()
        latp = os.path.join(d, "lat.log")
        with open(latp, "w") as f:
            for t, ns in rows:
                f.write("%d, %d, 1, 4096, 0\n" % (t, ns))
        out = subprocess.run([sys.executable, REPORT, "stalls", "snapvol", latp, evp],
                             capture_output=True, text=True, check=True).stdout
        lines = [x.split("\t") for x in out.splitlines()]
        cr = [x for x in lines if x[2] == "create"]
        if len(cr) != 1:
            fail("expected one create line, got %r" % out)
        cols = EV_HEAD.rstrip("\n").split("\t")
        if len(cr[0]) != len(cols):
            fail("create line has %d columns, header %d" % (len(cr[0]), len(cols)))
        row = dict(zip(cols, cr[0]))
        step = row["step_slow"].split(",")
        idle = row["idle_slow"].split(",")
        live = row["live_slow"].split(",")
        if float(step[0]) != 50.0 or step[1:] != ["3", "2"]:
            fail("take window: %r (want 50 ms, 3 over 1 ms, 2 over 2 ms)" % step)
        if float(idle[0]) != 50.0 or idle[1:] != ["1", "0"]:
            fail("idle control: %r (want 50 ms, 1, 0)" % idle)
        if float(live[0]) != 50.0 or live[1:] != ["0", "0"]:
            fail("live control: %r (want 50 ms, 0, 0)" % live)
        if row["placebo_idle_max_lat_us"] != "200" or row["placebo_live_max_lat_us"] != "2500":
            fail("placebo windows: %r / %r (want 200 / 2500)" % (
                row["placebo_idle_max_lat_us"], row["placebo_live_max_lat_us"]))
        # the report: the goal's line unchanged, the rates and placebos under
        # it, one goal
        evt = os.path.join(d, "events.tsv")
        with open(evt, "w") as f:
            f.write(EV_HEAD + out)
        runs = os.path.join(d, "runs.tsv")
        with open(runs, "w") as f:
            f.write("section\ttarget\tqd\tnsnap\tphase\trep\tiops\tp99_us\tp50_us\tmax_us\tios\t"
                    "secs\tcopied_mib\tcommits\tnote\n")
        md = subprocess.run([sys.executable, REPORT, "md", runs, evt, os.path.join(d, "none"),
                             os.path.join(d, "none")], capture_output=True, text=True,
                            check=True).stdout
        if "## Goals of issue 3: 0 of 1 met" not in md:
            fail("goal count changed:\n" + md[:600])
        want = "take 60.0 / 40.0 vs idle 20.0 / 0.0, live 0.0 / 0.0 (0.1 s of takes)"
        if want not in md:
            fail("rate line missing (want %r):\n%s" % (want, md[:1200]))
        want = "0.00 / 1.30 (max 0.00 / 1.30; over 1 ms: 0 / 1 of 1, takes 1)"
        if want not in md:
            fail("placebo line missing (want %r):\n%s" % (want, md[:1500]))
        # events files from before the columns: no rate line, no error
        old = "\n".join("\t".join(x[:16]) for x in lines)
        with open(evt, "w") as f:
            f.write(EV_HEAD.split("\tstep_slow")[0] + "\n" + old + "\n")
        md = subprocess.run([sys.executable, REPORT, "md", runs, evt, os.path.join(d, "none"),
                             os.path.join(d, "none")], capture_output=True, text=True,
                            check=True).stdout
        if "0 of 1 met" not in md or "per second of window" in md or "no create" in md:
            fail("old events file:\n" + md[:800])
    print("ok")


if __name__ == "__main__":
    main()
