#!/usr/bin/env bash
# test-fsfreeze-watchdog.sh: no freeze outlives its owner, and bad input
# leaves nothing frozen.
#
# ext4 on a volume (nbdfuse + loop); on it an image file, loop-mounted with
# a second ext4 (a stack).  Then, with "snapvol fsfreeze":
#  - kill -9 of snapvol while frozen: a write goes through again within a
#    second (measured with a background touch, printed; the bound asserted is
#    generous: the machine is shared);
#  - snapvol stopped (SIGSTOP) with a 500 ms lease: the watchdog thaws;
#  - --timeout: thawed while CMD runs, said on stderr, CMD's status kept;
#  - real-time scheduling for the window (agent/watchdog.c): while frozen
#    the watchdog and snapvol's thread run SCHED_FIFO and CMD does not; after
#    an early thaw (the timeout) both are SCHED_OTHER again while CMD still
#    runs; SNAPVOL_FREEZE_RT=0 leaves them alone; --json says which;
#  - the stack given bottom-first is frozen top-down (the upper filesystem,
#    with dirty data, first: the other order would hang its flush);
#  - a path that is not a mount point, a tmpfs (cannot freeze), a filesystem
#    frozen by someone else (left frozen by them, not thawed by us; under a
#    stack, where the upper FIFREEZE blocks, given up at the timeout), a
#    lease of 0 and of a year: clear errors, and nothing left frozen.
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

# The upper filesystem of the stack: an image file on M.
UP=$T/mnt-upper
UPLOOP=
mkdir -p "$UP"
truncate -s 64M "$M/upper.img"
mkfs.ext4 -q -F "$M/upper.img"
UPLOOP=$(losetup -f --show "$M/upper.img")
cleanup_upper() {
	fsfreeze -u "$UP" 2>/dev/null || true
	fsfreeze -u "$M" 2>/dev/null || true
	if mountpoint -q "$UP"; then umount "$UP"; fi
	if [ -n "$UPLOOP" ]; then losetup -d "$UPLOOP"; fi
	UPLOOP=
}
cleanup_fn cleanup_upper
mount "$UPLOOP" "$UP"

# ---- kill -9 of the freezing process ----
# children PID: the pids of PID's children (CMD, to stop it afterwards)
children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }

"$SNAPVOL" fsfreeze "$M" -- sleep 60 >/dev/null 2>"$T/kill9.err" &
FP=$!
sleep 0.5
is_frozen "$M" || fail "not frozen by snapvol fsfreeze"
CMDPID=$(children $FP)
kill -9 $FP
t=$(probe_write "$M")
wait $FP 2>/dev/null || true
[ -z "$CMDPID" ] || kill $CMDPID 2>/dev/null || true
log "kill -9 of the freezing process: writable again after $t ms"
[ "$t" != timeout ] && [ "$t" -lt 3000 ] || fail "still frozen $t ms after kill -9"

# ---- a lease not renewed ----
"$SNAPVOL" fsfreeze --lease 500ms "$M" -- sleep 60 >/dev/null 2>"$T/lease.err" &
FP=$!
sleep 0.5
is_frozen "$M" || fail "not frozen (lease test)"
kill -STOP $FP
t=$(probe_write "$M")
log "owner stopped, 500 ms lease: writable again after $t ms"
[ "$t" != timeout ] && [ "$t" -lt 5000 ] || fail "still frozen $t ms after the owner stopped"
CMDPID=$(children $FP)
kill -CONT $FP
sleep 0.5 # it says why it was thawed
[ -z "$CMDPID" ] || kill $CMDPID 2>/dev/null || true
wait $FP 2>/dev/null || true
grep -q "lease lapsed" "$T/lease.err" || { cat "$T/lease.err" >&2; fail "no word of the lapsed lease"; }

