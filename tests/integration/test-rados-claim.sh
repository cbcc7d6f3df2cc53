#!/usr/bin/env bash
# test-rados-claim.sh: one RADOS pool, two "nodes" (two servers with their
# own run directories, so neither finds the other's control socket, as on
# two machines).  Node A serves; node B's serve, and B's commands, are
# refused with a message naming A (its pid and host).  A's snapshots can
# still be read through A.  Then kill -9 of A: B's serve is refused while
# A's claim lasts, and succeeds once it lapses (5 s here), with A's flushed
# writes and snapshot intact, and A's address blocklisted; B can write.  Skipped (77) only when the Ceph
# packages are missing.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires $PY -c 'import nbd'

new_pool
"$SRCDIR/ceph-cluster.sh" start "$T/ceph" blk || {
	rc=$?
	[ $rc -eq 77 ] && skip "the Ceph packages are missing"
	fail "cannot start a Ceph cluster (status $rc)"
}
cleanup_fn "$SRCDIR/ceph-cluster.sh" stop "$T/ceph"
export CEPH_CONF=$T/ceph/ceph.conf
export SNAPVOL_RADOS_CLAIM=5s
CLAIM_S=5
P=rados:blk
M=1048576
mkdir -p "$T/runA" "$T/runB"
RA=$T/runA/snapvol/rados:blk
RB=$T/runB/snapvol/rados:blk
on_a() { XDG_RUNTIME_DIR=$T/runA "$@"; }
on_b() { XDG_RUNTIME_DIR=$T/runB "$@"; }

on_a sv create vm1 --size 16M
WAIT_FOR="$RA/nbd.sock $RA/control.sock" on_a start_server
A_PID=$(server_pid)
A_WRAPPER=$SERVER_PID

head -c $((3 * M)) /dev/urandom >"$T/a.bin"
nbdcopy "$T/a.bin" "$(uri vm1 "$RA/nbd.sock")" # nbdcopy flushes at the end
on_a sv snapshot create vm1@a
head -c $M /dev/urandom >"$T/a2.bin"
$PY - "$(uri vm1 "$RA/nbd.sock")" "$T/a2.bin" <<'EOF'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(open(sys.argv[2], 'rb').read(), 8 << 20)
h.flush()
h.shutdown()
EOF
truncate -s 16M "$T/a.bin"
cp "$T/a.bin" "$T/live.img"
dd if="$T/a2.bin" of="$T/live.img" bs=1M seek=8 conv=notrunc status=none

# Node B: refused, and told who holds the pool.
if on_b "$SNAPVOL" --pool "$P" serve >"$T/b-serve.out" 2>&1; then
	fail "a second server on the same RADOS pool was not refused"
fi
log "B refused: $(cat "$T/b-serve.out")"
grep -q "claimed by snapvol pid $A_PID on host $(hostname)" "$T/b-serve.out" ||
	fail "the refusal does not name the holder (pid $A_PID): $(cat "$T/b-serve.out")"
grep -q "lapses $CLAIM_S s" "$T/b-serve.out" || fail "the refusal does not say when the claim lapses"
if on_b sv list >"$T/b-list.out" 2>&1; then
	fail "a command on node B worked directly on a pool node A serves"
fi
grep -q "claimed by snapvol pid $A_PID" "$T/b-list.out" || fail "B's list: $(cat "$T/b-list.out")"
[ ! -e "$RB/nbd.sock" ] || fail "the refused server left a socket behind"
# A keeps serving, snapshots included.
assert_eq "vm1@a through A" "$(sha "$T/a.bin")" "$(nbd_sha "$(uri vm1@a "$RA/nbd.sock")")"

# kill -9 of A.  B is refused while A's claim lasts ...
kill -KILL "$A_PID"
{ wait "$A_WRAPPER"; } 2>/dev/null || true
SERVER_PID=
t0=$(date +%s%N)
if on_b "$SNAPVOL" --pool "$P" serve >"$T/b-serve2.out" 2>&1; then
	fail "B took over at once: the dead server's claim did not hold"
fi
grep -q "claimed by snapvol pid $A_PID" "$T/b-serve2.out" || fail "$(cat "$T/b-serve2.out")"
# ... and serves once it has lapsed.
for ((i = 0; ; i++)); do
	if on_b "$SNAPVOL" --pool "$P" list >/dev/null 2>&1; then break; fi
	[ $i -lt 100 ] || fail "A's claim did not lapse within 20 s"
	sleep 0.2
done
ms=$((($(date +%s%N) - t0) / 1000000))
log "A's claim lapsed ${ms} ms after the kill (claim: ${CLAIM_S} s)"
[ $ms -ge $((CLAIM_S * 1000 - 2000)) ] || fail "the claim lapsed too early (${ms} ms)"
WAIT_FOR="$RB/nbd.sock $RB/control.sock" on_b start_server
# Fenced: the new holder blocklisted the dead one's address, so nothing A
# still had in flight can land.
a_addr=$(sed -n 's/.*RADOS client\.[0-9]* at \([^)]*\)).*/\1/p' "$T/b-serve.out")
[ -n "$a_addr" ] || fail "no address in the refusal"
timeout 20 ceph osd blocklist ls >"$T/blocklist" 2>/dev/null || true
grep -qF "${a_addr#v1:}" "$T/blocklist" ||
	fail "A's address $a_addr is not blocklisted: $(cat "$T/blocklist")"
assert_eq "vm1 through B" "$(sha "$T/live.img")" "$(nbd_sha "$(uri vm1 "$RB/nbd.sock")")"
assert_eq "vm1@a through B" "$(sha "$T/a.bin")" "$(nbd_sha "$(uri vm1@a "$RB/nbd.sock")")"
# B writes, and a snapshot through B.
nbdcopy "$T/a2.bin" "$(uri vm1 "$RB/nbd.sock")"
on_b sv snapshot create vm1@b
dd if="$T/a2.bin" of="$T/live.img" conv=notrunc status=none
assert_eq "vm1@b through B" "$(sha "$T/live.img")" "$(nbd_sha "$(uri vm1@b "$RB/nbd.sock")")"
stop_server
log "ok"
