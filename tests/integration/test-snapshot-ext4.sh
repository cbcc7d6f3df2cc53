#!/usr/bin/env bash
# test-snapshot-ext4.sh: a crash-consistent snapshot of a mounted ext4.
#
# ext4 on the volume through nbdfuse + a loop device (direct I/O); files
# written, sync, snapshot taken while the filesystem stays mounted; then
# more files written, some of the first ones deleted and some rewritten.
# The snapshot is then mounted read-only through its own nbdfuse + loop
# ("-o ro,noload": a crash-consistent copy may hold an unreplayed journal,
# and a read-only device cannot replay it) next to the live filesystem, and
# must show exactly the files that existed at the snapshot, with their
# checksums, and none of the later ones.  The live filesystem shows the
# later state.  A second snapshot is taken after an unmount (a clean
# filesystem: e2fsck -fn must pass on its export) and checked the same way.
#
# Teardown order matters (TESTING-NOTES.md): for each stack umount,
# losetup -d, fusermount3 -u, kill nbdfuse; the server last.  If the server
# died under a mount, the FUSE connection is aborted so umount cannot hang.
source "$(dirname "$0")/functions.sh"
requires_root
requires mkfs.ext4 -V
requires e2fsck -V
source "$(dirname "$0")/stack-functions.sh"

new_pool
sv create vm1 --size 256M >/dev/null
start_server

# nbdfuse + loop stacks, by name: live, snap1, snap2
cleanup_fn teardown_all

# sums DIR OUT: "sha256  ./path" for every file under DIR, sorted.
sums() {
	(cd "$1" && find . -path ./lost+found -prune -o -type f -print0 | sort -z |
		xargs -0 -r sha256sum) >"$2"
}

# ---- ext4 on the live volume ----
stack_up live vm1
mkfs.ext4 -q -F "${S_LOOP[live]}"
mount_stack live
M=${S_MNT[live]}

mkdir -p "$M/dir/sub"
for i in $(seq 1 40); do
	head -c $(((i * 104729) % 400000 + 1)) /dev/urandom >"$M/f$i"
done
for i in 1 2 3 4 5; do head -c 70000 /dev/urandom >"$M/dir/sub/n$i"; done
head -c $((20 * 1048576)) /dev/urandom >"$M/big"
echo "before the snapshot" >"$M/note"
sync
sums "$M" "$T/sums-snap1"
[ "$(wc -l <"$T/sums-snap1")" -eq 47 ] || fail "expected 47 files before the snapshot"

sv snapshot create vm1@snap1 >/dev/null

# ---- the filesystem goes on changing ----
rm "$M/f3" "$M/f4" "$M/dir/sub/n2" "$M/big"
for i in $(seq 41 60); do head -c 50000 /dev/urandom >"$M/f$i"; done
head -c 30000 /dev/urandom >"$M/f10"           # rewritten in place
echo "after the snapshot" >>"$M/note"
mkdir "$M/newdir" && head -c 3000000 /dev/urandom >"$M/newdir/large"
sync
sums "$M" "$T/sums-live"
cmp -s "$T/sums-live" "$T/sums-snap1" && fail "the live filesystem did not change"

# ---- the snapshot, mounted read-only beside the live filesystem ----
stack_up snap1 vm1@snap1 ro
assert_eq "size of the snapshot" 268435456 "$(stat -c %s "${S_FUSE[snap1]}/nbd")"
mount_stack snap1 ro,noload
sums "${S_MNT[snap1]}" "$T/sums-got1"
diff -u "$T/sums-snap1" "$T/sums-got1" >&2 ||
	fail "the snapshot's filesystem does not show exactly the files of the snapshot"
assert_eq "note in the snapshot" "before the snapshot" "$(cat "${S_MNT[snap1]}/note")"
[ ! -e "${S_MNT[snap1]}/f41" ] || fail "a file written after the snapshot is in it"

# The live filesystem is unaffected by the snapshot's mount.
sums "$M" "$T/sums-live2"
cmp "$T/sums-live" "$T/sums-live2" || fail "the live filesystem changed under the snapshot mount"
stack_down snap1

# ---- a snapshot of the unmounted (clean) filesystem ----
unmount_stack live
sv snapshot create vm1@snap2 >/dev/null
mount_stack live
rm -r "$M/newdir" "$M/f1"
echo more >"$M/f99"
sync

stack_up snap2 vm1@snap2 ro
set +e
e2fsck -fn "${S_LOOP[snap2]}" >"$T/fsck-snap2.log" 2>&1
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$T/fsck-snap2.log" >&2; fail "e2fsck -fn of vm1@snap2 exited $rc"; }
mount_stack snap2 ro
sums "${S_MNT[snap2]}" "$T/sums-got2"
diff -u "$T/sums-live" "$T/sums-got2" >&2 || fail "vm1@snap2 does not show the files at its creation"
stack_down snap2

# snap1 still reads the same after all that (and through a new stack).
stack_up snap1 vm1@snap1 ro
mount_stack snap1 ro,noload
sums "${S_MNT[snap1]}" "$T/sums-got1b"
cmp "$T/sums-snap1" "$T/sums-got1b" || fail "vm1@snap1 changed later"
stack_down snap1

teardown_all
server_alive || fail "server died during the test"
stop_server
log "ok"
