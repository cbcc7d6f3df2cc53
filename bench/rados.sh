#!/usr/bin/env bash
# rados.sh: snapvol on a Ceph RADOS pool against RBD (librbd) on the same
# cluster, in one run (issue 7, "Measure").
#
# What and why: a RADOS volume is worth having if it is about as fast as
# the block device Ceph already ships (RBD) and better where snapvol's
# design should win: writes right after a snapshot (RBD's OSDs clone a whole
# 4 MiB object on its first write after a snapshot; snapvol copies one
# chunk) and listing what changed between two snapshots.  So, on one
# single-node cluster (tests/integration/ceph-cluster.sh: one monitor, one
# memstore OSD), an RBD image in pool "rbd" and a snapvol volume of the same
# size in pool "blk", driven by fio: its rbd engine (librbd directly, as a
# VM's qemu would; rbd-nbd needs the kernel nbd driver this machine lacks)
# and its nbd engine against "snapvol --pool rados:blk serve".  Both acked
# writes are on the OSD (librbd's cache is turned off for fio: RBD_CACHE).
#   none   no snapshot: 1 MiB sequential write and read, 4 KiB random write
#          and read at depth 16 (time-based, after a prefill)
#   first  right after a snapshot: FIRST_IOS distinct 4 KiB random writes
#          (fio's random map, the same seed, so the same blocks on both),
#          then, after another snapshot, one 1 MiB sequential pass over the
#          whole image; reads while the snapshots exist
#   diff   the changes between the two snapshots: `rbd diff --from-snap`
#          (and --whole-object, RBD's object-map fast path) against
#          `snapvol diff`, wall time of the command, DIFF_REPS times
#   create `rbd snap create` against `snapvol snapshot create`, CREATES
#          times each, alternating, idle; and the same through the APIs
#          (python3-rbd's create_snap on an open image, snapvol's control
#          socket) without process start-up
# Goals (issue 7): within 20% of librbd's IOPS without a snapshot; ahead of
# RBD on first writes after a snapshot and on change listing.
#
# Usage: bench/rados.sh            (~8 min on a quiet machine)
#        QUICK=1 bench/rados.sh    (smoke run, ~3 min)
# Knobs (environment; QUICK=1 changes those marked *):
#   SIZE=256M       image / volume size (memstore keeps it all in RAM; the
#                   OSD has MEMSTORE_GIB, and snapshots' copies need room)
#   MEMSTORE_GIB=   the OSD's memstore size (default: ceph-cluster.sh's 2)
#   RUNTIME=10*     seconds per time-based fio pass (RAMP=2 before it)
#   FIRST_IOS=8192* 4 KiB writes of the first-writes pass
#   REPS=2*         repetitions (targets' order alternates)
#   CREATES=30*     snapshot creates per target and method
#   DIFF_REPS=5*    runs of each diff command
#   CHUNK=4K        snapvol's chunk size
#   RBD_CACHE=false librbd's cache for fio (true: its default writearound)
#   SEED=4242 BENCH_TMPDIR=/var/tmp KEEP=0 RESULTS_DIR=bench/results
#   ROWS="sw1m sr1m rw4k rr4k"  the no-snapshot rows (e.g. ROWS=sr1m REPS=5
#                   RUNTIME=20 PARTS=none: one row measured repeatedly)
#   PARTS="none first create"   which parts run ("first" includes diff)
#   QEMU=0          1: a third target, qemu-nbd serving a second RBD image
#                   (rbd/qimg) through its rbd driver (qemu-block-extra), in
#                   the no-snapshot rows: what an NBD hop over librbd costs
#   SNAPVOL=build-bench/cli/snapvol (else build/cli/snapvol; built with librados)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

KNOBS="QUICK SIZE MEMSTORE_GIB RUNTIME RAMP FIRST_IOS REPS CREATES DIFF_REPS CHUNK RBD_CACHE SEED
	BENCH_TMPDIR KEEP SNAPVOL RESULTS_DIR ROWS PARTS QEMU"
