#!/usr/bin/env bash
# test-rados-claim.sh: one RADOS pool, two "nodes" (two servers with their
# own run directories, so neither finds the other's control socket, as on
# two machines), per-volume claims.  Node A serves vm1 and node B serves vm2
# at the same time, each read-write.  B's open of vm1 (an NBD client, a
# snapshot create, a delete through B's control socket) is refused with a
# message naming A (its pid and host), and A's of vm2 naming B; `status`
# lists the volumes each holds; both see every volume in `list`.  Then
# kill -9 of A: B's open of vm1 is refused while A's claim lasts, and
# succeeds once it lapses (5 s here), with A's flushed writes and snapshot
# intact and A's address blocklisted; B writes vm1 and takes a snapshot.
# Skipped (77) only when the Ceph packages are missing.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires $PY -c 'import nbd'

new_pool
start_ceph
export SNAPVOL_RADOS_CLAIM=5s
CLAIM_S=5
P=rados:blk
M=1048576
mkdir -p "$T/runA" "$T/runB"
RA=$T/runA/snapvol/rados:blk
RB=$T/runB/snapvol/rados:blk
on_a() { XDG_RUNTIME_DIR=$T/runA "$@"; }
on_b() { XDG_RUNTIME_DIR=$T/runB "$@"; }

# nbd_write URI FILE OFFSET: write FILE at OFFSET and flush.
nbd_write() {
	$PY - "$@" <<'EOF'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(open(sys.argv[2], 'rb').read(), int(sys.argv[3]))
h.flush()
h.shutdown()
EOF
}

on_a sv create vm1 --size 16M
on_a sv create vm2 --size 16M
WAIT_FOR="$RA/nbd.sock $RA/control.sock" on_a start_server
A_PID=$(server_pid)
A_WRAPPER=$SERVER_PID

# Node B serves the same pool at the same time.
start_node_b "$T/runB"
B_PID=$(cat "/proc/$B_WRAPPER/task/$B_WRAPPER/children" | awk '{print $1}')

head -c $((3 * M)) /dev/urandom >"$T/a.bin"
nbdcopy "$T/a.bin" "$(uri vm1 "$RA/nbd.sock")" # nbdcopy flushes at the end
on_a sv snapshot create vm1@a
head -c $M /dev/urandom >"$T/a2.bin"
nbd_write "$(uri vm1 "$RA/nbd.sock")" "$T/a2.bin" $((8 * M))
truncate -s 16M "$T/a.bin"
cp "$T/a.bin" "$T/live.img"
dd if="$T/a2.bin" of="$T/live.img" bs=1M seek=8 conv=notrunc status=none

# B writes vm2 while A writes vm1.
head -c $((2 * M)) /dev/urandom >"$T/b.bin"
nbd_write "$(uri vm2 "$RB/nbd.sock")" "$T/b.bin" 0
truncate -s 16M "$T/b.bin"
assert_eq "vm2 through B" "$(sha "$T/b.bin")" "$(nbd_sha "$(uri vm2 "$RB/nbd.sock")")"
nbd_write "$(uri vm1 "$RA/nbd.sock")" "$T/a2.bin" $((8 * M)) # A keeps writing too

# B's open of vm1 is refused, naming A; A's of vm2, naming B.
# The server's message reaches the client in the NBD error reply (libnbd
# shows it with LIBNBD_DEBUG=1).
if LIBNBD_DEBUG=1 nbdinfo "$(uri vm1 "$RB/nbd.sock")" >"$T/b-open.out" 2>&1; then
	fail "node B opened vm1, which node A serves"
fi
log "B's open of vm1: $(grep -m1 "claimed by" "$T/b-open.out")"
grep -q "volume vm1 is claimed by snapvol pid $A_PID on host $(hostname)" "$T/b-open.out" ||
	fail "the refusal does not name the holder (pid $A_PID): $(cat "$T/b-open.out")"
grep -q "lapses $CLAIM_S s" "$T/b-open.out" || fail "the refusal does not say when the claim lapses"
if LIBNBD_DEBUG=1 nbdinfo "$(uri vm2 "$RA/nbd.sock")" >"$T/a-open.out" 2>&1; then
	fail "node A opened vm2, which node B serves"
