#!/usr/bin/env bash
# cow.sh: snapvol's copy-on-write snapshots against qemu's copy-before-write
# fleecing and against snapvol with no snapshot, in one run (issue 3,
# "Performance").
#
# What and why: the cost of a snapshot is paid by the writes that follow it
# (each first write to a chunk copies the old contents first), by the
# snapshot's creation (does it stall the writers?) and in memory (bitmaps).
# So this measures, in one sitting, on one prefilled backing file shared by
# every target (snapvol's origins are hard links to it, qemu opens it):
#   first   4 KiB random writes right after a snapshot: a fixed count of
#           distinct blocks, the same blocks for every target (same seed,
#           fio's random map), at each QD in QDS; then the same blocks again
#           (rewrite).  Targets: snapvol (copies durable before the ack),
#           qemu-storage-daemon with a copy-before-write filter and a qcow2
#           fleecing image (copies not durable), snapvol with no snapshot
#           (a second volume on the same file), qemu with no snapshot.
#   snapn   the same first writes + rewrites with 1, 10, 100 snapshots of
#           the volume (random writes between the snapshots so every epoch
#           holds pre-images).
#   create  snapshot take/drop cycles while fio writes 4 KiB at QD16 with a
#           per-I/O latency log: call latency, and the longest write in
#           flight during each call vs equal control windows; the same for
#           qemu's filter insertion (blockdev-reopen and transaction).
#   rw      sustained 4 KiB random rewrites with no snapshot (volume 'plain'),
#           RW_SECS at QD16 and a FLUSH at the end, timed with it: what
#           snapvol's early writeback of the origin costs or saves (the
#           create cycles show what it buys).
#   mem     a second server with a 1 TiB sparse volume: 10 snapshots with
#           1 GiB of random 4 KiB writes spread between them; VmRSS/VmHWM.
# Within a section the targets run back to back, repeated, so a drift of
# this shared VM hits all alike; ratios within the run are what to read.
#
# Usage: bench/cow.sh              (~40 min on this busy VM; see bench/README.md)
#        QUICK=1 bench/cow.sh      (smoke run, ~3 min)
# Knobs (environment; QUICK=1 changes the defaults marked *):
#   SECTIONS="first snapn create mem"   which parts run (also: rw)
#   VOL_GIB=4*       volume / backing file size (GiB)
#   FIRST_IOS=16384* 4 KiB writes per first/rewrite pass
#   QDS="1 16"       queue depths of the first/rewrite passes
#   REPS=3*          repetitions of each first pass (fresh snapshot each)
#   RW_PASSES=3*     rewrite passes per repetition
#   SNAPN="1 10 100"* snapshot counts; SNAPN_QD=16; SNAPN_REPS=2*
#   FILL_IOS=256*    random writes between two of those snapshots
#   RW_SECS=20*      seconds of each rw pass (REPS passes)
#   CYCLES=50*       snapshot creates under load via the control socket
#   LOAD_IOPS=0      the create section's background load: fio --rate_iops=N
#                    (0: unthrottled, as fast as the server takes it; a rate the
#                    disk keeps up with measures the create's own cost)
#   CLI_CYCLES=10*   and via the CLI; QEMU_CYCLES=20* per qemu method (0: none)
#   TRACE=0          1: the snapvol server traces each create (SNAPVOL_TRACE_FREEZE:
#                    phases incl. the presync, dirty memory, write-behind fill), the
#                    writes it holds and the commits over 1 ms; summed in the report
#   HOLD=1* GAP=1*   seconds a snapshot is held / nothing happens per cycle
#   MEM_SIZE=1T* MEM_WRITE_MIB=1024* MEM_SNAPS=10   the memory test
#   MAP_MAXTIME=900  cap (s) on the block status of a snapshot of that volume
#   QSD_NOSNAP=1     also run qemu with no snapshot in 'first'
#   FIO_MAXTIME=300  cap (s) on one fio pass
#   SEED=4242 PREFILL_BS=4k BENCH_TMPDIR=/var/tmp KEEP=0
#   SNAPVOL=build-cowbench/cli/snapvol   RESULTS_DIR=bench/results
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

KNOBS="QUICK SECTIONS VOL_GIB FIRST_IOS QDS REPS RW_PASSES SNAPN SNAPN_QD SNAPN_REPS FILL_IOS
	RW_SECS TRACE CYCLES LOAD_IOPS CLI_CYCLES QEMU_CYCLES HOLD GAP MEM_SIZE MEM_WRITE_MIB MEM_SNAPS MAP_MAXTIME QSD_NOSNAP
	FIO_MAXTIME SEED PREFILL_BS BENCH_TMPDIR KEEP SNAPVOL RESULTS_DIR"
CMDLINE=
for v in $KNOBS; do
	[[ -n "${!v+x}" ]] && CMDLINE+="$v=$(printf '%q' "${!v}") "
done
CMDLINE+="$(printf '%q' "$0")"
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

