#!/usr/bin/env bash
# test-rados-serve.sh: a volume in a Ceph RADOS pool works as on a local
# pool, against a real single-node cluster (ceph-cluster.sh).  create,
# serve, writes over NBD (plain, FUA, trim, write-zeroes), a snapshot, more
# writes; then real clients: nbdinfo --map (base:allocation), nbdcopy and
# qemu-img compare of the snapshot's export and of the live volume against
# images computed here, independently of the server; diff lists exactly the
# chunks written after the snapshot.  Then kill -9 of the server and a
# restart on the same pool (once the dead server's claim of vm1 has lapsed):
# every flushed write and the snapshot read back exactly, and so does the
# diff.  Last, send/receive between the RADOS pool and a local one both
# ways, and an offline check of the RADOS pool.  Skipped (77) only when the Ceph packages are missing.
source "$(dirname "$0")/functions.sh"
requires nbdinfo --version
requires nbdcopy --version
requires qemu-img --version
requires $PY -c 'import nbd'

new_pool
start_ceph
export XDG_RUNTIME_DIR=$T/run # the run directory: sockets of rados: pools
export SNAPVOL_RADOS_CLAIM=5s
mkdir -p "$XDG_RUNTIME_DIR"
P=rados:blk
RUN=$XDG_RUNTIME_DIR/snapvol/rados:blk
WAIT_FOR="$RUN/nbd.sock $RUN/control.sock"
U=$(uri vm1 "$RUN/nbd.sock")
US=$(uri vm1@s1 "$RUN/nbd.sock")
M=1048576

sv create vm1 --size 64M --chunk-size 64K
sv list | grep -q '^vm1 ' || fail "vm1 not listed"
start_server
grep -q "serving pool rados:blk" "$SERVER_LOG" || fail "the server does not say it serves rados:blk"

# write URI EXPECT-FILE [python lines]: run h.* calls on the export and the
# same edits on a local image (v: a bytearray), then FLUSH.
write() {
	local u=$1 img=$2
	shift 2
	$PY - "$u" "$img" "$@" <<'EOF'
import nbd, os, sys
u, img, code = sys.argv[1], sys.argv[2], sys.argv[3]
M = 1 << 20
v = bytearray(open(img, 'rb').read()) if os.path.exists(img) else bytearray(64 * M)
h = nbd.NBD()
h.connect_uri(u)
def w(off, data, fua=False):
    h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
    v[off:off + len(data)] = data
def trim(off, n):
    h.trim(n, off)
    v[off:off + n] = bytes(n)
def zero(off, n):
    h.zero(n, off)
    v[off:off + n] = bytes(n)
exec(code)
h.flush()
h.shutdown()
open(img, 'wb').write(v)
EOF
}

# Before the snapshot: data across several 4 MiB RADOS objects, unaligned.
write "$U" "$T/s1.img" '
r = os.urandom(10 * M)
w(0, r[:6 * M])                       # objects 0-1
w(20 * M + 4096, r[6 * M:8 * M])      # object 5, unaligned
w(62 * M, r[8 * M:10 * M], fua=True)  # the last 2 MiB, FUA
trim(M, M)                            # a hole inside object 0
zero(5 * M, 4096)
'
sv snapshot create vm1@s1
cp "$T/s1.img" "$T/live.img"
# After it: first writes (the OSD clones the stripes they change), rewrites.
write "$U" "$T/live.img" '
w(0, b"\xa5" * 65536)                 # chunk 0
w(2 * M + 100, os.urandom(300000))    # chunks 32-36, unaligned
w(40 * M, os.urandom(M))              # in a hole of s1: chunks 640-655
zero(62 * M, 65536)                   # chunk 992
w(0, b"\x5a" * 512)                   # a rewrite: no new copy
'

