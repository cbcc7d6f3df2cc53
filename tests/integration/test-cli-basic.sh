#!/usr/bin/env bash
# test-cli-basic.sh: the CLI on a pool, both ways it works: directly on the
# pool (no server, under the pool lock) and through a running server's
# control socket.  create / list / info / delete, their --json output, and
# every bad name, size and chunk size: each refused with a non-zero exit
# and a message that says what is wrong, leaving no file behind.  Also:
# global options after the subcommand and $SNAPVOL_POOL; a volume in use
# cannot be deleted; a second server on the same pool is refused and the
# first one keeps working; sockets are private (0600).
source "$(dirname "$0")/functions.sh"
requires $PY -c 'import json'
requires nbdinfo --version

new_pool
S=$T/scratch   # this script's own files
mkdir -p "$S"

# tree: every file of the pool and around it (T), sorted; logs and the
# script's scratch files excluded.
# (Not the pool's trash: deleted volumes are freed there in the background.)
tree() {
	(cd "$T" && find . -mindepth 1 ! -path './scratch*' ! -path './pool/trash/*' ! -name '*.log' |
		sort)
}

# expect_fail REGEX CMD...: CMD exits non-zero, not by a signal, within
# 30 s, and prints on stderr a message matching REGEX (grep -Ei).
expect_fail() {
	local re=$1 rc
	shift
	if [ "$1" = sv ]; then
		shift
		set -- "$SNAPVOL" --pool "$P" "$@"
	fi
	set +e
	timeout 30 "$@" >"$S/out.txt" 2>"$S/err.txt" </dev/null
	rc=$?
	set -e
	local desc
	desc=$(printf '%q ' "${@:4}")
	[ $rc -ne 0 ] || fail "succeeded, should have failed: $desc"
	[ $rc -ne 124 ] || fail "did not finish in 30 s: $desc"
	[ $rc -lt 128 ] || fail "died of signal $((rc - 128)): $desc: $(cat "$S/err.txt")"
	[ -s "$S/err.txt" ] || fail "failed ($rc) without a message on stderr: $desc"
	grep -Eqi -- "$re" "$S/err.txt" ||
		fail "message does not match /$re/: $desc: $(cat "$S/err.txt")"
	[ "$(wc -l <"$S/err.txt")" -le 5 ] || fail "message longer than 5 lines: $desc"
}

# volume_names: the names "list --json" reports, sorted, one line.
volume_names() {
	sv list --json >"$S/list.json"
	$PY -c 'import json, sys
d = json.load(open(sys.argv[1]))
vols = d["volumes"] if isinstance(d, dict) else d
print(" ".join(sorted(v["name"] for v in vols)))' "$S/list.json"
}

BAD_NAMES=("a/b" ".." "." "x@y" $'a\x01b' $'a\nb' $'a\x7fb' "" \
	"$(printf 'a%.0s' {1..65})" "../x" "/abs" "a b" "-x" ".hidden" "é")
BAD_SIZES=("12X" "0" "-1" "abc" "1.5G" "513" "" "18446744073709551616" "99999999999999999999K"
	"16E" "1G1" "1GG" "1 G")
BAD_CHUNKS=("2K" "2M" "3K" "0" "1023" "abc" "4097" "-4K")

# bad_input_battery MODE: every bad create/delete/info, then check that
# nothing changed on disk and the good volume is intact.
bad_input_battery() {
	local mode=$1 before n s c
	before=$(tree)
	for n in "${BAD_NAMES[@]}"; do
		expect_fail 'name|character|invalid|long|empty|must|option' sv create "$n" --size 1M
		[ -z "$n" ] || expect_fail 'name|character|invalid|long|must|no such|not found|exist|option' sv delete "$n"
		[ -z "$n" ] || expect_fail 'name|character|invalid|long|must|no such|not found|exist|option' sv info "$n"
	done
	for s in "${BAD_SIZES[@]}"; do
		expect_fail 'size|number|invalid|multiple|large|zero|suffix' sv create vbad --size "$s"
	done
	for c in "${BAD_CHUNKS[@]}"; do
		expect_fail 'chunk|size|power|invalid' sv create vbad --size 1M --chunk-size "$c"
	done
	expect_fail 'size|required|missing' sv create vbad
	expect_fail 'exist' sv create good --size 2M
	expect_fail 'no such|not found|exist' sv delete nosuch
	expect_fail 'no such|not found|exist' sv info nosuch
	expect_fail 'unknown|unrecognized|invalid|option' sv create vbad --size 1M --bogus
	expect_fail 'unknown|unrecognized|invalid|command' sv frobnicate
	assert_eq "pool files after bad input ($mode)" "$before" "$(tree)"
	assert_eq "volumes after bad input ($mode)" "good" "$(volume_names)"
	assert_eq "size of 'good' after bad input ($mode)" 1048576 "$(json_get_info good size)"
}

