#!/usr/bin/python3
"""test-backup-qcow2.py: incremental backups as qcow2 overlays (issue 5).

`snapvol backup VOL@SNAP FILE --since VOL@BASE --base-file BASE` writes a new
qcow2 overlay (qemu-img create, written through qemu-nbd) whose backing file
is BASE, a complete backup of VOL@BASE; `snapvol restore FILE VOL` reads the
whole chain through qemu-nbd.

 - A chain: a full raw backup of s0 and three qcow2 incrementals s1..s3 (each
   on the previous one) of a volume under random writes, trims and zeroes,
   through a server and again directly on the pool (no server): each link
   restored into a new volume equals its snapshot byte for byte, `qemu-img
   compare` of each link against the snapshot's NBD export passes, `qemu-img
   check` finds nothing, and an incremental's bytes_read never exceeds its
   changed bytes (which equal `snapvol diff`'s).  The chain moved to another
   directory as a set still restores (relative backing paths).  A full qcow2
   backup can be the root of a chain.
 - Refusals, each with a clear message, no FILE left behind, an existing
   FILE unchanged and the volume unchanged: a missing base file, a base with
   no description, a base of another snapshot or volume, an incomplete base
   (or an incomplete link further down its chain), an existing FILE,
   --base-file without --since or with --format raw, a raw in-place update
   of a qcow2 file, qemu-nbd failing, qemu-img missing; restore refuses an
   incomplete overlay, and a chain whose backing file is gone.  An
   interrupted incremental (sidecar still "writing") is run again.
SNAPVOL_SEED=N replays the random writes.
"""

import json
import os
import random
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svtest import *  # noqa: E402,F403

require_nbd_module()
import nbd  # noqa: E402

for tool in ("qemu-img", "qemu-nbd"):
    if not shutil.which(tool, path="/usr/bin:" + os.environ.get("PATH", "")):
        skip_test(f"{tool} is not installed")

MiB = 1 << 20
SIZE = 16 * MiB
SEED = int(os.environ.get("SNAPVOL_SEED", random.randrange(1 << 30)))
print(f"seed {SEED} (SNAPVOL_SEED={SEED} replays it)", flush=True)
rnd = random.Random(SEED)
ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))


def scribble(h, n):
    """n random writes, trims and zero-writes."""
    for _ in range(n):
        off = rnd.randrange(0, SIZE // 512) * 512
        ln = min(rnd.choice([512, 4096, 65536, 300 * 1024, MiB]), SIZE - off)
        x = rnd.random()
        if x < 0.3:
            off &= ~4095
            ln = min(max(4096, ln & ~4095), SIZE - off)
            if x < 0.15:
                h.trim(ln, off)
            else:
                h.zero(ln, off)
        else:
            h.pwrite(rnd.randbytes(ln), off)
    h.flush()


def run_json(pool, *args, env=None):
    r = subprocess.run([SNAPVOL, "--pool", pool.path, "--json", *args], capture_output=True,
                       text=True, timeout=120, env=env or ENV, stdin=subprocess.DEVNULL)
    return r


def qemu(*args):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=ENV)
    return r


def side(path):
    with open(path + ".snapvol.json") as f:
        return json.load(f)


def set_side(path, **kw):
    s = side(path)
    s.update(kw)
    with open(path + ".snapvol.json", "w") as f:
        json.dump(s, f)


