#!/bin/bash
# diff.sh: how fast snapvol lists changed extents (issue 5, "Measure").
#
# A 1 TiB sparse volume (4 KiB chunks: 268M of them) gets 1% of its chunks
# changed in scattered runs between two snapshots a and b (bench/diff.py
# mark: NBD TRIMs of 1-31 chunks, so nothing takes space), then the time to
# list those extents, REPS times each:
#   - snapvol diff vm1@a vm1@b --json   (the control command, paged, via the server)
#   - snapvol diff vm1@a vm1@b          (the same, printed as a table)
#   - nbdinfo --map=qemu:dirty-bitmap:a nbd+unix:///vm1@b
#   - a plain libnbd block-status loop on qemu:dirty-bitmap:a (bench/diff.py map)
#   - the same two on the live export vm1 (changed since a)
# Goal: each under 1 s.  Results: bench/results/diff-DATE.md (with this
# command line), also printed.
#
# Environment: SNAPVOL (default build-bench/cli/snapvol, else build/cli/snapvol),
# BENCH_TMPDIR (default /var/tmp), SIZE (1T), PERCENT (1), REPS (5), SEED (1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
SNAPVOL=${SNAPVOL:-$top/build-bench/cli/snapvol}
[ -x "$SNAPVOL" ] || SNAPVOL=$top/build/cli/snapvol
SIZE=${SIZE:-1T}
PERCENT=${PERCENT:-1}
REPS=${REPS:-5}
SEED=${SEED:-1}
export PATH=/usr/bin:$PATH # Debian's python3 has the nbd module
tmp=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/snapvol-bench-diff.XXXXXX")
pool=$tmp/pool
out=$here/results/diff-$(date +%Y-%m-%d-%H%M%S).md
srv=
cleanup() {
	[ -n "$srv" ] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

say() { echo "diff.sh: $*" >&2; }
# ms CMD...: run CMD with output discarded, print its wall time in ms
ms() {
	local t0 t1
	t0=$(date +%s%N)
	"$@" >/dev/null
	t1=$(date +%s%N)
	echo $(((t1 - t0) / 1000000))
}
# times CMD...: REPS runs, "best / median / worst" in ms (wall time of the
# whole process, start-up included)
times() {
	local r=() i
	for ((i = 0; i < REPS; i++)); do r+=("$(ms "$@")"); done
	printf '%s\n' "${r[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%d / %d / %d", a[1], a[int((NR+1)/2)], a[NR]}'
}

# cpu CMD...: run CMD once; "client C ms, server S ms" of CPU time (user +
# system; the server's from /proc, in clock ticks), which the machine's
# load does not inflate as it does wall time
cpu() {
	local a b c hz
	hz=$(getconf CLK_TCK)
	a=$(awk '{print $14 + $15}' "/proc/$srv/stat")
	/usr/bin/time -o "$tmp/time" -f '%U %S' "$@" >/dev/null 2>&1
	c=$(tail -1 "$tmp/time")
	b=$(awk '{print $14 + $15}' "/proc/$srv/stat")
	echo "$c" | awk -v s=$(((b - a) * 1000 / hz)) '{printf "client %d ms, server %d ms", ($1 + $2) * 1000, s}'
}

