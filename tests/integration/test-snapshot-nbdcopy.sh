#!/usr/bin/env bash
# test-snapshot-nbdcopy.sh: snapshots as real clients see them.
#
# A volume is filled with random data through nbdcopy and a copy of it is
# recorded (nbdcopy of the export to a file).  Then, several times: take a
# snapshot, overwrite parts of the volume with four different clients
# (nbdsh: unaligned writes, trim, write-zeroes; nbdcopy: a whole range;
# qemu-io: pattern writes; qemu-img convert -n: the first 512 KiB),
# applying the same changes to a local model file.  After every step:
#   - nbdcopy of every VOL@SNAP equals the copy recorded when it was taken
#     (cmp), and "qemu-img compare" of the snapshot export against that copy
#     passes (and fails against a different copy: the check is not vacuous);
#   - the live volume equals the model (it has the new data).
# Then the middle snapshot is deleted and the others still compare equal,
# the server is restarted and they still do, and a rollback makes the live
# volume equal the rolled-back snapshot while the other snapshots stay
# intact.
source "$(dirname "$0")/functions.sh"
requires nbdcopy --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires cmp --version

SIZE_MB=24
SIZE=$((SIZE_MB * 1048576))
new_pool
sv create vm1 --size ${SIZE_MB}M >/dev/null
start_server
mkdir -p "$T/copies"

# ---- helpers ----

# record FILE: nbdcopy of the live volume into FILE, which must equal the
# model (the live volume has exactly the data written so far).
record() {
	nbdcopy "$(uri vm1)" "$1"
	cmp "$1" "$T/model" || fail "live volume differs from the model"
}

# check_snap SNAP COPY: the snapshot export reads exactly as COPY, through
# nbdcopy and through qemu-img compare.
check_snap() {
	local snap=$1 copy=$2 out=$T/read.img
	rm -f "$out"
	nbdcopy "$(uri "vm1@$snap")" "$out" || fail "nbdcopy of vm1@$snap failed"
	cmp "$out" "$copy" || fail "nbdcopy of vm1@$snap differs from the copy recorded at its creation"
	qemu-img compare -q -f raw -F raw "$copy" "$(uri "vm1@$snap")" ||
		fail "qemu-img compare: vm1@$snap differs from $copy"
	rm -f "$out"
}

# must_differ SNAP COPY: qemu-img compare says they differ (exit 1).
must_differ() {
	local rc=0
	qemu-img compare -q -f raw -F raw "$2" "$(uri "vm1@$1")" || rc=$?
	assert_eq "qemu-img compare of vm1@$1 against $(basename "$2")" 1 "$rc"
}

# Changes, each applied to the volume by a client and to the model by dd.
# model_write OFF FILE: FILE's bytes at OFF in the model.
model_write() {
	dd if="$2" of="$T/model" bs=1M seek="$1" oflag=seek_bytes conv=notrunc status=none
}
model_zero() { # OFF LEN
	head -c "$2" /dev/zero >"$T/z"
	model_write "$1" "$T/z"
}

# nbdsh_write OFF LEN: LEN random bytes at OFF (any alignment) with nbdsh.
nbdsh_write() {
	head -c "$2" /dev/urandom >"$T/w"
	nbdsh -u "$(uri vm1)" -c "
h.pwrite(open('$T/w', 'rb').read(), $1)
h.flush()
"
	model_write "$1" "$T/w"
}

# nbdsh_trim OFF LEN / nbdsh_zero OFF LEN: trim and write-zeroes read back
# as zeros (the server punches holes).
nbdsh_trim() {
	nbdsh -u "$(uri vm1)" -c "h.trim($2, $1); h.flush()"
	model_zero "$1" "$2"
}
nbdsh_zero() {
	nbdsh -u "$(uri vm1)" -c "h.zero($2, $1); h.flush()"
	model_zero "$1" "$2"
}

# nbdcopy_range OFF LEN: LEN random bytes written at OFF by nbdcopy (through
# nbdkit's offset filter over the export).
nbdcopy_range() {
	head -c "$2" /dev/urandom >"$T/r"
	nbdcopy -- "$T/r" [ nbdkit --filter=offset nbd socket="$P/nbd.sock" export=vm1 \
		offset="$1" range="$2" ]
	model_write "$1" "$T/r"
}

# qemu_write OFF LEN BYTE: qemu-io writes the pattern BYTE.
qemu_write() {
	qemu-io -f raw -c "write -P $3 $1 $2" -c flush "$(uri vm1)" >/dev/null
	head -c "$2" /dev/zero | tr '\0' "\\$(printf '%03o' "$3")" >"$T/q"
	model_write "$1" "$T/q"
}