CMDLINE=
for v in $KNOBS; do
	[[ -n "${!v+x}" ]] && CMDLINE+="$v=$(printf '%q' "${!v}") "
done
# the server inherits SNAPVOL_* settings (e.g. SNAPVOL_WRITE_BEHIND_MB): named too
for v in $(compgen -e | grep '^SNAPVOL_' || true); do
	CMDLINE+="$v=$(printf '%q' "${!v}") "
done
CMDLINE+="bench/$(basename "$0")"
if [[ $# -gt 0 ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
fi

QUICK=${QUICK:-0}
q() { if [[ $QUICK == 1 ]]; then echo "$1"; else echo "$2"; fi; }
SIZE=${SIZE:-256M}
MEMSTORE_GIB=${MEMSTORE_GIB:-}
RUNTIME=${RUNTIME:-$(q 5 10)}
RAMP=${RAMP:-2}
FIRST_IOS=${FIRST_IOS:-$(q 2048 8192)}
REPS=${REPS:-$(q 1 2)}
CREATES=${CREATES:-$(q 10 30)}
DIFF_REPS=${DIFF_REPS:-$(q 3 5)}
CHUNK=${CHUNK:-4K}
RBD_CACHE=${RBD_CACHE:-false}
SEED=${SEED:-4242}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
KEEP=${KEEP:-0}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
ROWS=${ROWS:-sw1m sr1m rw4k rr4k}
PARTS=${PARTS:-none first create}
QEMU=${QEMU:-0}
part() { [[ " $PARTS " == *" $1 "* ]]; }
if [[ -z "${SNAPVOL:-}" ]]; then
	SNAPVOL=$REPO/build-bench/cli/snapvol
	[[ -x $SNAPVOL ]] || SNAPVOL=$REPO/build/cli/snapvol
fi
SNAPVOL=$(realpath "$SNAPVOL")
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
PY=/usr/bin/python3 # Debian's: it has the rados, rbd and nbd modules

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
for c in fio rbd ceph "$PY" gnuplot nbdinfo $(if [[ $QEMU == 1 ]]; then echo qemu-nbd; fi); do
	command -v "$c" >/dev/null || die "missing tool: $c"
done
"$PY" -c 'import rbd, rados' 2>/dev/null || die "$PY lacks the rbd module (apt-get install python3-rbd)"
fio --enghelp 2>/dev/null | grep -qw rbd || die "this fio has no rbd engine"
[[ -x $SNAPVOL ]] || die "no snapvol at $SNAPVOL (meson setup build-bench --buildtype=release && ninja -C build-bench)"

TMP=$(mktemp -d "$BENCH_TMPDIR/snapvol-bench-rados.XXXXXX")
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=$RESULTS_DIR/rados-$STAMP
RUNS=$TMP/runs.tsv
SRV=
QNBD=
FIO_PID=
REPORTED=0
CURRENT=setup
mkdir -p "$TMP/fio" "$TMP/log" "$TMP/run" "$RESULTS_DIR"

report() { # report [PREFIX]: the .md/.tsv/.png from $RUNS
	cp "$RUNS" "$OUT.tsv"
	"$PY" "$HERE/radosbench.py" md "$OUT.tsv" --command "$CMDLINE" --prefix "${1:-}" \
		--machine "$MACHINE" --load "$LOAD0 -> $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT.md"
	mkdir -p "$TMP/dat"
	if "$PY" "$HERE/radosbench.py" dat "$OUT.tsv" "$TMP/dat" &&
		gnuplot -e "dir='$TMP/dat'; out='$OUT.png'; ttl='snapvol on RADOS vs librbd, $STAMP'" \
			"$HERE/rados.gp" 2>"$TMP/log/gnuplot.log"; then
		:
	else
		log "no plot: $(head -3 "$TMP/log/gnuplot.log")"
	fi
	REPORTED=1
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	if [[ -n $FIO_PID ]]; then kill -INT "$FIO_PID" 2>/dev/null && wait "$FIO_PID" 2>/dev/null; fi
	if ((rc != 0 && REPORTED == 0)) && [[ -s $RUNS ]]; then
		log "failed (exit $rc) during: $CURRENT; writing the partial report"
		report "INCOMPLETE (exit status $rc, during: $CURRENT): " || true
	fi
	for p in $SRV $QNBD; do
		if kill -0 "$p" 2>/dev/null; then
			kill -TERM "$p" 2>/dev/null
			wait "$p" 2>/dev/null || true
		fi
	done
	bash "$REPO/tests/integration/ceph-cluster.sh" stop "$TMP/ceph" || true
	if [[ $KEEP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- set-up
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average $LOAD0; cluster in $TMP/ceph"
CURRENT="starting the cluster"
# the daemons outlive a long run (ceph-cluster.sh stops them at exit anyway)
export CEPH_CLUSTER_LIFETIME=${CEPH_CLUSTER_LIFETIME:-7200}
if [[ -n $MEMSTORE_GIB ]]; then
	CEPH_ARGS="--memstore_device_bytes=$((MEMSTORE_GIB << 30))" \
		bash "$REPO/tests/integration/ceph-cluster.sh" start "$TMP/ceph" rbd blk
else
	bash "$REPO/tests/integration/ceph-cluster.sh" start "$TMP/ceph" rbd blk
fi
export CEPH_CONF=$TMP/ceph/ceph.conf
export XDG_RUNTIME_DIR=$TMP/run
# fio's librbd client gets its own configuration: the cluster's plus the
# cache setting (librbd reads no environment variable for it).
RBD_CONF=$TMP/rbd-client.conf
{
	cat "$CEPH_CONF"
	echo "[client]"
	echo "rbd cache = $RBD_CACHE"
} >"$RBD_CONF"
ceph osd pool application enable rbd rbd >/dev/null 2>&1
rbd create --size "$SIZE" rbd/img
BYTES=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)["size"])' < <(rbd info rbd/img --format json))
FEATURES=$(rbd info rbd/img --format json | "$PY" -c 'import json,sys; print(",".join(json.load(sys.stdin)["features"]))')
"$SNAPVOL" --pool rados:blk create vm1 --size "$BYTES" --chunk-size "$CHUNK" >/dev/null 2>"$TMP/log/create.err" ||
	die "snapvol create on rados:blk failed: $(cat "$TMP/log/create.err")"
"$SNAPVOL" --pool rados:blk serve >"$TMP/log/serve.log" 2>&1 </dev/null &
SRV=$!
RUNDIR=$XDG_RUNTIME_DIR/snapvol/rados:blk
CTL=$RUNDIR/control.sock
URI="nbd+unix:///vm1?socket=$RUNDIR/nbd.sock"
for ((i = 0; i < 100; i++)); do
	nbdinfo --size "$URI" >/dev/null 2>&1 && [[ -S $CTL ]] && break
	kill -0 "$SRV" 2>/dev/null || die "snapvol serve exited: $(tail -5 "$TMP/log/serve.log")"
	sleep 0.1
done
if [[ $QEMU == 1 ]]; then
	# qemu-nbd over librbd: a second image, so fio's librbd and qemu's do
	# not pass the exclusive lock to and fro; qemu's rbd driver turns
	# librbd's cache on unless the cache mode is none.
	rbd create --size "$SIZE" rbd/qimg
	QSOCK=$TMP/run/qemu-nbd.sock
	qemu-nbd --persistent --shared=4 -k "$QSOCK" -x qimg -f raw \
		--cache="$([[ $RBD_CACHE == true ]] && echo writeback || echo none)" \
		"rbd:rbd/qimg:conf=$RBD_CONF" >"$TMP/log/qemu-nbd.log" 2>&1 </dev/null &
	QNBD=$!
	QURI="nbd+unix:///qimg?socket=$QSOCK"
	for ((i = 0; i < 100; i++)); do
		nbdinfo --size "$QURI" >/dev/null 2>&1 && break
		kill -0 "$QNBD" 2>/dev/null || die "qemu-nbd exited: $(tail -5 "$TMP/log/qemu-nbd.log")"
		sleep 0.1
	done
fi
MACHINE="$(nproc) cores, $(uname -r), $(ceph --version | cut -d' ' -f1-3), $(fio --version),
snapvol $("$SNAPVOL" --version | head -1) ($SNAPVOL); RBD image features: $FEATURES;
librbd cache for fio: $RBD_CACHE;$(if [[ $QEMU == 1 ]]; then echo " $(qemu-nbd --version | head -1) on rbd/qimg;"; fi) memstore OSD ${MEMSTORE_GIB:-2} GiB; SIZE=$SIZE ($BYTES bytes), snapvol chunk $CHUNK"
log "rbd/img and rados:blk/vm1, $BYTES bytes each; snapvol serving (pid $SRV)"

alive() {
	kill -0 "$SRV" 2>/dev/null && return 0
	tail -20 "$TMP/log/serve.log" >&2
	die "snapvol serve died during: $CURRENT"
}
sv() { "$SNAPVOL" --pool rados:blk "$@" >>"$TMP/log/sv.log" 2>&1 || {
	alive
	die "snapvol $*: $(tail -2 "$TMP/log/sv.log")"
}; }
rb() { rbd "$@" >>"$TMP/log/rbd.log" 2>&1 || die "rbd $*: $(tail -2 "$TMP/log/rbd.log")"; }
snap() { # snap TARGET NAME
	case $1 in
	rbd) rb snap create "rbd/img@$2" ;;
	snapvol) sv snapshot create "vm1@$2" ;;
	esac
}
unsnap() { # unsnap TARGET NAME
	case $1 in
	rbd) rb snap rm --no-progress "rbd/img@$2" ;;
	snapvol) sv snapshot delete "vm1@$2" ;;
	esac
}
order() { # order REP [qemu]: the targets, alternating per repetition
	local q=
	[[ ${2:-} == qemu && $QEMU == 1 ]] && q=qemu
	if (($1 % 2)); then echo "rbd $q snapvol"; else echo "snapvol $q rbd"; fi
}

