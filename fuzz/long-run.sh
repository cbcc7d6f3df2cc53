#!/usr/bin/env bash
# The long fuzz run (issue 6: "an hour in total, done once and reported"):
# every target in turn, one at a time (the machine has 2 shared cores), for
# SECONDS_PER_TARGET each, from the repo's seed corpus into a scratch output
# corpus, so the source tree is never written.  A crash does not end a
# target's slot: the run restarts from the grown scratch corpus until the
# slot is used up, and every artifact (crash-, leak-, timeout-, oom-) is kept
# in OUT/NAME/artifacts for reproduction.  libFuzzer's own log of each part
# is OUT/NAME/log.N; the start and end cov/ft lines are what the report
# quotes.
#
#   fuzz/long-run.sh BUILD_DIR OUT_DIR [SECONDS_PER_TARGET [TARGET...]]
#   e.g. nohup fuzz/long-run.sh build-fuzz /tmp/fuzz-long 720 &
#
# BUILD_DIR is a -Dfuzzing=true clang build (see fuzz/meson.build).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
out=$2
secs=${3:-720}
shift 3 2>/dev/null || shift $#
targets=${*:-nbd-session nbd-tls ctl pool-load send-stream}
mkdir -p "$out"
export TMPDIR=${TMPDIR:-/dev/shm} # pools on tmpfs: syncs cost nothing
for t in $targets; do
	d=$out/$t
	mkdir -p "$d/corpus" "$d/artifacts"
	start=$(date +%s)
	n=0
	echo "$(date -u +%FT%TZ) start $t for ${secs}s" >>"$out/summary"
	while :; do
		left=$((start + secs - $(date +%s)))
		[ "$left" -lt 5 ] && break
		n=$((n + 1))
		(cd "$d" && "$build/fuzz/fuzz-$t" -max_total_time="$left" -timeout=25 \
			-close_fd_mask=2 -print_final_stats=1 -artifact_prefix="$d/artifacts/" \
			"$d/corpus" "$top/fuzz/corpus/$t" >"$d/log.$n" 2>&1)
		echo "$(date -u +%FT%TZ) $t part $n exit $?" >>"$out/summary"
	done
	echo "$(date -u +%FT%TZ) end $t" >>"$out/summary"
done
echo "$(date -u +%FT%TZ) all done" >>"$out/summary"
