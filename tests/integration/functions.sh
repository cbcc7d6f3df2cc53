# functions.sh: what every integration test shares.  Sourced, never run.
#
# Each test is one small script about one behaviour, in the manner of
# nbdkit's test suite: it makes its own temporary pool, starts
# "snapvol --pool $P serve" in the background, drives it with a real NBD
# client, asserts, and stops the server.  Conventions:
#
#  - exit 0 = pass, 77 = skip (a tool or kernel feature is missing: see
#    "requires"), anything else = fail;
#  - every server is wrapped in "timeout 600" so that it always stops by
#    itself even if the test (or this file) is killed hard;
#  - clean-up runs from an EXIT trap, in reverse order of registration
#    (cleanup_fn), so a failing test still unmounts, detaches, kills;
#  - on failure the server's log is printed, so "meson test
#    --print-errorlogs" shows what the server said.
#
# Environment (set by tests/integration/meson.build): SNAPVOL (the binary),
# SRCDIR (this folder), BUILDDIR (the build root).  Scripts can also be run
# by hand: SNAPVOL=build/cli/snapvol bash tests/integration/test-tcp.sh

set -e
set -u
set -o pipefail

: "${SNAPVOL:?SNAPVOL must name the snapvol binary}"
: "${BUILDDIR:=$PWD}"
: "${SRCDIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
SNAPVOL=$(realpath "$SNAPVOL")
BUILDDIR=$(realpath "$BUILDDIR")
# Debian's python3 has the nbd module; another python3 may come first on PATH
# (nbdsh runs "python3" from PATH).
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
PY=/usr/bin/python3
TEST_NAME=$(basename "$0")

# ---- messages and assertions ----

log() { echo "$TEST_NAME: $*" >&2; }

# Print why, and fail the test.  The EXIT trap prints the server log.
fail() {
	echo "$TEST_NAME: FAIL: $*" >&2
	exit 1
}

skip() {
	echo "$TEST_NAME: SKIP: $*" >&2
	exit 77
}

# requires CMD [ARGS...]: skip the test unless CMD ARGS succeeds.
requires() {
	if ! "$@" >/dev/null 2>&1; then
		skip "'$*' failed: required tool missing"
	fi
}

requires_root() {
	[ "$(id -u)" -eq 0 ] || skip "needs root"
}

requires_file() {
	[ -e "$1" ] || skip "$1 is missing"
}

