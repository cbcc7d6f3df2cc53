#!/usr/bin/env bash
# nbd-matrix.sh: snapvol against its peers, in one run, on one disk and one
# backing file (issue 2, "Performance").
#
# What and why: a block server is judged by ratios, not absolute numbers,
# because this 2-core shared VM moves absolute figures by 2-5x from one hour
# to the next.  So every target runs in the same sitting, against the same
# prefilled raw file, with the same fio workload, and each workload row runs
# the reference and every target back to back (interleaved), so slow drifts
# of the machine hit them all alike.  The two yardsticks:
#   raw   fio directly on the file, buffered (psync at QD1, io_uring at QD>1):
#         the physical limit of the page cache + disk;
#   null  fio's nbd engine against nbdkit's null plugin: the ceiling of the
#         NBD protocol and of fio's NBD client (libnbd) on this machine.
# The servers (nbdkit file, qemu-nbd, snapvol) all serve that very file
# (snapvol's origin is a hard link to it) over a unix socket, each driven by
# fio's nbd engine: one connection per fio job, each job its own slice.
#
# Usage: bench/nbd-matrix.sh            (~12 min; see bench/README.md)
#        RUNTIME=3 bench/nbd-matrix.sh  (smoke run, ~3 min)
# Knobs (environment):
#   RUNTIME=10      seconds measured per fio run (after RAMP seconds of ramp)
#   RAMP=2          fio ramp_time
#   VOL_GIB=4       volume / backing file size in GiB
#   BENCH_TMPDIR=/var/tmp  where the per-run temp dir (backing file, pool) goes
#   KEEP=1          keep that temp dir (fio JSON, server logs) afterwards
#   TARGETS="null nbdkit-file qemu-nbd snapvol"   what runs next to raw
#   SNAPVOL=build-bench/cli/snapvol   the binary; SNAPVOL_SKIP=1 drops it
#   MATRIX="wl:qd:jobs ..."  workload rows (wl: rr4k rw4k sr1m sw1m)
#   PREFILL_BS=4k   block size of the prefill writes (page-cache folio size!)
#   SEED=4242       fio randseed: every target gets the same offsets
#   RESULTS_DIR=bench/results   where the .md, .tsv and .png go
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

# The exact command line, with the knobs that were set, for the report.
CMDLINE=
for v in RUNTIME RAMP VOL_GIB BENCH_TMPDIR KEEP TARGETS SNAPVOL SNAPVOL_SKIP MATRIX PREFILL_BS \
	SEED RESULTS_DIR; do
	[[ -n "${!v+x}" ]] && CMDLINE+="$v=$(printf '%q' "${!v}") "
done
CMDLINE+="$(printf '%q' "$0")"
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

if [[ $# -gt 0 ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
fi

RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-2}
VOL_GIB=${VOL_GIB:-4}
VOL=$((VOL_GIB * 1024 * 1024 * 1024))
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
KEEP=${KEEP:-0}
SNAPVOL=${SNAPVOL:-$REPO/build-bench/cli/snapvol}
TARGETS=${TARGETS:-null nbdkit-file qemu-nbd snapvol}
[[ "${SNAPVOL_SKIP:-0}" == 1 ]] && TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx snapvol | xargs)
MATRIX=${MATRIX:-"rr4k:1:1 rr4k:16:1 rr4k:1:4 rr4k:16:4 rw4k:1:1 rw4k:16:1 rw4k:1:4 rw4k:16:4 sr1m:16:1 sw1m:16:1"}
PREFILL_BS=${PREFILL_BS:-4k}
SEED=${SEED:-4242}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
PY=python3 # stdlib only
CLK_TCK=$(getconf CLK_TCK)

TMP=
FIO_PID=
SRV_PIDS=()   # every server this script started, in start order
declare -A CONN INFO SPID

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
	local c
	for c in "$@"; do command -v "$c" >/dev/null || die "missing tool: $c"; done
}

