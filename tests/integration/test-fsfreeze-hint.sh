#!/usr/bin/env bash
# test-fsfreeze-hint.sh: the free-space hint of "snapshot create --fsfreeze".
#
# ext4 on a volume (nbdfuse + loop), filled to the last block with data and
# emptied again (no discard), so its free space is allocated in the volume
# and a write there would need a copy-on-write copy.  A frozen snapshot with
# the hint (GETFSMAP, read while frozen) releases those chunks: writing
# 96 MiB of new files afterwards copies only the few metadata blocks the
# filesystem rewrites (journal, bitmaps, inode tables), far less than the
# data.  The same after a snapshot taken with --no-fs-hint copies about
# all of it (so the check can fail).  Counters: "snapvol info --json".
# The snapshot with the hint still reads back as a clean filesystem.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fsfreeze-functions.sh"
requires mkfs.ext4 -V
requires e2fsck -V
requires nbdcopy --version

fs_new_pool
sv create vm1 --size 256M >/dev/null
start_server
stack_up live vm1
mkfs.ext4 -q -F -E nodiscard "${S_LOOP[live]}"
mount_stack live
M=${S_MNT[live]}

head -c 1048576 /dev/urandom >"$T/1m"
fill() { # every free block of the filesystem written, then freed
	(while cat "$T/1m" 2>/dev/null; do :; done) >"$M/fill" 2>/dev/null || true
	sync -f "$M"
	rm -f "$M/fill"
	sync -f "$M"
}
write_new() { # 96 MiB of new files
	local i
	for i in $(seq 1 12); do
		for j in 1 2 3 4 5 6 7 8; do cat "$T/1m"; done >"$M/new$i"
	done
	sync -f "$M"
}
copied() { sv --json info vm1 | $PY -c 'import json, sys; print(json.load(sys.stdin)["cow"]["copied_bytes"])'; }

fill
sv --json snapshot create vm1@hint --fsfreeze "$M" >"$T/hint.json"
applied=$(jget "$T/hint.json" 'd["fs_hint"]["applied"]')
released=$(jget "$T/hint.json" 'd["fs_hint"]["released_bytes"]')
log "hint: $(jget "$T/hint.json" 'd["fs_hint"]'), window $(jget "$T/hint.json" 'd["freeze"]["window_us"]') us"
assert_eq "hint applied" True "$applied"
[ "$released" -gt $((180 * 1048576)) ] || fail "only $released bytes released from a mostly empty filesystem"
c0=$(copied)
write_new
c1=$(copied)
with=$((c1 - c0))

rm -f "$M"/new*
sync -f "$M"
fill
sv --json snapshot create vm1@nohint --fsfreeze "$M" --no-fs-hint >"$T/nohint.json"
assert_eq "no hint with --no-fs-hint" False "$(jget "$T/nohint.json" 'd["fs_hint"]["applied"]')"
assert_eq "vm1@nohint recorded as" frozen "$(snap_consistency vm1 nohint)"
c2=$(copied)
write_new
c3=$(copied)
without=$((c3 - c2))
log "96 MiB of new files copied $((with / 1024)) KiB after a snapshot with the hint," \
	"$((without / 1024)) KiB after one without"
[ "$without" -gt $((72 * 1048576)) ] ||
	fail "without the hint only $without bytes were copied: the check cannot fail"
[ "$with" -lt $((16 * 1048576)) ] || fail "with the hint $with bytes were copied"

# The released snapshot is still a clean filesystem.
nbdcopy "$(uri vm1@hint)" "$T/hint.img"
e2fsck -fn "$T/hint.img" >"$T/fsck.log" 2>&1 || { tail "$T/fsck.log" >&2; fail "e2fsck -fn of vm1@hint"; }

# snapshot-release checks every range before it releases anything.
bad_release() { # PATTERN ARGS-JSON
	local rc
	set +e
	sv call snapshot-release "$2" >"$T/rel.out" 2>"$T/rel.err"
	rc=$?
	set -e
	[ $rc -eq 1 ] || { cat "$T/rel.err" >&2; fail "snapshot-release $2 exited $rc"; }
	grep -q -- "$1" "$T/rel.err" || { cat "$T/rel.err" >&2; fail "snapshot-release $2: no '$1'"; }
	log "refused: $(cat "$T/rel.err")"
}
SZ=$((256 * 1048576))
before=$(nbd_sha "$(uri vm1@nohint)")
bad_release "outside the volume" '{"snapshot": "vm1@nohint", "ranges": [[0, 4096], ['$SZ', 4096]]}'
bad_release "outside the volume" '{"snapshot": "vm1@nohint", "ranges": [[4096, '$SZ']]}'
bad_release "outside the volume" '{"snapshot": "vm1@nohint", "ranges": [[9223372036854775807, 9223372036854775807]]}'
bad_release "pair" '{"snapshot": "vm1@nohint", "ranges": [[0, 4096, 1]]}'
bad_release "pair" '{"snapshot": "vm1@nohint", "ranges": [[-4096, 4096]]}'
bad_release "pair" '{"snapshot": "vm1@nohint", "ranges": [["0", 4096]]}'
bad_release "array of" '{"snapshot": "vm1@nohint", "ranges": {"0": 4096}}'
bad_release "names no snapshot" '{"snapshot": "vm1", "ranges": [[0, 4096]]}'
bad_release "ENOENT\|no snapshot\|not found\|No such" '{"snapshot": "vm1@nope", "ranges": [[0, 4096]]}'
# 20001 ranges: too long for a command line, sent straight to the socket
$PY - "$P/control.sock" <<'PYEOF' || fail "20001 ranges were not refused"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rwb")
f.readline()  # greeting
req = {"execute": "snapshot-release", "arguments": {
    "snapshot": "vm1@nohint", "ranges": [[i * 4096, 4096] for i in range(20001)]}}
f.write((json.dumps(req) + "\n").encode())
f.flush()
r = json.loads(f.readline())
print("20001 ranges:", r, file=sys.stderr)
sys.exit(0 if "error" in r and "at most 20000" in r["error"]["desc"] else 1)
PYEOF
assert_eq "vm1@nohint after refused releases" "$before" "$(nbd_sha "$(uri vm1@nohint)")"
# a range smaller than a chunk releases nothing
sv call snapshot-release '{"snapshot": "vm1@nohint", "ranges": [[1, 4096]]}' >"$T/rel.json"
assert_eq "bytes released by [1, 4096]" 0 "$(jget "$T/rel.json" 'd["bytes"]')"

teardown_all
server_alive || fail "server died during the test"
stop_server
log "ok"
