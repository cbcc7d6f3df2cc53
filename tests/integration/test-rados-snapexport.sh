#!/usr/bin/env bash
# test-rados-snapexport.sh: node B serves a snapshot of a volume node A
# holds, read-only, with no claim (engine/follow.c).  One RADOS pool, two
# servers with their own run directories (as on two machines).  A serves
# vm1 read-write and a writer keeps overwriting it; B's export of vm1@s1,
# read whole with nbdcopy again and again, always equals what vm1 held
# when s1 was taken: while A writes, across checkpoints on A (a snapshot
# taken and deleted forces one: a new journal generation), across a
# rollback on A to another snapshot.  B's status lists the export with
# A as the claim's holder; B's live export of vm1 stays refused; B writes
# nothing to the pool (every object's size and mtime, and the claim's
# holder, are the same before and after B's reads).  Deleting s1 on A
# makes B's open connection fail its reads with an error, never return
# other data, and a new open of vm1@s1 on B is refused.
# Skipped (77) only when the Ceph packages are missing.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires $PY -c 'import nbd'
requires rados --version

new_pool
start_ceph
P=rados:blk
M=1048576
mkdir -p "$T/runA" "$T/runB"
RA=$T/runA/snapvol/rados:blk
RB=$T/runB/snapvol/rados:blk
on_a() { XDG_RUNTIME_DIR=$T/runA "$@"; }
on_b() { XDG_RUNTIME_DIR=$T/runB "$@"; }

on_a sv create vm1 --size 8M
WAIT_FOR="$RA/nbd.sock $RA/control.sock" on_a start_server
A_PID=$(server_pid)
A_WRAPPER=$SERVER_PID

start_node_b "$T/runB"

head -c $((8 * M)) /dev/urandom >"$T/s1.img"
nbdcopy "$T/s1.img" "$(uri vm1 "$RA/nbd.sock")"
on_a sv snapshot create vm1@s1 >/dev/null
S1=$(sha "$T/s1.img")
assert_eq "vm1@s1 through A" "$S1" "$(nbd_sha "$(uri vm1@s1 "$RA/nbd.sock")")"
UB=$(uri vm1@s1 "$RB/nbd.sock")

# One connection to B across a checkpoint that changes nothing else (a
# freeze on A checkpoints: a new journal generation, volume.meta as it
# was): records written after it start again at slot 0, fewer than B had
# read, and B must still see them.
$PY - "$UB" "$(uri vm1 "$RA/nbd.sock")" "$T/s1.img" "$SNAPVOL" "$T/runA" <<'EOF2' ||
import os, subprocess, sys, nbd
ub, ua, img, snapvol, run = sys.argv[1:6]
want = open(img, 'rb').read()
b, a = nbd.NBD(), nbd.NBD()
b.connect_uri(ub)
a.connect_uri(ua)
for i in range(16):  # 16 first writes after s1: records in the journal
    a.pwrite(os.urandom(4096), i * 65536)
    a.flush()
assert b.pread(4 << 20, 0) == want[:4 << 20], "B's read before the checkpoint"
subprocess.run([snapvol, '--pool', 'rados:blk', 'freeze', 'vm1', '--', 'true'], check=True,
               env=dict(os.environ, XDG_RUNTIME_DIR=run), stdout=subprocess.DEVNULL)
off = 6 << 20
a.pwrite(os.urandom(65536), off)  # after the checkpoint: its records at slot 0
a.flush()
assert b.pread(65536, off) == want[off:off + 65536], "B missed a copy made after the checkpoint"
assert b.pread(8 << 20, 0) == want, "B's whole read after the checkpoint"
EOF2
	fail "B's connection across a checkpoint on A"