def main(pool, runner):
    pool.create("vm1", SIZE)
    srv = pool.serve()
    h = nbd.NBD()
    h.connect_uri(srv.uri("vm1"))
    expect = {}
    for i in range(4):
        scribble(h, 40 if i == 0 else 12)
        pool.cli("snapshot", "create", f"vm1@s{i}")
        expect[f"s{i}"] = sha_export(srv, f"vm1@s{i}")
    h.shutdown()
    root = os.path.join(pool.tmp, "backups")
    os.makedirs(root)
    chains = {}

    def make_chain(tag):
        d = os.path.join(root, tag)
        os.makedirs(d)
        files = [os.path.join(d, "s0.img")]
        r = run_json(pool, "backup", "vm1@s0", files[0])
        check(r.returncode == 0, f"full backup: {r.stderr}")
        for i in range(1, 4):
            f = os.path.join(d, f"s{i}.qcow2")
            r = run_json(pool, "backup", f"vm1@s{i}", f, "--since", f"vm1@s{i - 1}",
                         "--base-file", files[-1])
            check(r.returncode == 0, f"{tag}: incremental s{i}: {r.stderr}")
            out = json.loads(r.stdout)
            check(out["via"] == ("nbd" if tag == "server" else "direct"), f"via {out['via']}")
            check(out["incremental"] and out["image_format"] == "qcow2", f"summary {out}")
            dif = json.loads(pool.cli("--json", "diff", f"vm1@s{i - 1}", f"vm1@s{i}").stdout)
            check(out["changed_bytes"] == dif["changed_bytes"],
                  f"s{i}: changed_bytes {out['changed_bytes']}, diff {dif['changed_bytes']}")
            check(0 < out["bytes_read"] <= out["changed_bytes"],
                  f"s{i}: read {out['bytes_read']} of {out['changed_bytes']} changed")
            sc = side(f)
            check(sc["state"] == "complete" and sc["since"] == f"s{i - 1}"
                  and sc["base_file"] == os.path.basename(files[-1])
                  and sc["image_format"] == "qcow2", f"sidecar {sc}")
            info = json.loads(qemu("qemu-img", "info", "--output=json", f).stdout)
            check(info["format"] == "qcow2"
                  and info["backing-filename"] == os.path.basename(files[-1]),
                  f"qemu-img info: {info}")
            c = qemu("qemu-img", "check", f)
            check(c.returncode == 0, f"qemu-img check {f}: {c.stdout}{c.stderr}")
            files.append(f)
        chains[tag] = files

    def verify(tag, server, restore_live):
        """Every link restored equals its snapshot; qemu-img compare passes."""
        files = chains[tag]
        for i, f in enumerate(files):
            if restore_live:
                r = run_json(pool, "restore", f, f"{tag}r{i}")
                check(r.returncode == 0, f"restore {f}: {r.stderr}")
                check(json.loads(r.stdout)["created"], "restore created the volume")
            check(sha_export(server, f"{tag}r{i}") == expect[f"s{i}"],
                  f"{tag}r{i} (restored from {os.path.basename(f)}) differs from vm1@s{i}")
            fmt = "raw" if f.endswith(".img") else "qcow2"
            c = qemu("qemu-img", "compare", "-f", fmt, "-F", "raw", f,
                     server.uri(f"vm1@s{i}"))
            check(c.returncode == 0, f"qemu-img compare {f} vm1@s{i}: {c.stdout}{c.stderr}")

    ok = runner.case("qcow2 chain through a server",
                     lambda: (make_chain("server"), verify("server", srv, True)))

    def moved():
        if not ok:
            raise Skip("the chain failed")
        dst = os.path.join(pool.tmp, "moved")
        shutil.copytree(os.path.join(root, "server"), dst)
        r = run_json(pool, "restore", os.path.join(dst, "s3.qcow2"), "moved")
        check(r.returncode == 0, f"restore of the moved chain: {r.stderr}")
        check(sha_export(srv, "moved") == expect["s3"], "the moved chain restores wrong")

    runner.case("the chain moved as a set still restores", moved)

    def qcow2_root():
        d = os.path.join(root, "q")
        os.makedirs(d)
        full, inc = os.path.join(d, "s0.qcow2"), os.path.join(d, "s1.qcow2")
        r = run_json(pool, "backup", "vm1@s0", full)
        check(r.returncode == 0, f"full qcow2 backup: {r.stderr}")
        check(side(full)["image_format"] == "qcow2" and side(full)["since"] is None,
              f"sidecar {side(full)}")
        r = run_json(pool, "backup", "vm1@s1", inc, "--since", "vm1@s0", "--base-file", full)
        check(r.returncode == 0, f"incremental on a qcow2 full: {r.stderr}")
        for f, s, vol in ((full, "s0", "q0"), (inc, "s1", "q1")):
            r = run_json(pool, "restore", f, vol)
            check(r.returncode == 0, f"restore {f}: {r.stderr}")
            check(sha_export(srv, vol) == expect[s], f"{vol} differs from vm1@{s}")
        # restore --force over an existing volume of the same size.
        r = run_json(pool, "restore", inc, "q0", "--force")
        check(r.returncode == 0, f"restore --force: {r.stderr}")
        check(sha_export(srv, "q0") == expect["s1"], "restore --force contents")

    runner.case("a full qcow2 backup as the root of a chain", qcow2_root)

    def vol_state():
        # The snapshots, and what changed since the last one (nothing is
        # written after it): cheaper than a checksum of the volume per case.
        d = json.loads(pool.cli("--json", "diff", "vm1@s3", "vm1").stdout)
        return list(pool.snapshots("vm1")), d["changed_bytes"], d["extents"]

    def refused(args, words, code=1, env=None, target=None):
        """The backup is refused with one of words in the message; target
        (if given) is left as it was (or absent).  (That the volume is
        unchanged is checked once after all of them.)"""
        tstate = None
        if target and os.path.exists(target):
            tstate = (sha_file(target), open(target + ".snapvol.json").read()
                      if os.path.exists(target + ".snapvol.json") else None)
        r = run_json(pool, *args, env=env)
        check(r.returncode == code, f"{' '.join(args)}: exit {r.returncode}: {r.stderr}")
        check(any(w in r.stderr for w in words), f"unclear message: {r.stderr.strip()}")
        if target:
            if tstate is None:
                check(not os.path.exists(target), f"{target} was left behind")
                check(not os.path.exists(target + ".snapvol.json"),
                      f"{target}.snapvol.json was left behind")
            else:
                after = (sha_file(target), open(target + ".snapvol.json").read()
                         if os.path.exists(target + ".snapvol.json") else None)
                check(after == tstate, f"{target} changed")
        return r

    def refusals():
        if not ok:
            raise Skip("the chain failed")
        files = chains["server"]
        before = vol_state()
        d = os.path.join(root, "bad")
        os.makedirs(d)
        new = os.path.join(d, "new.qcow2")
        inc = ["backup", "vm1@s2", new, "--since", "vm1@s1", "--base-file"]
        refused(inc + [os.path.join(d, "missing.img")], ["No such file"], target=new)
        plain = os.path.join(d, "plain.img")
        with open(plain, "wb") as f:
            f.truncate(SIZE)
        refused(inc + [plain], ["not a snapvol backup"], target=new)
        # A base of another snapshot, and of another volume.
        refused(inc + [files[2]], ["holds vm1@s2, not vm1@s1"], target=new)
        pool.create("other", SIZE)
        pool.cli("snapshot", "create", "other@s1")
        oth = os.path.join(d, "other.img")
        check(run_json(pool, "backup", "other@s1", oth).returncode == 0, "backup of other")
        refused(inc + [oth], ["holds other@s1, not vm1@s1"], target=new)
        # An incomplete base, and an incomplete link below a complete base.
        part = os.path.join(d, "part")
        shutil.copytree(os.path.join(root, "server"), part)
        set_side(os.path.join(part, "s1.qcow2"), state="writing")
        refused(inc + [os.path.join(part, "s1.qcow2")], ["incomplete"], target=new)
        set_side(os.path.join(part, "s1.qcow2"), state="complete")
        set_side(os.path.join(part, "s0.img"), state="writing")
        refused(["backup", "vm1@s3", new, "--since", "vm1@s2", "--base-file",
                 os.path.join(part, "s2.qcow2")], ["incomplete"], target=new)
        r = run_json(pool, "restore", os.path.join(part, "s2.qcow2"), "never")
        check(r.returncode == 1 and "incomplete" in r.stderr and "backing file" in r.stderr,
              f"restore over an incomplete link: {r.stderr}")
        # A chain whose backing file is gone.
        os.unlink(os.path.join(part, "s0.img"))
        r = run_json(pool, "restore", os.path.join(part, "s2.qcow2"), "never")
        check(r.returncode == 1 and "s0.img" in r.stderr, f"restore, base gone: {r.stderr}")
        check("never" not in repr(json.loads(pool.cli("--json", "list").stdout)),
              "a refused restore created its volume")
        # An existing FILE: a complete backup, and a file that is no backup.
        refused(["backup", "vm1@s2", files[2], "--since", "vm1@s1", "--base-file", files[1]],
                ["exists"], target=files[2])
        refused(["backup", "vm1@s2", plain, "--since", "vm1@s1", "--base-file", files[1]],
                ["exists"], target=plain)
        # Options that do not go together.
        refused(["backup", "vm1@s2", new, "--base-file", files[1]], ["needs --since"],
                code=2, target=new)
        refused(inc + [files[1], "--format", "raw"], ["--format raw"], code=2, target=new)
        refused(["backup", "vm1@s2", new, "--since", "vm1@s1"], ["needs --base-file"],
                code=2, target=new)
        refused(["backup", "vm1@s3", files[2], "--since", "vm1@s2", "--format", "raw"],
                ["never updated in place"], target=files[2])
        # qemu-nbd failing, and qemu-img missing.
        fake = os.path.join(d, "fakebin")
        os.makedirs(fake)
        with open(os.path.join(fake, "qemu-nbd"), "w") as f:
            f.write("#!/bin/sh\necho 'qemu-nbd: fake failure' >&2\nexit 1\n")
        os.chmod(os.path.join(fake, "qemu-nbd"), 0o755)
        os.symlink(shutil.which("qemu-img", path=ENV["PATH"]), os.path.join(fake, "qemu-img"))
        env = dict(ENV, PATH=fake + ":" + ENV["PATH"])
        refused(inc + [files[1]], ["qemu-nbd could not serve"], env=env, target=new)
        r = run_json(pool, "restore", files[2], "never", env=env)
        check(r.returncode == 1 and "qemu-nbd could not serve" in r.stderr,
              f"restore with qemu-nbd failing: {r.stderr}")
        only = os.path.join(d, "onlynbd")
        os.makedirs(only)
        os.symlink(shutil.which("qemu-nbd", path=ENV["PATH"]), os.path.join(only, "qemu-nbd"))
        refused(inc + [files[1]], ["qemu-img is not installed", "qemu-utils"],
                env=dict(ENV, PATH=only), target=new)
        # An interrupted incremental: restore refuses it, the same backup
        # run again completes it (also with qemu-nbd failing first).
        intr = os.path.join(d, "intr.qcow2")
        shutil.copyfile(files[2], intr)
        shutil.copyfile(files[2] + ".snapvol.json", intr + ".snapvol.json")
        set_side(intr, state="writing", base_file=os.path.abspath(files[1]))
        r = run_json(pool, "restore", intr, "never")
        check(r.returncode == 1 and "incomplete" in r.stderr, f"restore of a partial: {r.stderr}")
        refused(["backup", "vm1@s3", intr, "--since", "vm1@s2", "--base-file", files[2]],
                ["exists"], target=intr)
        r = run_json(pool, "backup", "vm1@s2", intr, "--since", "vm1@s1", "--base-file",
                     files[1], env=env)
        check(r.returncode == 1 and os.path.exists(intr) and side(intr)["state"] == "writing",
              f"failed rerun: {r.stderr}")
        r = run_json(pool, "backup", "vm1@s2", intr, "--since", "vm1@s1", "--base-file", files[1])
        check(r.returncode == 0, f"rerun of an interrupted backup: {r.stderr}")
        check(side(intr)["state"] == "complete", "not complete after the rerun")
        c = qemu("qemu-img", "compare", "-f", "qcow2", "-F", "raw", intr, srv.uri("vm1@s2"))
        check(c.returncode == 0, f"rerun backup differs from vm1@s2: {c.stdout}{c.stderr}")
        check("never" not in repr(json.loads(pool.cli("--json", "list").stdout)),
              "a refused restore created its volume")
        check(vol_state() == before, "the volume changed")

    runner.case("bad input is refused, nothing changed", refusals)
    srv.stop()

    def direct():
        make_chain("direct")
        for i, f in enumerate(chains["direct"]):
            r = run_json(pool, "restore", f, f"directr{i}")
            check(r.returncode == 0, f"direct restore {f}: {r.stderr}")
            check(json.loads(r.stdout)["created"], "restore created the volume")
        s2 = pool.serve()
        try:
            verify("direct", s2, False)
        finally:
            s2.stop()

    runner.case("qcow2 chain directly on the pool (no server)", direct)


if __name__ == "__main__":
    run_main(main)