# qemu_img_head LEN: LEN random bytes at offset 0 by "qemu-img convert -n"
# (it writes the source's length over the start of the larger export).
qemu_img_head() {
	head -c "$1" /dev/urandom >"$T/h"
	qemu-img convert -n -f raw -O raw "$T/h" "$(uri vm1)"
	model_write 0 "$T/h"
}

requires nbdkit --filter=offset null --version

# ---- fill with random data, record it ----
head -c $SIZE /dev/urandom >"$T/model"
nbdcopy "$T/model" "$(uri vm1)"
record "$T/copies/s1.img"
sv snapshot create vm1@s1 >/dev/null
check_snap s1 "$T/copies/s1.img"

# ---- overwrite parts after s1 ----
nbdsh_write 1000 5000               # unaligned, across two chunks
nbdsh_write $((3 << 20)) $((1 << 20))
nbdcopy_range $((5 << 20)) $((2 << 20))
qemu_write $((9 << 20)) 65536 171
nbdsh_trim $((12 << 20)) $((1 << 20))
nbdsh_zero $((14 << 20)) 8192
nbdsh_write $((SIZE - 700)) 700     # the last bytes
cmp -s "$T/model" "$T/copies/s1.img" && fail "the model did not change"
record "$T/copies/s2.img"
check_snap s1 "$T/copies/s1.img"
must_differ s1 "$T/copies/s2.img"

# ---- a chain: s2, s3, s4, each followed by changes ----
sv snapshot create vm1@s2 >/dev/null
nbdsh_write $((3 << 20)) 4096       # chunks s1 and s2 need different pre-images of
nbdsh_write $((20 << 20)) $((2 << 20))
qemu_write 0 $((1 << 20)) 90
nbdsh_trim $((5 << 20)) 65536
record "$T/copies/s3.img"

sv snapshot create vm1@s3 >/dev/null
nbdcopy_range $((2 << 20)) $((4 << 20))
nbdsh_zero $((20 << 20)) $((1 << 20))
nbdsh_write 1 1
qemu_img_head $((512 << 10))
record "$T/copies/s4.img"

sv snapshot create vm1@s4 >/dev/null
qemu_write $((16 << 20)) $((3 << 20)) 7
nbdsh_write $((12 << 20)) 12345     # over the hole trimmed before s2
record "$T/copies/live.img"

for s in s1 s2 s3 s4; do check_snap $s "$T/copies/$s.img"; done
must_differ s3 "$T/copies/s2.img"
must_differ s4 "$T/copies/live.img"

sv --json info vm1 >"$T/info.json"
copies=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["cow"]["copies"])' "$T/info.json")
[ "$copies" -gt 0 ] || fail "info reports no copies after overwriting snapshotted data"
log "cow: $(json_get "$T/info.json" cow)"

# ---- delete the middle one ----
sv snapshot delete vm1@s2 >/dev/null
sv --json snapshot list vm1 >"$T/list.json"
json_find "$T/list.json" name s2 && fail "s2 still listed after delete"
for s in s1 s3 s4; do check_snap $s "$T/copies/$s.img"; done
cmp <(nbdcopy "$(uri vm1)" -) "$T/model" || fail "live volume changed by the delete"
if nbdcopy "$(uri vm1@s2)" "$T/gone.img" 2>/dev/null; then
	fail "vm1@s2 still exported after delete"
fi

# ---- restart: everything reads the same ----
stop_server
start_server
for s in s1 s3 s4; do check_snap $s "$T/copies/$s.img"; done
cmp <(nbdcopy "$(uri vm1)" -) "$T/model" || fail "live volume differs after restart"

# ---- roll back to s3 ----
sv snapshot rollback vm1@s3 >/dev/null
cmp <(nbdcopy "$(uri vm1)" -) "$T/copies/s3.img" || fail "live volume != s3 after rollback"
qemu-img compare -q -f raw -F raw "$T/copies/s3.img" "$(uri vm1)" ||
	fail "qemu-img compare: live volume != s3 after rollback"
for s in s1 s3 s4; do check_snap $s "$T/copies/$s.img"; done
# Writes after the rollback go to the volume and spare the snapshots.
cp "$T/copies/s3.img" "$T/model"
nbdsh_write $((7 << 20)) 100000
record "$T/copies/after.img"
for s in s1 s3 s4; do check_snap $s "$T/copies/$s.img"; done

# ...and after a restart.
stop_server
start_server
cmp <(nbdcopy "$(uri vm1)" -) "$T/model" || fail "live volume differs after rollback and restart"
for s in s1 s3 s4; do check_snap $s "$T/copies/$s.img"; done

stop_server
log "ok"