# The writer: overwrites random 4-64 KiB pieces of vm1 through A until the
# stop file appears, flushing now and then.
$PY - "$(uri vm1 "$RA/nbd.sock")" "$T/stop" "$T/writes" <<'EOF' &
import os, random, sys, nbd
uri, stop, out = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
rng, n = random.Random(11), 0
size = h.get_size()
while not os.path.exists(stop):
    ln = 4096 * rng.randint(1, 16)
    off = 4096 * rng.randrange((size - ln) // 4096)
    h.pwrite(os.urandom(ln), off)
    n += 1
    if n % 64 == 0:
        h.flush()
h.flush()
h.shutdown()
open(out, 'w').write(str(n))
EOF
WRITER=$!
cleanup_fn kill "$WRITER"

b_read() { # WHAT: B's vm1@s1, read whole, must equal s1
	assert_eq "vm1@s1 through B ($1)" "$S1" "$(nbd_sha "$UB")"
}
sleep 0.5
b_read "A writing"

# Checkpoints on A while B reads: each snapshot delete writes changed.meta
# under a new generation and starts the journal again at slot 0.
(
	for i in 1 2 3; do
		on_a sv snapshot create "vm1@tmp$i" >/dev/null
		sleep 0.3
		on_a sv snapshot delete "vm1@tmp$i" >/dev/null
	done
) &
CKPT=$!
for i in 1 2; do b_read "checkpoints on A, round $i"; done
wait "$CKPT" || fail "snapshot create/delete on A failed"
b_read "after the checkpoints"

# A rollback on A (to a newer snapshot, while writes go on) leaves s1 as it was.
on_a sv snapshot create vm1@s2 >/dev/null
sleep 0.3
on_a sv snapshot rollback vm1@s2 >/dev/null
b_read "after a rollback on A"

# B's status: the followed export, and A as the claim's holder; B holds nothing.
$PY - "$UB" "$T/go" "$T/stop-holder" <<'EOF' &
import os, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(4096, 0)
open(sys.argv[2], 'w').close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
EOF
HOLDER=$!
cleanup_fn kill "$HOLDER"
for ((i = 0; i < 100; i++)); do [ -e "$T/go" ] && break; sleep 0.1; done
on_b sv status --json >"$T/status-b.json" || fail "status on B"
$PY - "$T/status-b.json" "$A_PID" <<'EOF' || fail "B's status: $(cat "$T/status-b.json")"
import json, sys
st = json.load(open(sys.argv[1]))
assert st["held"] == [], st["held"]
f = [x for x in st["followed"] if x["volume"] == "vm1" and x["snapshot"] == "s1"]
assert len(f) == 1 and f[0]["mode"] == "read-only" and f[0]["views"] >= 1, st["followed"]
assert f"snapvol pid {sys.argv[2]} " in f[0]["holder"], f[0]["holder"]
EOF
on_b sv status | grep -q "follows:  *vm1@s1, read-only, claim held by snapvol pid $A_PID" ||
	fail "B's status text: $(on_b sv status)"
touch "$T/stop-holder"
wait "$HOLDER" || true

# B's live export of vm1 stays refused, naming A.
if LIBNBD_DEBUG=1 nbdinfo "$(uri vm1 "$RB/nbd.sock")" >"$T/b-live.out" 2>&1; then
	fail "node B opened vm1 read-write, which node A serves"
fi
grep -q "volume vm1 is claimed by snapvol pid $A_PID" "$T/b-live.out" ||
	fail "B's refusal: $(cat "$T/b-live.out")"
# B's export list names the snapshots it can serve (from volume.meta).
$PY - "$RB/nbd.sock" <<'EOF' || fail "B's export list (NBD_OPT_LIST)"
import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(sys.argv[1])
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
h.opt_abort()
assert "vm1@s1" in names and "vm1" in names, names
EOF

touch "$T/stop"
wait "$WRITER" || fail "the writer failed"
log "the writer made $(cat "$T/writes") writes through A"

# B writes nothing: with A idle, every object of the pool (size, mtime) and
# the claim's lockers are the same before and after B opens and reads (the
# claim object's own mtime moves with A's renewals, so only its lockers
# are compared).
pool_state() {
	rados -p blk ls | grep -v '^snapvol\.claim\.' | sort | while read -r o; do
		echo "$o $(rados -p blk stat "$o" | sed 's/^.* mtime //')"
	done
	rados -p blk lock info snapvol.claim.vm1 snapvol.claim | grep -o '"cookie": *"[^"]*"'
}
sleep 1
pool_state >"$T/pool-before"
b_read "A idle"
nbdinfo "$UB" >/dev/null || fail "nbdinfo on B's vm1@s1"
pool_state >"$T/pool-after"
diff -u "$T/pool-before" "$T/pool-after" >&2 || fail "the pool changed while only B read it"
log "$(wc -l <"$T/pool-before") objects unchanged by B's reads"

# Deleting s1 on A: B's open connection fails its reads (an error, never
# other data), and a new open is refused.
$PY - "$UB" "$T/ready" "$T/deleted" "$T/s1.img" <<'EOF' &
import os, sys, time, nbd
uri, ready, deleted, img = sys.argv[1:5]
want = open(img, 'rb').read()
h = nbd.NBD()
h.connect_uri(uri)
assert h.pread(65536, 0) == want[:65536]
open(ready, 'w').close()
while not os.path.exists(deleted):
    time.sleep(0.05)
for off in (0, 4 << 20):
    try:
        got = h.pread(65536, off)
    except nbd.Error as e:
        print("read after the delete failed as it must:", e, file=sys.stderr)
        continue
    sys.exit(f"read at {off} after the delete returned data")
EOF
READER=$!
for ((i = 0; i < 100; i++)); do [ -e "$T/ready" ] && break; sleep 0.1; done
on_a sv snapshot delete vm1@s1 >/dev/null
touch "$T/deleted"
wait "$READER" || fail "B's connection read after the snapshot was deleted"
if nbdinfo "$UB" >"$T/b-gone.out" 2>&1; then
	fail "B opened vm1@s1 after A deleted it"
fi

SERVER_PID=$B_WRAPPER
stop_server
SERVER_PID=$A_WRAPPER
stop_server
log "ok"
