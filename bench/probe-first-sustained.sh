#!/usr/bin/env bash
# probe-first-sustained.sh BIN TAG [PASSES]: sustained 4 KiB random first writes after
# a snapshot (a diagnostic, no peer).  One server on a 4 GiB volume whose origin is a
# hard link of a 4k-prefilled file (BASE, made if missing); per pass: clear, snapshot,
# FIRST_IOS random 4 KiB writes at QD16 with fio's nbd engine and a final fsync.
# Prints per pass: IOPS, server and fio CPU per write, p99 and max latency, load.
# With FIRST_IOS=131072 (512 MiB) a pass fills the 128 MiB pre-image log several
# times, which bench/cow.sh's 64 MiB pass never does: it is what the early checkpoint
# (engine/journal.c) is measured with.  TRACE=1 has the server trace its checkpoints
# (in the printed log's directory: grep "log is full", "early checkpoint").
# PERF=1 records the server with perf during pass 1.  SNAPVOL_* pass through.
set -euo pipefail
BIN=$1 TAG=$2 PASSES=${3:-2}
FIRST_IOS=${FIRST_IOS:-16384}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
BASE=${BASE:-$BENCH_TMPDIR/probe-first-base.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
if [[ ! -f $BASE ]]; then
	dd if=/dev/urandom of="$BASE" bs=4k count=1048576 status=none
	sync
fi
D=$BENCH_TMPDIR/probe-first-$TAG
rm -rf "$D"
mkdir -p "$D"
P=$D/pool
"$BIN" --pool "$P" create vol --size 4G >/dev/null
O=$("$BIN" --pool "$P" info vol --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["origin"])')
ln -f "$BASE" "$O"
SNAPVOL_TRACE_FREEZE=${TRACE:-0} "$BIN" --pool "$P" serve --socket "$D/sv.sock" 2>"$D/srv.log" &
SPID=$!
trap 'kill $SPID 2>/dev/null; wait $SPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	[[ -S $D/sv.sock && -S $P/control.sock ]] && break
	sleep 0.1
done
CTL=$P/control.sock
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for ((p = 1; p <= PASSES; p++)); do
	python3 "$HERE/cowbench.py" clear "$CTL" vol >/dev/null
	python3 "$HERE/cowbench.py" call "$CTL" snapshot-create "{\"snapshots\": [\"vol@p$p\"]}" >/dev/null
	sync
	c0=$(cpu "$SPID")
	if [[ ${PERF:-0} == 1 && $p == 1 ]]; then
		perf record -e cpu-clock -g -p "$SPID" -o "$D/perf.data" 2>/dev/null &
		PP=$!
		sleep 0.3
	fi
	/usr/bin/time -f '%U %S' -o "$D/fio$p.time" fio --name=w --ioengine=nbd \
		--uri="nbd+unix:///vol?socket=$D/sv.sock" --rw=randwrite --bs=4k --iodepth=16 \
		--size=4G --randrepeat=0 --randseed=$((4242 + p)) --number_ios="$FIRST_IOS" \
		--end_fsync=1 --output-format=json --output="$D/fio$p.json" >/dev/null
	if [[ ${PERF:-0} == 1 && $p == 1 ]]; then
		kill -INT "$PP"
		wait "$PP" || true
	fi
	c1=$(cpu "$SPID")
	python3 - "$D/fio$p.json" "$D/fio$p.time" $((c1 - c0)) "$tck" "$FIRST_IOS" "$TAG" $p \
		"$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))['jobs'][0]
w = job['write']
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
ticks, tck, n = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ms = job['job_runtime']  # includes the final fsync
print(f"{sys.argv[6]} pass{sys.argv[7]} iops {w['iops']:.0f} wall-iops {n*1000/ms:.0f} "
      f"srv_us/w {ticks/tck*1e6/n:.1f} fio_us/w {(u+s)*1e6/n:.1f} "
      f"p99 {w['clat_ns']['percentile']['99.000000']/1000:.0f}us max {w['clat_ns']['max']/1000:.0f}us "
      f"load {sys.argv[8]}")
PY
done
echo "server log: $D/srv.log"
