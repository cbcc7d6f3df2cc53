#!/usr/bin/env bash
# test-rados-suite.sh PART: a test the local backend runs, run again on a
# Ceph RADOS pool (issue 7: "the same integration tests that run against the
# local backend run against the RADOS backend").  Each part starts its own
# single-node cluster (ceph-cluster.sh) and points the test at pool
# rados:blk through SNAPVOL_TEST_POOL; the test itself is unchanged, only
# shorter, so the part stays under a minute:
#   model  the copy-on-write engine against its reference model
#          (tests/unit/test-snapshot, test_model: writes, trims, zeroes,
#          flushes, snapshot create/delete/rollback/release and clean
#          re-opens, every snapshot read back after each step), through the
#          engine's API on the RADOS store; RADOS_MODEL_STEPS steps (200),
#          seed printed (SNAPVOL_SEED=N replays it); the volume keeps its
#          pre-images as the cluster's snapshots (native, the default)
#   model-copy  the same with pre-images copied by the engine
#          (SNAPVOL_RADOS_PRE=copy, as volumes made before session 10)
#   crash  kill -9 of the server under writes, flushes and snapshot
#          create/delete (test-crash-kill9.py), RADOS_CRASH_ROUNDS rounds
#          (5); each restart waits for the dead server's claim to lapse
#          (SNAPVOL_RADOS_CLAIM=3s here), then every flushed write and every
#          snapshot is checked
#   slowreader  a client that stops reading its replies holds up only its
#          own connection (test-slow-reader.py): READs complete in
#          librados's thread, which every connection shares
# meson runs each part as its own test (test-rados-suite-model,
# -model-copy, -crash, -slowreader).
# TEST_SNAPSHOT names the test-snapshot binary (meson sets it; by hand:
# BUILDDIR/tests/unit/test-snapshot).  Skipped (77) only when the Ceph
# packages are missing.
source "$(dirname "$0")/functions.sh"
PART=${1:-}
case $PART in
model | model-copy | crash | slowreader) ;;
*) fail "usage: $0 model|model-copy|crash|slowreader" ;;
esac
TEST_NAME="${TEST_NAME}[$PART]"

new_pool
start_ceph
export SNAPVOL_TEST_POOL=rados:blk
export SNAPVOL_RADOS_CLAIM=3s
t0=$(date +%s%N)

case $PART in
model | model-copy)
	[ "$PART" = model-copy ] && export SNAPVOL_RADOS_PRE=copy
	bin=${TEST_SNAPSHOT:-$BUILDDIR/tests/unit/test-snapshot}
	[ -x "$bin" ] || fail "no test-snapshot binary at $bin"
	SNAPVOL_STEPS=${RADOS_MODEL_STEPS:-200} "$bin" >"$T/model.out" 2>&1 || {
		cat "$T/model.out" >&2
		fail "the model test failed on rados:blk"
	}
	cat "$T/model.out"
	grep -q '^\[       OK \] test_model' "$T/model.out" || fail "test_model did not run"
	grep -q '^test_model: on pool rados:blk' "$T/model.out" || fail "test_model ran on a local pool"
	;;
crash)
	requires "$PY" -c 'import nbd'
	SNAPVOL_ROUNDS=${RADOS_CRASH_ROUNDS:-5} $PY "$SRCDIR/test-crash-kill9.py" ||
		fail "the kill -9 crash test failed on rados:blk"
	;;
slowreader)
	requires "$PY" -c 'import nbd'
	$PY "$SRCDIR/test-slow-reader.py" || fail "the slow-reader test failed on rados:blk"
	;;
esac
log "ok on rados:blk in $((($(date +%s%N) - t0) / 1000000)) ms (cluster start not counted)"
