#!/usr/bin/env bash
# freeze.sh: the freeze window and the write stall of a filesystem-consistent
# snapshot (issue 4, "Measure"), snapvol against doing it by hand.
#
# Two stacks, each a 4 GiB ext4 (VOL_GIB) on an NBD export through nbdfuse
# + a loop device (direct I/O), mounted: one on "snapvol serve", one on
# qemu-storage-daemon (a raw file, exported over NBD, QMP on a socket).
# Inside each, fio writes 4 KiB at random (libaio, direct, QD16) at the same
# rate (RATE_IOPS) with a per-I/O latency log.  Then, N times each:
#   snapvol   snapvol snapshot create vol@N --fsfreeze MNT
#   plain     the same with SNAPVOL_FREEZE_EXPEDITE=0: FIFREEZE's RCU grace
#             periods not expedited (PLAIN=0 leaves this A/B out)
#   nort      the same with SNAPVOL_FREEZE_RT=0: the watchdog and the agent's
#             thread not raised to SCHED_FIFO for the window (NORT=0 leaves
#             this A/B out)
#   byhand    FIFREEZE MNT; snapvol snapshot create vol@N; FITHAW MNT
#   qsd       FIFREEZE MNT; QMP transaction (blockdev-backup sync=none:
#             qemu's copy-before-write snapshot); FITHAW MNT
# (the peers' FIFREEZE/FITHAW are the ioctls fsfreeze -f/-u make, issued by
# freeze.py itself).  snapvol, nort, plain and byhand run interleaved on the snapvol
# stack, then qsd on its own (two stacks at once would share 2 cores).  Per
# event: the freeze window, measured the same way for every method, from
# calling FIFREEZE to FITHAW returning (snapvol's syncfs before FIFREEZE is
# outside it, as a by-hand user's own sync would be), and the longest write
# stall fio saw (the longest write in flight during the window), and the
# same measure over a quiet control window before it.
# With TRACE=1 (the default when perf is there) the breakdown of snapvol's
# window is added: its phases (from its --json), the NBD FLUSHes the server
# served in each (perf uprobes on sv_view_flush: count, time, write-behind
# bytes) and the server's quiesced-create steps (SNAPVOL_TRACE_FREEZE=1).
# With KTRACE=1 (the default when tracefs is writable) the inside of the
# kernel's FIFREEZE and FITHAW is added: an ftrace instance, recording only
# while snapvol's events run, takes the watchdog's sched_switch events with
# their kernel stacks (a stacktrace trigger), its wake-ups and the FUSE
# requests; freeze.py kphases classes the time by what the watchdog waited
# for (RCU grace periods, writes in flight, journal commit, checkpoint,
# superblock writes, a CPU), lists the slowest tenth of the events one by
# one, and from the switches and wake-ups of every "snapvol" thread tells
# how long the server's threads (those serving the window's FLUSHes apart,
# by the perf uprobes' thread ids) and the agent's main thread waited for a
# CPU.  Tracepoints only: no kprobes needed.
# freeze.py has the details.
#
# SLOWDISK=WIOPS[:WBPS] makes the disk that holds BENCH_TMPDIR slow for
# both servers alike: snapvol serve and qemu-storage-daemon run in one
# blkio cgroup (v1 blkio.throttle.write_iops_device/write_bps_device, or
# v2 io.max) limited to WIOPS writes/s (and WBPS bytes/s, a size: 20M).
# Writes the servers submit themselves (fdatasync, sync_file_range) are
# throttled; the kernel's own flusher threads are not (cgroup v1 charges
# them to the root), which at this load (2 MB/s) write nothing within
# 30 s.  The load must fit: at RATE_IOPS=500 SLOWDISK=200 cannot keep up
# and 1000 stalls fio 2 s outside any freeze; SLOWDISK=3000 gave the qsd
# peer a 0.5-0.6 s window (session 5's slow run: 0.3 s) on a loaded machine.
#
#   bench/freeze.sh                    # ~4 min with the defaults
#   N=5 RUNTIME=40 bench/freeze.sh     # smoke run
#   N=60 GAP_S=1.5 SLOWDISK=3000 PLAIN=0 NORT=0 BYHAND=0 bench/freeze.sh
#                                      # p99 over 60 events (N <= 50 makes it the maximum)
# Knobs: N (events per method, 30), VOL_GIB (4), RATE_IOPS (500),
# SLOWDISK (unset: the disk as it is), GAP_S (2.5: pause before each
# event), QSD (1; 0 leaves the qemu peer out, for a quick A/B),
# SNAPVOL (build/cli/snapvol), BENCH_TMPDIR (/var/tmp), RESULTS_DIR
# (bench/results), PLAIN (1), NORT (1), BYHAND (1), TRACE (1 if perf is installed), KTRACE (1 if
# /sys/kernel/tracing is writable), SNAPVOL_FREEZE_EXPEDITE (passed on to
# snapvol: 0 freezes without expedited RCU grace periods), SNAPVOL_FREEZE_RT
# (passed on: 0 leaves the scheduling alone).  Needs root, fio,
# nbdfuse, qemu-storage-daemon, qemu-img, gnuplot, util-linux fsfreeze;
# perf for TRACE (a SNAPVOL built with debug info, e.g. debugoptimized).
# Writes bench/results/freeze-DATE.{md,tsv,events.tsv,png} (+ .snapvol.jsonl
# and .plain.jsonl, .nort.jsonl: snapvol's JSON per event).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [[ $# -gt 0 ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
fi
CMDLINE=
for v in N VOL_GIB RATE_IOPS SNAPVOL BENCH_TMPDIR RESULTS_DIR PLAIN NORT BYHAND TRACE KTRACE \
	SNAPVOL_FREEZE_EXPEDITE SNAPVOL_FREEZE_RT \
	SLOWDISK GAP_S QSD; do
	[[ -n "${!v+x}" ]] && CMDLINE+="$v=$(printf '%q' "${!v}") "
