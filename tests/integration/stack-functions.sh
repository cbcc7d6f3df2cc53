# stack-functions.sh: a filesystem on a volume, mounted on this host
# (sourced after functions.sh, never run): nbdfuse of the export, a loop
# device (direct I/O) on its file (TESTING-NOTES.md).  Stacks have names;
# stack_up NAME EXPORT [ro], mount_stack NAME [OPTIONS], unmount_stack,
# stack_down, and teardown_all (every stack, newest first; register it with
# cleanup_fn so it runs before $T is removed).
#
# Teardown, per stack, in this order: thaw (a test that failed half-way may
# leave a freeze: fsfreeze -u never blocks), umount (in the background: it
# sleeps uninterruptibly on a stalled server; FUSE is aborted if it takes
# too long), losetup -d, fusermount3 -u, kill nbdfuse; the server last.

[ -c /dev/fuse ] || skip "/dev/fuse is missing"
[ -e /dev/loop-control ] || skip "no loop devices (/dev/loop-control missing)"
requires nbdfuse --version
requires fusermount3 --version
requires losetup -f
requires mountpoint --version

declare -A S_FUSE S_MNT S_LOOP S_MOUNTED S_PID S_CONN
FUSECTL_MOUNTED=
STACKS=()

abort_fuse() { # NAME
	local c=${S_CONN[$1]:-}
	[ -n "$c" ] || return 0
	if ! mountpoint -q /sys/fs/fuse/connections; then
		mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null && FUSECTL_MOUNTED=1
	fi
	echo 1 >"/sys/fs/fuse/connections/$c/abort" 2>/dev/null || true
}

fuse_mounted() { # DIR
	awk -v d="$1" '$2 == d { f = 1 } END { exit !f }' /proc/mounts
}

umount_safely() { # NAME
	local p i
	umount "${S_MNT[$1]}" &
	p=$!
	for ((i = 0; i < 300; i++)); do
		kill -0 $p 2>/dev/null || break
		[ $i -eq 150 ] && abort_fuse "$1"
		sleep 0.1
	done
	wait $p
}

# stack_up NAME EXPORT [ro]
stack_up() {
	local name=$1 export=$2 ro=${3:-} i
	local fuse=$T/fuse-$name mnt=$T/mnt-$name
	mkdir -p "$fuse" "$mnt"
	S_FUSE[$name]=$fuse S_MNT[$name]=$mnt
	STACKS+=("$name")
	_logs+=("$T/nbdfuse-$name.log")
	setsid nbdfuse ${ro:+-r} -P "$T/fuse-$name.pid" "$fuse" "$(uri "$export")" \
		</dev/null >"$T/nbdfuse-$name.log" 2>&1 &
	for ((i = 0; i < 300; i++)); do
		[ -s "$T/fuse-$name.pid" ] && [ -e "$fuse/nbd" ] && break
		sleep 0.1
	done
	[ -s "$T/fuse-$name.pid" ] || fail "nbdfuse of $export did not start"
	S_PID[$name]=$(cat "$T/fuse-$name.pid")
	S_CONN[$name]=$(stat -c %d "$fuse")
	S_LOOP[$name]=$(losetup -f --show --direct-io=on ${ro:+-r} "$fuse/nbd")
}

mount_stack() { # NAME [MOUNT OPTIONS]
	mount ${2:+-o "$2"} "${S_LOOP[$1]}" "${S_MNT[$1]}"
	S_MOUNTED[$1]=1
}

unmount_stack() { # NAME
	[ -n "${S_MOUNTED[$1]:-}" ] || return 0
	fsfreeze -u "${S_MNT[$1]}" 2>/dev/null || true
	umount_safely "$1" || umount -l "${S_MNT[$1]}"
	S_MOUNTED[$1]=
}

stack_down() { # NAME
	local name=$1 i
	[ -n "${S_FUSE[$name]:-}" ] || return 0
	if fuse_mounted "${S_FUSE[$name]}" && ! server_alive; then abort_fuse "$name"; fi
	unmount_stack "$name"
	if [ -n "${S_LOOP[$name]:-}" ]; then losetup -d "${S_LOOP[$name]}"; fi
	S_LOOP[$name]=
	if fuse_mounted "${S_FUSE[$name]}"; then
		fusermount3 -u "${S_FUSE[$name]}" ||
			{ abort_fuse "$name"; fusermount3 -u -z "${S_FUSE[$name]}"; }
	fi
	if [ -n "${S_PID[$name]:-}" ]; then
		kill "${S_PID[$name]}" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "${S_PID[$name]}" 2>/dev/null || break
			sleep 0.1
		done
	fi
	S_PID[$name]= S_CONN[$name]= S_FUSE[$name]=
}

teardown_all() {
	local i
	for ((i = ${#STACKS[@]} - 1; i >= 0; i--)); do stack_down "${STACKS[i]}"; done
	STACKS=()
	if [ -n "$FUSECTL_MOUNTED" ]; then umount /sys/fs/fuse/connections; fi
	FUSECTL_MOUNTED=
}