assert_eq() { # WHAT EXPECTED GOT
	[ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}

# ---- clean-up stack ----

_cleanup_cmds=()
# cleanup_fn CMD [ARGS...]: run at exit, last registered first.
cleanup_fn() {
	local q
	q=$(printf '%q ' "$@")
	_cleanup_cmds+=("$q")
}

_on_exit() {
	local rc=$? i
	set +e
	if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
		_dump_logs
	fi
	for ((i = ${#_cleanup_cmds[@]} - 1; i >= 0; i--)); do
		eval "${_cleanup_cmds[i]}"
	done
	exit $rc
}
trap _on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

_logs=()
_dump_logs() {
	local f
	for f in "${_logs[@]}"; do
		if [ -s "$f" ]; then
			echo "----- $f (last 60 lines) -----" >&2
			tail -n 60 "$f" >&2
		fi
	done
}

# ---- temporary directories and pools ----

# new_pool: sets T to a new temporary directory (removed at exit) and P to
# a pool directory inside it (not created: the CLI creates it).  T is under
# $BUILDDIR/tmp when that keeps unix socket paths short (108 bytes max),
# else under /tmp.
new_pool() {
	local base="$BUILDDIR/tmp"
	if [ ${#base} -gt 60 ]; then base=${TMPDIR:-/tmp}; fi
	mkdir -p "$base"
	T=$(mktemp -d "$base/${TEST_NAME%.*}.XXXXXX")
	cleanup_fn rm -rf "$T"
	P=$T/pool
}

# sv ARGS...: the CLI on pool $P.
# A one-node Ceph cluster under $T/ceph with the pool "blk", stopped at
# exit; exports CEPH_CONF.  Skips (77) only when the packages are missing.
start_ceph() {
	local rc=0
	"$SRCDIR/ceph-cluster.sh" start "$T/ceph" blk || rc=$?
	if [ $rc -ne 0 ]; then
		[ $rc -eq 77 ] && skip "the Ceph packages are missing"
		tail -40 "$T/ceph/log/"*.log >&2 2>/dev/null
		fail "cannot start a Ceph cluster (status $rc); logs in $T/ceph/log"
	fi
	cleanup_fn "$SRCDIR/ceph-cluster.sh" stop "$T/ceph"
	export CEPH_CONF=$T/ceph/ceph.conf
}

# ceph_daemons: MON and OSD, the PIDs of start_ceph's daemons themselves
# (children of their "timeout" wrappers), for tests that stop them
# (SIGSTOP); resume_cluster (SIGCONT) also runs at exit.
ceph_daemons() {
	local m o
	m=$(cat "$T/ceph/mon.pid") o=$(cat "$T/ceph/osd.pid")
	MON=$(awk '{print $1}' "/proc/$m/task/$m/children")
	OSD=$(awk '{print $1}' "/proc/$o/task/$o/children")
	[ -n "$MON" ] && [ -n "$OSD" ] || fail "cannot find the Ceph daemons"
	cleanup_fn resume_cluster
}
resume_cluster() { kill -CONT "$OSD" "$MON" 2>/dev/null || true; }

sv() {
	"$SNAPVOL" --pool "$P" "$@"
}

# origin NAME: the raw image file holding volume NAME's live data.
origin() {
	echo "$P/volumes/$1/origin.raw"
}

# uri NAME [SOCKET]: the NBD URI of export NAME on the server of pool $P.
uri() { # EXPORT [SOCKET]: default the pool's socket, or NBD_SOCK (a rados: pool's)
	echo "nbd+unix:///$1?socket=${2:-${NBD_SOCK:-$P/nbd.sock}}"
}

# ---- the server ----

SERVER_PID=        # the "timeout" wrapping the server
SERVER_LOG=

# start_server [SERVE-ARGS...]: start "snapvol --pool $P serve" in the
# background and wait until it accepts connections on the unix sockets in
# $WAIT_FOR (default: $P/nbd.sock and $P/control.sock).  Connecting, not
# just seeing the file, matters: a killed server leaves stale socket files.
start_server() {
	SERVER_LOG=$T/serve.log
	case " ${_logs[*]} " in *" $SERVER_LOG "*) ;; *) _logs+=("$SERVER_LOG") ;; esac
	echo "=== $(date +%T) serve $*" >>"$SERVER_LOG"
	timeout 600 "$SNAPVOL" --pool "$P" serve "$@" >>"$SERVER_LOG" 2>&1 </dev/null &
	SERVER_PID=$!
	cleanup_fn _kill_server "$SERVER_PID"
	if ! wait_listening "$SERVER_PID" ${WAIT_FOR:-$P/nbd.sock $P/control.sock}; then
		fail "server not listening on ${WAIT_FOR:-$P/nbd.sock $P/control.sock}: serve $*"
	fi
}

# start_node_b RUNDIR: a second server on the same pool ($P: a shared RADOS
# pool), its sockets under RUNDIR (its XDG_RUNTIME_DIR), logging to
# $T/serve-b.log; sets B_WRAPPER (the "timeout" wrapping it) and B_LOG.
start_node_b() {
	local sock=$1/snapvol/$P
	B_LOG=$T/serve-b.log
	_logs+=("$B_LOG")
	XDG_RUNTIME_DIR=$1 timeout 600 "$SNAPVOL" --pool "$P" serve >>"$B_LOG" 2>&1 </dev/null &
	B_WRAPPER=$!
	cleanup_fn _kill_server "$B_WRAPPER"
	wait_listening "$B_WRAPPER" "$sock/nbd.sock" "$sock/control.sock" || fail "B is not serving"
}

# wait_listening PID SOCKET...: wait (30 s at most) until every unix SOCKET
# (or HOST:PORT) accepts a connection; fail early if PID exits.
wait_listening() {
	$PY - "$@" <<'EOF'
import os, socket, sys, time
pid, addrs = int(sys.argv[1]), sys.argv[2:]
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
def ok(a):
    if a.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        target = a
    else:
        host, port = a.rsplit(":", 1)
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        target = (host.strip("[]"), int(port))
    try:
        s.connect(target)
        return True
    except OSError:
        return False
    finally:
        s.close()
deadline = time.time() + 30
while time.time() < deadline:
    if all(ok(a) for a in addrs):
        sys.exit(0)
    if not alive():
        print("server exited during start-up", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.05)
print("timed out waiting for", addrs, file=sys.stderr)
sys.exit(1)
EOF
}

# server_pid: the pid of snapvol itself (the child of "timeout").
server_pid() {
	cat "/proc/$SERVER_PID/task/$SERVER_PID/children" 2>/dev/null | awk '{print $1}'
}

server_alive() {
	[ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null
}

# stop_server: SIGTERM, wait up to 20 s, and check how it ended: a clean
# exit or death by the SIGTERM we sent is fine; a crash, a sanitizer report
# (non-zero exit) or a hang is a failure.
stop_server() {
	local pid=$SERVER_PID rc=0 i
	[ -n "$pid" ] || return 0
	SERVER_PID=
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" || rc=$?
		fail "server had already exited (status $rc) before stop_server"
	fi
	kill -TERM "$pid"
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		_kill_server "$pid"
		fail "server did not stop within 20 s of SIGTERM"
	fi
	wait "$pid" || rc=$?
	case $rc in
	0 | 143) ;;
	*) fail "server exit status $rc after SIGTERM (crash or sanitizer error?)" ;;
	esac
}

# kill9_server: kill -9 snapvol itself (not the timeout wrapper), as a crash.
kill9_server() {
	local pid=$SERVER_PID child
	child=$(server_pid)
	[ -n "$child" ] || fail "cannot find the snapvol process under timeout $pid"
	kill -KILL "$child"
	{ wait "$pid"; } 2>/dev/null || true
	SERVER_PID=
}

_kill_server() {
	local pid=$1 child i
	kill -0 "$pid" 2>/dev/null || return 0
	child=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	[ -n "$child" ] && kill -KILL "$child" 2>/dev/null
	kill -KILL "$pid" 2>/dev/null
}

# ---- data helpers ----

# sha FILE: sha256 of a file.
sha() {
	sha256sum "$1" | awk '{print $1}'
}

# nbd_sha URI: sha256 of an export's whole contents, read over NBD.
nbd_sha() {
	nbdcopy "$1" - | sha256sum | awk '{print $1}'
}

# free_port: a TCP port on 127.0.0.1 that nobody listens on now.
free_port() {
	$PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# json_find FILE KEY VALUE: true if some object anywhere in the JSON document
# FILE has KEY equal to VALUE (compared as strings; VALUE "*" matches any).
json_find() {
	$PY - "$@" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
key, want = sys.argv[2], sys.argv[3]
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == key and (want == "*" or str(v) == want or json.dumps(v) == want):
                return True
            if walk(v):
                return True
    elif isinstance(o, list):
        return any(walk(v) for v in o)
    return False
sys.exit(0 if walk(doc) else 1)
EOF
}

# json_valid FILE: the file is one JSON document.
json_valid() {
	$PY -c 'import json,sys; json.load(open(sys.argv[1]))' "$1"
}

# json_get FILE KEY [KEY...]: print the value (as JSON) of the first of the
# KEYs found anywhere in the JSON document FILE, depth first; nothing if none.
json_get() {
	$PY - "$@" <<'EOF'
import json, sys
keys = sys.argv[2:]
def find(o):
    if isinstance(o, dict):
        for k in keys:
            if k in o:
                return o[k]
        for v in o.values():
            r = find(v)
            if r is not None:
                return r
    elif isinstance(o, list):
        for v in o:
            r = find(v)
            if r is not None:
                return r
    return None
r = find(json.load(open(sys.argv[1])))
if r is not None:
    print(json.dumps(r))
EOF
}

# nbd_sha_range URI OFFSET LENGTH: sha256 of part of an export, over NBD.
nbd_sha_range() {
	$PY - "$@" <<'EOF'
import hashlib, nbd, sys
uri, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
s = hashlib.sha256()
while n > 0:
    k = min(n, 4 << 20)
    s.update(h.pread(k, off))
    off += k
    n -= k
h.shutdown()
print(s.hexdigest())
EOF
}
