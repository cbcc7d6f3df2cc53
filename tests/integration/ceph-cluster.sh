#!/usr/bin/env bash
# ceph-cluster.sh: a real single-node Ceph cluster for the RADOS backend's
# tests, from Debian's packages, as plain processes under one directory.
#
#   ceph-cluster.sh start DIR [POOL...]   start it (default pool: blk); prints nothing
#   ceph-cluster.sh stop DIR              stop it by PID and remove its state
#
# One monitor on 127.0.0.1 (a free port), one OSD on memstore (data in RAM),
# no manager, auth none: about 3 s to start.  After "start", DIR/ceph.conf
# is the cluster's configuration (export CEPH_CONF=DIR/ceph.conf), and
# DIR/keyring a client keyring (unused with auth none, but where a client
# looks for one).  Each daemon runs under "timeout" (CEPH_CLUSTER_LIFETIME,
# default 600 s), so no daemon outlives a test run even if "stop" never
# runs; "stop" kills the OSD first, then the monitor (TESTING-NOTES: an OSD
# whose monitor went first waits 5 s for it).  Why each setting: see TESTING-NOTES (Ceph on one
# machine): a 0.1 s paxos interval makes start 3x faster; the free-space
# ratios are lowered because this disk sits near 30 % free; pool size 1 is
# allowed on one OSD.  Exit status 77 if the Ceph packages are missing, so a
# test can pass it on as a skip.
set -euo pipefail

usage() {
	echo "usage: $0 start DIR [POOL...] | stop DIR" >&2
	exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
D=$(realpath -m "$2")
shift 2
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

stop_pidfile() { # FILE: kill the daemon under that "timeout", then timeout
	# SIGKILL: the cluster's state (memstore, a monitor store under DIR)
	# is thrown away anyway, and a graceful OSD stop costs seconds.
	local f=$1 pid p i procs
	[ -s "$f" ] || return 0
	pid=$(cat "$f")
	rm -f "$f"
	kill -0 "$pid" 2>/dev/null || return 0
	procs="$(cat "/proc/$pid/task/$pid/children" 2>/dev/null) $pid"
	for p in $procs; do
		kill -KILL "$p" 2>/dev/null || true
	done
	for ((i = 0; i < 100; i++)); do # until gone (5 s at most)
		((i == 0)) || sleep 0.05
		for p in $procs; do
			kill -0 "$p" 2>/dev/null && continue 2
		done
		return 0
	done
}

do_stop() {
	stop_pidfile "$D/osd.pid"
	stop_pidfile "$D/mon.pid"
	rm -rf "$D/mon" "$D/osd" "$D/run" "$D/monmap" "$D/osd-id"
}

do_start() {
	local pools=("$@") i
	[ ${#pools[@]} -gt 0 ] || pools=(blk)
	for t in ceph-mon ceph-osd ceph monmaptool ceph-authtool rados; do
		command -v "$t" >/dev/null || {
			echo "ceph-cluster.sh: $t is missing (apt-get install ceph-mon ceph-osd ceph-common)" >&2
			exit 77
		}
	done
	mkdir -p "$D/mon" "$D/osd" "$D/run" "$D/log"
	local port fsid osd_uuid life=${CEPH_CLUSTER_LIFETIME:-600}
	port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	fsid=$(cat /proc/sys/kernel/random/uuid)
	osd_uuid=$(cat /proc/sys/kernel/random/uuid)
	cat >"$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
keyring = $D/keyring
run dir = $D/run
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 1
mon osd full ratio = 0.99
mon osd nearfull ratio = 0.98
mon osd backfillfull ratio = 0.985
paxos propose interval = 0.1
ms bind ipv4 = true
ms bind ipv6 = false

[client]
# one per client process: several snapvol and rbd processes run at once
admin socket = $D/run/\$name.\$pid.\$cctid.asok

[mon]
admin socket = $D/run/\$name.asok
mon data = $D/mon
mon initial members = a
mon cluster log file = $D/log/cluster.log

[osd]
admin socket = $D/run/\$name.asok
osd data = $D/osd
osd objectstore = memstore
memstore device bytes = 2147483648
osd fsid = $osd_uuid
EOF
	ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' \
		--cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
	monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$D/monmap" >/dev/null
	ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" \
		>"$D/log/mon-mkfs.out" 2>&1
	setsid timeout "$life" ceph-mon -c "$D/ceph.conf" -i a -f >"$D/log/mon.out" 2>&1 </dev/null &
	echo $! >"$D/mon.pid"

	export CEPH_CONF=$D/ceph.conf
	local C=(timeout 20 ceph --connect-timeout 15)
	"${C[@]}" osd new "$osd_uuid" >"$D/osd-id" 2>"$D/log/osd-new.err"
	local id
	id=$(cat "$D/osd-id")
	ceph-osd -c "$D/ceph.conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" \
		>"$D/log/osd-mkfs.out" 2>&1
	setsid timeout "$life" ceph-osd -c "$D/ceph.conf" -i "$id" -f >"$D/log/osd.out" 2>&1 \
		</dev/null &
	echo $! >"$D/osd.pid"
	for p in "${pools[@]}"; do
		"${C[@]}" osd pool create "$p" 8 8 >/dev/null 2>>"$D/log/pool.err"
		"${C[@]}" osd pool set "$p" size 1 --yes-i-really-mean-it >/dev/null 2>>"$D/log/pool.err"
	done
	# Ready when a real write to each pool succeeds.
	for p in "${pools[@]}"; do
		for ((i = 0; ; i++)); do
			if timeout 5 rados -p "$p" put ceph-cluster.probe "$D/ceph.conf" 2>/dev/null; then
				timeout 5 rados -p "$p" rm ceph-cluster.probe 2>/dev/null || true
				break
			fi
			if [ $i -ge 60 ]; then
				echo "ceph-cluster.sh: pool $p not writable after 60 tries; logs in $D/log" >&2
				exit 1
			fi
			sleep 0.2
		done
	done
}

case $cmd in
start)
	# A start that fails half-way leaves nothing running.
	trap 'rc=$?; [ $rc -eq 0 ] || do_stop; exit $rc' EXIT
	do_start "$@"
	trap - EXIT
	;;
stop) do_stop ;;
*) usage ;;
esac
