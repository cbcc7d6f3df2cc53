#!/usr/bin/env bash
# test-nbdfuse-ext4.sh: a real filesystem on a volume, the way this machine
# can do it without the kernel nbd driver: nbdfuse exposes the export as a
# file (4 connections with multi-conn, FLUSH on any of them), a loop device
# with direct I/O on top, mkfs.ext4, mount, files written, unmount, and
# "e2fsck -fn" must find the filesystem clean; the files read back after a
# remount.  Then, with the server stopped, the volume's raw file alone is
# the same clean filesystem (e2fsck, and mounted read-only via loop).
#
# Teardown order matters (TESTING-NOTES.md): umount, losetup -d,
# fusermount3 -u, kill nbdfuse, then stop the server.  If the server died
# under the mount, the FUSE connection is aborted first so umount cannot
# hang.
source "$(dirname "$0")/functions.sh"
requires_root
requires_file /dev/fuse
requires nbdfuse --version
requires fusermount3 --version
requires losetup -f
requires mkfs.ext4 -V
requires e2fsck -V
requires mountpoint --version

new_pool
sv create vm1 --size 256M
start_server

FUSE=$T/fuse MNT=$T/mnt
mkdir -p "$FUSE" "$MNT"
LOOP='' MOUNTED='' NBDFUSE_PID='' FUSE_CONN=''

FUSECTL_MOUNTED=
abort_fuse() {
	[ -n "$FUSE_CONN" ] || return 0
	if ! mountpoint -q /sys/fs/fuse/connections; then
		mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null && FUSECTL_MOUNTED=1
	fi
	echo 1 >"/sys/fs/fuse/connections/$FUSE_CONN/abort" 2>/dev/null || true
}
# fuse_mounted: true while $FUSE is a mount (even a dead one, on which
# "mountpoint" fails with ENOTCONN).
fuse_mounted() {
	awk -v d="$FUSE" '$2 == d { f = 1 } END { exit !f }' /proc/mounts
}

# umount_safely DIR: umount in the background (it can sleep uninterruptibly
# on a stalled server); abort the FUSE connection if it takes too long.
umount_safely() {
	local p i
	umount "$1" &
	p=$!
	for ((i = 0; i < 300; i++)); do
		kill -0 $p 2>/dev/null || break
		[ $i -eq 150 ] && abort_fuse
		sleep 0.1
	done
	wait $p
}

teardown_stack() {
	if fuse_mounted && ! server_alive; then abort_fuse; fi
	if [ -n "$MOUNTED" ]; then umount_safely "$MNT" || umount -l "$MNT"; fi
	MOUNTED=
	if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi
	LOOP=
	if fuse_mounted; then
		fusermount3 -u "$FUSE" || { abort_fuse; fusermount3 -u -z "$FUSE"; }
	fi
	FUSE_CONN=
	if [ -n "$FUSECTL_MOUNTED" ]; then umount /sys/fs/fuse/connections; fi
	FUSECTL_MOUNTED=
	if [ -n "$NBDFUSE_PID" ]; then
		kill "$NBDFUSE_PID" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do kill -0 "$NBDFUSE_PID" 2>/dev/null || break; sleep 0.1; done
	fi
	NBDFUSE_PID=
}
cleanup_fn teardown_stack

_logs+=("$T/nbdfuse.log")
setsid nbdfuse -P "$T/fuse.pid" "$FUSE" "$(uri vm1)" </dev/null >"$T/nbdfuse.log" 2>&1 &
for ((i = 0; i < 300; i++)); do
	[ -s "$T/fuse.pid" ] && [ -e "$FUSE/nbd" ] && break
	sleep 0.1
done
[ -s "$T/fuse.pid" ] || fail "nbdfuse did not start"
NBDFUSE_PID=$(cat "$T/fuse.pid")
FUSE_CONN=$(stat -c %d "$FUSE")
assert_eq "size of fuse/nbd" 268435456 "$(stat -c %s "$FUSE/nbd")"

LOOP=$(losetup -f --show --direct-io=on "$FUSE/nbd")
mkfs.ext4 -q -F "$LOOP"
mount "$LOOP" "$MNT"
MOUNTED=1

# Files: 30 small ones of random sizes, a nested tree, one of 48 MiB.
mkdir -p "$MNT/a/b/c"
for i in $(seq 1 30); do
	head -c $(((i * 7919) % 300000 + 1)) /dev/urandom >"$MNT/f$i"
done
for i in 1 2 3; do head -c 100000 /dev/urandom >"$MNT/a/b/c/n$i"; done
head -c $((48 * 1048576)) /dev/urandom >"$MNT/big"
rm "$MNT/f7" "$MNT/f8"   # some frees, so the fs discards or reuses blocks
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"
[ "$(wc -l <"$T/sums")" -eq 32 ] || fail "expected 32 files, found $(wc -l <"$T/sums")"
sync
umount_safely "$MNT" || fail "umount failed"
MOUNTED=

set +e
e2fsck -fn "$LOOP" >"$T/fsck1.log" 2>&1
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$T/fsck1.log" >&2; fail "e2fsck -fn on the loop device exited $rc"; }

mount "$LOOP" "$MNT"
MOUNTED=1
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || fail "files differ after remount"
umount_safely "$MNT" || fail "second umount failed"
MOUNTED=

teardown_stack
server_alive || fail "server died during the filesystem test"
stop_server

# The raw file alone, with no server: the same clean filesystem.
set +e
e2fsck -fn "$(origin vm1)" >"$T/fsck2.log" 2>&1
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$T/fsck2.log" >&2; fail "e2fsck -fn on origin.raw exited $rc"; }
LOOP=$(losetup -f --show -r "$(origin vm1)")
mount -o ro "$LOOP" "$MNT"
MOUNTED=1
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || fail "files differ when origin.raw is mounted directly"
umount "$MNT"
MOUNTED=
losetup -d "$LOOP"
LOOP=
