#!/usr/bin/env bash
# test-fsfreeze-snapshot.sh: "snapshot create --fsfreeze" never records a
# snapshot as frozen falsely, and its bad input changes nothing.
#
# The CLI reaches the server through a proxy of the control socket that
# holds "snapshot-create" back for 1.5 s, so the freeze can be made to end
# in the middle of the sequence, deterministically:
#  - --timeout 500ms: the watchdog thaws during the snapshot; the snapshot
#    is still taken, recorded "crash", and the CLI says why;
#  - kill -9 of the CLI while frozen: the filesystem is writable again at
#    once (measured), and the snapshot that the server still takes stays
#    "crash";
#  - without the delay: "frozen".
# Bad input: not a mount point, a filesystem frozen by someone else (left
# frozen by them), a lease of 0: an error, no snapshot, nothing frozen.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fsfreeze-functions.sh"
requires mkfs.ext4 -V

fs_new_pool
sv create vm1 --size 256M >/dev/null
start_server
stack_up live vm1
mkfs.ext4 -q -F "${S_LOOP[live]}"
mount_stack live
M=${S_MNT[live]}

# A control-socket proxy that delays one command.
PROXY=$T/slow.sock
$PY - "$P/control.sock" "$PROXY" <<'PYEOF' >"$T/proxy.log" 2>&1 &
import json, os, socket, sys, threading, time
real, path = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(8)
def pump(src, dst, delay):
    buf = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if delay and b'"snapshot-create"' in line:
                    time.sleep(1.5)
                dst.sendall(line + b"\n")
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX)
    u.connect(real)
    threading.Thread(target=pump, args=(c, u, True), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, False), daemon=True).start()
PYEOF
PROXY_PID=$!
cleanup_fn kill $PROXY_PID
for ((i = 0; i < 100; i++)); do [ -S "$PROXY" ] && break; sleep 0.05; done

echo data >"$M/file"

# ---- the freeze ends in the middle: "crash" ----
set +e
sv --control "$PROXY" --json snapshot create vm1@late --fsfreeze "$M" --timeout 500ms \
	>"$T/late.json" 2>"$T/late.err"
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$T/late.err" >&2; fail "snapshot create with a lapsed freeze exited $rc"; }
grep -q "recorded as crash-consistent" "$T/late.err" || { cat "$T/late.err" >&2; fail "no warning"; }
grep -q "timeout was reached" "$T/late.err" || { cat "$T/late.err" >&2; fail "no reason given"; }
assert_eq "reply's consistency" crash "$(jget "$T/late.json" 'd["consistency"]')"
assert_eq "free-space hint (stale map)" False "$(jget "$T/late.json" 'd["fs_hint"]["applied"]')"
assert_eq "vm1@late recorded as" crash "$(snap_consistency vm1 late)"

# ---- kill -9 of the CLI while frozen ----
"$SNAPVOL" --pool "$P" --control "$PROXY" snapshot create vm1@killed --fsfreeze "$M" >/dev/null 2>&1 &
CP=$!
sleep 0.6 # frozen, snapshot-create held back by the proxy
kill -9 $CP
t=$(probe_write "$M")
wait $CP 2>/dev/null || true
log "kill -9 of snapshot create --fsfreeze: writable again after $t ms"
[ "$t" != timeout ] && [ "$t" -lt 3000 ] || fail "still frozen $t ms after kill -9"
sleep 1.5 # the proxy passes the create on; the server takes it
c=$(snap_consistency vm1 killed)
[ "$c" != frozen ] || fail "vm1@killed recorded as frozen"
log "vm1@killed: '${c:-not taken}'"

# ---- and the normal case ----
sv --json snapshot create vm1@good --fsfreeze "$M" >"$T/good.json"
assert_eq "vm1@good recorded as" frozen "$(snap_consistency vm1 good)"

# ---- bad input: no snapshot, nothing frozen ----
expect_fail() { # STATUS PATTERN ARGS...
	local want=$1 pat=$2 rc
	shift 2
	set +e
	sv "$@" >"$T/bad.out" 2>"$T/bad.err"
	rc=$?
	set -e
	[ "$rc" -eq "$want" ] || { cat "$T/bad.err" >&2; fail "'$*' exited $rc, not $want"; }
	grep -q -- "$pat" "$T/bad.err" || { cat "$T/bad.err" >&2; fail "'$*': no '$pat' in the message"; }
}
expect_fail 1 "is not a mount point" snapshot create vm1@bad1 --fsfreeze "$M/lost+found"
expect_fail 2 "out of range" snapshot create vm1@bad2 --fsfreeze "$M" --lease 0
expect_fail 2 "go with 'snapshot create'" snapshot delete vm1@good --fsfreeze "$M"
fsfreeze -f "$M"
expect_fail 1 "already frozen" snapshot create vm1@bad3 --fsfreeze "$M"
is_frozen "$M" || fail "someone else's freeze was thawed"
fsfreeze -u "$M"
for s in bad1 bad2 bad3; do
	[ -z "$(snap_consistency vm1 $s)" ] || fail "vm1@$s was taken despite the error"
done
t=$(probe_write "$M")
[ "$t" != timeout ] || fail "left frozen after bad input"

teardown_all
server_alive || fail "server died during the test"
stop_server
log "ok"
