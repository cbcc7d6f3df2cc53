#!/usr/bin/env bash
# test-restart.sh: a crash loses no flushed write.  Write data (plain writes,
# a FUA write, a trim, a write-zeroes), FLUSH, kill -9 the server, start it
# again on the same pool: the volume reads back exactly as before the kill,
# its metadata (size, chunk size) is intact, and the stale sockets and lock
# of the dead server do not stop the new one.  Then the same with writes in
# flight at the moment of the kill: the flushed part is intact.
source "$(dirname "$0")/functions.sh"
requires nbdsh --version
requires nbdcopy --version
requires $PY -c 'import nbd'

new_pool
M=1048576
sv create vm1 --size 64M --chunk-size 64K
sv info vm1 --json >"$T/info-before.json"
start_server
U=$(uri vm1)

head -c $((8 * M)) /dev/urandom >"$T/rand"
nbdsh -u "$U" -c "
data = open('$T/rand', 'rb').read()
h.pwrite(data[:4*$M], 0)                      # 0..4 MiB
h.pwrite(data[4*$M:6*$M], 20*$M)              # 20..22 MiB
h.pwrite(data[6*$M:8*$M], 62*$M, nbd.CMD_FLAG_FUA)  # last 2 MiB, FUA
h.trim($M, $M)                                # 1..2 MiB back to zeros
h.zero(4096, 20*$M + 4096)                    # a 4 KiB hole in the middle
h.pwrite(b'\x5a' * 512, 30*$M + 512)          # a sub-chunk write
h.flush()
"
before=$(nbd_sha "$U")
# What the kill must not lose, computed independently of the server:
$PY - "$T/rand" "$T/expect" <<'EOF'
import sys
M = 1 << 20
d = open(sys.argv[1], 'rb').read()
v = bytearray(64 * M)
v[0:4*M] = d[:4*M]; v[20*M:22*M] = d[4*M:6*M]; v[62*M:64*M] = d[6*M:8*M]
v[M:2*M] = bytes(M); v[20*M+4096:20*M+8192] = bytes(4096)
v[30*M+512:30*M+1024] = b'\x5a' * 512
open(sys.argv[2], 'wb').write(v)
EOF
assert_eq "contents before the kill" "$(sha "$T/expect")" "$before"

kill9_server
# The dead server's socket files may still be there: the new server must
# replace them (they are stale), not refuse to start.
start_server
assert_eq "contents after kill -9 and restart" "$before" "$(nbd_sha "$U")"
assert_eq "origin.raw after restart" "$before" "$(sha "$(origin vm1)")"
sv info vm1 --json >"$T/info-after.json"
for keys in "size" "chunk_size chunk-size chunkSize"; do
	a=$(json_get "$T/info-before.json" $keys)
	b=$(json_get "$T/info-after.json" $keys)
	[ -n "$a" ] || fail "info --json has none of: $keys"
	assert_eq "info --json $keys across the crash" "$a" "$b"
done
assert_eq "size in info --json" 67108864 "$(json_get "$T/info-after.json" size)"
assert_eq "chunk size in info --json" 65536 "$(json_get "$T/info-after.json" chunk_size chunk-size chunkSize)"

# Writes in flight at the kill: flushed data at 0..4 MiB stays intact.
nbdsh -u "$U" -c "h.pwrite(b'\x77' * $M, 40 * $M); h.flush()"
first4=$(nbd_sha_range "$U" 0 $((4 * M)))
$PY - "$U" <<'EOF' &
import nbd, sys, os
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(1 << 20)))
# Keep 32 writes in flight over 8..40 MiB until the server dies.
try:
    for i in range(1000000):
        while h.aio_in_flight() >= 32:
            h.poll(-1)
        h.aio_pwrite(buf, (8 << 20) + (i % 32) * (1 << 20))
except nbd.Error:
    pass
EOF
writer=$!
sleep 1
kill9_server
wait $writer || true
start_server
assert_eq "flushed 0..4 MiB after a kill with writes in flight" "$first4" \
	"$(nbd_sha_range "$U" 0 $((4 * M)))"
nbdsh -u "$U" -c "assert h.pread($M, 40 * $M) == b'\x77' * $M" ||
	fail "flushed write at 40 MiB lost"

# SIGTERM with writes in flight and a client connected: the server stops
# within the time stop_server allows, exits cleanly, and the flushed data
# is intact after the next start.
$PY - "$U" <<'EOF' &
import nbd, sys, os
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(1 << 20)))
try:
    for i in range(1000000):
        while h.aio_in_flight() >= 32:
            h.poll(-1)
        h.aio_pwrite(buf, (8 << 20) + (i % 32) * (1 << 20))
except nbd.Error:
    pass
EOF
writer=$!
sleep 1
stop_server
wait $writer || true
start_server
assert_eq "flushed 0..4 MiB after SIGTERM with writes in flight" "$first4" \
	"$(nbd_sha_range "$U" 0 $((4 * M)))"

stop_server
# With no server, the CLI works on the pool directly and sees the volume.
sv list | grep -q vm1 || fail "list without a server does not show vm1 after the crashes"
