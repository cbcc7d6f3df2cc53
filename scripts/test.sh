#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (`make check` calls this).
#
#   1. install missing packages (scripts/setup-deps.sh)
#   2. lint: clang-format on every C file, cppcheck
#   3. normal build (-Werror): unit + integration tests
#   4. ASan+UBSan build: unit + integration tests again
#   5. TSan build: unit tests and the concurrency-heavy integration tests
#   6. clang + libFuzzer + ASan/UBSan build: a smoke run of every fuzz target
# and prints one closing line "N passed, N failed, N skipped" over all runs.
# SNAPVOL_TEST_BUILDS="normal asan tsan" picks the builds; SNAPVOL_TEST_ARGS
# is passed to "meson test" (e.g. "--suite unit").
set -uo pipefail
cd "$(dirname "$0")/.."
top=$PWD

bash scripts/setup-deps.sh || exit 1

builds=${SNAPVOL_TEST_BUILDS:-normal asan tsan fuzz}
failed_steps=()
passed=0 failed=0 skipped=0

count_results() {  # count_results BUILDDIR
  local log=$1/meson-logs/testlog.json
  [ -f "$log" ] || return 0
  read -r p f s < <(/usr/bin/python3 - "$log" <<'PY'
import json, sys
p = f = s = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL"): p += 1
    elif r == "SKIP": s += 1
    else: f += 1
print(p, f, s)
PY
)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

echo "== lint"
if ! bash scripts/lint.sh; then
  failed_steps+=("lint"); failed=$((failed + 1))
else
  passed=$((passed + 1))
fi

for b in $builds; do
  dir=build-test-$b
  case $b in
    normal) opts=(-Dbuildtype=debugoptimized) ;;
    asan)   opts=(-Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false) ;;
    tsan)   opts=(-Dbuildtype=debug -Db_sanitize=thread -Db_lundef=false) ;;
    fuzz)   opts=(-Dbuildtype=debug -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false) ;;
    *) echo "unknown build $b"; exit 2 ;;
  esac
  echo "== build $b"
  rm -rf "$dir"
  cc=${CC:-cc}
  [ "$b" = fuzz ] && cc=clang
  if ! CC=$cc meson setup "$dir" "${opts[@]}" >"$dir.setup.log" 2>&1 ||
     ! ninja -C "$dir" >"$dir.build.log" 2>&1; then
    cat "$dir.setup.log" "$dir.build.log" 2>/dev/null | tail -50
    failed_steps+=("build-$b"); failed=$((failed + 1))
    continue
  fi
  echo "== test $b"
  targs=()
  # TSan: unit tests plus the integration tests marked for it (many
  # connections and threads); the rest add nothing under TSan but time.
  # (and shorter randomized runs: TSan makes every step ~10x slower)
  if [ "$b" = fuzz ]; then
    targs=(--suite fuzz)
  elif [ "$b" = tsan ]; then
    targs=(--suite unit --suite concurrency --timeout-multiplier 3)
    export SNAPVOL_STEPS=300
  else
    unset SNAPVOL_STEPS
  fi
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$top/tests/tsan.supp"
  # shellcheck disable=SC2086
  if ! meson test -C "$dir" --print-errorlogs --num-processes 2 "${targs[@]}" ${SNAPVOL_TEST_ARGS:-}; then
    failed_steps+=("test-$b")
  fi
  count_results "$dir"
done

echo
[ ${#failed_steps[@]} -gt 0 ] && echo "failed steps: ${failed_steps[*]}"
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ ${#failed_steps[@]} -eq 0 ] && [ "$failed" -eq 0 ]
