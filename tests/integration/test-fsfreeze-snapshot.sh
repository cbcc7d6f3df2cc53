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
#  - without the delay: "frozen", and the phases of its window (--json)
#    add up to the window.
# A second proxy holds back instead the reply that follows the event
# SNAPSHOT_TAKEN: the filesystem is writable while the CLI still waits for
# it (the thaw comes at the instant, not once the snapshot is durable), and
# the snapshot is still "frozen".
# The server's threads serving vm1's NBD connections run SCHED_FIFO for the
# window (window-begin) and get their policy back at its end, when the
# CLI's control connection drops (kill -9) and at the window's bound.
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

# A control-socket proxy that delays one command (mode "create"), or the
# reply that follows the event SNAPSHOT_TAKEN by 3 s (mode "reply"; it
# touches MARK when it passes the event on).
start_proxy() { # PATH MODE
	$PY - "$P/control.sock" "$1" "$2" "$T/event-seen" <<'PYEOF' >>"$T/proxy.log" 2>&1 &
import json, os, socket, sys, threading, time
real, path, mode, mark = sys.argv[1:5]
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
                if mode == "create" and delay and b'"snapshot-create"' in line:
                    time.sleep(1.5)
                if mode == "reply" and not delay and b'"return"' in line and seen:
                    time.sleep(3)
                    seen.clear()
                dst.sendall(line + b"\n")
                if b'"SNAPSHOT_TAKEN"' in line:
                    seen.append(1)
                    open(mark, "w").close()
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
    seen = []
    threading.Thread(target=pump, args=(c, u, True), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, False), daemon=True).start()
PYEOF
	cleanup_fn kill $!
	for ((i = 0; i < 100; i++)); do [ -S "$1" ] && break; sleep 0.05; done
}
PROXY=$T/slow.sock
start_proxy "$PROXY" create

# The server's threads running SCHED_FIFO (policy 1), and a wait for none.
# SERVER_PID is timeout(1)'s: the server is its child.
SV_PID=$(cat /proc/"$SERVER_PID"/task/*/children 2>/dev/null | awk '{print $1}')
SV_PID=${SV_PID:-$SERVER_PID}
fifo_threads() {
	grep -l '^policy .*: *1$' /proc/"$SV_PID"/task/*/sched 2>/dev/null | wc -l
}
no_fifo_within() { # MS
	local i
	for ((i = 0; i < $1 / 10; i++)); do
		[ "$(fifo_threads)" -eq 0 ] && return 0
		sleep 0.01
	done
	return 1
}
[ "$(fifo_threads)" -eq 0 ] || fail "server threads SCHED_FIFO before any freeze"

echo data >"$M/file"

# ---- the freeze ends in the middle: "crash" ----
set +e
sv --control "$PROXY" --json snapshot create vm1@late --fsfreeze "$M" --timeout 500ms \
	>"$T/late.json" 2>"$T/late.err" &
CP=$!
n_in=0 # in the window: snapshot-create is held back by the proxy for 1.5 s
for ((i = 0; i < 150 && n_in == 0; i++)); do
	sleep 0.01
	n_in=$(fifo_threads)
done
wait $CP
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$T/late.err" >&2; fail "snapshot create with a lapsed freeze exited $rc"; }
grep -q "recorded as crash-consistent" "$T/late.err" || { cat "$T/late.err" >&2; fail "no warning"; }
grep -q "timeout was reached" "$T/late.err" || { cat "$T/late.err" >&2; fail "no reason given"; }
assert_eq "reply's consistency" crash "$(jget "$T/late.json" 'd["consistency"]')"
assert_eq "free-space hint (stale map)" False "$(jget "$T/late.json" 'd["fs_hint"]["applied"]')"
assert_eq "vm1@late recorded as" crash "$(snap_consistency vm1 late)"
raised=$(jget "$T/late.json" 'd["freeze"]["server_realtime_threads"]')
[ "$raised" -ge 1 ] || fail "no server thread raised for the window ($raised)"
[ "$n_in" -ge 1 ] || fail "no server thread SCHED_FIFO during the window"
no_fifo_within 1000 || fail "$(fifo_threads) server threads left SCHED_FIFO after the window"
log "window: $raised server threads raised, $n_in seen SCHED_FIFO, none after it"

# ---- kill -9 of the CLI while frozen ----
"$SNAPVOL" --pool "$P" --control "$PROXY" snapshot create vm1@killed --fsfreeze "$M" >/dev/null 2>&1 &
CP=$!
sleep 0.6 # frozen, snapshot-create held back by the proxy
[ "$(fifo_threads)" -ge 1 ] || fail "no server thread SCHED_FIFO while frozen"
kill -9 $CP
t=$(probe_write "$M")
wait $CP 2>/dev/null || true
no_fifo_within 1000 || fail "$(fifo_threads) server threads SCHED_FIFO after the CLI's kill -9"
log "kill -9 of snapshot create --fsfreeze: writable again after $t ms"
[ "$t" != timeout ] && [ "$t" -lt 3000 ] || fail "still frozen $t ms after kill -9"
sleep 1.5 # the proxy passes the create on; the server takes it
c=$(snap_consistency vm1 killed)
[ "$c" != frozen ] || fail "vm1@killed recorded as frozen"
log "vm1@killed: '${c:-not taken}'"