json_get_info() { # NAME KEY...
	local n=$1
	shift
	sv info "$n" --json >"$S/info.json"
	json_get "$S/info.json" "$@"
}

# lifecycle MODE: create (with chunk sizes), list, info, delete, --json.
lifecycle() {
	local mode=$1
	sv create vm1 --size 1G >"$S/out.txt"
	[ -s "$S/out.txt" ] || fail "create printed nothing ($mode)"
	sv create vm2 --size 64M --chunk-size 64K
	sv create "$(printf 'b%.0s' {1..64})" --size 4K   # 64 characters: the maximum
	sv create a.b_c+d:e-1 --size 1M --chunk-size 1M
	assert_eq "list ($mode)" "a.b_c+d:e-1 $(printf 'b%.0s' {1..64}) good vm1 vm2" "$(volume_names)"
	[ -f "$(origin vm1)" ] || fail "no raw file at $(origin vm1) ($mode)"
	assert_eq "raw file size ($mode)" 1073741824 "$(stat -c %s "$(origin vm1)")"
	[ "$(stat -c %b "$(origin vm1)")" -lt 1024 ] || fail "new 1G volume is not sparse ($mode)"
	assert_eq "info size ($mode)" 1073741824 "$(json_get_info vm1 size)"
	assert_eq "info chunk size default ($mode)" 4096 "$(json_get_info vm1 chunk_size chunk-size)"
	assert_eq "info chunk size 64K ($mode)" 65536 "$(json_get_info vm2 chunk_size chunk-size)"
	assert_eq "info chunk size 1M ($mode)" 1048576 "$(json_get_info a.b_c+d:e-1 chunk_size chunk-size)"
	assert_eq "info name ($mode)" '"vm2"' "$(json_get_info vm2 name)"
	sv info vm1 >"$S/info.txt"
	grep -q vm1 "$S/info.txt" || fail "info (text) does not name vm1 ($mode)"
	grep -Eq '1073741824|1 ?GiB|1\.0 ?G|\b1G\b' "$S/info.txt" ||
		fail "info (text) does not show the size ($mode): $(cat "$S/info.txt")"
	sv list >"$S/list.txt"
	grep -q vm2 "$S/list.txt" || fail "list (text) does not show vm2 ($mode)"
	sv list --json >"$S/l.json"
	json_valid "$S/l.json" || fail "list --json is not JSON ($mode)"
	sv delete a.b_c+d:e-1
	sv delete "$(printf 'b%.0s' {1..64})"
	[ ! -e "$P/volumes/a.b_c+d:e-1" ] || fail "delete left the volume's directory ($mode)"
	assert_eq "list after delete ($mode)" "good vm1 vm2" "$(volume_names)"
	sv delete vm1
	sv delete vm2
}

# ======== without a server ========
sv create good --size 1M
[ -d "$P" ] || fail "create did not create the pool directory"
sv list --json >"$S/l.json"
json_valid "$S/l.json" || fail "list --json is not JSON"
lifecycle direct
bad_input_battery direct

# Global options after the subcommand, and $SNAPVOL_POOL.
"$SNAPVOL" list --pool "$P" | grep -q good || fail "'list --pool P' (option after command)"
SNAPVOL_POOL=$P "$SNAPVOL" list | grep -q good || fail "\$SNAPVOL_POOL not used"
(cd "$T" && SNAPVOL_POOL='' "$SNAPVOL" list --pool pool | grep -q good) || fail "relative --pool"

