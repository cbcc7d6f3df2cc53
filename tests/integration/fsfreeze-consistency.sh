# fsfreeze-consistency.sh: the body of test-fsfreeze-ext4.sh and
# test-fsfreeze-xfs.sh (FS=ext4|xfs; sourced, never run).
#
# A filesystem on a volume through nbdfuse + loop, under a fio write load
# inside it.  "snapshot create --fsfreeze" takes vm1@frozen, then a plain
# "snapshot create" takes vm1@crash under the same load.  Both are copied
# out with nbdcopy and examined from their bytes alone (TESTING-NOTES.md):
#  - ext4: the frozen copy has no needs_recovery and e2fsck -fn exits 0;
#    the crash copy has needs_recovery (so the check can fail);
#  - xfs: xfs_logprint -t of the frozen copy shows at most a few
#    transactions (checkpoints) with superblock items only, no inode or
#    intent items; the crash copy's log holds inode items (the delayed
#    logging of xfs gathers them into few checkpoints, so items are counted,
#    not transactions).
# The server records vm1@frozen as "frozen" and vm1@crash as "crash", and the
# command prints its freeze window; the free-space hint (GETFSMAP) must have
# been applied.
# RADOS=1: the same on a Ceph RADOS pool (a single-node cluster,
# ceph-cluster.sh), and the frozen snapshot is a consistency group with a
# second volume, db1, written and flushed through NBD before it: db1@frozen
# holds exactly that (and the free-space hint, which is for one volume's
# filesystem, says why it was not applied).
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fsfreeze-functions.sh"
requires "mkfs.$FS" -V
requires fio --version
requires nbdcopy --version
case $FS in
ext4) requires dumpe2fs -V; requires e2fsck -V ;;
xfs) requires xfs_logprint -V ;;
esac

fs_new_pool
GROUP=
if [ "${RADOS:-0}" = 1 ]; then
	start_ceph
	export XDG_RUNTIME_DIR=$T/run
	mkdir -p "$XDG_RUNTIME_DIR"
	P=rados:blk
	NBD_SOCK=$XDG_RUNTIME_DIR/snapvol/rados:blk/nbd.sock
	WAIT_FOR="$NBD_SOCK ${NBD_SOCK%nbd.sock}control.sock"
	GROUP=db1@frozen
	sv create db1 --size 16M >/dev/null
fi
sv create vm1 --size 512M >/dev/null
start_server
if [ -n "$GROUP" ]; then
	head -c 16M /dev/urandom >"$T/db1.img"
	nbdcopy --flush "$T/db1.img" "$(uri db1)"
fi
stack_up live vm1
case $FS in
ext4) mkfs.ext4 -q -F "${S_LOOP[live]}" ;;
xfs) mkfs.xfs -q -f "${S_LOOP[live]}" ;;
esac
mount_stack live
M=${S_MNT[live]}

fio_load "$M" 120
sleep 2
sv --json snapshot create vm1@frozen $GROUP --fsfreeze "$M" >"$T/frozen.json" ||
	fail "snapshot create --fsfreeze failed"
log "freeze window $(jget "$T/frozen.json" 'd["freeze"]["window_us"]') us," \
	"FIFREEZE $(jget "$T/frozen.json" 'd["freeze"]["fifreeze_us"]') us," \
	"hint: $(jget "$T/frozen.json" 'd["fs_hint"]')"
assert_eq "consistency in the reply" frozen "$(jget "$T/frozen.json" 'd["consistency"]')"
if [ -z "$GROUP" ]; then
	assert_eq "free-space hint applied" True "$(jget "$T/frozen.json" 'd["fs_hint"]["applied"]')"
else # the hint is for one volume's filesystem
	assert_eq "free-space hint with a group" "more than one volume" \
		"$(jget "$T/frozen.json" 'd["fs_hint"]["reason"]')"
fi
sleep 2
kill -0 "$FIO_PID" 2>/dev/null || fail "fio stopped: the filesystem is not writable after the thaw"
sv snapshot create vm1@crash >/dev/null
sleep 0.5
stop_fio
assert_eq "vm1@frozen recorded as" frozen "$(snap_consistency vm1 frozen)"
assert_eq "vm1@crash recorded as" crash "$(snap_consistency vm1 crash)"
if [ -n "$GROUP" ]; then
	head -c 4M /dev/urandom >"$T/db1-new.img"
	nbdcopy "$T/db1-new.img" "$(uri db1)" # db1 changes after the group
	assert_eq "db1@frozen" "$(sha "$T/db1.img")" "$(nbd_sha "$(uri db1@frozen)")"
fi

nbdcopy "$(uri vm1@frozen)" "$T/frozen.img"
nbdcopy "$(uri vm1@crash)" "$T/crash.img"

case $FS in
ext4)
	dumpe2fs -h "$T/frozen.img" 2>/dev/null | grep -i '^Filesystem features' >"$T/feat-frozen"
	dumpe2fs -h "$T/crash.img" 2>/dev/null | grep -i '^Filesystem features' >"$T/feat-crash"
	log "frozen: $(cat "$T/feat-frozen")"
	log "crash:  $(cat "$T/feat-crash")"
	grep -q needs_recovery "$T/feat-frozen" && fail "the frozen snapshot needs journal recovery"
	grep -q needs_recovery "$T/feat-crash" ||
		fail "the crash-consistent snapshot does not need recovery: the check cannot fail"
	set +e
	e2fsck -fn "$T/frozen.img" >"$T/fsck.log" 2>&1
	rc=$?
	set -e
	[ $rc -eq 0 ] || { tail -20 "$T/fsck.log" >&2; fail "e2fsck -fn of the frozen copy exited $rc"; }
	;;
xfs)
	# Transactions in the log and items that are not superblock updates.
	count_trans() { xfs_logprint -t "$1" 2>/dev/null | grep -c 'TRANS: tid' || true; }
	count_items() {
		xfs_logprint -t "$1" 2>/dev/null | grep -Eic 'INODE:|EFI:|EFD:|RUI:|RUD:|BUI:|BUD:|ICR:' || true
	}
	tf=$(count_trans "$T/frozen.img") tc=$(count_trans "$T/crash.img")
	if_=$(count_items "$T/frozen.img") ic=$(count_items "$T/crash.img")
	log "xfs log: frozen copy $tf transactions ($if_ inode/intent items), crash copy $tc ($ic)"
	[ "$tf" -le 4 ] || { xfs_logprint -t "$T/frozen.img" | tail -30 >&2; fail "the frozen copy's log holds $tf transactions"; }
	[ "$if_" -eq 0 ] || fail "the frozen copy's log holds $if_ inode/intent items"
	[ "$ic" -gt 0 ] ||
		fail "the crash copy's log holds no inode/intent items: the check cannot fail"
	;;
esac

teardown_all
server_alive || fail "server died during the test"
stop_server
log "ok"
