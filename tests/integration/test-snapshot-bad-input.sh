#!/usr/bin/env bash
# test-snapshot-bad-input.sh: every bad snapshot request gets a clear error,
# a non-zero exit, and changes nothing.
#
#  - "snapshot create" with a bad name ('/', '..', a leading '.' or '-',
#    control characters, '@@', '@' inside, empty, 65 bytes, a space), a
#    missing volume, an existing snapshot, a group naming one volume twice,
#    a group in which one member fails (missing volume, existing name):
#    through the CLI (which parses names itself), through "snapvol call"
#    (the server's own checks, JSON strings that no shell would pass), and
#    with no server running (the CLI on the pool directly).  After each,
#    "snapshot list" of both volumes is unchanged.
#  - a 64-byte name is accepted (the limit is exact).
#  - delete and rollback of a missing snapshot, of a missing volume, of a
#    name without '@'.
#  - delete of a snapshot exported to a connected client is refused with
#    "in use", and works once the client is gone.
#  - WRITE and WRITE_ZEROES to VOL@SNAP over NBD (sent by libnbd with its
#    client-side checks off) fail with EPERM, the connection stays usable,
#    and neither the snapshot nor the volume changes.
source "$(dirname "$0")/functions.sh"
requires nbdsh --version
requires nbdcopy --version

new_pool
sv create vm1 --size 16M >/dev/null
sv create vm2 --size 16M >/dev/null
start_server
head -c $((4 << 20)) /dev/urandom >"$T/data"
nbdcopy "$T/data" "$(uri vm1)"
sv snapshot create vm1@base vm2@base >/dev/null
nbdsh -u "$(uri vm1)" -c 'h.pwrite(b"after base" * 1000, 4096); h.flush()'

# listing: both volumes' snapshot lists (names, epochs, times, state).
listing() {
	sv snapshot list vm1 || fail "snapshot list vm1 failed"
	sv snapshot list vm2 || fail "snapshot list vm2 failed"
}
BEFORE=$(listing)
log "snapshots: $(echo $BEFORE)"

# expect_fail PATTERN CMD...: CMD exits non-zero, prints something that
# matches the extended regex PATTERN on stderr, and the snapshot lists of
# both volumes are unchanged.
expect_fail() {
	local pat=$1 rc=0
	shift
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	[ $rc -ne 0 ] || fail "$(printf '%q ' "$@"): succeeded, should have failed"
	grep -Eq -- "$pat" "$T/err" ||
		fail "$(printf '%q ' "$@"): error does not match /$pat/: $(cat "$T/err")"
	[ "$(listing)" = "$BEFORE" ] ||
		fail "$(printf '%q ' "$@"): snapshot list changed: $(listing)"
}

# json_call COMMAND PYTHON-EXPR: snapvol call COMMAND with the JSON of a
# Python expression (so any string, control characters included, is sent).
json_call() {
	sv call "$1" "$($PY -c 'import json,sys; print(json.dumps(eval(sys.argv[1])))' "$2")"
}

LONG65=$(printf 'x%.0s' {1..65})
LONG64=$(printf 'y%.0s' {1..64})

# name|pattern: bad snapshot specs for vm1, and the error each must give.
BAD_NAMES=(
	"vm1@a/b|may not contain '/'"
	"vm1@..|may not start with '\\.'"
	"vm1@../x|may not (start with '\\.'|contain '/')"
	"vm1@.hidden|may not start with '\\.'"
	"vm1@-x|may not start with '-'"
	"vm1@@x|may not contain '@'"
	"vm1@a@b|may not contain '@'"
	"vm1@|snapshot name is empty"
	"@x|volume name is empty"
	"vm1|names no snapshot"
	"vm1@$LONG65|longer than 64"
	"vm1@a b|may not contain ' '"
	"vm1/x@a|volume name may not contain '/'"
)