# serve refuses bad options before touching anything.
for bad in "--min-block-size 3" "--min-block-size 128K" "--min-block-size abc" \
	"--threads abc" "--threads -1" "--bogus"; do
	# shellcheck disable=SC2086
	expect_fail 'size|block|thread|number|invalid|power|unknown|option' sv serve $bad
done
[ ! -S "$P/nbd.sock" ] || fail "a refused serve left nbd.sock"
sv list >/dev/null || fail "a refused serve left the pool locked"

# ======== with a server ========
start_server
for s in "$P/nbd.sock" "$P/control.sock"; do
	assert_eq "mode of $(basename "$s")" 600 "$(stat -c %a "$s")"
done
assert_eq "volume created before serve is served" 1048576 "$(nbdinfo --size "$(uri good)")"
lifecycle server
bad_input_battery server

# A volume created through the server is served at once.
sv create live --size 8M
assert_eq "size of a volume created while serving" 8388608 "$(nbdinfo --size "$(uri live)")"

# Delete and re-create under the same name while serving: the old export is
# gone, and the new volume is empty (no stale data from a cached file).
sv create reuse --size 4M
nbdsh -u "$(uri reuse)" -c "h.pwrite(b'\xab' * 4096 * 16, 0); h.flush()"
sv delete reuse
set +e
nbdinfo --size "$(uri reuse)" >/dev/null 2>"$S/err.txt"
rc=$?
set -e
[ $rc -ne 0 ] || fail "deleted volume still served"
sv create reuse --size 2M
assert_eq "size of the re-created volume" 2097152 "$(nbdinfo --size "$(uri reuse)")"
nbdsh -u "$(uri reuse)" -c "assert h.pread(65536, 0) == bytes(65536)" ||
	fail "re-created volume shows the deleted volume's data"
sv delete reuse

# A volume too large for the filesystem (ext4: 16 TiB per file) fails
# cleanly; where the filesystem allows it, it simply works.
before=$(tree)
if sv create huge --size 17T --chunk-size 1M >/dev/null 2>"$S/err.txt"; then
	assert_eq "size of a 17 TiB volume" $((17 << 40)) "$(nbdinfo --size "$(uri huge)")"
	sv delete huge
else
	[ -s "$S/err.txt" ] || fail "failed 17T create printed nothing"
	log "17 TiB create refused: $(head -1 "$S/err.txt")"
fi
assert_eq "pool files after a 17 TiB create" "$before" "$(tree)"

# status
sv status --json >"$S/status.json"
json_valid "$S/status.json" || fail "status --json is not JSON"
sv status >"$S/status.txt"
grep -q live "$S/status.txt" || fail "status does not list the volumes: $(cat "$S/status.txt")"

# A volume with an open NBD connection cannot be deleted; afterwards it can.
$PY - "$(uri live)" "$S/holding" <<'EOF' &
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
for _ in range(300):
    if not os.path.exists(sys.argv[2]):
        break
    time.sleep(0.1)
h.shutdown()
EOF
holder=$!
for ((i = 0; i < 100; i++)); do [ -e "$S/holding" ] && break; sleep 0.1; done
[ -e "$S/holding" ] || fail "libnbd client could not connect to 'live'"
expect_fail 'busy|open|in use|connect' sv delete live
[ -f "$(origin live)" ] || fail "refused delete removed the raw file"
rm -f "$S/holding"
wait $holder
sv delete live || fail "delete after the client disconnected"

# A second server on the same pool: refused, with a message; the first
# keeps serving and keeps its sockets.
expect_fail 'lock|in use|already|another|running|busy|held' \
	sv serve --socket "$S/second.sock" --control "$S/second-ctl.sock"
expect_fail 'lock|in use|already|another|running|busy|held|exist' sv serve
{ [ -S "$P/nbd.sock" ] && [ -S "$P/control.sock" ]; } || fail "second server removed the first's sockets"
assert_eq "first server after a second was refused" 1048576 "$(nbdinfo --size "$(uri good)")"
sv list >/dev/null || fail "control socket dead after a second server was refused"

stop_server
[ ! -e "$P/nbd.sock" ] || fail "nbd.sock left behind after a clean stop"
[ ! -e "$P/control.sock" ] || fail "control.sock left behind after a clean stop"

# Back to direct mode: what was done through the server is on disk.
assert_eq "volumes after the server stopped" "good" "$(volume_names)"