"$SNAPVOL" --pool "$pool" create vm1 --size "$SIZE" >/dev/null
"$SNAPVOL" --pool "$pool" serve 2>"$tmp/serve.log" &
srv=$!
for _ in $(seq 100); do [ -S "$pool/control.sock" ] && [ -S "$pool/nbd.sock" ] && break; sleep 0.1; done
sock=$pool/nbd.sock
size=$("$SNAPVOL" --pool "$pool" --json info vm1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
"$SNAPVOL" --pool "$pool" snapshot create vm1@a >/dev/null
say "marking $PERCENT% of the chunks of a $SIZE volume as changed..."
mark=$(python3 "$here/diff.py" mark "nbd+unix:///vm1?socket=$sock" "$size" 4096 "$PERCENT" "$SEED")
say "marked: $mark"
"$SNAPVOL" --pool "$pool" snapshot create vm1@b >/dev/null
summary=$("$SNAPVOL" --pool "$pool" diff vm1@a vm1@b --json |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["extent_count"], d["changed_bytes"])')
say "diff: extents and bytes: $summary"

say "timing..."
t_json=$(times "$SNAPVOL" --pool "$pool" diff vm1@a vm1@b --json)
t_table=$(times "$SNAPVOL" --pool "$pool" diff vm1@a vm1@b)
t_nbdinfo=$(times nbdinfo --map=qemu:dirty-bitmap:a "nbd+unix:///vm1@b?socket=$sock")
# the loop's own time (without Python's start-up), REPS runs
t_loop=$(for ((i = 0; i < REPS; i++)); do
	python3 "$here/diff.py" map "nbd+unix:///vm1@b?socket=$sock" qemu:dirty-bitmap:a
done | python3 -c 'import json,sys; t=sorted(int(json.loads(l)["seconds"]*1000) for l in sys.stdin); print(f"{t[0]} / {t[(len(t)-1)//2]} / {t[-1]}")')
loop=$(python3 "$here/diff.py" map "nbd+unix:///vm1@b?socket=$sock" qemu:dirty-bitmap:a)
t_live_nbdinfo=$(times nbdinfo --map=qemu:dirty-bitmap:a "nbd+unix:///vm1?socket=$sock")
t_live_diff=$(times "$SNAPVOL" --pool "$pool" diff vm1@a vm1 --json)
c_json=$(cpu "$SNAPVOL" --pool "$pool" diff vm1@a vm1@b --json)
c_table=$(cpu "$SNAPVOL" --pool "$pool" diff vm1@a vm1@b)
c_nbdinfo=$(cpu nbdinfo --map=qemu:dirty-bitmap:a "nbd+unix:///vm1@b?socket=$sock")
c_loop=$(cpu python3 "$here/diff.py" map "nbd+unix:///vm1@b?socket=$sock" qemu:dirty-bitmap:a)
c_live_nbdinfo=$(cpu nbdinfo --map=qemu:dirty-bitmap:a "nbd+unix:///vm1?socket=$sock")
c_live_diff=$(cpu "$SNAPVOL" --pool "$pool" diff vm1@a vm1 --json)
load=$(cut -d' ' -f1-3 /proc/loadavg)
n_nbdinfo=$(nbdinfo --map=qemu:dirty-bitmap:a "nbd+unix:///vm1@b?socket=$sock" | awk '$3 == 1' | wc -l)
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$srv/status")

{
	echo "# snapvol: listing changed extents of a $SIZE volume"
	echo
	echo "Command: \`$(basename "$0")\` with SIZE=$SIZE PERCENT=$PERCENT REPS=$REPS SEED=$SEED"
	echo "($(date -u +%FT%TZ), $(nproc) cores, $(uname -r), snapvol $("$SNAPVOL" --version | head -1),"
	echo "$(nbdinfo --version | head -1), pool on $(df -T "$tmp" | awk 'NR==2 {print $2}'))."
	echo
	echo "Volume: $SIZE, 4 KiB chunks; changed between vm1@a and vm1@b: $mark"
	echo "(NBD TRIMs of 1-31 chunks at random places). \`snapvol diff\` reports"
	echo "$(echo "$summary" | awk '{print $1}') extents, $(echo "$summary" | awk '{print $2}') bytes;"
	echo "nbdinfo $n_nbdinfo dirty extents; the libnbd loop: $loop."
	echo "Server peak RSS: $rss."
	echo
	echo "Load average at the end: $load on $(nproc) cores (wall times grow with it; CPU"
	echo "times do not)."
	echo
	echo "| what | wall ms: best / median / worst of $REPS | CPU of one run | goal |"
	echo "|---|---|---|---|"
	echo "| \`snapvol diff vm1@a vm1@b --json\` | $t_json | $c_json | < 1000 |"
	echo "| \`snapvol diff vm1@a vm1@b\` (table) | $t_table | $c_table | < 1000 |"
	echo "| \`nbdinfo --map=qemu:dirty-bitmap:a\` on vm1@b | $t_nbdinfo | $c_nbdinfo | < 1000 |"
	echo "| libnbd block-status loop on vm1@b (bench/diff.py map; wall: the loop, not Python's start-up) | $t_loop | $c_loop (with start-up) | < 1000 |"
	echo "| \`nbdinfo --map=qemu:dirty-bitmap:a\` on vm1 (live) | $t_live_nbdinfo | $c_live_nbdinfo | < 1000 |"
	echo "| \`snapvol diff vm1@a vm1 --json\` (live) | $t_live_diff | $c_live_diff | < 1000 |"
} | tee "$out"
say "wrote $out"