# ---------------------------------------------------------------- fio
# run_fio KIND ROW TARGET REP FIO-ARGS...: one fio pass; appends its TSV line
run_fio() {
	local kind=$1 row=$2 t=$3 rep=$4 id rc=0 eng
	shift 4
	id="$kind.$row.$t.r$rep"
	case $t in
	rbd) eng=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=img) ;;
	snapvol) eng=(--ioengine=nbd "--uri=$URI") ;;
	qemu) eng=(--ioengine=nbd "--uri=$QURI") ;;
	esac
	CEPH_CONF=$RBD_CONF timeout -k 5 600 fio --name="$row" "${eng[@]}" --size="$BYTES" \
		--lat_percentiles=1 --percentile_list=50:99 --output-format=json \
		--output="$TMP/fio/$id.json" "$@" >"$TMP/fio/$id.out" 2>&1 &
	FIO_PID=$!
	wait "$FIO_PID" || rc=$?
	FIO_PID=
	[[ $t == snapvol ]] && alive
	[[ $t == qemu ]] && { kill -0 "$QNBD" 2>/dev/null || die "qemu-nbd died during: $CURRENT"; }
	((rc == 0)) || die "fio $id failed (status $rc): $(grep -v '^$' "$TMP/fio/$id.out" | tail -3)"
	"$PY" "$HERE/radosbench.py" fio "$TMP/fio/$id.json" "$kind" "$row" "$t" "$rep" >>"$RUNS"
	log "$(tail -1 "$RUNS" | awk -F'\t' '{ printf "%-6s %-9s %-8s %9.0f IOPS %8.1f MiB/s p99 %8.0f us", $1, $2, $3, $5, $6, $8 }')"
}
TIMED=(--time_based "--runtime=$RUNTIME" "--ramp_time=$RAMP")
RAND=(--randrepeat=0 "--randseed=$SEED")