# ---------------------------------------------------------------- cleanup
stop_pid() { # stop_pid PID: TERM, up to 10 s, then KILL; reaps it
	local pid=$1 i
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "  pid $pid ignored SIGTERM for 10 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM HUP
	[[ -n "$FIO_PID" ]] && stop_pid "$FIO_PID"
	for ((i = ${#SRV_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${SRV_PIDS[i]}"; done
	if [[ -n "$TMP" && -d "$TMP" ]]; then
		if [[ "$KEEP" == 1 ]]; then
			log "kept $TMP"
		else
			# sync: ext4 here is mounted with 'discard'; let the commit that
			# frees the 4 GiB file happen now, not in the next benchmark
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
start_server() { # start_server TARGET SOCKET CMD...: sets CONN, SPID
	local t=$1 sock=$2 pid i
	shift 2
	rm -f "$sock"
	"$@" </dev/null >"$TMP/log/$t.log" 2>&1 &
	pid=$!
	SRV_PIDS+=("$pid")
	SPID[$t]=$pid
	CONN[$t]="nbd+unix:///vol?socket=$sock"
	for ((i = 0; i < 200; i++)); do
		nbdinfo --size "${CONN[$t]}" >/dev/null 2>&1 && break
		kill -0 "$pid" 2>/dev/null || {
			tail -n 20 "$TMP/log/$t.log" >&2
			die "$t exited while starting"
		}
		sleep 0.1
	done
	((i < 200)) || die "$t not ready after 20 s (log: $TMP/log/$t.log)"
	local size
	size=$(nbdinfo --size "${CONN[$t]}")
	[[ "$size" == "$VOL" ]] || die "$t serves $size bytes, expected $VOL"
	if nbdinfo --can multi-conn "${CONN[$t]}" >/dev/null 2>&1; then
		INFO[$t]="multi-conn"
	else
		INFO[$t]="NO multi-conn"
	fi
	log "started $t (pid $pid, ${INFO[$t]})"
}

# snapvol: a pool with one volume whose origin is a hard link to the backing
# file (same inode, so the same page cache as every other target).
origin_path() { # origin_path POOL: where 'vol' keeps its raw origin
	local p
	p=$("$SNAPVOL" --pool "$1" info vol --json 2>/dev/null |
		"$PY" -c 'import json,sys
d = json.load(sys.stdin)
def find(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("origin_path", "origin", "path", "file") and isinstance(v, str) and v:
                return v
            r = find(v)
            if r: return r
    return None
print(find(d) or "")' 2>/dev/null) || p=
	[[ -n "$p" && -f "$p" ]] || p="$1/volumes/vol/origin.raw"
	[[ -f "$p" ]] || p=$(find "$1" -name origin.raw -path '*vol*' | head -n 1)
	[[ -n "$p" && -f "$p" ]] || die "cannot find snapvol's origin file for 'vol' under $1"
	echo "$p"
}

start_snapvol() {
	local pool=$TMP/pool origin
	[[ -x "$SNAPVOL" ]] || die "no snapvol binary at $SNAPVOL (build it: ninja -C build-bench; or SNAPVOL_SKIP=1)"
	"$SNAPVOL" --pool "$pool" create vol --size "${VOL_GIB}G" >"$TMP/log/snapvol-create.log" 2>&1 ||
		{ cat "$TMP/log/snapvol-create.log" >&2; die "snapvol create failed"; }
	origin=$(origin_path "$pool")
	[[ $(stat -c %s "$origin") == "$VOL" ]] || die "snapvol origin $origin is not $VOL bytes"
	ln -f "$BASE" "$origin"
	log "snapvol origin $origin -> hard link to $BASE"
	start_server snapvol "$TMP/snapvol.sock" "$SNAPVOL" --pool "$pool" serve --socket "$TMP/snapvol.sock"
}

# ---------------------------------------------------------------- fio
cpu_ticks() { # utime+stime of PID in clock ticks (0 if gone)
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	s=${s##*) }
	awk '{print $12 + $13}' <<<"$s"
}

# run_fio TARGET WL QD JOBS: one measured run; appends a line to $RES
run_fio() {
	local t=$1 wl=$2 qd=$3 jobs=$4 id a=() ddir=write engine note
	note=${INFO[$t]:-}
	id="$wl.q$qd.j$jobs.$t"
	a=(--name=w --group_reporting --numjobs="$jobs" --size=$((VOL / jobs))
		--offset_increment=$((VOL / jobs)) --randseed="$SEED" --lat_percentiles=1
		--percentile_list=50:99:99.9 --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
		--output-format=json --output="$TMP/fio/$id.json")
	case $wl in
	rr4k) a+=(--rw=randread --bs=4k) ddir=read ;;
	rw4k) a+=(--rw=randwrite --bs=4k) ;;
	sr1m) a+=(--rw=read --bs=1m) ddir=read ;;
	sw1m) a+=(--rw=write --bs=1m) ;;
	*) die "bad workload $wl" ;;
	esac
	if [[ $t == raw ]]; then
		# buffered, warm cache (invalidate=0: fio would drop the file's pages)
		if [[ $qd == 1 ]]; then engine=psync; else engine=io_uring; fi
		a+=(--ioengine="$engine" --iodepth="$qd" --direct=0 --filename="$BASE" --invalidate=0)
		note=$engine
	else
		a+=(--ioengine=nbd --iodepth="$qd" --uri="${CONN[$t]}")
	fi
	local spid=${SPID[$t]:-} c0=0 c1 w0 w1 cpu=
	[[ -n "$spid" ]] && c0=$(cpu_ticks "$spid")
	w0=$(date +%s%N)
	# in the background, so that a signal runs the trap at once; timeout in
	# case a server hangs mid-run
	timeout -k 5 $((RUNTIME + RAMP + 60)) fio "${a[@]}" >"$TMP/fio/$id.out" 2>&1 &
	FIO_PID=$!
	local rc=0
	wait "$FIO_PID" || rc=$?
	FIO_PID=
	w1=$(date +%s%N)
	if [[ -n "$spid" ]] && kill -0 "$spid" 2>/dev/null; then
		c1=$(cpu_ticks "$spid")
		# server CPU over the whole fio run (ramp included), % of one core
		cpu=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v w="$((w1 - w0))" \
			'BEGIN { printf "%.0f", 100 * c / hz / (w / 1e9) }')
	fi
	local row
	if ((rc == 0)) && row=$("$PY" "$HERE/report.py" row "$TMP/fio/$id.json" "$ddir"); then
		:
	else
		row=$'\t\t\t\t'
		if [[ -n "$spid" ]] && ! kill -0 "$spid" 2>/dev/null; then
			note="FAILED: server died"
		else
			note="FAILED: fio rc $rc"
		fi
		log "  $id: $note; $(tail -n 3 "$TMP/fio/$id.out" | tr '\n' ' ')"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$qd" "$jobs" "$t" "$row" "$cpu" "$note" >>"$RES"
	log "$(awk -F'\t' -v t="$t" -v wl="$wl" -v qd="$qd" -v j="$jobs" -v cpu="$cpu" \
		'{ printf "%-11s %s qd%-2s j%s %9s IOPS %8s MiB/s p99 %7s us%s", t, wl, qd, j, $1, $2, $3, (cpu != "" ? "  srv cpu " cpu "%" : "") }' <<<"$row")"
	# write runs leave the next run a clean file: write the dirty pages back
	if [[ $ddir == write ]]; then
		local s0=$(($(date +%s%N) / 1000000))
		sync "$BASE"
		local ms=$(($(date +%s%N) / 1000000 - s0))
		((ms > 2000)) && log "  (sync took $ms ms)"
	fi
	return 0
}

# ---------------------------------------------------------------- main
need fio nbdkit nbdinfo qemu-nbd gnuplot "$PY" timeout
mkdir -p "$BENCH_TMPDIR" "$RESULTS_DIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/snapvol-bench.XXXXXX")
mkdir -p "$TMP/fio" "$TMP/log"
RES=$TMP/results.tsv
printf 'wl\tqd\tjobs\ttarget\tiops\tmibs\tp99_us\tp50_us\tios\tsrv_cpu_pct\tnote\n' >"$RES"
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=$RESULTS_DIR/nbd-matrix-$STAMP
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
DATE0=$(date '+%F %T %Z')
GITREV=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'no commit yet')
read -r -a TGT <<<"$TARGETS"
nrows=$(wc -w <<<"$MATRIX")
nruns=$((nrows * (1 + ${#TGT[@]})))
log "temp dir $TMP ($(findmnt -no FSTYPE -T "$TMP")), volume $VOL_GIB GiB, targets: raw ${TARGETS}"
log "$nruns fio runs of ${RAMP}+${RUNTIME} s: about $((nruns * (RUNTIME + RAMP + 2) / 60 + 1)) min"

# One backing file, fully written (allocated) so no run pays for block
# allocation, in PREFILL_BS writes (see README: the page-cache folio size it
# leaves changes buffered 4 KiB overwrite speed several times).
BASE=$TMP/base.raw
sync
bs=$(numfmt --from=iec "${PREFILL_BS^^}")
dd if=/dev/zero of="$BASE" bs="$bs" count=$((VOL / bs)) conv=fsync status=none
sync
log "prefilled $BASE with $PREFILL_BS writes"

for t in "${TGT[@]}"; do
	case $t in
	null)
		start_server null "$TMP/null.sock" \
			nbdkit --exit-with-parent -f -U "$TMP/null.sock" null size="$VOL" ;;
	nbdkit-file)
		start_server nbdkit-file "$TMP/nbdkit-file.sock" \
			nbdkit --exit-with-parent -f -U "$TMP/nbdkit-file.sock" file file="$BASE" ;;
	qemu-nbd)
		# qemu defaults: cache=writeback, aio=threads; locking=off because the
		# other servers hold the same file
		start_server qemu-nbd "$TMP/qemu-nbd.sock" \
			qemu-nbd -k "$TMP/qemu-nbd.sock" -x vol -t -e 16 --image-opts \
			"driver=raw,file.driver=file,file.filename=$BASE,file.locking=off" ;;
	snapvol) start_snapvol ;;
	*) die "unknown target $t (known: null nbdkit-file qemu-nbd snapvol)" ;;
	esac
