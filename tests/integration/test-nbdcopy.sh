#!/usr/bin/env bash
# test-nbdcopy.sh: nbdcopy round trips.  A file of random data goes into a
# volume and back out unchanged (checksums), the volume's raw file equals it
# byte for byte, and a sparse image stays sparse both ways: the holes of the
# source are neither allocated in the volume nor in the copy back out
# (which needs base:allocation and trimming/zeroing without allocating).
# All of it twice: with the default server, and with "--no-sendfile
# --threads 1" (reads copied through memory, one request at a time).
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires nbdinfo --version

new_pool
M=1048576
sv create dense --size 32M
sv create sparse --size 128M
head -c $((32 * M)) /dev/urandom >"$T/dense.in"
truncate -s $((128 * M)) "$T/sparse.in"
dd if=/dev/urandom of="$T/sparse.in" bs=$M seek=0 count=1 conv=notrunc status=none
dd if=/dev/urandom of="$T/sparse.in" bs=$M seek=50 count=4 conv=notrunc status=none
dd if=/dev/urandom of="$T/sparse.in" bs=$M seek=124 count=4 conv=notrunc status=none

round_trips() {
rm -f "$T/dense.out" "$T/sparse.out"
# --- dense: 32 MiB of random data ---
nbdcopy "$T/dense.in" "$(uri dense)"
nbdcopy "$(uri dense)" "$T/dense.out"
assert_eq "checksum after round trip" "$(sha "$T/dense.in")" "$(sha "$T/dense.out")"
# The volume's data is the raw file itself.
cmp "$T/dense.in" "$(origin dense)" || fail "origin.raw differs from what was copied in"
# Streaming through a pipe (nbdcopy to stdout) reads the same bytes.
assert_eq "checksum read as a stream" "$(sha "$T/dense.in")" "$(nbd_sha "$(uri dense)")"

# --- sparse: 128 MiB with 3 data ranges (9 MiB), the rest holes ---
# Make the volume dirty first, so that copying the holes in must clear data.
nbdcopy "$T/dense.in" "$(uri sparse)"
nbdcopy "$T/sparse.in" "$(uri sparse)"
nbdcopy "$(uri sparse)" "$T/sparse.out"
assert_eq "checksum of sparse round trip" "$(sha "$T/sparse.in")" "$(sha "$T/sparse.out")"
cmp "$T/sparse.in" "$(origin sparse)" || fail "sparse origin.raw differs from the source"

# The holes read as zero in base:allocation (type 2 or 3); the data ranges as data.
nbdinfo --map --json "$(uri sparse)" >"$T/map.json"
$PY - "$T/map.json" <<'EOF' || fail "base:allocation of the sparse volume is wrong"
import json, sys
M = 1 << 20
data = [(0, M), (50 * M, 4 * M), (124 * M, 4 * M)]
ext = json.load(open(sys.argv[1]))
def covered(lo, hi, pred):
    for e in ext:
        a, b = e["offset"], e["offset"] + e["length"]
        if a < hi and b > lo and not pred(e["type"]):
            return e
    return None
bad = []
for lo, n in data:
    e = covered(lo, lo + n, lambda t: not (t & 2))
    if e:
        bad.append(f"data range {lo}+{n} reported as zero: {e}")
for lo, hi in [(M, 50 * M), (54 * M, 124 * M)]:
    e = covered(lo, hi, lambda t: t & 2)
    if e:
        bad.append(f"hole range {lo}..{hi} not reported as zero: {e}")
print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# Allocation: the volume holds about 9 MiB, not 128 MiB, and so does the
# copy back out (nbdcopy skips what base:allocation calls holes).
alloc_mib() { echo $(($(stat -c '%b * %B' "$1") / M)); }
a=$(alloc_mib "$(origin sparse)")
[ "$a" -le 24 ] || fail "sparse volume has $a MiB allocated after a copy of 9 MiB of data (holes were written as data)"
a=$(alloc_mib "$T/sparse.out")
[ "$a" -le 24 ] || fail "copy out of the sparse volume has $a MiB allocated (holes not reported)"

# Only the intended volume changed.
cmp "$T/dense.in" "$(origin dense)" || fail "volume 'dense' changed by writes to 'sparse'"
}

start_server
round_trips
stop_server
# Make the volumes differ from the sources again, then the other server.
start_server --no-sendfile --threads 1
head -c $((32 * M)) /dev/urandom | nbdcopy - "$(uri dense)"
cmp -s "$T/dense.in" "$(origin dense)" && fail "volume 'dense' not overwritten"
nbdcopy --allocated "$T/dense.in" "$(uri sparse)"
round_trips
stop_server
