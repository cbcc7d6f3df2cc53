#!/usr/bin/env bash
# test-check.sh: "snapvol check" on a pool a real server wrote and a kill -9
# left behind.
#
#  - a pool after kill -9 of a server that made copies: check reports the
#    journal records not yet checkpointed (info), exits 0, and changes no
#    file; --repair checkpoints them; then nothing is found.
#  - a stray copy in a pre-image object and a pre-image object of no epoch:
#    warnings; --repair punches and removes them; the snapshot and the
#    volume read exactly as before (checksums over NBD).
#  - rotten volume.meta: an error naming the checksum, exit 1, even with
#    --repair, and the file is left as it was.
#  - while a server serves the pool: refused with a message, exit 1.
#  - a bad volume name: usage error, exit 2.
source "$(dirname "$0")/functions.sh"
requires nbdsh --version
requires nbdcopy --version

new_pool
sv create vm1 --size 8M >/dev/null
start_server
head -c $((8 << 20)) /dev/urandom >"$T/data"
nbdcopy "$T/data" "$(uri vm1)"
sv snapshot create vm1@a >/dev/null
nbdsh -u "$(uri vm1)" -c 'h.pwrite(b"x" * 65536, 1 << 20); h.flush()'
SNAP=$(nbd_sha "$(uri vm1@a)")
VOL=$(nbd_sha "$(uri vm1)")
kill9_server
cp -a "$P" "$T/pool-before"

out=$(sv check) || fail "check after kill -9 exited $?: $out"
log "$out"
echo "$out" | grep -q "records not yet in the checkpoint" || fail "no journal finding: $out"
diff -r "$P/volumes" "$T/pool-before/volumes" >/dev/null || fail "check without --repair changed a volume"
out=$(sv check --repair) || fail "check --repair exited $?: $out"
echo "$out" | grep -q "checkpointed \[repaired\]" || fail "journal not repaired: $out"
out=$(sv check) || fail "check after repair exited $?"
assert_eq "after repair" "pool $P: no problems found" "$out"

# A stray copy (a chunk no epoch records) and an orphan pre-image object.
pre=$(ls "$P/volumes/vm1/" | grep '^pre-' | head -1)
[ -n "$pre" ] || fail "no pre-image object"
printf 'junk%.0s' $(seq 1024) | dd of="$P/volumes/vm1/$pre" bs=4096 seek=1000 conv=notrunc 2>/dev/null
echo x >"$P/volumes/vm1/pre-999.raw"
sv check --json >"$T/check.json" || fail "check --json exited $?"
json_valid "$T/check.json" || fail "check --json: not JSON: $(cat "$T/check.json")"
n=$(grep -c '"severity": "warning"' "$T/check.json")
assert_eq "warnings" 2 "$n"
out=$(sv check vm1 --repair) || fail "check --repair exited $?: $out"
log "$out"
[ ! -e "$P/volumes/vm1/pre-999.raw" ] || fail "orphan pre-image object not removed"
assert_eq "after repair" "pool $P: no problems found" "$(sv check)"
start_server
assert_eq "snapshot after repair" "$SNAP" "$(nbd_sha "$(uri vm1@a)")"
assert_eq "volume after repair" "$VOL" "$(nbd_sha "$(uri vm1)")"

# Refused while served.
out=$(sv check 2>&1) && fail "check while served succeeded: $out"
echo "$out" | grep -q "stop the server first" || fail "unclear refusal: $out"
stop_server

# Rotten metadata: reported, never "repaired".
printf 'X' | dd of="$P/volumes/vm1/volume.meta" bs=1 seek=80 conv=notrunc 2>/dev/null
cp "$P/volumes/vm1/volume.meta" "$T/meta-rotten"
out=$(sv check --repair) && fail "check of rotten metadata exited 0: $out"
echo "$out" | grep -q "error: .*checksum" || fail "no checksum error: $out"
cmp -s "$P/volumes/vm1/volume.meta" "$T/meta-rotten" || fail "--repair touched volume.meta"

# Usage errors.
rc=0
sv check 'no/such' >/dev/null 2>&1 || rc=$?
assert_eq "bad name exit" 2 "$rc"
log "ok"