fi
grep -q "volume vm2 is claimed by snapvol pid $B_PID" "$T/a-open.out" ||
	fail "A's refusal: $(cat "$T/a-open.out")"
# Commands on B that would write vm1: refused; B lists every volume.
for cmd in "snapshot create vm1@x" "delete vm1"; do
	if on_b sv $cmd >"$T/b-cmd.out" 2>&1; then
		fail "'$cmd' on node B worked on a volume node A serves"
	fi
	grep -q "claimed by snapvol pid $A_PID" "$T/b-cmd.out" || fail "B's $cmd: $(cat "$T/b-cmd.out")"
done
on_b sv list >"$T/b-list.out" || fail "list on B: $(cat "$T/b-list.out")"
grep -q vm1 "$T/b-list.out" && grep -q vm2 "$T/b-list.out" || fail "B's list: $(cat "$T/b-list.out")"
# status: each server lists the volumes it holds.
held() { $PY -c 'import json,sys; print(" ".join(json.load(sys.stdin)["held"]))'; }
assert_eq "A holds" "vm1" "$(on_a sv status --json | held)"
assert_eq "B holds" "vm2" "$(on_b sv status --json | held)"
# A keeps serving, snapshots included.
assert_eq "vm1@a through A" "$(sha "$T/a.bin")" "$(nbd_sha "$(uri vm1@a "$RA/nbd.sock")")"

# kill -9 of A.  B is refused while A's claim lasts ...
kill -KILL "$A_PID"
{ wait "$A_WRAPPER"; } 2>/dev/null || true
SERVER_PID=
t0=$(date +%s%N)
if LIBNBD_DEBUG=1 nbdinfo "$(uri vm1 "$RB/nbd.sock")" >"$T/b-open2.out" 2>&1; then
	fail "B took vm1 over at once: the dead server's claim did not hold"
fi
grep -q "claimed by snapvol pid $A_PID" "$T/b-open2.out" || fail "$(cat "$T/b-open2.out")"
# ... and serves it once it has lapsed, without a restart.
for ((i = 0; ; i++)); do
	if nbdinfo "$(uri vm1 "$RB/nbd.sock")" >/dev/null 2>&1; then break; fi
	[ $i -lt 100 ] || fail "A's claim did not lapse within 20 s"
	sleep 0.2
done
ms=$((($(date +%s%N) - t0) / 1000000))
log "A's claim on vm1 lapsed ${ms} ms after the kill (claim: ${CLAIM_S} s)"
[ $ms -ge $((CLAIM_S * 1000 - 2000)) ] || fail "the claim lapsed too early (${ms} ms)"
# Fenced: the new holder blocklisted the dead one's address, so nothing A
# still had in flight can land.
a_addr=$(sed -n 's/.*RADOS client\.[0-9]* at \([^)]*\)).*/\1/p' "$T/b-open.out" | head -1)
[ -n "$a_addr" ] || fail "no address in the refusal"
timeout 20 ceph osd blocklist ls >"$T/blocklist" 2>/dev/null || true
grep -qF "${a_addr#v1:}" "$T/blocklist" ||
	fail "A's address $a_addr is not blocklisted: $(cat "$T/blocklist")"
assert_eq "vm1 through B" "$(sha "$T/live.img")" "$(nbd_sha "$(uri vm1 "$RB/nbd.sock")")"
assert_eq "vm1@a through B" "$(sha "$T/a.bin")" "$(nbd_sha "$(uri vm1@a "$RB/nbd.sock")")"
# B writes, and a snapshot through B; B holds both now.
nbdcopy "$T/a2.bin" "$(uri vm1 "$RB/nbd.sock")"
on_b sv snapshot create vm1@b
dd if="$T/a2.bin" of="$T/live.img" conv=notrunc status=none
assert_eq "vm1@b through B" "$(sha "$T/live.img")" "$(nbd_sha "$(uri vm1@b "$RB/nbd.sock")")"
assert_eq "B holds" "vm1 vm2" "$(on_b sv status --json | held)"
SERVER_PID=$B_WRAPPER
stop_server
# A clean stop lets go at once: a direct command takes vm1 and vm2 now.
on_a sv snapshot create vm2@c >/dev/null || fail "vm2 still claimed after B stopped"
log "ok"