# ---- the timeout, and CMD's status ----
set +e
"$SNAPVOL" fsfreeze --timeout 300ms "$M" -- sh -c 'sleep 1; exit 7' 2>"$T/timeout.err"
rc=$?
set -e
assert_eq "exit status (CMD's)" 7 "$rc"
grep -q "timeout was reached" "$T/timeout.err" || { cat "$T/timeout.err" >&2; fail "no word of the timeout"; }
t=$(probe_write "$M")
[ "$t" != timeout ] || fail "frozen after the timeout"

# ---- real-time scheduling for the window ----
# sched.sh OUT [DELAY]: run as CMD; after DELAY seconds, write the policy
# of the watchdog (snapvol's child named snapvol-wdog), of snapvol's main
# thread (the one that froze) and of itself to OUT (a file in $T, not on
# the frozen filesystem).
cat >"$T/sched.sh" <<'SH'
#!/bin/sh
sleep "${2:-0}"
o=$PPID w=
for c in $(cat /proc/$o/task/$o/children); do
	[ "$(cat /proc/$c/comm)" = snapvol-wdog ] && w=$c
done
pol() { chrt -p "$1" | sed -n '1s/.*policy: //p'; }
{ echo "wdog=$(pol "$w")"; echo "owner=$(pol "$o")"; echo "cmd=$(pol $$)"; } >"$1"
SH
chmod +x "$T/sched.sh"
policy() { sed -n "s/^$1=//p" "$2"; } # policy WHO FILE
"$SNAPVOL" --json fsfreeze "$M" -- "$T/sched.sh" "$T/rt.out" >"$T/rt.json" ||
	fail "fsfreeze with the scheduling probe failed"
log "while frozen: $(tr '\n' ' ' <"$T/rt.out")"
assert_eq "--json realtime" True "$(jget "$T/rt.json" 'd["realtime"]')"
assert_eq "the watchdog while frozen" "SCHED_FIFO|SCHED_RESET_ON_FORK" "$(policy wdog "$T/rt.out")"
assert_eq "snapvol's thread while frozen" "SCHED_FIFO|SCHED_RESET_ON_FORK" "$(policy owner "$T/rt.out")"
assert_eq "CMD while frozen (not real-time)" SCHED_OTHER "$(policy cmd "$T/rt.out")"
# thawed early (the timeout) while CMD runs on: both back at once
"$SNAPVOL" fsfreeze --timeout 300ms "$M" -- "$T/sched.sh" "$T/rt-late.out" 1 2>/dev/null ||
	fail "fsfreeze --timeout with the scheduling probe failed"
log "after the timeout's thaw: $(tr '\n' ' ' <"$T/rt-late.out")"
assert_eq "the watchdog after an early thaw" SCHED_OTHER "$(policy wdog "$T/rt-late.out")"
assert_eq "snapvol's thread after an early thaw" SCHED_OTHER "$(policy owner "$T/rt-late.out")"
SNAPVOL_FREEZE_RT=0 "$SNAPVOL" --json fsfreeze "$M" -- "$T/sched.sh" "$T/rt-off.out" \
	>"$T/rt-off.json" || fail "fsfreeze with SNAPVOL_FREEZE_RT=0 failed"
assert_eq "--json realtime, SNAPVOL_FREEZE_RT=0" False "$(jget "$T/rt-off.json" 'd["realtime"]')"
assert_eq "the watchdog, SNAPVOL_FREEZE_RT=0" SCHED_OTHER "$(policy wdog "$T/rt-off.out")"
assert_eq "snapvol's thread, SNAPVOL_FREEZE_RT=0" SCHED_OTHER "$(policy owner "$T/rt-off.out")"

# ---- stacked: given bottom-first, frozen top-down ----
head -c 4000000 /dev/urandom >"$UP/dirty" # not synced: the upper freeze flushes it
timeout 60 "$SNAPVOL" --json fsfreeze "$M" "$UP" -- sh -c 'test -s '"$M/upper.img" >"$T/stack.json" ||
	fail "fsfreeze of the stack failed"
