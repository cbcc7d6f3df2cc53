#!/bin/bash
# backup.sh: incremental backup throughput against a full nbdcopy of the same
# snapshot (issue 5, "Measure").
#
# A large sparse volume (SIZE, default 1 TiB, 4 KiB chunks) gets BASE_PERCENT
# (0.25) % of its bytes written as data, snapshot vm1@mon, then PERCENT (1) %
# more in scattered runs of 16-512 KiB (bench/backup.py), snapshot vm1@tue.
# A full backup of vm1@mon is made once.  Then, REPS times, back to back on
# the same server:
#   - incr:    snapvol backup vm1@tue FILE --since vm1@mon, onto a fresh copy of
#              the mon backup (the copy is not timed): reads only the changed
#              extents, writes them into FILE;
#   - incr-qcow2: snapvol backup vm1@tue NEW.qcow2 --since vm1@mon --base-file
#              MON.img: the same extents into a new qcow2 overlay on the mon
#              backup, written through qemu-nbd (nothing to copy first);
#   - nbdcopy: nbdcopy of the whole snapshot vm1@tue to a new file (it skips
#              holes through base:allocation: it reads all allocated data);
#   - nbdcopy-flush: the same with --flush (durable on return, as a backup is);
#   - null:    the same nbdcopy to null: (reads only, no file written).
# Throughput = bytes read / wall time (incr: the changed bytes; nbdcopy: the
# snapshot's allocated bytes).  Goal: incr (and incr-qcow2) >= 90% of
# nbdcopy's, and they read no byte outside the changed extents: the --json
# bytes_read must not exceed changed_bytes (checked; the run fails otherwise).
# Results: bench/results/backup-DATE.{md,tsv} (with this command line), also printed.
#
# Environment: SNAPVOL (default build-bench/cli/snapvol, else build/cli/snapvol),
# BENCH_TMPDIR (default /var/tmp; needs ~3 x (BASE_PERCENT+PERCENT) % of SIZE
# free), SIZE (1T), PERCENT (1), BASE_PERCENT (0.25), REPS (3), SEED (1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
SNAPVOL=${SNAPVOL:-$top/build-bench/cli/snapvol}
[ -x "$SNAPVOL" ] || SNAPVOL=$top/build/cli/snapvol
SIZE=${SIZE:-1T}
PERCENT=${PERCENT:-1}
BASE_PERCENT=${BASE_PERCENT:-0.25}
REPS=${REPS:-3}
SEED=${SEED:-1}
export PATH=/usr/bin:$PATH # Debian's python3 has the nbd module
tmp=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/snapvol-bench-backup.XXXXXX")
pool=$tmp/pool
stamp=$(date +%Y-%m-%d-%H%M%S)
out=$here/results/backup-$stamp.md
tsv=$here/results/backup-$stamp.tsv
srv=
cleanup() {
	[ -n "$srv" ] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
say() { echo "backup.sh: $*" >&2; }
now() { date +%s%N; }

sv() { "$SNAPVOL" --pool "$pool" "$@"; }
sv create vm1 --size "$SIZE" >/dev/null
"$SNAPVOL" --pool "$pool" serve 2>"$tmp/serve.log" &
srv=$!
for _ in $(seq 100); do [ -S "$pool/nbd.sock" ] && [ -S "$pool/control.sock" ] && break; sleep 0.1; done
sock=$pool/nbd.sock
bytes=$(sv --json info vm1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')

say "writing $BASE_PERCENT % of $SIZE, snapshot mon"
read -r base_bytes base_runs < <(/usr/bin/python3 "$here/backup.py" write "nbd+unix:///vm1?socket=$sock" "$bytes" "$BASE_PERCENT" "$SEED")
sv snapshot create vm1@mon >/dev/null
say "writing $PERCENT % in scattered runs, snapshot tue"
t0=$(now)
read -r chg_bytes chg_runs < <(/usr/bin/python3 "$here/backup.py" write "nbd+unix:///vm1?socket=$sock" "$bytes" "$PERCENT" "$((SEED + 1))")
t1=$(now)
sv snapshot create vm1@tue >/dev/null
say "wrote $chg_bytes bytes in $chg_runs runs in $(((t1 - t0) / 1000000)) ms"

say "full backup of vm1@mon"
t0=$(now)
sv --json backup vm1@mon "$tmp/mon.img" >"$tmp/full.json"
t1=$(now)
full_ms=$(((t1 - t0) / 1000000))
t0=$(now)
sv --json diff vm1@mon vm1@tue >"$tmp/diff.json"
t1=$(now)
diff_ms=$(((t1 - t0) / 1000000))
alloc=$(nbdinfo --map --totals "nbd+unix:///vm1@tue?socket=$sock" | awk '$3 == 0 { s += $1 } END { print s + 0 }')

printf 'rep\tmethod\tseconds\tbytes_read\tchanged_bytes\tmib_s\n' >"$tsv"
for rep in $(seq "$REPS"); do
	say "rep $rep: incremental backup"
	cp --sparse=always "$tmp/mon.img" "$tmp/inc.img"
	cp "$tmp/mon.img.snapvol.json" "$tmp/inc.img.snapvol.json"
	sync "$tmp/inc.img" # this file only: a global sync waits for others' frozen filesystems
	t0=$(now)
	sv --json backup vm1@tue "$tmp/inc.img" --since vm1@mon >"$tmp/inc.json"
	t1=$(now)
	read -r rd ch < <(/usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["bytes_read"], j["changed_bytes"])' "$tmp/inc.json")
	if [ "$rd" -gt "$ch" ]; then
		say "FAIL: the incremental read $rd bytes, more than the $ch that changed"
		exit 1
	fi
	s=$(echo "($t1 - $t0) / 1000000000" | bc -l)
	printf '%s\tincr\t%.3f\t%s\t%s\t%.1f\n' "$rep" "$s" "$rd" "$ch" "$(echo "$rd / $s / 1048576" | bc -l)" >>"$tsv"
	rm -f "$tmp/inc.img" "$tmp/inc.img.snapvol.json"

	say "rep $rep: incremental backup into a qcow2 overlay"
	rm -f "$tmp/inc.qcow2" "$tmp/inc.qcow2.snapvol.json"
	t0=$(now)
	sv --json backup vm1@tue "$tmp/inc.qcow2" --since vm1@mon --base-file "$tmp/mon.img" >"$tmp/incq.json"
	t1=$(now)
	read -r rd ch < <(/usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["bytes_read"], j["changed_bytes"])' "$tmp/incq.json")
	if [ "$rd" -gt "$ch" ]; then
		say "FAIL: the qcow2 incremental read $rd bytes, more than the $ch that changed"
		exit 1
	fi
	s=$(echo "($t1 - $t0) / 1000000000" | bc -l)
	printf '%s\tincr-qcow2\t%.3f\t%s\t%s\t%.1f\n' "$rep" "$s" "$rd" "$ch" "$(echo "$rd / $s / 1048576" | bc -l)" >>"$tsv"
	qsize=$(du -B1 "$tmp/inc.qcow2" | cut -f1)
	rm -f "$tmp/inc.qcow2" "$tmp/inc.qcow2.snapvol.json"

	say "rep $rep: nbdcopy of vm1@tue to a file"
	rm -f "$tmp/copy.img"
	t0=$(now)
	nbdcopy "nbd+unix:///vm1@tue?socket=$sock" "$tmp/copy.img"
	t1=$(now)
	s=$(echo "($t1 - $t0) / 1000000000" | bc -l)
	printf '%s\tnbdcopy\t%.3f\t%s\t-\t%.1f\n' "$rep" "$s" "$alloc" "$(echo "$alloc / $s / 1048576" | bc -l)" >>"$tsv"
	rm -f "$tmp/copy.img"

	say "rep $rep: nbdcopy --flush of vm1@tue to a file"
	rm -f "$tmp/copy.img"
	t0=$(now)
	nbdcopy --flush "nbd+unix:///vm1@tue?socket=$sock" "$tmp/copy.img"
	t1=$(now)
	s=$(echo "($t1 - $t0) / 1000000000" | bc -l)
	printf '%s\tnbdcopy-flush\t%.3f\t%s\t-\t%.1f\n' "$rep" "$s" "$alloc" "$(echo "$alloc / $s / 1048576" | bc -l)" >>"$tsv"
	rm -f "$tmp/copy.img"

	say "rep $rep: nbdcopy of vm1@tue to null:"
	t0=$(now)
	nbdcopy "nbd+unix:///vm1@tue?socket=$sock" null:
	t1=$(now)
	s=$(echo "($t1 - $t0) / 1000000000" | bc -l)
	printf '%s\tnull\t%.3f\t%s\t-\t%.1f\n' "$rep" "$s" "$alloc" "$(echo "$alloc / $s / 1048576" | bc -l)" >>"$tsv"
done

/usr/bin/python3 - "$tsv" "$out" <<PY
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = {}
for r in rows:
    by.setdefault(r[1], []).append(float(r[5]))
med = {k: statistics.median(v) for k, v in by.items()}
ratio = med["incr"] / med["nbdcopy"]
ratio_f = med["incr"] / med["nbdcopy-flush"]
ratio_q = med["incr-qcow2"] / med["nbdcopy"]
ratio_qf = med["incr-qcow2"] / med["nbdcopy-flush"]
incr = [r for r in rows if r[1] in ("incr", "incr-qcow2")]
ok_bytes = all(int(r[3]) <= int(r[4]) for r in incr)
with open(sys.argv[2], "w") as f:
    p = lambda *a: print(*a, file=f)
    p("# Incremental backup vs a full nbdcopy of the same snapshot")
    p()
    p("Command: \`$0\` with SIZE=$SIZE PERCENT=$PERCENT BASE_PERCENT=$BASE_PERCENT REPS=$REPS SEED=$SEED")
    p(f"Machine: $(nproc) cores, $(uname -r), nbdcopy $(nbdcopy --version | head -1 | awk '{print $2}'), {'$stamp'}")
    p()
    p("| what | value |")
    p("|---|---|")
    p("| volume | $SIZE ($bytes bytes), 4 KiB chunks |")
    p("| data before vm1@mon | $base_bytes bytes in $base_runs runs |")
    p("| changed mon -> tue | $chg_bytes bytes written in $chg_runs scattered runs (16-512 KiB) |")
    p(f"| changed extents (snapvol diff) | {incr[0][4]} bytes, listed in ${diff_ms} ms |")
    p("| allocated in vm1@tue (what nbdcopy reads) | $alloc bytes |")
    p("| full backup of vm1@mon (once) | ${full_ms} ms |")
    p("| qcow2 overlay on disk (last rep, du) | ${qsize:-?} bytes |")
    p()
    p("| rep | method | seconds | bytes read | changed bytes | MiB/s |")
    p("|---|---|---|---|---|---|")
    for r in rows:
        p("| " + " | ".join(r) + " |")
    p()
    p(f"Median throughput: incremental {med['incr']:.1f} MiB/s on the changed bytes; "
      f"nbdcopy {med['nbdcopy']:.1f} MiB/s to a file, {med['nbdcopy-flush']:.1f} MiB/s with "
      f"--flush (durable, as the backup is: it fsyncs before it records the backup complete), "
      f"{med['null']:.1f} MiB/s to null:; qcow2 overlay incremental {med['incr-qcow2']:.1f} MiB/s.")
    p()
    p(f"- Goal: incremental >= 90% of nbdcopy: {ratio * 100:.0f}% of plain nbdcopy "
      f"({'met' if ratio >= 0.9 else 'NOT met'}), {ratio_f * 100:.0f}% of nbdcopy --flush "
      f"({'met' if ratio_f >= 0.9 else 'NOT met'})")
    p(f"- Goal: qcow2 overlay incremental >= 90% of nbdcopy: {ratio_q * 100:.0f}% of plain nbdcopy "
      f"({'met' if ratio_q >= 0.9 else 'NOT met'}), {ratio_qf * 100:.0f}% of nbdcopy --flush "
      f"({'met' if ratio_qf >= 0.9 else 'NOT met'})")
    p(f"- Goal: no byte read outside the changed extents (bytes_read <= changed_bytes in every run): "
      f"{'met' if ok_bytes else 'NOT met'}")
PY
cat "$out"
say "results: $out, $tsv"
