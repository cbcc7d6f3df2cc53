#!/usr/bin/env bash
# test-rados-stop.sh: stopping a server while its cluster does not answer.
# A server whose monitor and OSD are stopped (SIGSTOP) stops cleanly on
# SIGTERM without trying to release its claims (each call would wait an op
# timeout): it logs that the claim is left to lapse.  A second SIGTERM
# during a stop (1.5 s after the first) ends the process at once (status 1)
# without the clean close;
# after the cluster is back, the next server takes the claim once it lapsed
# and every flushed write and the snapshot read back intact, and an offline
# check of the pool passes.  Skipped (77) only when the Ceph packages are
# missing.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version

new_pool
start_ceph
export XDG_RUNTIME_DIR=$T/run
export SNAPVOL_RADOS_CLAIM=10s # op timeout 2 s: a stop in an outage takes 4 s or more
mkdir -p "$XDG_RUNTIME_DIR"
P=rados:blk
RUN=$XDG_RUNTIME_DIR/snapvol/rados:blk
WAIT_FOR="$RUN/nbd.sock $RUN/control.sock"
M=1048576

ceph_daemons

# A new server; vm1 opens once the last server's claim has lapsed.
start_after_lapse() {
	local i
	start_server
	for ((i = 0; i < 200; i++)); do
		nbdinfo "$U" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	fail "vm1 could not be opened within 40 s: $(tail -3 "$SERVER_LOG")"
}

# stop_during_outage SIGNALS...: stop the cluster, send the server each
# signal (1.5 s apart), resume the cluster once it exited; sets RC.
stop_during_outage() {
	local pid=$SERVER_PID srv i
	srv=$(server_pid) # the server itself, not its "timeout" wrapper
	SERVER_PID=
	kill -STOP "$OSD" "$MON"
	for s in "$@"; do
		kill "-$s" "$srv"
		sleep 1.5 # a signal within 1 s of the first is taken for the same one
	done
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "the server did not stop within 60 s of SIGTERM"
	RC=0
	wait "$pid" || RC=$?
	resume_cluster
}

sv create vm1 --size 16M
start_server
U=$(uri vm1 "$RUN/nbd.sock")
head -c $((16 * M)) /dev/urandom >"$T/a.img"
nbdcopy --flush "$T/a.img" "$U"
sv snapshot create vm1@s1 >/dev/null
head -c $((4 * M)) /dev/urandom >"$T/b.img"
cp "$T/a.img" "$T/live.img"
dd if="$T/b.img" of="$T/live.img" bs=1M seek=6 conv=notrunc status=none
nbdcopy --flush "$T/live.img" "$U" # flushed: a stop in an outage keeps it

log "one SIGTERM during an outage: a clean stop that leaves the claim to lapse"
stop_during_outage TERM
assert_eq "exit status after one SIGTERM" 0 "$RC"
grep -q "claim is left to lapse" "$SERVER_LOG" ||
	fail "the server did not say it left its claim to lapse: $(tail -5 "$SERVER_LOG")"

start_after_lapse
assert_eq "vm1 after a stop during an outage" "$(sha "$T/live.img")" "$(nbd_sha "$U")"
head -c $((4 * M)) /dev/urandom >"$T/c.img"
dd if="$T/c.img" of="$T/live.img" bs=1M seek=10 conv=notrunc status=none
nbdcopy --flush "$T/live.img" "$U" # flushed: a stop in an outage keeps it

log "two SIGTERMs during an outage: the second ends the process at once"
stop_during_outage TERM TERM
assert_eq "exit status after a second SIGTERM" 1 "$RC"
grep -q "received again: stopping at once" "$SERVER_LOG" ||
	fail "the server did not log the second signal: $(tail -5 "$SERVER_LOG")"

start_after_lapse
assert_eq "vm1 after a stop cut short" "$(sha "$T/live.img")" "$(nbd_sha "$U")"
assert_eq "vm1@s1" "$(sha "$T/a.img")" "$(nbd_sha "$(uri vm1@s1 "$RUN/nbd.sock")")"
stop_server
sv check >"$T/check.out" 2>&1 || fail "check: $(cat "$T/check.out")"
log "ok"
