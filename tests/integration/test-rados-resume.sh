#!/usr/bin/env bash
# test-rados-resume.sh: service resumes when the cluster does.  A client
# writes and flushes a RADOS volume (with a snapshot, so first writes copy)
# through one NBD connection while the cluster's monitor and OSD are
# stopped (SIGSTOP) for longer than the volume's claim (5 s) and then go
# on.  During the outage requests fail with EIO within seconds (no hang);
# afterwards the same server, on the same connection, serves again without
# a restart: the claim is taken back (nobody held it meanwhile) and says so
# in the log.  Nothing is corrupt: every block whose last write and flush
# succeeded reads back as written, the snapshot is intact, and an offline
# check of the pool passes.  Skipped (77) only when the Ceph packages are
# missing.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires $PY -c 'import nbd'

new_pool
start_ceph
export XDG_RUNTIME_DIR=$T/run
export SNAPVOL_RADOS_CLAIM=5s
mkdir -p "$XDG_RUNTIME_DIR"
P=rados:blk
RUN=$XDG_RUNTIME_DIR/snapvol/rados:blk
M=1048576

ceph_daemons

sv create vm1 --size 16M
WAIT_FOR="$RUN/nbd.sock $RUN/control.sock" start_server
PID0=$(server_pid)
U=$(uri vm1 "$RUN/nbd.sock")
head -c $((16 * M)) /dev/urandom >"$T/base.img"
nbdcopy "$T/base.img" "$U"
sv snapshot create vm1@s1 >/dev/null

# The client: 64 KiB writes at random blocks, a flush after every 4, for
# 18 s, each request timed; a model of what must read back (a block whose
# write, or the flush after it, failed is unknown until rewritten).
$PY - "$U" "$T/base.img" "$T/client.json" "$T/go" <<'EOF' &
import json, os, random, sys, time, nbd
uri, base, out, go = sys.argv[1:5]
B, N = 65536, 256
model = {i: open(base, 'rb').read()[i * B:(i + 1) * B] for i in range(N)}
h = nbd.NBD()
h.connect_uri(uri)
open(go, 'w').close()
ops, pending, rng = [], [], random.Random(7)
t_end = time.time() + 18
seq = 0
while time.time() < t_end:
    seq += 1
    i = rng.randrange(N)
    data = (b'%08d' % seq) * (B // 8)
    t0 = time.time()
    try:
        h.pwrite(data, i * B)
        ok, err = True, None
        model[i] = data
        pending.append(i)
    except nbd.Error as e:
        ok, err = False, e.errno
        model[i] = None
    ops.append((t0, time.time() - t0, 'w', ok, err))
    if seq % 4 == 0:
        t0 = time.time()
        try:
            h.flush()
            ok, err = True, None
        except nbd.Error as e:
            ok, err = False, e.errno
            for j in pending:  # acknowledged, but perhaps not landed
                model[j] = None
        pending = []
        ops.append((t0, time.time() - t0, 'f', ok, err))
    time.sleep(0.02)
h.flush()
bad = [i for i in range(N) if model[i] is not None and h.pread(B, i * B) != model[i]]
unknown = sum(1 for i in range(N) if model[i] is None)
h.shutdown()
json.dump({'ops': ops, 'bad': bad, 'unknown': unknown}, open(out, 'w'))
EOF
CLIENT=$!
for ((i = 0; i < 100; i++)); do [ -e "$T/go" ] && break; sleep 0.1; done
sleep 2
log "stopping the cluster (SIGSTOP of the monitor and the OSD) for 7 s"
t_stop=$(date +%s.%N)
kill -STOP "$OSD" "$MON"
sleep 7
t_cont=$(date +%s.%N)
kill -CONT "$OSD" "$MON"
log "cluster resumed"
wait "$CLIENT" || fail "the client failed (a hang, or an error outside the outage)"
$PY - "$T/client.json" "$t_stop" "$t_cont" <<'EOF' || fail "see above"
import json, sys
r = json.load(open(sys.argv[1]))
t_stop, t_cont = float(sys.argv[2]), float(sys.argv[3])
ops = r['ops']
# issued while the cluster was stopped (the client itself fails on an error
# outside the outage)
during = [o for o in ops if t_stop < o[0] < t_cont]
after = [o for o in ops if o[0] > t_cont + 6]
worst = max(o[1] for o in ops)
errs = sorted({o[4] for o in ops if not o[3]})
print(f"{len(ops)} requests; failed: {sum(not o[3] for o in ops)} (errno {errs}); "
      f"longest {worst:.1f} s; after the resume: {len(after)}, "
      f"{sum(o[3] for o in after)} ok; unknown blocks {r['unknown']}, bad {len(r['bad'])}",
      file=sys.stderr)
# (A write the write-behind buffer takes may still succeed, and a flush
# with nothing to land: the model above covers what they promised.)
assert during and sum(not o[3] for o in during) >= 2, "requests did not fail during the outage"
assert all(o[4] in (5, "EIO") for o in ops if not o[3]), f"errors other than EIO: {errs}"
assert worst < 12, f"a request took {worst:.1f} s (a hang?)"
assert after and all(o[3] for o in after), "requests still fail 6 s after the cluster is back"
assert not r['bad'], f"blocks read back wrong: {r['bad']}"
EOF
log "$(grep -m1 "writes go on" "$SERVER_LOG" || true)"
grep -q "claim lapsed, taken back\|claim renewed again" "$SERVER_LOG" ||
	fail "the server log does not say the claim is back"
assert_eq "same server" "$PID0" "$(server_pid)"
assert_eq "vm1@s1" "$(sha "$T/base.img")" "$(nbd_sha "$(uri vm1@s1 "$RUN/nbd.sock")")"
sv status --json >"$T/status.json"
$PY -c 'import json,sys; assert json.load(open(sys.argv[1]))["held"] == ["vm1"]' "$T/status.json" ||
	fail "the server does not hold vm1 after the outage: $(cat "$T/status.json")"
# New writes and a snapshot work after the outage.
head -c $((16 * M)) /dev/urandom >"$T/new.img"
nbdcopy "$T/new.img" "$U"
sv snapshot create vm1@s2 >/dev/null
assert_eq "vm1@s2" "$(sha "$T/new.img")" "$(nbd_sha "$(uri vm1@s2 "$RUN/nbd.sock")")"
stop_server
sv check >"$T/check.out" 2>&1 || fail "check after the outage: $(cat "$T/check.out")"
log "ok"
