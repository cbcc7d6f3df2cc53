# fsfreeze-functions.sh: what the test-fsfreeze-*.sh tests share (sourced
# after functions.sh, never run).
#
# Filesystems on volumes come from stack-functions.sh (nbdfuse + loop, and
# their teardown order).
#
# "Is it frozen?" is never asked with a write in the foreground: probe_write
# starts a touch in the background and measures when it finishes.

requires_root
requires fsfreeze --version

source "$(dirname "${BASH_SOURCE[0]}")/stack-functions.sh"

# fs_new_pool: new_pool, with the stacks torn down before $T is removed.
fs_new_pool() {
	new_pool
	cleanup_fn teardown_all
}

# probe_write DIR: seconds (e.g. 0.012) a touch of a new file in DIR takes,
# waiting at most 10 s; "timeout" if it is still blocked then (the caller
# must thaw).  The touch runs in the background: a writer on a frozen
# filesystem cannot be killed.
probe_write() {
	local f=$1/.probe.$RANDOM t0 i
	t0=$(date +%s%N)
	touch "$f" &
	local p=$!
	for ((i = 0; i < 2000; i++)); do
		if ! kill -0 $p 2>/dev/null; then
			wait $p
			echo "$(((($(date +%s%N) - t0) / 1000000)))"
			rm -f "$f"
			return 0
		fi
		sleep 0.005
	done
	echo timeout
}

# is_frozen DIR: true if a write to DIR is still blocked after 0.3 s (the
# touch left behind finishes at the thaw).
is_frozen() {
	touch "$1/.frozen-probe.$RANDOM" &
	local p=$!
	sleep 0.3
	kill -0 $p 2>/dev/null
}

# fio_load DIR SECONDS: a 4 KiB random-write load inside the filesystem, in
# the background, over 8 files that are allocated as they are written
# (metadata transactions), with an fsync every 64 writes.  Sets FIO_PID.
fio_load() {
	fio --name=load --directory="$1" --rw=randwrite --bs=4k --size=16M --nrfiles=8 \
		--file_service_type=random --ioengine=psync --fsync=64 --time_based \
		--runtime="$2" --fallocate=none --output="$T/fio.out" >/dev/null 2>&1 &
	FIO_PID=$!
	cleanup_fn stop_fio
}

stop_fio() {
	kill "$FIO_PID" 2>/dev/null || true
	wait "$FIO_PID" 2>/dev/null || true
}

# snap_consistency VOL SNAP: "frozen" or "crash", from the server.
snap_consistency() {
	sv --json snapshot list "$1" | $PY -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    if s["name"] == sys.argv[1]:
        print(s["consistency"])' "$2"
}

# jget FILE EXPR: a value from a JSON file, EXPR on "d" in Python.
jget() {
	$PY -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
