#!/usr/bin/env bash
# probe-rados-cpu.sh: a diagnostic (design notes "Ceph RADOS pools",
# session 11): CPU per MiB on each side of 1 MiB I/O at depth 16, librbd
# (fio's rbd engine, in fio's process) against snapvol (fio's nbd engine
# over the unix socket to `snapvol serve`), on one single-node cluster:
# a prefill pass, a time-based sequential write and read (6 s each), and a
# first-writes pass after a snapshot (with a flush at the end).  For each
# pass: MiB/s by the wall clock around fio, the CPU milliseconds per MiB
# of the server (/proc/PID/stat), of fio (its user + system time) and of
# the OSD, their total, how busy that kept the machine's cores, and the
# OSD's op counters (perf dump) over the pass.
#
# usage: [SZ=768M] bench/probe-rados-cpu.sh [SNAPVOL]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SV=${1:-$REPO/build-bench/cli/snapvol}
SZ=${SZ:-768M}
PY=/usr/bin/python3
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
D=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/snapvol-probe-cpu.XXXXXX")
CS=$REPO/tests/integration/ceph-cluster.sh
SRV=
cleanup() {
	[[ -n $SRV ]] && kill -TERM "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null || true
	bash "$CS" stop "$D/c" >/dev/null 2>&1 || true
	rm -rf "$D"
}
trap cleanup EXIT
CEPH_ARGS="--memstore_device_bytes=$((6 << 30))" CEPH_CLUSTER_LIFETIME=600 \
	bash "$CS" start "$D/c" blk rbd >"$D/c.log" 2>&1
export CEPH_CONF=$D/c/ceph.conf XDG_RUNTIME_DIR=$D/run SNAPVOL_RADOS_CLAIM=5s
{
	cat "$CEPH_CONF"
	echo "[client]"
	echo "rbd cache = false"
} >"$D/rbd.conf"
ceph osd pool application enable rbd rbd >/dev/null 2>&1
rbd create --size "$SZ" rbd/img
mkdir -p "$XDG_RUNTIME_DIR"
RUN=$XDG_RUNTIME_DIR/snapvol/rados:blk
"$SV" --pool rados:blk create vm1 --size "$SZ" >/dev/null
"$SV" --pool rados:blk serve >"$D/srv.log" 2>&1 &
SRV=$!
for _ in $(seq 100); do [[ -S $RUN/nbd.sock && -S $RUN/control.sock ]] && break; sleep 0.1; done
OSD=$(pgrep -f "ceph-osd -c $D/c" | tail -1)
ASOK=$D/c/run/osd.0.asok
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pass() { # TARGET NAME RW [FIO ARGS...]
	local t=$1 n=$2 rw=$3 eng conf=$CEPH_CONF
	shift 3
	if [[ $t == rbd ]]; then
		eng=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=img)
		conf=$D/rbd.conf
	else
		eng=(--ioengine=nbd "--uri=nbd+unix:///vm1?socket=$RUN/nbd.sock")
	fi
	ceph --admin-daemon "$ASOK" perf dump >"$D/pd0.json" 2>/dev/null
	local s0 o0 t0 s1 o1 t1
	s0=$(cpu "$SRV") o0=$(cpu "$OSD") t0=$(date +%s%N)
	CEPH_CONF=$conf /usr/bin/time -f "%U %S" -o "$D/time" fio --name="$n" "${eng[@]}" \
		--rw="$rw" --bs=1M --iodepth=16 --size="$SZ" "$@" --output-format=json \
		--output="$D/$n.json" >"$D/$n.err" 2>&1
	t1=$(date +%s%N) s1=$(cpu "$SRV") o1=$(cpu "$OSD")
	ceph --admin-daemon "$ASOK" perf dump >"$D/pd1.json" 2>/dev/null
	"$PY" - "$t" "$n" "$D/$n.json" "$D/time" "$(((t1 - t0) / 1000000))" "$(((s1 - s0) * 10))" \
		"$(((o1 - o0) * 10))" "$D/pd0.json" "$D/pd1.json" <<'PYEOF'
import json, sys
t, n, fj, tf, wall, srv, osd, p0, p1 = sys.argv[1:10]
j = json.load(open(fj))["jobs"][0]
mib = (j["read"]["io_bytes"] + j["write"]["io_bytes"]) / 1048576
u, s = map(float, open(tf).read().split()[-2:])
fio = (u + s) * 1000
wall, srv, osd = float(wall), float(srv), float(osd)
if t == "rbd":
    srv = 0.0  # the server idles meanwhile
a, b = json.load(open(p0))["osd"], json.load(open(p1))["osd"]
ops = " ".join(f"{k}={b[k] - a[k]}" for k in ("op_w", "op_r", "op_rw"))
print(f"{t:8} {n:8} MiB/s {mib / (wall / 1000):6.0f}  CPU ms/MiB: server {srv / mib:.2f} "
      f"fio {fio / mib:.2f} osd {osd / mib:.2f} total {(srv + fio + osd) / mib:.2f} "
      f"(busy {(srv + fio + osd) / wall / 2 * 100:.0f}% of 2 cores)  osd ops: {ops}")
PYEOF
}
echo "# $(date -u +%FT%TZ) SZ=$SZ snapvol=$SV load: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in rbd snapvol; do
	pass "$t" prefill write
	pass "$t" plain write --time_based=1 --runtime=6
	pass "$t" sread read --time_based=1 --runtime=6
	if [[ $t == rbd ]]; then
		rbd snap create rbd/img@s >/dev/null 2>&1
	else
		"$SV" --pool rados:blk snapshot create vm1@s >/dev/null
	fi
	pass "$t" first write --end_fsync=1
done
