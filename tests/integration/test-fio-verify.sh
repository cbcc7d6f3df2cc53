#!/usr/bin/env bash
# test-fio-verify.sh: fio's nbd engine, 4 jobs = 4 connections, each with 16
# requests in flight, writes random blocks with crc32c verify headers and
# reads every one back and checks it; then a second fio run, on new
# connections, re-verifies all of it (the data outlived its connections),
# and a run with mixed block sizes (512 B .. 256 KiB) does the same.
source "$(dirname "$0")/functions.sh"
requires fio --enghelp=nbd

new_pool
sv create vm1 --size 256M
start_server
U=$(uri vm1)

# fio_run NAME ARGS...: run fio, fail on a non-zero exit or a verify error,
# print the number of bytes written+read.
fio_run() {
	local name=$1
	shift
	# (in $T: fio writes its verify state files in the current directory)
	if ! (cd "$T" && fio --name="$name" --ioengine=nbd --uri="$U" --output-format=json \
		--output="$T/$name.json" "$@" >"$T/$name.log" 2>&1); then
		cat "$T/$name.log" "$T/$name.json" >&2 || true
		fail "fio $name exited non-zero (verify failure or I/O error)"
	fi
	$PY - "$T/$name.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
errs = sum(j["error"] for j in d["jobs"])
if errs:
    sys.exit(f"fio reports error {errs}")
print(sum(j["write"]["io_bytes"] + j["read"]["io_bytes"] for j in d["jobs"]))
EOF
}

# 4 jobs, each on its own 32 MiB slice (so verify headers never collide).
common=(--numjobs=4 --size=32M --offset_increment=32M --iodepth=16
	--verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting=0)
n=$(fio_run randwrite --rw=randwrite --bs=4k "${common[@]}")
# 4 x 32 MiB written and 4 x 32 MiB read back for verify.
[ "$n" -ge $((4 * 32 * 2 * 1048576)) ] || fail "fio moved only $n bytes, expected 256 MiB"

# New connections, verify only: the data is all still there.
n=$(fio_run reverify --rw=randwrite --bs=4k --verify_only "${common[@]}")
[ "$n" -ge $((4 * 32 * 1048576)) ] || fail "fio verify_only read only $n bytes"

# Mixed sizes, unaligned to each other, in the second half of the volume.
n=$(fio_run mixed --rw=randwrite --bsrange=512-256k --offset=128M \
	--numjobs=4 --size=32M --offset_increment=32M --iodepth=16 \
	--verify=crc32c --verify_fatal=1 --do_verify=1)
[ "$n" -gt 0 ] || fail "mixed-size fio did nothing"

stop_server
