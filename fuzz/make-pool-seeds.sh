#!/bin/bash
# make-pool-seeds.sh: build fuzz/corpus/pool-load seeds from real pools.
#
# Usage: fuzz/make-pool-seeds.sh BUILD_DIR
#
# Runs "snapvol serve" on a scratch pool with a 1 MiB volume "v", writes to
# it with libnbd between snapshots, releases a range of one snapshot, and
# captures volume.meta, changed.meta, released.meta and the used parts of
# journal.raw and prelog.raw (the pre-image log) at several moments,
# including right after a kill -9 (so the log holds blocks the checkpoint
# does not).  Each seed is the flags byte (7: let the harness fix checksums
# and log blocks after mutation), then the five blobs separated by
# "\n==8<==\n" (see fuzz-pool-load.c).
set -euo pipefail
build=$(realpath "$1")
out=$(realpath "$(dirname "$0")")/corpus/pool-load
S=$build/cli/snapvol
tmp=$(mktemp -d /dev/shm/snapvol-seeds-XXXXXX)
pid=
trap '[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$out"
p=$tmp/p
sep=$'\n==8<==\n'

capture() { # NAME
	local d=$p/volumes/v jlen llen
	# the journal's used part: records up to the first all-zero slot
	jlen=$(/usr/bin/python3 -c '
import os, sys
b = open(sys.argv[1], "rb").read(1 << 20) if os.path.exists(sys.argv[1]) else b""
n = 0
while n + 32 <= len(b) and b[n:n + 4] == b"SVJR":
    n += 32
print(n)' "$d/journal.raw")
	# the log's used part: from 0 to its first hole (checkpoints punch it)
	llen=$(/usr/bin/python3 -c '
import os, sys
if not os.path.exists(sys.argv[1]):
    print(0); sys.exit()
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    print(min(os.lseek(fd, 0, os.SEEK_HOLE), 1 << 20))
except OSError:
    print(0)' "$d/prelog.raw")
	{
		printf '\007'
		cat "$d/volume.meta"; printf '%s' "$sep"
		[ -e "$d/changed.meta" ] && cat "$d/changed.meta"; printf '%s' "$sep"
		[ -e "$d/released.meta" ] && cat "$d/released.meta"; printf '%s' "$sep"
		[ "$jlen" = 0 ] || head -c "$jlen" "$d/journal.raw"; printf '%s' "$sep"
		[ "$llen" = 0 ] || head -c "$llen" "$d/prelog.raw"
	} >"$out/$1"
}

serve() {
	setsid "$S" --pool "$p" serve >"$tmp/serve.log" 2>&1 </dev/null &
	pid=$!
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
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=; rm -f "$p/nbd.sock" "$p/ctl.sock"
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
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=; rm -f "$p/nbd.sock" "$p/ctl.sock"
capture released-and-deleted
"$S" --pool "$p" snapshot list v >/dev/null # a clean open: replay and checkpoint
capture reopened
ls -l "$out"
