#!/usr/bin/env bash
# test-qemu-img.sh: qemu's NBD client.  "qemu-img convert -n" of a qcow2
# image into a volume, "qemu-img compare" against the source (and that
# compare does notice a one-byte change), "qemu-img map" reporting the
# source's data and holes, "qemu-img info" the size.
source "$(dirname "$0")/functions.sh"
requires qemu-img --version

new_pool
M=1048576
sv create vm1 --size 64M
start_server
U=$(uri vm1)

# A sparse raw image with data at 2..5 MiB and 40..41 MiB, turned into qcow2
# so that qemu-img really converts formats on the way in.
truncate -s $((64 * M)) "$T/src.raw"
dd if=/dev/urandom of="$T/src.raw" bs=$M seek=2 count=3 conv=notrunc status=none
dd if=/dev/urandom of="$T/src.raw" bs=$M seek=40 count=1 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"

qemu-img convert -q -n -f qcow2 -O raw "$T/src.qcow2" "$U" ||
	fail "qemu-img convert -n into the volume"
qemu-img compare -q -f qcow2 -F raw "$T/src.qcow2" "$U" ||
	fail "qemu-img compare: volume differs from the source after convert"
qemu-img compare -q -s -f raw -F raw "$T/src.raw" "$U" ||
	fail "qemu-img compare -s (strict, same size) against the raw source"
cmp "$T/src.raw" "$(origin vm1)" || fail "origin.raw differs from the source"

# info: size and format as seen through NBD.
qemu-img info --output=json "$U" >"$T/info.json"
json_find "$T/info.json" virtual-size 67108864 || fail "qemu-img info: virtual-size is not 64 MiB"

# map: exactly the data ranges are data, the rest reads as zeros.
qemu-img map --output=json "$U" >"$T/map.json"
$PY - "$T/map.json" <<'EOF' || fail "qemu-img map does not match the source's layout"
import json, sys
M = 1 << 20
m = json.load(open(sys.argv[1]))
want_data = [(2 * M, 5 * M), (40 * M, 41 * M)]
# Merge adjacent entries of the same kind, then compare exactly.
got = []
for e in m:
    kind = (e["data"], e["zero"])
    if got and got[-1][2] == kind and got[-1][1] == e["start"]:
        got[-1][1] = e["start"] + e["length"]
    else:
        got.append([e["start"], e["start"] + e["length"], kind])
data = [(a, b) for a, b, k in got if k[0]]
zero_ok = all(k[1] for a, b, k in got if not k[0])
end = got[-1][1] if got else 0
err = []
if data != want_data:
    err.append(f"data ranges {data}, want {want_data}")
if not zero_ok:
    err.append(f"some non-data range not reported as zero: {got}")
if end != 64 * M or got[0][0] != 0:
    err.append(f"map does not cover 0..64 MiB: {got}")
print("\n".join(err), file=sys.stderr)
sys.exit(1 if err else 0)
EOF

# compare must be able to fail: change one byte through NBD and it differs.
nbdsh -u "$U" -c "h.pwrite(b'X', 41 * $M - 1)"
if qemu-img compare -q -f qcow2 -F raw "$T/src.qcow2" "$U"; then
	fail "qemu-img compare says identical after a byte was changed"
fi

# And back: convert the volume out to qcow2; it equals the modified volume.
qemu-img convert -q -f raw -O qcow2 "$U" "$T/out.qcow2"
qemu-img compare -q -f qcow2 -F raw "$T/out.qcow2" "$U" ||
	fail "qemu-img convert out of the volume"

stop_server