# ---- and the normal case ----
sv --json snapshot create vm1@good --fsfreeze "$M" >"$T/good.json"
assert_eq "vm1@good recorded as" frozen "$(snap_consistency vm1 good)"
# The phases inside the window are consecutive spans of one clock: they add
# up to it (each is rounded down to a microsecond).
d=$(jget "$T/good.json" 'd["freeze"]["window_us"] - sum(d["freeze"]["phases_us"][k] for k in
    ("fifreeze", "to_owner", "fsmap", "create", "to_thaw", "fithaw"))')
[ "$d" -ge 0 ] && [ "$d" -le 10 ] || fail "the phases miss $d us of the window"

# ---- FIFREEZE with expedited RCU grace periods, the knob put back ----
K=/sys/kernel/rcu_expedited
knob_settles() { # VALUE: the knob reads it within 1 s (another freeze on
	local i # this machine may hold it at 1 for some milliseconds)
	for ((i = 0; i < 100; i++)); do
		[ "$(cat $K)" = "$1" ] && return 0
		sleep 0.01
	done
	return 1
}
if [ -w $K ] && knob_settles 0; then
	e=$(jget "$T/good.json" 'd["freeze"]["rcu_expedited"]')
	for i in 1 2 3; do # again if another freeze held the knob at that moment
		[ "$e" = True ] && break
		sv --json snapshot create "vm1@exp$i" --fsfreeze "$M" >"$T/exp.json"
		e=$(jget "$T/exp.json" 'd["freeze"]["rcu_expedited"]')
	done
	assert_eq "FIFREEZE with expedited grace periods" True "$e"
	knob_settles 0 || fail "$K left at $(cat $K)"
	SNAPVOL_FREEZE_EXPEDITE=0 sv --json snapshot create vm1@plain --fsfreeze "$M" \
		>"$T/plain.json"
	assert_eq "SNAPVOL_FREEZE_EXPEDITE=0" False \
		"$(jget "$T/plain.json" 'd["freeze"]["rcu_expedited"]')"
	assert_eq "vm1@plain recorded as" frozen "$(snap_consistency vm1 plain)"
else
	log "$K not writable here: expedited FIFREEZE not checked"
fi

# ---- the window run SCHED_FIFO (as root), and said so ----
assert_eq "snapshot --fsfreeze window real-time" True \
	"$(jget "$T/good.json" 'd["freeze"]["realtime"]')"
SNAPVOL_FREEZE_RT=0 sv --json snapshot create vm1@nort --fsfreeze "$M" >"$T/nort.json"
assert_eq "SNAPVOL_FREEZE_RT=0" False "$(jget "$T/nort.json" 'd["freeze"]["realtime"]')"
assert_eq "vm1@nort recorded as" frozen "$(snap_consistency vm1 nort)"
assert_eq "SNAPVOL_FREEZE_RT=0: server threads raised" 0 \
	"$(jget "$T/nort.json" 'd["freeze"]["server_realtime_threads"]')"
[ "$(fifo_threads)" -eq 0 ] || fail "server threads SCHED_FIFO after the window"
# The bound: a window nobody ends ends after its "max"; one ended twice is ENOENT.
$PY - "$P/control.sock" "$SV_PID" <<'PYEOF' || fail "window-begin/-end on the control socket"
import glob, json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
def call(cmd, args):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    return json.loads(f.readline())
def fifo():
    n = 0
    for p in glob.glob(f"/proc/{sys.argv[2]}/task/*/sched"):
        try:
            n += any(l.split(":")[0].strip() == "policy" and l.split(":")[1].strip() == "1"
                     for l in open(p))
        except OSError:
            pass
    return n
r = call("window-begin", {"names": ["vm1"], "max": 300})["return"]
assert r["raised"] >= 1 and fifo() >= 1, (r, fifo())
time.sleep(0.6)
assert fifo() == 0, f"{fifo()} threads SCHED_FIFO after the bound"
e = call("window-end", {"id": r["id"]})
assert e["error"]["class"] == "ENOENT", e
r = call("window-begin", {"names": ["vm1"]})["return"]
assert call("window-end", {"id": r["id"]})["return"]["restored"] == r["raised"]
assert fifo() == 0
PYEOF

# ---- the thaw comes at the instant, before the snapshot is durable ----
PROXY2=$T/hold-reply.sock
start_proxy "$PROXY2" reply
sv --control "$PROXY2" --json snapshot create vm1@early --fsfreeze "$M" >"$T/early.json" &
CP=$!
for ((i = 0; i < 400; i++)); do [ -e "$T/event-seen" ] && break; sleep 0.05; done
[ -e "$T/event-seen" ] || fail "no SNAPSHOT_TAKEN event passed the proxy"
t=$(probe_write "$M")
kill -0 $CP 2>/dev/null || fail "the CLI finished before the held reply: it did not wait for it"
log "writable $t ms after SNAPSHOT_TAKEN, while the reply was still held"
wait $CP || fail "snapshot create vm1@early failed"
assert_eq "vm1@early recorded as" frozen "$(snap_consistency vm1 early)"
a=$(jget "$T/early.json" 'd["freeze"]["phases_us"]["durable_after_thaw"] >= 1000000')
assert_eq "thawed a held reply's time before the snapshot was durable" True "$a"

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
