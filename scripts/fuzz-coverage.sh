#!/usr/bin/env bash
# fuzz-coverage.sh: source coverage of the fuzz targets over their corpora.
#
# libFuzzer's "cov:" counts edges, which says whether a run found something
# new but not which parser lines no input reaches.  This builds the fuzz
# targets a second time with clang's source-based coverage
# (-fprofile-instr-generate -fcoverage-mapping, no sanitizers, so every
# input runs fast), runs every input of each corpus once (-runs=0), merges
# the profiles with llvm-profdata and writes llvm-cov's line, region and
# function table, per target and for all targets together, plus the
# annotated sources of the parsers (uncovered lines marked with 0).
#
#   scripts/fuzz-coverage.sh [-b BUILD] [-o OUT] [-c ROOT]... [TARGET...]
#
#   -b BUILD  the coverage build directory (default build-fuzz-cov; set up
#             here if it does not exist yet)
#   -o OUT    where reports go (default BUILD/coverage): TARGET.txt (per
#             file table), all.txt (all targets merged), show/ (annotated
#             parser sources), TARGET.runs (libFuzzer's output)
#   -c ROOT   a corpus root, holding TARGET/ or TARGET/corpus/ directories
#             (repeatable; default fuzz/corpus, the repo's seed corpora;
#             e.g. -c fuzz/corpus -c /tmp/fuzz-long for a long run's
#             output too)
#   TARGET    nbd-session nbd-tls ctl pool-load send-stream (default: all)
#
# Needs clang, llvm-profdata and llvm-cov of the same version (Debian's
# clang, llvm).  Writes nothing in the source tree unless -o points there.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
build="build-fuzz-cov"
out=
roots=()
while getopts b:o:c: opt; do
	case $opt in
	b) build=$OPTARG ;;
	o) out=$OPTARG ;;
	c) roots+=("$OPTARG") ;;
	*) sed -n '2,/^set /p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ ${#roots[@]} -eq 0 ] && roots=(fuzz/corpus)
targets=${*:-nbd-session nbd-tls ctl pool-load send-stream}
out=${out:-$build/coverage}
covflags="-fprofile-instr-generate -fcoverage-mapping"

if [ ! -f "$build/build.ninja" ]; then
	CC=clang meson setup "$build" -Dbuildtype=debug -Dfuzzing=true -Db_lundef=false \
		-Dc_args="$covflags" -Dc_link_args="$covflags" >/dev/null
fi
mkdir -p "$out/show"
# shellcheck disable=SC2046 # one word per target
if ! ninja -C "$build" $(for t in $targets; do echo "fuzz/fuzz-$t"; done) >"$out/build.log"; then
	tail -30 "$out/build.log" >&2
	exit 1
fi
rm -f "$out"/*.profraw "$out"/*.profdata

# The parsers and the code behind them, for the annotated listings.
parsers="nbd/handshake.c nbd/transmission.c nbd/protocol.c nbd/tls.c nbd/io.c nbd/server.c
ctl/ctl-server.c ctl/commands.c engine/meta.c engine/journal.c engine/pool.c cli/stream.c"

export TMPDIR=${TMPDIR:-/dev/shm} # the targets' scratch pools
objs=()
for t in $targets; do
	dirs=()
	for r in "${roots[@]}"; do
		if [ -d "$r/$t/corpus" ]; then
			dirs+=("$r/$t/corpus")
		elif [ -d "$r/$t" ]; then
			dirs+=("$r/$t")
		fi
	done
	n=$(find "${dirs[@]}" -type f | wc -l)
	# -runs=0: run every input once and stop; one profile per target.
	LLVM_PROFILE_FILE="$out/$t.profraw" "$build/fuzz/fuzz-$t" -runs=0 -close_fd_mask=2 \
		"${dirs[@]}" >"$out/$t.runs" 2>&1
	llvm-profdata merge -sparse "$out/$t.profraw" -o "$out/$t.profdata"
	llvm-cov report "$build/fuzz/fuzz-$t" -instr-profile="$out/$t.profdata" \
		-ignore-filename-regex='fuzz/|tests/|/usr/' >"$out/$t.txt"
	echo "== $t: $n inputs from ${dirs[*]}"
	grep '^TOTAL' "$out/$t.txt" | awk '{print "   regions " $4 "  functions " $7 "  lines " $10}'
	objs+=(-object "$(cd "$build" && pwd)/fuzz/fuzz-$t")
done

# All targets together: the same library code is in every binary, so the
# profiles merge by function.
llvm-profdata merge -sparse "$out"/*.profraw -o "$out/all.profdata"
llvm-cov report "${objs[@]:1}" -instr-profile="$out/all.profdata" \
	-ignore-filename-regex='fuzz/|tests/|/usr/' >"$out/all.txt"
# One listing of everything, cut into one file per parser (llvm-cov 14
# given a source file to show prints nothing here).
llvm-cov show "${objs[@]:1}" -instr-profile="$out/all.profdata" -show-line-counts \
	>"$out/show/all.txt"
for f in $parsers; do
	awk -v h="$top/$f:" '/^\/.*:$/ { on = ($0 == h) } on' "$out/show/all.txt" \
		>"$out/show/$(echo "$f" | tr / -).txt"
done
echo "== all targets: $out/all.txt; annotated parsers: $out/show/"
grep '^TOTAL' "$out/all.txt" | awk '{print "   regions " $4 "  functions " $7 "  lines " $10}'
