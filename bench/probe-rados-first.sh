#!/usr/bin/env bash
# probe-rados-first.sh: a diagnostic (bench/README.md, design notes "Ceph
# RADOS pools", session 9): first 1 MiB sequential writes after a snapshot
# on one single-node cluster, many passes, alternating server binaries or
# settings per pass, with the OSD's counters per MiB written, the server's
# and the OSD's CPU ticks and the server's minor faults per MiB.  One
# cluster for all passes (bench/rados.sh starts one per run, whose first
# pass is slow: here one unrecorded warm-up pass goes first); each pass
# restarts the server, takes a snapshot, writes the whole volume once with
# fio (nbd engine, 1 MiB, depth 16) and deletes the snapshot.
#
# usage: [ROUNDS=3] [FSYNC=0] [SIZE=256M] [BS=1M] [POLICY=drop-snapshot] [PERF=PREFIX] \
#        bench/probe-rados-first.sh "NAME=SNAPVOL [VAR=VALUE...]" ...
#   FSYNC=1   fio ends with a flush (end_fsync): the writes held by
#             write-behind are landed inside "wall"
#   PERF=P    perf record (dwarf call graphs) of the server, into P.NAME.ROUND
# Output, one line per pass: fio's MiB/s, MiB/s by the wall clock around
# fio (its start and end, and the flush with FSYNC=1), completion latency
# p50/p99/max, OSD ops and MiB in/out per MiB written, CPU ticks.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
FSYNC=${FSYNC:-0}
SIZE=${SIZE:-256M}
BS=${BS:-1M}
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/snapvol-probe-rados.XXXXXX")
SRV=
cleanup() {
	[[ -n $SRV ]] && kill -TERM "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null || true
	bash $REPO/tests/integration/ceph-cluster.sh stop "$TMP/ceph" || true
	rm -rf "$TMP"
}
trap cleanup EXIT
bash $REPO/tests/integration/ceph-cluster.sh start "$TMP/ceph" blk
export CEPH_CONF=$TMP/ceph/ceph.conf XDG_RUNTIME_DIR=$TMP/run
mkdir -p "$TMP/run"
ASOK=$TMP/ceph/run/osd.0.asok
first=${1#*=}
first=${first%% *}
$first --pool rados:blk create vm1 --size $SIZE --chunk-size 4K >/dev/null
[[ -n ${POLICY:-} ]] && $first --pool rados:blk set vm1 --full-policy $POLICY
RUNDIR=$XDG_RUNTIME_DIR/snapvol/rados:blk
URI="nbd+unix:///vm1?socket=$RUNDIR/nbd.sock"
start_srv() { # "BIN ENV..."
	local bin=$1
	shift
	env "$@" "$bin" --pool rados:blk serve >"$TMP/serve.log" 2>&1 </dev/null &
	SRV=$!
	for ((i = 0; i < 200; i++)); do
		nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "server did not start" >&2
	cat "$TMP/serve.log" >&2
	exit 1
}
stop_srv() {
	kill -TERM "$SRV"
	wait "$SRV" || true
	SRV=
}
osd() { ceph --admin-daemon "$ASOK" perf dump | python3 -c '
import json,sys; d=json.load(sys.stdin)["osd"]
print(d["op_r"], d["op_w"], d["op_rw"], d["op_in_bytes"], d["op_out_bytes"])'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
flt() { awk '{print $10}' /proc/$1/stat; }
OSDPID=$(pgrep -f "^ceph-osd -c $TMP/ceph" | head -1)
# prefill
spec1=${1#*=}
start_srv $spec1
fio --name=p --ioengine=nbd --uri="$URI" --size=$SIZE --rw=write --bs=1M --iodepth=16 >/dev/null
# warm-up: one unrecorded first-writes pass (the OSD's first is slow)
$first --pool rados:blk snapshot create vm1@w >/dev/null
fio --name=p --ioengine=nbd --uri="$URI" --size=$SIZE --rw=write --bs=1M --iodepth=16 --end_fsync=1 >/dev/null
$first --pool rados:blk snapshot delete vm1@w >/dev/null
stop_srv
for ((r = 1; r <= ROUNDS; r++)); do
	for spec in "$@"; do
		name=${spec%%=*}
		s=${spec#*=}
		start_srv $s
		bin=${s%% *}
		$bin --pool rados:blk snapshot create vm1@s >/dev/null 2>&1 || true
		read -r r0 w0 rw0 ib0 ob0 < <(osd)
		c0=$(cpu $SRV)
		f0=$(flt $SRV)
		PP=
		if [[ -n ${PERF:-} ]]; then perf record --call-graph dwarf,16384 -F 2000 -o $PERF.$name.$r -p $SRV 2>/dev/null & PP=$!; sleep 0.2; fi
		o0=$(cpu $OSDPID)
		l=$(cut -d' ' -f1 /proc/loadavg)
		t0=$(date +%s.%N)
		fio --name=f --ioengine=nbd --uri="$URI" --size=$SIZE --rw=write --bs=$BS --iodepth=16 \
			--end_fsync=$FSYNC --output-format=json --output=$TMP/f.json >/dev/null
		t1=$(date +%s.%N)
		read -r r1 w1 rw1 ib1 ob1 < <(osd)
		c1=$(cpu $SRV)
		f1=$(flt $SRV)
		[[ -n $PP ]] && { kill -INT $PP; wait $PP || true; }
		o1=$(cpu $OSDPID)
		python3 - "$TMP/f.json" "$name" "$r" "$l" $((r1 - r0)) $((w1 - w0)) $((rw1 - rw0)) $((ib1 - ib0)) $((ob1 - ob0)) $((c1 - c0)) $((o1 - o0)) "$t0" "$t1" $((f1 - f0)) <<'EOF'
import json, sys
f, name, r, l, dr, dw, drw, dib, dob, dc, do, t0, t1, fl = sys.argv[1:]
j = json.load(open(f))["jobs"][0]
w = j["write"]
mib = w["io_bytes"] / 2**20
print(f"{name:10s} round {r} load {l:>5s}  {w['bw']/1024:7.1f} MiB/s wall {mib/(float(t1)-float(t0)):6.1f}  p50 {w['clat_ns']['percentile']['50.000000']/1e6:6.1f} p99 {w['clat_ns']['percentile']['99.000000']/1e6:6.1f} max {w['clat_ns']['max']/1e6:6.1f} ms"
      f"  op_r/MiB {int(dr)/mib:4.2f} op_w/MiB {int(dw)/mib:4.2f} rw {drw}  in {int(dib)/2**20/mib:4.2f} out {int(dob)/2**20/mib:4.2f}"
      f"  cpu(ticks) srv {dc} osd {do} minflt/MiB {int(fl)/mib:5.1f}", flush=True)
EOF
		$bin --pool rados:blk snapshot delete vm1@s >/dev/null 2>&1
		stop_srv
	done
done