if [[ $# -gt 0 ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
fi

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
	q() { echo "$1"; }
else
	q() { echo "$2"; }
fi
SECTIONS=${SECTIONS:-first snapn create mem}
VOL_GIB=${VOL_GIB:-$(q 1 4)}
VOL=$((VOL_GIB * 1024 * 1024 * 1024))
FIRST_IOS=${FIRST_IOS:-$(q 4096 16384)}
QDS=${QDS:-1 16}
REPS=${REPS:-$(q 1 3)}
RW_PASSES=${RW_PASSES:-$(q 1 3)}
SNAPN=${SNAPN:-$(q "1 10" "1 10 100")}
SNAPN_QD=${SNAPN_QD:-16}
SNAPN_REPS=${SNAPN_REPS:-$(q 1 2)}
FILL_IOS=${FILL_IOS:-$(q 64 256)}
RW_SECS=${RW_SECS:-$(q 5 20)}
TRACE=${TRACE:-0}
CYCLES=${CYCLES:-$(q 5 50)}
LOAD_IOPS=${LOAD_IOPS:-0}
CLI_CYCLES=${CLI_CYCLES:-$(q 2 10)}
QEMU_CYCLES=${QEMU_CYCLES:-$(q 3 20)}
HOLD=${HOLD:-$(q 0.5 1)}
GAP=${GAP:-$(q 0.5 1)}
MEM_SIZE=${MEM_SIZE:-$(q 64G 1T)}
MEM_WRITE_MIB=${MEM_WRITE_MIB:-$(q 128 1024)}
MEM_SNAPS=${MEM_SNAPS:-10}
MAP_MAXTIME=${MAP_MAXTIME:-900}
QSD_NOSNAP=${QSD_NOSNAP:-1}
FIO_MAXTIME=${FIO_MAXTIME:-300}
SEED=${SEED:-4242}
PREFILL_BS=${PREFILL_BS:-4k}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
KEEP=${KEEP:-0}
SNAPVOL=${SNAPVOL:-$REPO/build-cowbench/cli/snapvol}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
# Debian's python has the libnbd module (cowbench.py fills with it)
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

TMP=
FIO_PID=
SRV_PIDS=()
REPORTED=0
declare -A SPID

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
need() {
	local c
	for c in "$@"; do command -v "$c" >/dev/null || die "missing tool: $c"; done
}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- cleanup
stop_pid() { # stop_pid PID [SIG [SECONDS]]: SIG (TERM), up to SECONDS (30), then KILL; reaps it
	local pid=$1 sig=${2:-TERM} secs=${3:-30} i name
	if kill -0 "$pid" 2>/dev/null; then
		name=$(ps -o args= -p "$pid" | cut -c1-80)
		kill "-$sig" "$pid" 2>/dev/null || true
		for ((i = 0; i < secs * 10; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "  pid $pid ($name) ignored SIG$sig for $secs s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${SRV_PIDS[@]}"; do [[ $p != "$pid" ]] && keep+=("$p"); done
	SRV_PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM HUP
	[[ -n "$FIO_PID" ]] && stop_pid "$FIO_PID" INT
	if ((rc != 0 && REPORTED == 0)) && [[ -n "$TMP" && -s "${RUNS:-}" ]]; then
		log "failed (exit $rc): writing the partial report"
		report "INCOMPLETE (exit status $rc): " || true
	fi
	for ((i = ${#SRV_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${SRV_PIDS[i]}"; done
	if [[ -n "$TMP" && -d "$TMP" ]]; then
		if [[ "$KEEP" == 1 ]]; then
			log "kept $TMP"
		else
			# sync: ext4 here is mounted with 'discard'; let the commit that
			# frees the files happen now, not in someone else's benchmark
			# (the 1 TiB volume's scattered extents take minutes)
			log "removing $TMP"
			rm -rf "$TMP"
			sync
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- servers
wait_nbd() { # wait_nbd NAME URI PID
	local i
	for ((i = 0; i < 200; i++)); do
		nbdinfo --size "$2" >/dev/null 2>&1 && return 0
		kill -0 "$3" 2>/dev/null || {
			tail -n 20 "$TMP/log/$1.log" >&2
			die "$1 exited while starting"
		}
		sleep 0.1
	done
	die "$1 not ready after 20 s (log: $TMP/log/$1.log)"
}

start_bg() { # start_bg NAME CMD...: sets SPID[NAME]
	local n=$1
	shift
	"$@" </dev/null >>"$TMP/log/$n.log" 2>&1 &
	SPID[$n]=$!
	SRV_PIDS+=("$!")
}

alive() { # alive NAME: die with its log if the server is gone
	kill -0 "${SPID[$1]}" 2>/dev/null && return 0
	wait "${SPID[$1]}" 2>/dev/null && rc=0 || rc=$?
	log "$1 (pid ${SPID[$1]}) is gone, exit status $rc; its log ends:"
	tail -n 30 "$TMP/log/$1.log" >&2
	SV_DIED="$1 died (exit status $rc) during: ${CURRENT:-?}"
	die "$SV_DIED"
}

# snapvol: pool with 'vol' (snapshots) and 'plain' (never a snapshot), both
# origins hard links to BASE (same inode, same page cache as qemu's).
start_snapvol() {
	local v origin
	[[ -x "$SNAPVOL" ]] || die "no snapvol binary at $SNAPVOL (meson setup build-cowbench -Dbuildtype=release && ninja -C build-cowbench)"
	for v in vol plain; do
		"$SNAPVOL" --pool "$POOL" create "$v" --size "${VOL_GIB}G" >>"$TMP/log/snapvol-create.log" 2>&1 ||
			{ cat "$TMP/log/snapvol-create.log" >&2; die "snapvol create $v failed"; }
		origin=$("$SNAPVOL" --pool "$POOL" info "$v" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["origin"] or "")')
		[[ -f "$origin" ]] || die "snapvol reports no origin file for $v ($origin)"
		ln -f "$BASE" "$origin"
	done
	if [[ $TRACE == 1 ]]; then
		start_bg snapvol env SNAPVOL_TRACE_FREEZE=1 "$SNAPVOL" --pool "$POOL" serve --socket "$TMP/sv.sock"
	else
		start_bg snapvol "$SNAPVOL" --pool "$POOL" serve --socket "$TMP/sv.sock"
	fi
	SV_URI="nbd+unix:///vol?socket=$TMP/sv.sock"
	PLAIN_URI="nbd+unix:///plain?socket=$TMP/sv.sock"
	wait_nbd snapvol "$SV_URI" "${SPID[snapvol]}"
	for ((i = 0; i < 50; i++)); do [[ -S $CTL ]] && break; sleep 0.1; done
	log "started snapvol (pid ${SPID[snapvol]}), volumes vol + plain on $BASE"
}

start_qsd() {
	rm -f "$TMP/qsd.sock" "$QMP"
	start_bg qsd qemu-storage-daemon \
		--blockdev driver=file,node-name=orig-file,filename="$BASE",locking=off \
		--blockdev driver=raw,node-name=top,file=orig-file \
		--nbd-server addr.type=unix,addr.path="$TMP/qsd.sock" \
		--export type=nbd,id=exp0,node-name=top,name=vol,writable=on \
		--chardev socket,id=qmp0,path="$QMP",server=on,wait=off \
		--monitor chardev=qmp0
	QSD_URI="nbd+unix:///vol?socket=$TMP/qsd.sock"
	wait_nbd qsd "$QSD_URI" "${SPID[qsd]}"
	log "started qemu-storage-daemon (pid ${SPID[qsd]})"
}

sv() { "$PY" "$HERE/cowbench.py" call "$CTL" "$@"; } # sv EXECUTE [ARGS-JSON]
sv_clear() {                                         # delete every snapshot of vol
	local out n ms
	out=$("$PY" "$HERE/cowbench.py" clear "$CTL" vol) || { alive snapvol; die "snapshot delete failed"; }
	read -r n ms <<<"$out"
	((n > 0)) && log "  deleted $n snapshot(s) of vol in $ms ms"
	return 0
}
sv_snap() { sv snapshot-create "{\"snapshots\": [\"vol@$1\"]}" >/dev/null || { alive snapvol; die "snapshot create vol@$1 failed"; }; }
sv_cow() { # copied bytes and journal commits of vol so far
	sv info '{"name": "vol"}' | "$PY" -c 'import json,sys; c=json.load(sys.stdin)["cow"]; print(c["copied_bytes"], c["journal_commits"])'
}
qsd_insert() { "$PY" "$HERE/qmp.py" "$QMP" insert "$TMP/fleece.qcow2" >>"$TMP/log/qmp.log" 2>&1 || { alive qsd; die "qemu CBW insert failed (see $TMP/log/qmp.log)"; }; }
qsd_remove() {
	"$PY" "$HERE/qmp.py" "$QMP" remove >>"$TMP/log/qmp.log" 2>&1 || { alive qsd; die "qemu CBW remove failed"; }
	rm -f "$TMP/fleece.qcow2"
}

# ---------------------------------------------------------------- fio
probe() { # probe TARGET: "copied_bytes commits" of the target's snapshot store
	case $1 in
	snapvol) sv_cow ;;
	qsd-cbw) echo "$(($(stat -c %b "$TMP/fleece.qcow2") * 512)) 0" ;;
	*) echo "0 0" ;;
	esac
}

# run_fio SECTION TARGET URI QD NSNAP PHASE REP: one pass of FIRST_IOS 4 KiB
# random writes (seed SEED, random map: no block twice, the same blocks for
# every target and pass), ended by a FLUSH (end_fsync) so that writes a
# target acknowledged before making them durable (snapvol's write-behind,
# qemu's cache) are paid for in the pass; appends a line to $RUNS
run_fio() {
	local sec=$1 t=$2 uri=$3 qd=$4 ns=$5 phase=$6 rep=$7 note=${8:-} id p0 p1 row rc=0
	id="$sec.$t.q$qd.n$ns.$phase.r$rep"
	p0=$(probe "$t")
	local count=(--number_ios="$FIRST_IOS" --runtime="$FIO_MAXTIME") w0 wall_ms
	[[ $sec == rw ]] && count=(--norandommap --time_based --runtime="$RW_SECS")
	w0=$(date +%s%N)
	timeout -k 5 $((FIO_MAXTIME + 60)) fio --name=w --ioengine=nbd --uri="$uri" \
		--rw=randwrite --bs=4k --iodepth="$qd" --size="$VOL" --randrepeat=0 --randseed="$SEED" \
		"${count[@]}" --lat_percentiles=1 --end_fsync=1 \
		--percentile_list=50:99:99.9 --output-format=json --output="$TMP/fio/$id.json" \
		>"$TMP/fio/$id.out" 2>&1 &
	FIO_PID=$!
	wait "$FIO_PID" || rc=$?
	FIO_PID=
	wall_ms=$((($(date +%s%N) - w0) / 1000000))
	local cp= cm= a0 b0 a1 b1
	if ((rc == 0)) && row=$("$PY" "$HERE/cow-report.py" row "$TMP/fio/$id.json"); then
		p1=$(probe "$t")
		read -r a0 b0 <<<"$p0"
		read -r a1 b1 <<<"$p1"
		if [[ $t == snapvol || $t == qsd-cbw ]]; then
			cp=$(awk -v a="$a0" -v b="$a1" 'BEGIN { printf "%.1f", (b - a) / 1048576 }')
			[[ $t == snapvol ]] && cm=$((b1 - b0))
		fi
		local ios
		ios=$(cut -f5 <<<"$row")
		if [[ $sec == rw ]]; then
			note="${note:+$note; }wall $wall_ms ms with the final flush: $((ios * 1000 / (wall_ms > 0 ? wall_ms : 1))) IOPS"
		elif ((ios < FIRST_IOS)); then
			note="${note:+$note; }stopped by FIO_MAXTIME after $ios of $FIRST_IOS"
		fi
	else
		row=$'\t\t\t\t\t'
		note="FAILED: fio rc $rc: $(grep -m1 -i 'err\|fail' "$TMP/fio/$id.out" | cut -c1-120)"
		log "  $id: $note"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sec" "$t" "$qd" "$ns" "$phase" "$rep" \
		"$row" "$cp" "$cm" "$note" >>"$RUNS"
	log "$(awk -F'\t' -v t="$t" -v ph="$phase" -v qd="$qd" -v ns="$ns" -v cp="$cp" -v cm="$cm" \
		'{ printf "%-15s %-7s qd%-2s snaps %-3s %7s IOPS p99 %6s us max %7s us%s%s", t, ph, qd, ns, $1, $2, $4, (cp != "" ? "  copied " cp " MiB" : ""), (cm != "" ? ", " cm " commits" : "") }' <<<"$row")"
	case $t in snapvol*) alive snapvol ;; qsd*) alive qsd ;; esac
	# leave the next pass a clean file
	local s0=$(($(date +%s%N) / 1000000)) ms
	sync "$BASE"
	ms=$(($(date +%s%N) / 1000000 - s0))
	((ms > 2000)) && log "  (sync took $ms ms)"
	return 0
}

# ---------------------------------------------------------------- sections
section_first() {
	local rep qd pass
	for ((rep = 1; rep <= REPS; rep++)); do
		for qd in $QDS; do
			CURRENT="first writes, QD$qd, repetition $rep"
			log "== $CURRENT"
			sv_clear
			sv_snap "first-q$qd-r$rep"
			run_fio first snapvol "$SV_URI" "$qd" 1 first "$rep"
			run_fio first snapvol-nosnap "$PLAIN_URI" "$qd" 0 first "$rep"
			[[ $QSD_NOSNAP == 1 ]] && run_fio first qsd-nosnap "$QSD_URI" "$qd" 0 first "$rep"
			qsd_insert
			run_fio first qsd-cbw "$QSD_URI" "$qd" 1 first "$rep"
			for ((pass = 1; pass <= RW_PASSES; pass++)); do
				run_fio first snapvol "$SV_URI" "$qd" 1 rewrite "$rep.$pass"
				run_fio first snapvol-nosnap "$PLAIN_URI" "$qd" 0 rewrite "$rep.$pass"
				run_fio first qsd-cbw "$QSD_URI" "$qd" 1 rewrite "$rep.$pass"
			done
			qsd_remove
			if [[ $QSD_NOSNAP == 1 ]]; then
				for ((pass = 1; pass <= RW_PASSES; pass++)); do
					run_fio first qsd-nosnap "$QSD_URI" "$qd" 0 rewrite "$rep.$pass"
				done
			fi
		done
	done
	sv_clear
}

section_snapn() {
	local rep n order out took tt cmed cmax
	for ((rep = 1; rep <= SNAPN_REPS; rep++)); do
		order=$SNAPN
		((rep % 2 == 0)) && order=$(tr ' ' '\n' <<<"$SNAPN" | tac | xargs)
		for n in $order; do
			CURRENT="$n snapshots, repetition $rep"
			log "== $CURRENT"
			sv_clear
			out=$("$PY" "$HERE/cowbench.py" snaps "$CTL" vol "$n" "n$n-r$rep-" "$SV_URI" \
				"$FILL_IOS" "$((SEED + rep))") || { alive snapvol; die "taking $n snapshots failed"; }
			took=$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.1f %.1f %.1f" % (sum(d["create_ms"]) / 1e3 + d["fill_s"], sorted(d["create_ms"])[len(d["create_ms"]) // 2], max(d["create_ms"])))' "$out")
			read -r tt cmed cmax <<<"$took"
			log "  took $n snapshots with $FILL_IOS writes between them in $tt s (create median $cmed ms, max $cmax ms)"
			run_fio snapn snapvol "$SV_URI" "$SNAPN_QD" "$n" first "$rep" "took $tt s to take, create median $cmed ms max $cmax ms"
			run_fio snapn snapvol "$SV_URI" "$SNAPN_QD" "$n" rewrite "$rep"
		done
	done
	sv_clear
}

section_rw() {
	local rep
	for ((rep = 1; rep <= REPS; rep++)); do
		CURRENT="rewrites with no snapshot, repetition $rep"
		log "== $CURRENT"
		run_fio rw snapvol-nosnap "$PLAIN_URI" 16 0 rewrite "$rep"
	done
}

# load_start NAME URI: background fio, 4 KiB random writes QD16 (LOAD_IOPS a
# second, if set), per-I/O log
load_start() {
	local rate=()
	((LOAD_IOPS > 0)) && rate=(--rate_iops="$LOAD_IOPS")
	timeout -k 5 3600 fio --name=load --ioengine=nbd --uri="$2" --rw=randwrite --bs=4k "${rate[@]}" \
		--iodepth=16 --size="$VOL" --norandommap --randrepeat=0 --randseed="$SEED" --time_based \
		--runtime=3000 --disable_clat=1 --disable_slat=1 --write_lat_log="$TMP/fio/load-$1" --log_avg_msec=0 \
		--log_unix_epoch=1 --per_job_logs=0 --output-format=json \
		--output="$TMP/fio/load-$1.json" >"$TMP/fio/load-$1.out" 2>&1 &
	FIO_PID=$!
	sleep 2
	kill -0 "$FIO_PID" 2>/dev/null || { cat "$TMP/fio/load-$1.out" >&2; die "load fio for $1 did not start"; }
}
load_stop() { # fio writes its per-I/O log (hundreds of MB) when stopped: give it time
	stop_pid "$FIO_PID" INT 300
	FIO_PID=
}

# cycles NAME KIND N URI ARGS...: take/drop cycles under the load
cycles() {
	local name=$1 kind=$2 n=$3 uri=$4 rc=0 li lp99 lp999 lmax lios lsecs
	shift 4
	CURRENT="snapshot take/drop under load: $name"
	log "== $CURRENT ($n cycles)"
	load_start "$name" "$uri"
	"$PY" "$HERE/cowbench.py" cycles "$kind" "$TMP/ev-$name.json" "$n" "$HOLD" "$GAP" "$@" \
		2>"$TMP/log/cycles-$name.log" || rc=$?
	load_stop
	if ((rc != 0)); then
		tail -n 5 "$TMP/log/cycles-$name.log" >&2
		case $name in snapvol) alive snapvol ;; *) alive qsd ;; esac
		die "cycles for $name failed (exit $rc): $(tail -n 1 "$TMP/log/cycles-$name.log")"
	fi
	"$PY" "$HERE/cow-report.py" stalls "$name" "$TMP/fio/load-${name}_lat.log" "$TMP/ev-$name.json" >>"$EVENTS"
	"$PY" "$HERE/cow-report.py" phases "$name" "$TMP/fio/load-${name}_lat.log" "$TMP/ev-$name.json" >>"$PHASES"
	local row
	row=$("$PY" "$HERE/cow-report.py" loadrow "$TMP/fio/load-${name}_lat.log" "$TMP/ev-$name.json")
	IFS=$'\t' read -r li lp99 lp999 lmax lios lsecs <<<"$row"
	printf 'create-load\t%s\t16\t\tload\t\t%s\t%s\t\t%s\t%s\t%s\t\t\tp99.9 %s us\n' "$name" "$li" "$lp99" \
		"$lmax" "$lios" "$lsecs" "$lp999" >>"$RUNS"
	log "  load during the cycles: $li IOPS, p99 $lp99 us, p99.9 $lp999 us, max $lmax us"
	awk -F'\t' -v n="$name" '$1 == n { s[$3] = s[$3] " " $6 } END { for (k in s) print "  " k " ms:" substr(s[k], 1, 200) }' "$EVENTS" >&2
	sync "$BASE"
}

section_create() {
	sv_clear
	cycles snapvol snapvol "$CYCLES" "$SV_URI" --ctl "$CTL" --vol vol \
		--cli "$SNAPVOL --pool $POOL" --cli-n "$CLI_CYCLES" --settle "$POOL/volumes/vol"
	alive snapvol
	if [[ $TRACE == 1 ]]; then
		"$PY" "$HERE/cow-report.py" trace "$TMP/log/snapvol.log" >"$TMP/trace.md" || true
		cat "$TMP/trace.md" >&2
	fi
	((QEMU_CYCLES > 0)) || return 0
	cycles qemu-reopen qemu-reopen "$QEMU_CYCLES" "$QSD_URI" --qmp "$QMP" --dir "$TMP" --settle "$TMP"
	cycles qemu-txn qemu-txn "$QEMU_CYCLES" "$QSD_URI" --qmp "$QMP" --dir "$TMP" --settle "$TMP"
	alive qsd
}

# mem_row KEY STEP WRITTEN_MIB SNAPS NOTE [PID]: the server's memory, one line
mem_row() {
	local key=$1
	shift
	local pid=${5:-${SPID[mem]}} st space ispace rss hwm anon file
	st=$(awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/ { v[$1] = $2 } END { print v["VmRSS:"], v["VmHWM:"], v["RssAnon:"], v["RssFile:"] }' "/proc/$pid/status")
	read -r rss hwm anon file <<<"$st"
	read -r space ispace < <("$PY" "$HERE/cowbench.py" space "${MCTL:-$CTL}" "${MVOL:-vol}")
	local note=$4
	[[ $space != "$ispace" ]] && note="${note:+$note; }'info' says snapshot_space $ispace MiB"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$1" "$2" "$3" "$rss" "$hwm" "$anon" \
		"$file" "$space" "$note" >>"$MEM"
	log "  memory: $1: VmRSS $((rss / 1024)) MiB, VmHWM $((hwm / 1024)) MiB (anon $((anon / 1024)), file $((file / 1024)))"
}

section_mem() {
	local mpool=$TMP/mempool i per written=0 uri="nbd+unix:///big?socket=$TMP/mem.sock" id
	local pi pp99 pp50 pmax pios psecs
	CURRENT="memory: $MEM_SIZE volume, $MEM_SNAPS snapshots, $MEM_WRITE_MIB MiB written"
	log "== $CURRENT"
	MCTL=$mpool/control.sock MVOL=big
	"$SNAPVOL" --pool "$mpool" create big --size "$MEM_SIZE" >>"$TMP/log/snapvol-create.log" 2>&1 ||
		die "snapvol create big --size $MEM_SIZE failed"
	start_bg mem "$SNAPVOL" --pool "$mpool" serve --socket "$TMP/mem.sock"
	wait_nbd mem "$uri" "${SPID[mem]}"
	for ((i = 0; i < 50; i++)); do [[ -S $MCTL ]] && break; sleep 0.1; done
	mem_row start "server started, volume opened once" 0 0 ""
	per=$((MEM_WRITE_MIB * 256 / MEM_SNAPS))
	for ((i = 1; i <= MEM_SNAPS; i++)); do
		"$PY" "$HERE/cowbench.py" call "$MCTL" snapshot-create "{\"snapshots\": [\"big@m$i\"]}" >/dev/null ||
			{ alive mem; die "snapshot create big@m$i failed"; }
		id=mem.$i
		timeout -k 5 $((FIO_MAXTIME + 60)) fio --name=w --ioengine=nbd --uri="$uri" --rw=randwrite \
			--bs=4k --iodepth=16 --size="$MEM_SIZE" --norandommap --randrepeat=0 --randseed="$((SEED + i))" \
			--number_ios="$per" --runtime="$FIO_MAXTIME" --output-format=json \
			--output="$TMP/fio/$id.json" >"$TMP/fio/$id.out" 2>&1 &
		FIO_PID=$!
		wait "$FIO_PID" || { FIO_PID=; alive mem; die "fio on the $MEM_SIZE volume failed: $(tail -n 3 "$TMP/fio/$id.out")"; }
		FIO_PID=
		written=$((written + per * 4 / 1024))
		mem_row "s$i" "snapshot $i taken, then random writes" "$written" "$i" \
			"$(cut -f1 < <("$PY" "$HERE/cow-report.py" row "$TMP/fio/$id.json")) IOPS"
	done
	nbdinfo --size "nbd+unix:///big@m1?socket=$TMP/mem.sock" >/dev/null || die "cannot open big@m1"
	# Block status of a whole snapshot export (what a backup reader asks
	# first), with a slow writer (QD1, 50 writes/s) on the volume meanwhile:
	# how long it takes, and whether the writer waits for it.
	CURRENT="block status of big@m5 ($MEM_SIZE) with a QD1 writer"
	log "  $CURRENT"
	# the same writer alone first, for comparison
	timeout -k 5 60 fio --name=w --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=1 \
		--size="$MEM_SIZE" --norandommap --randrepeat=0 --randseed="$((SEED - 1))" --rate_iops=50 \
		--time_based --runtime=10 --lat_percentiles=1 --percentile_list=50:99:99.9 \
		--output-format=json --output="$TMP/fio/mem-probe0.json" >"$TMP/fio/mem-probe0.out" 2>&1 ||
		die "fio (probe) on big failed: $(tail -n 3 "$TMP/fio/mem-probe0.out")"
	local base0
	base0=$("$PY" "$HERE/cow-report.py" row "$TMP/fio/mem-probe0.json")
	IFS=$'\t' read -r pi pp99 pp50 pmax pios psecs <<<"$base0"
	written=$((written + pios * 4 / 1024))
	local basenote="alone: p50 $pp50 us, p99 $pp99 us, max $pmax us"
	timeout -k 5 $((MAP_MAXTIME + 60)) fio --name=w --ioengine=nbd --uri="$uri" --rw=randwrite \
		--bs=4k --iodepth=1 --size="$MEM_SIZE" --norandommap --randrepeat=0 --randseed="$SEED" \
		--rate_iops=50 --time_based --runtime="$((MAP_MAXTIME + 30))" --lat_percentiles=1 \
		--percentile_list=50:99:99.9 --output-format=json --output="$TMP/fio/mem-probe.json" \
		>"$TMP/fio/mem-probe.out" 2>&1 &
	FIO_PID=$!
	sleep 1
	local m0 m1 mapnote probe
	m0=$(date +%s%N)
	if timeout "$MAP_MAXTIME" nbdinfo --map "nbd+unix:///big@m5?socket=$TMP/mem.sock" >"$TMP/log/mem-map.txt" 2>&1; then
		m1=$(date +%s%N)
		mapnote="block status of all of big@m5: $(wc -l <"$TMP/log/mem-map.txt") extents in $(((m1 - m0) / 1000000)) ms"
	else
		m1=$(date +%s%N)
		mapnote="nbdinfo --map of big@m5 FAILED or did not finish within MAP_MAXTIME=${MAP_MAXTIME}s ($(tail -n 1 "$TMP/log/mem-map.txt" | cut -c1-100))"
	fi
	sleep 1
	load_stop
	alive mem
	probe=$("$PY" "$HERE/cow-report.py" row "$TMP/fio/mem-probe.json")
	IFS=$'\t' read -r pi pp99 pp50 pmax pios psecs <<<"$probe"
	written=$((written + pios * 4 / 1024))
	mapnote+="; a QD1 writer (50 writes/s) meanwhile: $pios writes, p50 $pp50 us, p99 $pp99 us, max $pmax us ($basenote)"
	log "  $mapnote"
	mem_row "map" "snapshots opened (big@m1), block status of big@m5" "$written" "$MEM_SNAPS" "$mapnote"
	stop_pid "${SPID[mem]}"
	start_bg mem "$SNAPVOL" --pool "$mpool" serve --socket "$TMP/mem.sock"
	wait_nbd mem "$uri" "${SPID[mem]}"
	for ((i = 0; i < 50; i++)); do [[ -S $MCTL ]] && break; sleep 0.1; done
	mem_row restart "after a restart, volume opened" "$written" "$MEM_SNAPS" "a new process: VmHWM starts again"
	stop_pid "${SPID[mem]}"
	MCTL= MVOL=
}

# ---------------------------------------------------------------- report
report() { # report [TITLE-PREFIX]
	local ver gitrev
	gitrev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'no commit yet')
	ver="$SNAPVOL, built $(date -r "$SNAPVOL" '+%F %T'), checkout at $gitrev when the run started"
	cp "$RUNS" "$OUT.tsv"
	cp "$EVENTS" "$OUT.events.tsv"
	cp "$MEM" "$OUT.mem.tsv"
	cp "$PHASES" "$OUT.phases.tsv"
	{
		echo "# ${1:-}snapvol copy-on-write snapshots vs qemu copy-before-write (issue 3)"
		echo
		echo '```'
		echo "$CMDLINE"
		echo '```'
		echo
		echo "- started $DATE0, wall time $(($(date +%s) - T0)) s | loadavg (1/5/15 min) at start $LOAD0;$LOADS at end $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores: above that, other jobs competed for CPU)"
		echo "- host: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
		echo "- disk: ${VOL_GIB} GiB raw backing file on $(findmnt -no FSTYPE,SOURCE -T "$TMP" | xargs) ($(findmnt -no OPTIONS -T "$TMP")), prefilled with $PREFILL_BS writes, shared by every target (snapvol's origins are hard links to it); buffered I/O everywhere"
		echo "- fio $(fio --version | sed 's/fio-//') nbd engine over unix sockets, one connection; FIRST_IOS=$FIRST_IOS 4 KiB writes per pass, seed $SEED; REPS=$REPS RW_PASSES=$RW_PASSES; SNAPN=\"$SNAPN\" at QD$SNAPN_QD x $SNAPN_REPS with FILL_IOS=$FILL_IOS; CYCLES=$CYCLES LOAD_IOPS=$LOAD_IOPS (0: unthrottled) CLI_CYCLES=$CLI_CYCLES QEMU_CYCLES=$QEMU_CYCLES HOLD=${HOLD}s GAP=${GAP}s; memory: $MEM_SIZE volume, $MEM_SNAPS snapshots, $MEM_WRITE_MIB MiB written"
		echo "- versions: snapvol $ver; $(qemu-storage-daemon --version | head -n 1) (CBW cluster 64 KiB, qcow2 fleecing image)"
		if [[ -n "${SV_DIED:-}" ]]; then
			echo "- **$SV_DIED**"
		fi
		local w
		w=$(grep -h -i -E 'error|warn|assert|abort' "$TMP"/log/snapvol.log "$TMP"/log/mem.log 2>/dev/null | head -n 10 || true)
		if [[ -n "$w" ]]; then
			echo "- snapvol logged errors or warnings (first 10 lines):"
			echo
			echo '```'
			echo "$w"
			echo '```'
		fi
		echo
		"$PY" "$HERE/cow-report.py" md "$OUT.tsv" "$OUT.events.tsv" "$OUT.mem.tsv" "$OUT.phases.tsv"
		if [[ -s $TMP/trace.md ]]; then
			echo
			cat "$TMP/trace.md"
		fi
		echo
		echo "Plot: \`$(basename "$OUT.png")\`; raw figures: \`$(basename "$OUT.tsv")\` (fio runs), \`$(basename "$OUT.events.tsv")\` (each snapshot take/drop), \`$(basename "$OUT.phases.tsv")\` (write latency by phase), \`$(basename "$OUT.mem.tsv")\` (memory); method: \`bench/README.md\`."
	} >"$OUT.md"
	"$PY" "$HERE/cow-report.py" dat "$OUT.tsv" "$OUT.events.tsv" "$OUT.mem.tsv" "$TMP/plot"
	if ! gnuplot -e "dir='$TMP/plot'; out='$OUT.png'; ttl='$(basename "$OUT") ($(nproc) cores, load $LOAD0)'" \
		"$HERE/cow.gp" 2>"$TMP/log/gnuplot.log"; then
		log "gnuplot failed: $(head -n 5 "$TMP/log/gnuplot.log")"
	fi
	REPORTED=1
}

# ---------------------------------------------------------------- main
need fio nbdinfo qemu-storage-daemon qemu-img gnuplot timeout "$PY"
"$PY" -c 'import nbd' 2>/dev/null || die "$PY has no libnbd module (python3-libnbd)"
mkdir -p "$BENCH_TMPDIR" "$RESULTS_DIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/snapvol-cow.XXXXXX")
mkdir -p "$TMP/fio" "$TMP/log"
RUNS=$TMP/runs.tsv EVENTS=$TMP/events.tsv MEM=$TMP/mem.tsv PHASES=$TMP/phases.tsv
printf 'section\ttarget\tqd\tnsnap\tphase\trep\tiops\tp99_us\tp50_us\tmax_us\tios\tsecs\tcopied_mib\tcommits\tnote\n' >"$RUNS"
printf 'target\tvia\tevent\ti\tt0_ms\tdur_ms\tserver_ms\tswitch_ms\tmax_lat_us\tn_ios\tpause_ms\tidle_max_lat_us\tidle_pause_ms\tlive_max_lat_us\tlive_pause_ms\tbytes\tstep_slow\tidle_slow\tlive_slow\tplacebo_idle_max_lat_us\tplacebo_live_max_lat_us\n' >"$EVENTS"
printf 'target\tphase\tn\tp50_us\tp99_us\tp999_us\tmax_us\n' >"$PHASES"
printf 'key\tstep\twritten_mib\tsnapshots\tvm_rss_kib\tvm_hwm_kib\trss_anon_kib\trss_file_kib\tsnapshot_space_mib\tnote\n' >"$MEM"
OUT=$RESULTS_DIR/cow-$(date +%Y-%m-%d-%H%M%S)
[[ $QUICK == 1 ]] && OUT+=-quick
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
LOADS=
DATE0=$(date '+%F %T %Z')
POOL=$TMP/pool CTL=$TMP/pool/control.sock QMP=$TMP/qsd.qmp
log "temp dir $TMP ($(findmnt -no FSTYPE -T "$TMP")), volume $VOL_GIB GiB, sections: $SECTIONS, loadavg $LOAD0"

if has first || has snapn || has create || has rw; then
	BASE=$TMP/base.raw
	sync
	bs=$(numfmt --from=iec "${PREFILL_BS^^}")
	dd if=/dev/zero of="$BASE" bs="$bs" count=$((VOL / bs)) conv=fsync status=none
	sync
	log "prefilled $BASE with $PREFILL_BS writes"
	start_snapvol
	start_qsd
fi
for s in first snapn rw create; do
	if has $s; then
		LOADS+=" before '$s' $(cut -d' ' -f1-3 /proc/loadavg);"
		"section_$s"
	fi
done
if [[ -n "${SPID[snapvol]:-}" ]]; then
	alive snapvol
	mem_row main "main server" "" "" "the ${VOL_GIB} GiB-volume server after sections: $SECTIONS" "${SPID[snapvol]}"
fi
if has mem; then
	LOADS+=" before 'mem' $(cut -d' ' -f1-3 /proc/loadavg);"
	section_mem
fi
CURRENT="report"
report
log "done in $(($(date +%s) - T0)) s: $OUT.md, .tsv, .events.tsv, .phases.tsv, .mem.tsv, .png"
cat "$OUT.md"