# ---------------------------------------------------------------- none
CURRENT="prefill"
for t in $(order 1 qemu); do
	run_fio prefill sw1m "$t" 0 --rw=write --bs=1M --iodepth=16
done
for ((rep = 1; rep <= REPS; rep++)); do
	part none || break
	for row in $ROWS; do
		CURRENT="no snapshot: $row, repetition $rep"
		for t in $(order "$rep" qemu); do
			case $row in
			sw1m) run_fio none "$row" "$t" "$rep" --rw=write --bs=1M --iodepth=16 "${TIMED[@]}" ;;
			sr1m) run_fio none "$row" "$t" "$rep" --rw=read --bs=1M --iodepth=16 "${TIMED[@]}" ;;
			rw4k) run_fio none "$row" "$t" "$rep" --rw=randwrite --bs=4k --iodepth=16 "${TIMED[@]}" "${RAND[@]}" ;;
			rr4k) run_fio none "$row" "$t" "$rep" --rw=randread --bs=4k --iodepth=16 "${TIMED[@]}" "${RAND[@]}" ;;
			esac
		done
	done
done

# ---------------------------------------------------------------- first + diff
for ((rep = 1; rep <= REPS; rep++)); do
	part first || break
	CURRENT="first writes after a snapshot, repetition $rep"
	for t in $(order "$rep"); do
		snap "$t" "a$rep"
		run_fio first rw4k "$t" "$rep" --rw=randwrite --bs=4k --iodepth=16 \
			--io_size=$((FIRST_IOS * 4096)) --randrepeat=0 --randseed=$((SEED + rep))
	done
	CURRENT="reads with a snapshot, repetition $rep"
	for t in $(order "$rep"); do
		run_fio snap rr4k "$t" "$rep" --rw=randread --bs=4k --iodepth=16 "${TIMED[@]}" "${RAND[@]}"
		run_fio snap sr1m "$t" "$rep" --rw=read --bs=1M --iodepth=16 "${TIMED[@]}"
	done
	CURRENT="diff, repetition $rep"
	for t in rbd snapvol; do snap "$t" "b$rep"; done
	"$PY" "$HERE/radosbench.py" diff --reps "$DIFF_REPS" --rep "$rep" --snapvol "$SNAPVOL" \
		--from "a$rep" --to "b$rep" --ctl "$CTL" >>"$RUNS" 2>>"$TMP/log/diff.log" ||
		die "diff timing failed: $(tail -3 "$TMP/log/diff.log")"
	log "$(tail -3 "$RUNS" | awk -F'\t' '{ printf "%s %s %s median %.1f ms; ", $1, $2, $3, $7 / 1000 }')"
	for t in rbd snapvol; do unsnap "$t" "a$rep"; done
	CURRENT="sequential first writes after a snapshot, repetition $rep"
	for t in $(order "$rep"); do
		run_fio first sw1m "$t" "$rep" --rw=write --bs=1M --iodepth=16
	done
	for t in rbd snapvol; do unsnap "$t" "b$rep"; done
done

# ---------------------------------------------------------------- create
if part create; then
	CURRENT="snapshot create latency"
	log "== $CREATES snapshot creates per target, CLI and API"
	"$PY" "$HERE/radosbench.py" create --n "$CREATES" --snapvol "$SNAPVOL" --ctl "$CTL" \
		>>"$RUNS" 2>>"$TMP/log/create.log" || die "create timing failed: $(tail -3 "$TMP/log/create.log")"
	log "$(tail -4 "$RUNS" | awk -F'\t' '{ printf "%s %s p50 %.1f ms p99 %.1f ms; ", $2, $3, $7 / 1000, $8 / 1000 }')"
fi
alive

CURRENT="report"
report
log "wrote $OUT.md, .tsv, .png"
cat "$OUT.md"
