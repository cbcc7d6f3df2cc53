#!/usr/bin/env bash
# test-nbdinfo.sh: what nbdinfo sees of a pool: the export list, each
# export's size and capabilities, and base:allocation extents that match
# exactly what was written (data), trimmed (hole) and never touched (hole).
source "$(dirname "$0")/functions.sh"
requires nbdinfo --version
requires nbdsh --version
requires $PY -c 'import nbd'

new_pool
sv create vm1 --size 1G
sv create vm2 --size 64M
start_server

# --- the list shows both volumes, and nothing else that is not a volume ---
nbdinfo --list --json "nbd+unix:///?socket=$P/nbd.sock" >"$T/list.json"
names=$($PY -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(" ".join(sorted(e["export-name"] for e in d["exports"])))' "$T/list.json")
assert_eq "exports listed by nbdinfo --list" "vm1 vm2" "$names"
nbdinfo --list "nbd+unix:///?socket=$P/nbd.sock" >"$T/list.txt"
grep -q 'vm1' "$T/list.txt" || fail "nbdinfo --list (text) does not show vm1"

# --- size and flags ---
assert_eq "size of vm1" 1073741824 "$(nbdinfo --size "$(uri vm1)")"
assert_eq "size of vm2" 67108864 "$(nbdinfo --size "$(uri vm2)")"
nbdinfo --json "$(uri vm1)" >"$T/info.json"
$PY - "$T/info.json" <<'EOF' || fail "nbdinfo --json: wrong capabilities (see above)"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
want = {"is_read_only": False, "can_flush": True, "can_fua": True,
        "can_trim": True, "can_zero": True, "can_multi_conn": True,
        "export-size": 1073741824}
bad = [f"{k}: want {v!r}, got {e.get(k)!r}" for k, v in want.items() if e.get(k) != v]
if "base:allocation" not in e.get("contexts", []):
    bad.append(f"contexts: base:allocation missing from {e.get('contexts')}")
# NBD_INFO_BLOCK_SIZE and NBD_INFO_DESCRIPTION are required by the issue.
for k in ("block_size_minimum", "block_size_preferred", "block_size_maximum"):
    if k not in e:
        bad.append(f"{k} missing (server sent no NBD_INFO_BLOCK_SIZE)")
if "block_size_maximum" in e and e["block_size_maximum"] < 1048576:
    bad.append(f"block_size_maximum {e['block_size_maximum']} < 1 MiB")
if not e.get("description"):
    bad.append("description missing or empty (no NBD_INFO_DESCRIPTION)")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# --- extents ---
# map URI: "offset length type" lines, adjacent extents of one type merged.
map() {
	nbdinfo --map --json "$1" | $PY -c 'import json, sys
m = []
for e in json.load(sys.stdin):
    if m and m[-1][2] == e["type"] and m[-1][0] + m[-1][1] == e["offset"]:
        m[-1][1] += e["length"]
    else:
        m.append([e["offset"], e["length"], e["type"]])
for o, l, t in m:
    print(o, l, t)'
}
check_map() { # WHAT EXPECTED-LINES
	local got
	got=$(map "$(uri vm1)")
	if [ "$got" != "$2" ]; then
		echo "expected:" >&2; echo "$2" >&2
		echo "got:" >&2; echo "$got" >&2
		fail "nbdinfo --map after $1"
	fi
}
M=1048576
check_map "nothing written" "0 1073741824 3"

# Writes at 64 KiB-aligned places (any fs block size divides them).
nbdsh -u "$(uri vm1)" -c "
h.pwrite(b'\xaa' * 65536, $M)
h.pwrite(b'\x55' * (2 * $M), 100 * $M)
h.pwrite(b'\x01' * 65536, 1024 * $M - 65536, nbd.CMD_FLAG_FUA)
h.flush()
"
check_map "three writes" "0 $M 3
$M 65536 0
$((M + 65536)) $((99 * M - 65536)) 3
$((100 * M)) $((2 * M)) 0
$((102 * M)) $((922 * M - 65536)) 3
$((1024 * M - 65536)) 65536 0"

# A trim punches a hole: the first MiB of the 2 MiB range becomes a hole.
nbdsh -u "$(uri vm1)" -c "h.trim($M, 100 * $M); h.flush()"
check_map "trim" "0 $M 3
$M 65536 0
$((M + 65536)) $((100 * M - 65536)) 3
$((101 * M)) $M 0
$((102 * M)) $((922 * M - 65536)) 3
$((1024 * M - 65536)) 65536 0"

# The trimmed range reads as zeros, the rest as written.
nbdsh -u "$(uri vm1)" -c "
assert h.pread($M, 100 * $M) == bytes($M)
assert h.pread($M, 101 * $M) == b'\x55' * $M
assert h.pread(65536, $M) == b'\xaa' * 65536
" || fail "contents after trim"

# Write-zeroes reads back as zeros and is reported as reading as zeros
# (type 2 or 3), whether or not the server punched a hole.
nbdsh --base-allocation -u "$(uri vm1)" -c "
h.zero(65536, $M)
assert h.pread(65536, $M) == bytes(65536)
ok = []
def cb(meta, off, ents, err):
    ok.append(ents)
h.block_status(65536, $M, cb)
ents = ok[0]
assert ents[0] >= 65536 and ents[1] & 2, ents
" || fail "write-zeroes: data not zero or not reported as zero"

# vm2 untouched by all this.
assert_eq "vm2 map" "0 67108864 3" "$(map "$(uri vm2)")"

# Write-zeroes honours NO_HOLE: with it the range stays (or becomes)
# allocated in the raw file; without it the range is punched.  Measured on
# the raw file's block count, since SEEK_DATA may call unwritten extents
# holes either way.
blocks() { stat -c %b "$(origin vm2)"; }
b0=$(blocks)
nbdsh -u "$(uri vm2)" -c "h.zero(8 * $M, 16 * $M, nbd.CMD_FLAG_NO_HOLE)"
b1=$(blocks)
[ $(((b1 - b0) * 512)) -ge $((8 * M)) ] ||
	fail "write-zeroes with NO_HOLE of 8 MiB allocated only $(((b1 - b0) * 512)) bytes"
nbdsh -u "$(uri vm2)" -c "h.zero(8 * $M, 16 * $M)"
b2=$(blocks)
[ $(((b1 - b2) * 512)) -ge $((8 * M)) ] ||
	fail "write-zeroes without NO_HOLE freed only $(((b1 - b2) * 512)) of 8 MiB"
nbdsh -u "$(uri vm2)" -c "assert h.pread(8 * $M, 16 * $M) == bytes(8 * $M)" ||
	fail "zeroed range does not read as zeros"
# FAST_ZERO, if advertised: succeeds (and zeroes) or fails with ENOTSUP
# without touching the data.
nbdsh -u "$(uri vm2)" -c "
if h.can_fast_zero():
    h.pwrite(b'\x33' * $M, 30 * $M)
    try:
        h.zero($M, 30 * $M, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
        assert h.pread($M, 30 * $M) == bytes($M), 'FAST_ZERO succeeded but data not zero'
    except nbd.Error as e:
        assert e.errnum == 95, f'FAST_ZERO failed with {e.errno}, not ENOTSUP'
        assert h.pread($M, 30 * $M) == b'\x33' * $M, 'failed FAST_ZERO changed data'
" || fail "FAST_ZERO"

# Offsets far beyond 4 GiB: a sparse 15 TiB volume.
sv create big --size 15T
B=$((15 * 1024 * 1024 * M))
assert_eq "size of a 15 TiB volume" $B "$(nbdinfo --size "$(uri big)")"
nbdsh -u "$(uri big)" -c "
h.pwrite(b'\xee' * 65536, $B - 65536)
h.pwrite(b'\xdd' * 65536, (1 << 32) + 65536)
assert h.pread(65536, $B - 65536) == b'\xee' * 65536
assert h.pread(65536, (1 << 32) + 65536) == b'\xdd' * 65536
assert h.pread(65536, 1 << 32) == bytes(65536)
" || fail "I/O beyond 4 GiB on a 15 TiB volume"
assert_eq "map of the 15 TiB volume" "0 $(((1 << 32) + 65536)) 3
$(((1 << 32) + 65536)) 65536 0
$(((1 << 32) + 131072)) $((B - 65536 - (1 << 32) - 131072)) 3
$((B - 65536)) 65536 0" "$(map "$(uri big)")"

stop_server
