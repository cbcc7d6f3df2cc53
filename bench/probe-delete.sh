#!/usr/bin/env bash
# probe-delete.sh SNAPVOL: a diagnostic (bench/README.md): deleting the OLDER of two snapshots
# while first writes copy into the newer epoch (whose pre-image object is dirty): the delete's time
# and the longest write in flight around it. The log is made 1 GiB (SNAPVOL_PRELOG_KB) so a log-full
# checkpoint rarely interferes (the server trace printed at the end says when one did).
set -euo pipefail
SV=$(realpath "$1")
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
T=$(mktemp -d /var/tmp/s8del.XXXX)
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null; rm -rf $T' EXIT
mkdir -p $T/pool
$SV --pool $T/pool create vm1 --size 2G >/dev/null
fio --name=p --filename=$(ls $T/pool/volumes/vm1/origin* | head -1) --rw=write --bs=4k --size=2G --ioengine=psync >/dev/null 2>&1
SNAPVOL_PRELOG_KB=1048576 SNAPVOL_TRACE_FREEZE=1 $SV --pool $T/pool serve --socket $T/sv.sock >$T/serve.log 2>&1 </dev/null & SRV=$!
URI="nbd+unix:///vm1?socket=$T/sv.sock"
for i in $(seq 100); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.1; done
$SV --pool $T/pool snapshot create vm1@s1 >/dev/null
now() { date +%s%3N; }
F0=$(now)
fio --name=f --ioengine=nbd --uri="$URI" --size=2G --rw=randwrite --bs=4k --iodepth=16 --time_based --runtime=7 --randseed=7 --write_lat_log=$T/lat --log_avg_msec=0 >/dev/null &
FIO=$!
sleep 2; $SV --pool $T/pool snapshot create vm1@s2 >/dev/null
sleep 2; D0=$(now); $SV --pool $T/pool snapshot delete vm1@s1 >/dev/null; D1=$(now)
wait $FIO
/usr/bin/python3 - $T/lat_clat.1.log $F0 $D0 $D1 <<'PY'
import sys
f, f0, d0, d1 = sys.argv[1], *map(int, sys.argv[2:])
a, b = d0 - f0, d1 - f0   # ms since fio's start (approx.)
mx = 0; allmx = 0; n = 0
for line in open(f):
    t, v = line.split(',')[:2]; t = int(t); v = int(v) / 1e6  # completion ms, latency ms
    n += 1; allmx = max(allmx, v)
    if t >= a and t - v <= b + 50: mx = max(mx, v)
print(f"delete call {d1-d0} ms; longest write in flight during it {mx:.1f} ms; longest of the run {allmx:.1f} ms; {n} writes")
PY
grep -E 'checkpoint|the log is full' $T/serve.log | tail -3
