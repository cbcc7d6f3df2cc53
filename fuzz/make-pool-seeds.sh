#!/bin/bash
# make-pool-seeds.sh: build fuzz/corpus/pool-load seeds from real pools.
#
# Usage: fuzz/make-pool-seeds.sh BUILD_DIR
#
# Runs "snapvol serve" on a scratch pool with a 1 MiB volume "v", writes to
# it with libnbd between snapshots, releases a range of one snapshot, and
# captures volume.meta, changed.meta, released.meta and the used part of
# journal.raw at several moments, including right after a kill -9 (so the
# journal holds records the checkpoint does not).  Each seed is the flags
# byte (3: let the harness fix checksums after mutation), then the four
# blobs separated by "\n==8<==\n" (see fuzz-pool-load.c).
set -euo pipefail
build=$(realpath "$1")
out=$(realpath "$(dirname "$0")")/corpus/pool-load
S=$build/cli/snapvol
tmp=$(mktemp -d /dev/shm/snapvol-seeds-XXXXXX)
trap 'pkill -9 -f "snapvol --pool $tmp/p serve" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$out"
p=$tmp/p
sep=$'\n==8<==\n'

capture() { # NAME
	local d=$p/volumes/v jlen
	# the journal's used part: records up to the first all-zero slot
	jlen=$(/usr/bin/python3 -c '
import os, sys
b = open(sys.argv[1], "rb").read(1 << 20) if os.path.exists(sys.argv[1]) else b""
n = 0
while n + 32 <= len(b) and b[n:n + 4] == b"SVJR":
    n += 32
print(n)' "$d/journal.raw")
	{
		printf '\003'
		cat "$d/volume.meta"; printf '%s' "$sep"
		[ -e "$d/changed.meta" ] && cat "$d/changed.meta"; printf '%s' "$sep"
		[ -e "$d/released.meta" ] && cat "$d/released.meta"; printf '%s' "$sep"
		[ "$jlen" = 0 ] || head -c "$jlen" "$d/journal.raw"
	} >"$out/$1"
}

serve() {
	setsid "$S" --pool "$p" serve >"$tmp/serve.log" 2>&1 </dev/null &
	for _ in $(seq 100); do [ -S "$p/nbd.sock" ] && return; sleep 0.05; done
	echo "server did not start" >&2; exit 1
}

write() { # OFFSETS...
	/usr/bin/python3 - "$p/nbd.sock" "$@" <<'PY'
import sys, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///v?socket=" + sys.argv[1])
for o in sys.argv[2:]:
    h.pwrite(bytes([int(o) % 251 + 1]) * 4096, int(o) * 4096)
h.flush()
h.shutdown()
PY
}

"$S" --pool "$p" create v --size 1M >/dev/null
capture fresh
"$S" --pool "$p" snapshot create v@a >/dev/null
capture one-snapshot
serve
write 0 1 2 7 100 200
"$S" --pool "$p" snapshot create v@b >/dev/null
write 1 2 3 50 51 52 53 255
"$S" --pool "$p" snapshot create v@c v@d >/dev/null 2>&1 || "$S" --pool "$p" snapshot create v@c >/dev/null
write 9 10 11 12 13
# kill -9: the journal now holds records the checkpoint does not
pkill -9 -f "snapvol --pool $p serve"; sleep 0.2
capture killed-with-journal
serve
/usr/bin/python3 - "$p/nbd.sock" <<'PY'
import sys, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///v@a?socket=" + sys.argv[1])
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
h.trim(65536, 0)
h.shutdown()
PY
write 20 21
"$S" --pool "$p" snapshot delete v@b >/dev/null
pkill -9 -f "snapvol --pool $p serve"; sleep 0.2
capture released-and-deleted
"$S" --pool "$p" snapshot list v >/dev/null # a clean open: replay and checkpoint
capture reopened
ls -l "$out"