done
CMDLINE+="$0"
N=${N:-30}
VOL_GIB=${VOL_GIB:-4}
RATE_IOPS=${RATE_IOPS:-500}
PLAIN=${PLAIN:-1}
NORT=${NORT:-1}
BYHAND=${BYHAND:-1}
QSD=${QSD:-1}
SLOWDISK=${SLOWDISK:-}
SNAPVOL=$(realpath "${SNAPVOL:-$REPO/build/cli/snapvol}")
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
PY=/usr/bin/python3
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
if [[ -z ${TRACE:-} ]]; then
	TRACE=0
	command -v perf >/dev/null && TRACE=1
fi
if [[ -z ${KTRACE:-} ]]; then
	KTRACE=0
	[[ -w /sys/kernel/tracing/instances ]] && KTRACE=1
fi

log() { echo "freeze.sh: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[[ $(id -u) -eq 0 ]] || die "needs root (FIFREEZE, loop devices, mount)"
for t in fio nbdfuse qemu-storage-daemon qemu-img gnuplot fsfreeze losetup; do
	command -v $t >/dev/null || die "$t is missing"
done
[[ -x $SNAPVOL ]] || die "no snapvol binary at $SNAPVOL (SNAPVOL=...)"

STAMP=$(date +%Y-%m-%d-%H%M%S)
TMP=$(mktemp -d "$BENCH_TMPDIR/freeze-bench.XXXXXX")
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/freeze-$STAMP

# ---------------------------------------------------------------- cleanup
declare -A LOOP MNT FUSE FPID
PIDS=()
teardown_stack() { # NAME
	local n=$1
	[[ -n ${MNT[$n]:-} ]] || return 0
	fsfreeze -u "${MNT[$n]}" 2>/dev/null || true
	if mountpoint -q "${MNT[$n]}"; then umount "${MNT[$n]}" || umount -l "${MNT[$n]}"; fi
	[[ -n ${LOOP[$n]:-} ]] && losetup -d "${LOOP[$n]}" 2>/dev/null
	if mountpoint -q "${FUSE[$n]}"; then fusermount3 -u "${FUSE[$n]}" || fusermount3 -u -z "${FUSE[$n]}"; fi
	[[ -n ${FPID[$n]:-} ]] && kill "${FPID[$n]}" 2>/dev/null
	MNT[$n]=
	return 0
}
cleanup() {
	set +e
	trap - EXIT INT TERM HUP
	for p in "${FIOPIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null; done
	trace_stop
	teardown_stack sv
	teardown_stack qsd
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	slowdisk_stop
	rm -rf "$TMP"
}
FIOPIDS=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- slow disk
# SLOWDISK=WIOPS[:WBPS]: a blkio cgroup of our own, write-limited on the
# device that holds $TMP; slowdisk_add PID puts a server in it (its threads
# and children follow).
CG=
slowdisk_start() {
	[[ -n $SLOWDISK ]] || return 0
	local wiops=${SLOWDISK%%:*} wbps= dev base
	[[ $SLOWDISK == *:* ]] && wbps=${SLOWDISK#*:}
	[[ $wiops =~ ^[0-9]+$ ]] || die "SLOWDISK=$SLOWDISK: WIOPS[:WBPS] expected"
	if [[ -n $wbps ]]; then
		wbps=$(numfmt --from=iec "$wbps") || die "SLOWDISK=$SLOWDISK: bad WBPS"
	fi
	# The whole disk (throttling works on it, not on a partition).
	dev=$(findmnt -n -o SOURCE --target "$TMP")
	base=$(lsblk -n -d -o PKNAME "$dev" 2>/dev/null || true)
	[[ -n $base ]] && dev=/dev/$base
	MAJMIN=$(lsblk -n -d -o MAJ:MIN "$dev" | tr -d ' ')
	[[ -n $MAJMIN ]] || die "SLOWDISK: no device for $TMP"
	if [[ -e /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device ]]; then
		CG=/sys/fs/cgroup/blkio/svbench-$$
		mkdir "$CG" || die "SLOWDISK: cannot make $CG"
		echo "$MAJMIN $wiops" >"$CG/blkio.throttle.write_iops_device"
		[[ -n $wbps ]] && echo "$MAJMIN $wbps" >"$CG/blkio.throttle.write_bps_device"
	elif [[ -e /sys/fs/cgroup/cgroup.controllers ]] &&
		grep -qw io /sys/fs/cgroup/cgroup.controllers; then
		CG=/sys/fs/cgroup/svbench-$$
		echo +io >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
		mkdir "$CG" || die "SLOWDISK: cannot make $CG"
		echo "$MAJMIN wiops=$wiops${wbps:+ wbps=$wbps}" >"$CG/io.max"
	else
		die "SLOWDISK: neither cgroup v1 blkio throttling nor the v2 io controller here"
	fi
	log "slow disk: $dev ($MAJMIN) limited to $wiops writes/s${wbps:+ and $wbps bytes/s} for both servers ($CG)"
}
slowdisk_add() { # PID
	[[ -n $CG ]] || return 0
	echo "$1" >"$CG/cgroup.procs"
}
slowdisk_stop() {
	[[ -n $CG ]] || return 0
	local p up
	up=$(dirname "$CG")
	for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do echo "$p" >"$up/cgroup.procs" 2>/dev/null; done
	rmdir "$CG" 2>/dev/null || log "could not remove $CG"
	CG=
}

# ---------------------------------------------------------------- stacks
# stack_up NAME URI: nbdfuse + loop + mkfs.ext4 + mount on $TMP/mnt-NAME.
stack_up() {
	local n=$1 uri=$2 i
	FUSE[$n]=$TMP/fuse-$n MNT[$n]=$TMP/mnt-$n
	mkdir -p "${FUSE[$n]}" "${MNT[$n]}"
	setsid nbdfuse -P "$TMP/fuse-$n.pid" "${FUSE[$n]}" "$uri" </dev/null >"$TMP/nbdfuse-$n.log" 2>&1 &
	for ((i = 0; i < 300; i++)); do
		[[ -s $TMP/fuse-$n.pid && -e ${FUSE[$n]}/nbd ]] && break
		sleep 0.1
	done
	[[ -s $TMP/fuse-$n.pid ]] || die "nbdfuse $uri did not start"
	FPID[$n]=$(cat "$TMP/fuse-$n.pid")
	LOOP[$n]=$(losetup -f --show --direct-io=on "${FUSE[$n]}/nbd")
	mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "${LOOP[$n]}"
	mount "${LOOP[$n]}" "${MNT[$n]}"
	log "ext4 on $uri mounted on ${MNT[$n]} (${LOOP[$n]})"
}

wait_sock() {
	local i
	for ((i = 0; i < 200; i++)); do [[ -S $1 ]] && return 0; sleep 0.05; done
	die "no socket $1"
}

# ---------------------------------------------------------------- tracing
# perf uprobes on the server's NBD FLUSH (sv_view_flush, entry and return,
# with the write-behind bytes held), recorded on CLOCK_MONOTONIC, the clock
# of snapvol's own phase times.  Only the probes added here are removed.
PERF_PID= PROBES=
trace_start() {
	[[ $TRACE == 1 ]] || return 0
	if ! perf probe -q -x "$SNAPVOL" -a \
		'svbench:flush=sv_view_flush wbbytes=v->vol->pool->wb.bytes:u64' 2>/dev/null &&
		! perf probe -q -x "$SNAPVOL" -a 'svbench:flush=sv_view_flush' 2>/dev/null; then
		log "perf probe failed: no FLUSH breakdown"
		return 0
	fi
	PROBES=1
	perf probe -q -x "$SNAPVOL" -a 'svbench:flush_ret=sv_view_flush%return' 2>/dev/null || true
	perf record -q -k CLOCK_MONOTONIC -e 'svbench:*' -a -o "$TMP/perf.data" \
		>"$TMP/perf.log" 2>&1 &
	PERF_PID=$!
	sleep 1
}
# ktrace_start: an ftrace instance of our own (others' tracing untouched),
# on CLOCK_MONOTONIC; freeze.py turns it on around each snapvol event.
KINST=
ktrace_start() {
	[[ $KTRACE == 1 ]] || return 0
	local i=/sys/kernel/tracing/instances/svbench-$$ e
	mkdir "$i" 2>/dev/null || {
		log "cannot make an ftrace instance: no kernel breakdown"
		return 0
	}
	KINST=$i
	echo 0 >"$i/tracing_on"
	echo mono >"$i/trace_clock"
	echo 32768 >"$i/buffer_size_kb"
	# the watchdog, and every "snapvol" thread: the server's (told apart
	# by their ids, $TMP/server-tids.txt) wait for a CPU or not
	echo 'prev_comm == "snapvol-wdog" || next_comm == "snapvol-wdog" ||' \
		'prev_comm == "snapvol" || next_comm == "snapvol"' \
		>"$i/events/sched/sched_switch/filter"
	echo 'stacktrace if prev_comm == "snapvol-wdog"' >"$i/events/sched/sched_switch/trigger"
	echo 'comm == "snapvol-wdog" || comm == "snapvol"' >"$i/events/sched/sched_wakeup/filter"
	for e in sched/sched_switch sched/sched_wakeup fuse/fuse_request_send \
		fuse/fuse_request_end; do
		echo 1 >"$i/events/$e/enable" || log "no tracepoint $e"
	done
	export SV_KTRACE=$i
}
ktrace_stop() {
	[[ -n $KINST ]] || return 0
	echo 0 >"$KINST/tracing_on"
	cat "$KINST/trace" >"$TMP/ktrace.txt" 2>/dev/null || true
	echo '!stacktrace if prev_comm == "snapvol-wdog"' \
		>"$KINST/events/sched/sched_switch/trigger" 2>/dev/null
	echo 0 >"$KINST/events/enable" 2>/dev/null
	rmdir "$KINST" 2>/dev/null || log "could not remove $KINST"
	KINST=
	unset SV_KTRACE
	return 0
}
trace_stop() {
	ktrace_stop
	if [[ -n $PERF_PID ]]; then
		kill -INT "$PERF_PID" 2>/dev/null || true
		wait "$PERF_PID" 2>/dev/null || true # 130: it stopped on the SIGINT
		PERF_PID=
		perf script -i "$TMP/perf.data" -F tid,time,event,trace >"$TMP/flushes.txt" \
			2>/dev/null || true
	fi
	if [[ -n $PROBES ]]; then
		perf probe -q -d 'svbench:*' 2>/dev/null || true
		PROBES=
	fi
	return 0
}

slowdisk_start
POOL=$TMP/pool
"$SNAPVOL" --pool "$POOL" create vol --size "${VOL_GIB}G" >/dev/null
SNAPVOL_TRACE_FREEZE=$TRACE "$SNAPVOL" --pool "$POOL" serve >"$TMP/serve.log" 2>&1 &
PIDS+=($!)
SERVER_PID=$!
slowdisk_add "$SERVER_PID"
wait_sock "$POOL/control.sock"
wait_sock "$POOL/nbd.sock"
stack_up sv "nbd+unix:///vol?socket=$POOL/nbd.sock"

if [[ $QSD == 1 ]]; then
	truncate -s "${VOL_GIB}G" "$TMP/qsd.raw"
	qemu-storage-daemon \
		--blockdev driver=file,node-name=orig-file,filename="$TMP/qsd.raw" \
		--blockdev driver=raw,node-name=top,file=orig-file \
		--nbd-server addr.type=unix,addr.path="$TMP/qsd.sock" \
		--export type=nbd,id=exp0,node-name=top,name=vol,writable=on \
		--chardev socket,id=qmp0,path="$TMP/qmp.sock",server=on,wait=off \
		--monitor chardev=qmp0 >"$TMP/qsd.log" 2>&1 &
	PIDS+=($!)
	slowdisk_add $!
	wait_sock "$TMP/qsd.sock"
	wait_sock "$TMP/qmp.sock"
	stack_up qsd "nbd+unix:///vol?socket=$TMP/qsd.sock"
fi

# fio_start NAME: the load inside the filesystem, until fio_stop.
fio_start() {
	local n=$1
	fio --name=load --directory="${MNT[$n]}" --size=1G --rw=randwrite --bs=4k \
		--ioengine=libaio --direct=1 --iodepth=16 --rate_iops="$RATE_IOPS" \
		--time_based --runtime=3600 --write_lat_log="$TMP/lat-$n" --log_avg_msec=0 \
		--log_unix_epoch=1 --output="$TMP/fio-$n.out" >/dev/null 2>&1 &
	FIOPIDS+=($!)
	# laid out and running: the latency log grows
	local i
	for ((i = 0; i < 600; i++)); do
		[[ -s $TMP/lat-${n}_lat.1.log ]] && break
		sleep 0.1
	done
	sleep 2
}
fio_stop() {
	kill "${FIOPIDS[-1]}" 2>/dev/null || true
	wait "${FIOPIDS[-1]}" 2>/dev/null || true
	unset 'FIOPIDS[-1]'
}

export SNAPVOL POOL TMP
export SV_MNT=${MNT[sv]} QSD_MNT=${MNT[qsd]:-} QSD_QMP=$TMP/qmp.sock
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

SV_MODES=snapvol
[[ $NORT == 1 ]] && SV_MODES+=" nort"
[[ $PLAIN == 1 ]] && SV_MODES+=" plain"
[[ $BYHAND == 1 ]] && SV_MODES+=" byhand"
log "$SV_MODES: $N each, interleaved, under $RATE_IOPS IOPS of 4 KiB random writes"
fio_start sv
trace_start
ktrace_start
"$PY" "$HERE/freeze.py" run "$TMP/events-sv.tsv" "$N" $SV_MODES
ls "/proc/$SERVER_PID/task" >"$TMP/server-tids.txt"
trace_stop
fio_stop
if [[ $QSD == 1 ]]; then
	log "qemu-storage-daemon, $N events"
	fio_start qsd
	"$PY" "$HERE/freeze.py" run "$TMP/events-qsd.tsv" "$N" qsd
	fio_stop
else
	head -n 1 "$TMP/events-sv.tsv" >"$TMP/events-qsd.tsv"
fi
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)

{
	cat "$TMP/events-sv.tsv"
	tail -n +2 "$TMP/events-qsd.tsv"
} >"$OUT.events.tsv"
"$PY" "$HERE/freeze.py" report "$OUT.events.tsv" "$TMP"/lat-*_lat.1.log >"$OUT.tsv"
read -r WIDTH NMODES < <("$PY" "$HERE/freeze.py" dat "$OUT.tsv" "$TMP")
gnuplot -e "dir='$TMP'; out='$OUT.png'; width=$WIDTH; nmodes=$NMODES" "$HERE/freeze.gp" ||
	log "gnuplot failed; no plot"

{
	echo "# Freeze window and write stall: snapshot create --fsfreeze vs by hand ($STAMP)"
	echo
	echo "- command: \`$CMDLINE\`"
	echo "- machine: $(nproc) cores, $(uname -r), load average $LOAD_START at the start, $LOAD_END at the end (shared machine: other engineers' builds and tests ran meanwhile)"
	echo "- versions: snapvol $("$SNAPVOL" --version | awk '{print $2}'); $(qemu-storage-daemon --version | head -n 1); $(fio --version)"
	if [[ -n $SLOWDISK ]]; then
		echo "- slow disk: SLOWDISK=$SLOWDISK, both servers in one blkio cgroup limited to that many writes/s (:bytes/s) on the disk holding the pools"
	fi
	echo "- load: fio 4 KiB randwrite, libaio direct QD16 at $RATE_IOPS IOPS on a 1 GiB file inside a ${VOL_GIB} GiB ext4 (nbdfuse + loop, direct I/O) on each server; $N events per method"
	echo "- window: FIFREEZE called to FITHAW returned, for every method (snapvol: its watchdog's clock; the peers: freeze.py issuing the ioctls fsfreeze -f/-u make).  snapvol's syncfs + journal checkpoint just before FIFREEZE is outside the window (reported below); the peers freeze as a user does by hand, without one"
	echo "- stall: the longest write in flight during the window (fio per-I/O latency log); control = the same over an equal window ending 300 ms before, nothing frozen"
	echo
	"$PY" "$HERE/freeze.py" md "$OUT.tsv"
	echo
	echo "Plot: \`$(basename "$OUT").png\` (histograms of windows and stalls); per event: \`$(basename "$OUT").tsv\`."
	echo
	"$PY" "$HERE/freeze.py" phases "$TMP/snapvol-events.jsonl" "$TMP/flushes.txt" \
		"$TMP/serve.log"
	if [[ -s $TMP/snapvol-nort-events.jsonl ]]; then
		echo
		echo "The same phases for \"nort\" (SNAPVOL_FREEZE_RT=0), interleaved with them:"
		echo
		"$PY" "$HERE/freeze.py" phases "$TMP/snapvol-nort-events.jsonl"
	fi
	if [[ -s $TMP/ktrace.txt ]]; then
		"$PY" "$HERE/freeze.py" kphases "$TMP/snapvol-events.jsonl" "$TMP/ktrace.txt" \
			"$TMP/server-tids.txt" "$TMP/flushes.txt"
		if [[ -s $TMP/snapvol-plain-events.jsonl ]]; then
			echo
			echo "The same for \"plain\" (SNAPVOL_FREEZE_EXPEDITE=0), interleaved with them:"
			"$PY" "$HERE/freeze.py" kphases "$TMP/snapvol-plain-events.jsonl" \
				"$TMP/ktrace.txt"
		fi
		if [[ -s $TMP/snapvol-nort-events.jsonl ]]; then
			echo
			echo "The same for \"nort\" (SNAPVOL_FREEZE_RT=0), interleaved with them:"
			"$PY" "$HERE/freeze.py" kphases "$TMP/snapvol-nort-events.jsonl" \
				"$TMP/ktrace.txt" "$TMP/server-tids.txt" "$TMP/flushes.txt"
		fi
	fi
} >"$OUT.md"
cp "$TMP/snapvol-events.jsonl" "$OUT.snapvol.jsonl"
for v in plain nort; do
	if [[ -s $TMP/snapvol-$v-events.jsonl ]]; then
		cp "$TMP/snapvol-$v-events.jsonl" "$OUT.$v.jsonl"
	fi
done
cat "$OUT.md"
log "results: $OUT.md"