done

for c in $MATRIX; do
	IFS=: read -r wl qd jobs <<<"$c"
	run_fio raw "$wl" "$qd" "$jobs"
	for t in "${TGT[@]}"; do
		run_fio "$t" "$wl" "$qd" "$jobs"
	done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
WALL=$(($(date +%s) - T0))

# ---------------------------------------------------------------- report
ver() { "$@" 2>/dev/null | head -n 1 || true; }
SV_VER="not run"
if [[ " $TARGETS " == *" snapvol "* ]]; then
	SV_VER="$SNAPVOL, built $(date -r "$SNAPVOL" '+%F %T'), checkout at $GITREV when the run started"
fi
cp "$RES" "$OUT.tsv"
{
	echo "# NBD servers vs raw fio and the nbdkit null ceiling"
	echo
	echo '```'
	echo "$CMDLINE"
	echo '```'
	echo
	echo "- started $DATE0, wall time ${WALL} s | loadavg at start $LOAD0, at end $LOAD1 ($(nproc) cores: above that, other jobs competed for CPU)"
	echo "- host: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
	echo "- disk: ${VOL_GIB} GiB raw file on $(findmnt -no FSTYPE,SOURCE -T "$TMP" | xargs) ($(findmnt -no OPTIONS -T "$TMP")), prefilled with $PREFILL_BS writes, page cache warm, buffered I/O everywhere"
	echo "- fio: $(fio --version), RUNTIME=${RUNTIME}s after RAMP=${RAMP}s, randseed $SEED; nbd targets via fio's nbd engine (libnbd) over a unix socket, one connection per job"
	echo "- versions: $(ver nbdkit --version); $(ver qemu-nbd --version); snapvol: $SV_VER"
	echo
	"$PY" "$HERE/report.py" md "$OUT.tsv"
	echo
	echo "Plot: \`$(basename "$OUT.png")\`; raw figures: \`$(basename "$OUT.tsv")\`; method and how to read the ratios: \`bench/README.md\`."
} >"$OUT.md"
"$PY" "$HERE/report.py" dat "$OUT.tsv" "$TMP/plot"
if gnuplot -e "dir='$TMP/plot'; out='$OUT.png'; ttl='$(basename "$OUT") ($(nproc) cores, RUNTIME ${RUNTIME}s)'" \
	"$HERE/nbd-matrix.gp" 2>"$TMP/log/gnuplot.log"; then
	:
else
	log "gnuplot failed: $(head -n 5 "$TMP/log/gnuplot.log")"
fi
log "done in ${WALL} s: $OUT.md, $OUT.tsv, $OUT.png"
cat "$OUT.md"