assert_eq "freeze order" "['$UP', '$M']" "$(jget "$T/stack.json" 'd["order"]')"
log "stack frozen top-down in $(jget "$T/stack.json" 'd["window_us"]') us"

# ---- bad input ----
expect_fail() { # STATUS PATTERN ARGS...
	local want=$1 pat=$2 rc
	shift 2
	set +e
	"$SNAPVOL" "$@" >"$T/bad.out" 2>"$T/bad.err"
	rc=$?
	set -e
	[ "$rc" -eq "$want" ] || { cat "$T/bad.err" >&2; fail "'$*' exited $rc, not $want"; }
	grep -q -- "$pat" "$T/bad.err" || { cat "$T/bad.err" >&2; fail "'$*': no '$pat' in the message"; }
	[ ! -s "$T/bad.out" ] || fail "'$*' ran the command"
}
expect_fail 1 "is not a mount point" fsfreeze "$M/lost+found" -- touch "$T/ran"
expect_fail 1 "No such file" fsfreeze "$T/nonexistent" -- touch "$T/ran"
mkdir -p "$T/tmpfs"
mount -t tmpfs none "$T/tmpfs"
cleanup_fn umount "$T/tmpfs"
expect_fail 1 "cannot be frozen" fsfreeze "$M" "$T/tmpfs" -- touch "$T/ran"
expect_fail 2 "out of range" fsfreeze --lease 0 "$M" -- touch "$T/ran"
expect_fail 2 "out of range" fsfreeze --lease 8760h "$M" -- touch "$T/ran"
expect_fail 2 "out of range" fsfreeze --timeout 8760h "$M" -- touch "$T/ran"
expect_fail 2 "needs MOUNTPOINT" fsfreeze "$M" touch "$T/ran"
expect_fail 1 "the same filesystem" fsfreeze "$M" "$M/." -- touch "$T/ran"
[ ! -e "$T/ran" ] || fail "a command ran after an error"
t=$(probe_write "$M")
[ "$t" != timeout ] || fail "left frozen after bad input"
t=$(probe_write "$UP")
[ "$t" != timeout ] || fail "the upper filesystem left frozen after bad input"

# Frozen by someone else: refused, and their freeze is left alone.
fsfreeze -f "$M"
expect_fail 1 "already frozen" fsfreeze "$M" -- touch "$T/ran"
is_frozen "$M" || fail "someone else's freeze was thawed"
fsfreeze -u "$M"
# The same under a stack: the upper filesystem's FIFREEZE waits for the
# lower one (frozen by someone else) to thaw; snapvol gives up at its
# timeout, and once the lower one is thawed nothing stays frozen.
head -c 1000000 /dev/urandom >"$UP/dirty2"
fsfreeze -f "$M"
# In the background, and M thawed after 5 s whatever it does: a process
# blocked on a frozen filesystem cannot be killed, so never wait for it first.
"$SNAPVOL" fsfreeze --timeout 1s "$UP" "$M" -- touch "$T/ran" 2>"$T/bad.err" &
FP=$!
for ((i = 0; i < 50; i++)); do kill -0 $FP 2>/dev/null || break; sleep 0.1; done
fsfreeze -u "$M"
set +e
wait $FP
rc=$?
set -e
[ $i -lt 50 ] || fail "snapvol did not give up at its timeout (1 s)"
log "stack over a filesystem frozen by someone else: exit $rc, $(cat "$T/bad.err")"
assert_eq "exit status, lower one frozen by someone else" 1 "$rc"
[ ! -e "$T/ran" ] || fail "the command ran"
sleep 0.5
t=$(probe_write "$UP")
[ "$t" != timeout ] || fail "the upper filesystem left frozen after the lower one was thawed"
t=$(probe_write "$M")
[ "$t" != timeout ] || fail "the lower filesystem left frozen"
cleanup_upper
teardown_all
server_alive || fail "server died during the test"
stop_server
log "ok"