check_all() { # WHEN
	assert_eq "live volume ($1)" "$(sha "$T/live.img")" "$(nbd_sha "$U")"
	assert_eq "snapshot s1 ($1)" "$(sha "$T/s1.img")" "$(nbd_sha "$US")"
	qemu-img compare -q -f raw -F raw "$T/s1.img" "$US" || fail "qemu-img compare s1 ($1)"
	qemu-img compare -q -f raw -F raw "$T/live.img" "$U" || fail "qemu-img compare vm1 ($1)"
	sv diff vm1@s1 vm1 --json >"$T/diff.json"
	$PY - "$T/diff.json" <<'EOF' || fail "diff vm1@s1 vm1 ($1)"
import json, sys
d = json.load(open(sys.argv[1]))
C = 65536
got = set()
for off, n in d["extents"]:
    got.update(range(off // C, (off + n) // C))
want = {0} | set(range(32, 37)) | set(range(640, 656)) | {992}
if got != want:
    print("diff: extra", sorted(got - want), "missing", sorted(want - got), file=sys.stderr)
    sys.exit(1)
EOF
}
check_all "served"

# The volume keeps its pre-images natively (the default): the OSD cloned the
# origin's stripes, no pre-image stripe exists, and snapshot list counts the
# 23 chunks changed since s1.
if rados -p blk ls | grep -q '/data/pre-'; then
	fail "pre-image stripes exist: the volume copied (native pre-images expected)"
fi
sv snapshot list vm1 --json >"$T/snaps.json"
$PY - "$T/snaps.json" <<'EOF' || fail "snapshot list space of s1: $(cat "$T/snaps.json")"
import json, sys
d = json.load(open(sys.argv[1]))
snaps = next(v for v in d.values() if isinstance(v, list)) if isinstance(d, dict) else d
s1 = next(s for s in snaps if s["name"] == "s1")
sys.exit(0 if s1["space"] == 23 * 65536 else 1)
EOF

# base:allocation: the hole of s1 at 10..20 MiB is a hole, 0..1 MiB data.
nbdinfo --map "$U" >"$T/map"
awk '$1 == 0 && $3 == 0 { ok = 1 } END { exit !ok }' "$T/map" || fail "no data at 0: $(cat "$T/map")"
awk -v a=$((10 * M)) '$1 <= a && $1 + $2 >= a + 10485760 && $3 == 3 { ok = 1 } END { exit !ok }' \
	"$T/map" || fail "10-20 MiB is not a hole: $(cat "$T/map")"
# nbdcopy of the snapshot's export, sparse.
nbdcopy "$US" "$T/copy.img"
cmp "$T/copy.img" "$T/s1.img" || fail "nbdcopy of vm1@s1 differs"

# kill -9: the dead server's claim holds vm1 until it lapses (5 s here);
# then a new server takes over with everything intact.
kill9_server
t0=$(date +%s%N)
for ((i = 0; ; i++)); do
	if "$SNAPVOL" --pool "$P" snapshot list vm1 >"$T/list.out" 2>"$T/list.err"; then
		break
	fi
	grep -q "claimed by snapvol pid" "$T/list.err" || fail "unexpected: $(cat "$T/list.err")"
	[ $i -lt 100 ] || fail "the dead server's claim did not lapse in 20 s"
	sleep 0.2
done
log "the dead server's claim lapsed after $((($(date +%s%N) - t0) / 1000000)) ms" \
	"(claim: $SNAPVOL_RADOS_CLAIM)"
start_server
check_all "after kill -9 and restart"
sv snapshot list vm1 | grep -q s1 || fail "s1 not listed after the restart"

# send/receive between a RADOS pool and a local one, both ways, through the
# server and then directly on the pool; check offline.
L=$T/local
sv send vm1@s1 >"$T/s1.stream"
"$SNAPVOL" --pool "$L" receive vm2 <"$T/s1.stream" >/dev/null
cmp <(head -c $((64 * M)) "$L/volumes/vm2/origin.raw") "$T/s1.img" ||
	fail "vm1@s1 sent from RADOS and received locally differs"
stop_server
"$SNAPVOL" --pool "$L" snapshot create vm2@r >/dev/null
"$SNAPVOL" --pool "$L" send vm2@r >"$T/r.stream"
sv receive vm3 <"$T/r.stream" >/dev/null
sv check >"$T/check.out" 2>&1 || fail "check of the RADOS pool: $(cat "$T/check.out")"
start_server
assert_eq "vm3 received into RADOS" "$(sha "$T/s1.img")" "$(nbd_sha "$(uri vm3 "$RUN/nbd.sock")")"
stop_server
log "ok"