check_bad_names() { # MODE: cli | call
	local entry spec pat
	for entry in "${BAD_NAMES[@]}"; do
		spec=${entry%%|*} pat=${entry#*|}
		if [ "$1" = cli ]; then
			expect_fail "$pat" sv snapshot create "$spec"
		else
			expect_fail "$pat" json_call snapshot-create "{'snapshots': ['$spec']}"
		fi
	done
	# Control characters (through the shell for the CLI, JSON for the server).
	if [ "$1" = cli ]; then
		expect_fail "control character 0x01" sv snapshot create $'vm1@a\x01b'
		expect_fail "control character 0x0a" sv snapshot create $'vm1@a\nb'
		expect_fail "control character 0x1b" sv snapshot create $'vm1@\e[31m'
		expect_fail "control character 0x7f" sv snapshot create $'vm1@a\x7f'
	else
		expect_fail "control character 0x01" json_call snapshot-create "{'snapshots': ['vm1@a\\x01b']}"
		expect_fail "control character 0x0a" json_call snapshot-create "{'snapshots': ['vm1@a\\nb']}"
		expect_fail "control character 0x09" json_call snapshot-create "{'snapshots': ['vm1@a\\tb']}"
		expect_fail "control character 0x7f" json_call snapshot-create "{'snapshots': ['vm1@a\\x7f']}"
		expect_fail "(JSONError|NUL|\\\\u0000|invalid)" json_call snapshot-create "{'snapshots': ['vm1@a\\x00b']}"
		expect_fail "(not valid UTF-8|may not contain|allowed)" json_call snapshot-create "{'snapshots': ['vm1@caf\\u00e9']}"
		expect_fail "no snapshot named|empty|at least one" json_call snapshot-create "{'snapshots': []}"
		expect_fail "EINVAL|type|string" json_call snapshot-create "{'snapshots': [42]}"
	fi
	# Missing volume, existing snapshot, groups.
	expect_fail "volume nosuch does not exist" sv snapshot create nosuch@x
	expect_fail "snapshot vm1@base already exists" sv snapshot create vm1@base
	expect_fail "appears twice" sv snapshot create vm1@g1 vm1@g2
	expect_fail "appears twice" sv snapshot create vm1@g1 vm1@g1
	expect_fail "appears twice" sv snapshot create vm1@g1 vm2@g1 vm1@g3
	expect_fail "volume nosuch does not exist" sv snapshot create vm1@g1 nosuch@g1
	expect_fail "volume nosuch does not exist" sv snapshot create nosuch@g1 vm2@g1
	expect_fail "snapshot vm2@base already exists" sv snapshot create vm1@g1 vm2@base
	expect_fail "snapshot vm1@base already exists" sv snapshot create vm1@base vm2@g1
	expect_fail "longer than 64" sv snapshot create vm1@g1 "vm2@$LONG65"
	expect_fail "may not contain '/'" sv snapshot create vm1@g1 vm2@a/b
	# Delete and rollback of what is not there.
	expect_fail "snapshot vm1@nosuch does not exist" sv snapshot delete vm1@nosuch
	expect_fail "snapshot vm1@nosuch does not exist" sv snapshot rollback vm1@nosuch
	expect_fail "volume nosuch does not exist" sv snapshot delete nosuch@base
	expect_fail "volume nosuch does not exist" sv snapshot rollback nosuch@base
	expect_fail "names no snapshot" sv snapshot delete vm1
	expect_fail "names no snapshot" sv snapshot rollback vm1
	expect_fail "may not (contain '/'|start with '\\.')" sv snapshot delete vm1@../base
	expect_fail "volume nosuch does not exist" sv snapshot list nosuch
}

check_bad_names cli
check_bad_names call

# The exact limit: 64 bytes is a valid name.
sv snapshot create "vm1@$LONG64" >/dev/null || fail "a 64-byte snapshot name was refused"
sv snapshot delete "vm1@$LONG64" >/dev/null || fail "deleting the 64-byte snapshot failed"
[ "$(listing)" = "$BEFORE" ] || fail "snapshot list changed: $(listing)"

# ---- delete of an exported snapshot ----
SNAP_SHA=$(nbd_sha "$(uri vm1@base)")
VOL_SHA=$(nbd_sha "$(uri vm1)")
cmp <(nbdcopy "$(uri vm1@base)" -) <(head -c $((16 << 20)) <(cat "$T/data" /dev/zero)) ||
	fail "vm1@base does not hold the data written before it"

# A client holds vm1@base open (it waits for the file "go" to exist).
nbdsh -u "$(uri vm1@base)" -c "
import os, time
h.pread(4096, 0)
open('$T/connected', 'w').close()
while not os.path.exists('$T/go'):
    time.sleep(0.05)
h.pread(4096, 0)
" >"$T/holder.log" 2>&1 &
HOLDER=$!
kill_quietly() { kill "$1" 2>/dev/null || true; }
cleanup_fn kill_quietly $HOLDER
for ((i = 0; i < 200; i++)); do [ -e "$T/connected" ] && break; sleep 0.05; done
[ -e "$T/connected" ] || fail "the client did not connect to vm1@base"
expect_fail "in use" sv snapshot delete vm1@base
expect_fail "in use" json_call snapshot-delete "{'snapshot': 'vm1@base'}"

# ---- writes to the snapshot's export ----
$PY - "$(uri vm1@base)" <<'EOF' || fail "writes to the snapshot export"
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)     # send what the read-only flag forbids: the server must refuse
h.connect_uri(sys.argv[1])
assert h.is_read_only(), "the snapshot export is not advertised read-only"
before = h.pread(65536, 0)
cases = [
    ("write", lambda: h.pwrite(b"\xee" * 4096, 0)),
    ("unaligned write", lambda: h.pwrite(b"\xee" * 100, 5)),
    ("write with FUA", lambda: h.pwrite(b"\xee" * 4096, 8192, nbd.CMD_FLAG_FUA)),
    ("write-zeroes", lambda: h.zero(65536, 0)),
    ("write-zeroes NO_HOLE", lambda: h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE)),
]
for name, f in cases:
    try:
        f()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, f"{name}: errno {e.errnum} ({e}), expected EPERM"
    else:
        sys.exit(f"{name} to the snapshot export succeeded")
    # the connection stays usable
    assert h.pread(65536, 0) == before, f"the snapshot changed after a refused {name}"
h.flush()
h.shutdown()
EOF
touch "$T/go"
wait $HOLDER || fail "the client holding vm1@base failed: $(cat "$T/holder.log")"
assert_eq "vm1@base after refused writes" "$SNAP_SHA" "$(nbd_sha "$(uri vm1@base)")"
assert_eq "vm1 after refused writes to its snapshot" "$VOL_SHA" "$(nbd_sha "$(uri vm1)")"

# Now that nobody holds it, it can go (delete, after waiting for the
# server to see the client's disconnect).
for ((i = 0; i < 50; i++)); do
	sv --json snapshot list vm1 >"$T/l.json"
	[ "$(json_get "$T/l.json" open_views)" = 0 ] && break
	sleep 0.1
done
BEFORE=$(listing)

# ---- the same bad input with no server: the CLI works on the pool ----
stop_server
check_bad_names cli
sv snapshot delete vm1@base >/dev/null || fail "deleting vm1@base with no server failed"
sv --json snapshot list vm1 >"$T/l.json"
json_find "$T/l.json" name base && fail "vm1@base still listed after delete"
log "ok"
