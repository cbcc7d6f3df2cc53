#!/usr/bin/env bash
# test-stop-reclaim.sh: "snapvol serve" stops within seconds of SIGTERM even
# when deleted snapshots' space is still being given back, and nothing is
# lost by it (issue 3: bench/cow.sh saw a server ignore SIGTERM for 30 s).
#
# Freeing a sparse file with thousands of scattered extents costs one
# synchronous discard per extent on an ext4 without a journal mounted with
# "discard" (about 1.3 ms each here, on a loop device), so the pool lives on
# such a filesystem, made here.  Two snapshots each get a pre-image of 8192
# scattered 4 KiB chunks; both are deleted, and the server is stopped at
# once: about 20 s of freeing is still queued.  Checks: the server exits
# within 10 s (the old code waited for the whole queue); what was left is
# in the pool's trash/ directory and no process holds the filesystem; a
# server started again right away serves the volume with its data, takes
# snapshots, and empties the trash by itself; a volume with a large
# pre-image is deleted without waiting for its space (into the trash, whole,
# which then empties); then the filesystem holds no more than the pool's
# files (the space did come back) and unmounts.
source "$(dirname "$0")/functions.sh"
requires_root
requires losetup --version
requires mkfs.ext4 -V
requires $PY -c 'import nbd'

new_pool
M=1048576
N=8192        # scattered chunks per pre-image
STRIDE=131072 # 128 KiB between them: no two share an extent
truncate -s 3G "$T/disk.img"
L=$(losetup -f --show "$T/disk.img") || skip "no loop device"
cleanup_fn losetup -d "$L"
mkfs.ext4 -q -F -O ^has_journal "$L"
mkdir "$T/mnt"
mount -o discard "$L" "$T/mnt" || skip "cannot mount ext4 with discard on $L"
# Lazy, in case a failed run left something holding it; the test itself
# unmounts it plainly at the end.
cleanup_fn umount -l "$T/mnt"
P=$T/mnt/pool

used_kib() { df --output=used -k "$T/mnt" | tail -n 1 | tr -d ' '; }

sv create vm1 --size 1G --chunk-size 4K
start_server
U=$(uri vm1)

# write_blocks BYTE: the N blocks, each filled with BYTE, QD 16.
write_blocks() {
	$PY - "$U" "$1" "$N" "$STRIDE" <<'EOF'
import sys, nbd
uri, byte, n, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
buf = nbd.Buffer.from_bytearray(bytearray([byte]) * 4096)
for i in range(n):
    while h.aio_in_flight() >= 16:
        h.poll(-1)
    h.aio_pwrite(buf, ((i * 7919) % n) * stride)  # scattered order
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
h.shutdown()
EOF
}

write_blocks 1 # the origin's data
for s in 1 2; do
	sv snapshot create "vm1@s$s" >/dev/null
	write_blocks $((1 + s)) # first writes: a pre-image of N scattered chunks
done
sv snapshot delete vm1@s1 >/dev/null
sv snapshot delete vm1@s2 >/dev/null

# Stop now, with the queue full.
pid=$SERVER_PID
SERVER_PID=
t0=$(date +%s%N)
kill -TERM "$pid"
for ((i = 0; i < 100; i++)); do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
	ps -L -o pid,lwp,stat,wchan:30,comm -p "$(awk '{print $1}' "/proc/$pid/task/$pid/children")" >&2 || true
	_kill_server "$pid"
	fail "server did not stop within 10 s of SIGTERM"
fi
rc=0
wait "$pid" || rc=$?
[ $rc -eq 0 ] || [ $rc -eq 143 ] || fail "server exit status $rc after SIGTERM"
log "stopped in $((($(date +%s%N) - t0) / 1000000)) ms"

# The rest is still in the pool's trash, durably: nobody else frees it.
trash_files=$(find "$P/trash" -type f 2>/dev/null | wc -l)
trash_kib=$(du -sk "$P/trash" 2>/dev/null | awk '{print $1}')
log "left in the trash: $trash_files files, ${trash_kib:-0} KiB"
[ "$trash_files" -gt 0 ] || fail "the trash is empty right after the stop (nothing left to free?)"
if command -v fuser >/dev/null; then # psmisc; the umount at the end checks it too
	others=$(fuser -m "$T/mnt" 2>/dev/null || true)
	[ -z "$others" ] || fail "processes still using the pool's filesystem after the stop: $others"
fi

# A server started again at once works (data, snapshots), and empties the
# trash by itself.
start_server
got=$($PY - "$U" "$N" "$STRIDE" <<'EOF'
import sys, nbd
uri, n, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
bad = sum(1 for i in range(0, n, 97) if h.pread(4096, i * stride) != bytes([3]) * 4096)
h.shutdown()
print(bad)
EOF
)
assert_eq "blocks not reading back after the restart" 0 "$got"
sv snapshot create vm1@after >/dev/null
sv snapshot delete vm1@after >/dev/null
t0=$(date +%s%N)
for ((i = 0; i < 1200; i++)); do
	[ -z "$(find "$P/trash" -type f 2>/dev/null)" ] && break
	sleep 0.1
done
[ -z "$(find "$P/trash" -type f 2>/dev/null)" ] || fail "the trash is not empty 120 s after the restart"
log "trash emptied $((($(date +%s%N) - t0) / 1000000)) ms after the restart's checks"

# Deleting a whole volume does not wait for its space either: the volume's
# directory moves to the trash in one rename (its name is free at once) and
# the server frees it in the background.
sv create vm2 --size 1G --chunk-size 4K
U=$(uri vm2)
write_blocks 1
sv snapshot create vm2@s >/dev/null
write_blocks 2 # a pre-image of N scattered chunks
t0=$(date +%s%N)
sv delete vm2 >/dev/null
log "delete of vm2 took $((($(date +%s%N) - t0) / 1000000)) ms"
[ ! -e "$P/volumes/vm2" ] || fail "vm2's directory is still there after its delete"
trash_files=$(find "$P/trash" -type f 2>/dev/null | wc -l)
trash_kib=$(du -sk "$P/trash" 2>/dev/null | awk '{print $1}')
log "in the trash right after the delete: $trash_files files, ${trash_kib:-0} KiB"
[ "$trash_files" -gt 0 ] || fail "the trash is empty right after the delete (freed inline?)"
sv create vm2 --size 1M # the name is free at once
for ((i = 0; i < 1200; i++)); do
	[ -z "$(find "$P/trash" -mindepth 1 2>/dev/null)" ] && break
	sleep 0.1
done
[ -z "$(find "$P/trash" -mindepth 1 2>/dev/null)" ] || fail "the trash is not empty 120 s after the delete"
log "trash emptied $((($(date +%s%N) - t0) / 1000000)) ms after the delete"
stop_server

# The space came back: the filesystem holds no more than the pool's own
# files (2 x 32 MiB of pre-images otherwise), and nothing keeps it busy.
sync
pool_kib=$(du -sk "$P" | awk '{print $1}')
held=$(($(used_kib) - pool_kib))
log "filesystem used $(used_kib) KiB, pool files $pool_kib KiB"
[ "$held" -lt $((16 * 1024)) ] || fail "$held KiB held outside the pool's files: space not given back"
umount "$T/mnt" || fail "cannot unmount the pool's filesystem after the stop"
log "ok"
