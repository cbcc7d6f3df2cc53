#!/usr/bin/env bash
# lint.sh: style and static analysis, as CI runs them.
#  - clang-format: every C file follows .clang-format (no diff)
#  - cppcheck: no warnings (style/performance/portability included)
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
mapfile -t files < <(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*')
if ! clang-format --dry-run -Werror "${files[@]}" 2>lint-format.log; then
  echo "clang-format: these files differ from .clang-format (run: clang-format -i FILE):"
  grep -oE "^[^: ]+\.[ch]" lint-format.log | sort -u
  rc=1
fi
rm -f lint-format.log
if ! cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
     --inline-suppr --std=c11 -D_GNU_SOURCE -I common -I store -I engine -I nbd -I ctl \
     --include=scripts/cppcheck-defs.h \
     --suppress=missingIncludeSystem "${files[@]}"; then
  echo "cppcheck: warnings above"
  rc=1
fi
exit $rc
