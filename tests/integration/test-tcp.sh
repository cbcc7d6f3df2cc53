#!/usr/bin/env bash
# test-tcp.sh: "serve --listen 127.0.0.1:PORT" serves NBD over TCP: nbdinfo
# and nbdcopy work over nbd://127.0.0.1:PORT/vol, the port is bound to
# loopback only, and what is written over TCP is what the unix socket (if
# also served) and the raw file hold.  Bad --listen values are refused at
# start with a message and a non-zero exit.
#
# TCP requires TLS by default (test-tls.py covers that); this test serves
# plain TCP with the explicit opt-out, --insecure (SV_TCP_PLAIN_ARGS
# overrides it).
source "$(dirname "$0")/functions.sh"
requires nbdinfo --version
requires nbdcopy --version

new_pool
sv create vm1 --size 32M

# --- bad --listen values ---
for bad in "127.0.0.1:99999" "127.0.0.1:" "127.0.0.1:abc" "[::1" "127.0.0.1:-5" "127.0.0.1"; do
	set +e
	out=$(timeout 20 "$SNAPVOL" --pool "$P" serve --listen "$bad" 2>&1 </dev/null)
	rc=$?
	set -e
	[ $rc -ne 124 ] || fail "serve --listen '$bad' did not exit (it should refuse)"
	[ $rc -ne 0 ] || fail "serve --listen '$bad' exited 0"
	[ $rc -lt 128 ] || fail "serve --listen '$bad' died of a signal ($rc): $out"
	[ -n "$out" ] || fail "serve --listen '$bad' failed without a message"
	log "serve --listen '$bad' -> $rc: $(echo "$out" | head -1)"
done
# The failed starts left no lock behind: the CLI still works directly.
sv list | grep -q vm1 || fail "list after failed serve attempts"

# --- a real TCP server ---
PORT=$(free_port)
WAIT_FOR="127.0.0.1:$PORT $P/control.sock" start_server --listen "127.0.0.1:$PORT" ${SV_TCP_PLAIN_ARGS:---insecure}
TU="nbd://127.0.0.1:$PORT/vm1"

assert_eq "size over TCP" 33554432 "$(nbdinfo --size "$TU")"
nbdinfo --list "nbd://127.0.0.1:$PORT" | grep -q vm1 || fail "nbdinfo --list over TCP does not show vm1"

# Bound to loopback only, not the wildcard address.
if command -v ss >/dev/null; then
	ss -Htln "sport = :$PORT" >"$T/ss.txt"
	grep -q "127.0.0.1:$PORT" "$T/ss.txt" || fail "port $PORT not bound on 127.0.0.1: $(cat "$T/ss.txt")"
	if grep -Eq '(\*|0\.0\.0\.0|\[::\]):'"$PORT" "$T/ss.txt"; then
		fail "port $PORT bound to a wildcard address: $(cat "$T/ss.txt")"
	fi
fi

head -c 33554432 /dev/urandom >"$T/data"
nbdcopy "$T/data" "$TU"
nbdcopy "$TU" "$T/back"
cmp "$T/data" "$T/back" || fail "nbdcopy round trip over TCP"
cmp "$T/data" "$(origin vm1)" || fail "origin.raw differs from what was written over TCP"
# If the unix socket is served too, it sees the same bytes.
if [ -S "$P/nbd.sock" ]; then
	assert_eq "unix socket sees the TCP writes" "$(sha "$T/data")" "$(nbd_sha "$(uri vm1)")"
fi

# A second server on another port of the same pool is refused (pool lock).
PORT2=$(free_port)
set +e
out=$(timeout 20 "$SNAPVOL" --pool "$P" serve --listen "127.0.0.1:$PORT2" \
	--socket "$T/other.sock" --control "$T/other-control.sock" ${SV_TCP_PLAIN_ARGS:---insecure} 2>&1 </dev/null)
rc=$?
set -e
[ $rc -ne 124 ] || fail "a second server on the pool kept running"
[ $rc -ne 0 ] && [ $rc -lt 128 ] || fail "second server: exit status $rc"
assert_eq "size over TCP after the refused second server" 33554432 "$(nbdinfo --size "$TU")"

stop_server
