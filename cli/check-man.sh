#!/bin/sh
# check-man.sh SNAPVOL MANPAGE: the man page matches --help.
#
# Every command that "snapvol --help" lists has a ".SS" section in the man
# page; every option that "snapvol --help" or "snapvol COMMAND --help"
# shows (long and short) is documented in it; every option the man page
# defines (an option heading after .TP) exists in some --help; and the page
# renders without warnings.  Run by "meson test" (suite unit).
set -eu
snapvol=$1
man=$2
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The man page as plain text: \- -> -, font escapes dropped.
sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\&//g' "$man" >"$tmp/man.txt"

"$snapvol" --help >"$tmp/help.txt"
commands=$(sed -n '/^Commands:/,/^$/p' "$tmp/help.txt" | awk 'NF > 1 { print $1 }')
[ -n "$commands" ] || { echo "no commands found in snapvol --help"; exit 1; }
for c in $commands; do
    if ! grep -Eq "^\.SS \"?$c( |\"|\$)" "$tmp/man.txt"; then
        echo "command '$c' has no .SS section in $man"
        fail=1
    fi
    "$snapvol" "$c" --help >>"$tmp/help.txt"
done

# Long options in any help text, documented in the man page.
for o in $(grep -Eo -- '--[a-z][a-z-]*' "$tmp/help.txt" | sort -u); do
    if ! grep -Eq -- "$o([^a-z-]|\$)" "$tmp/man.txt"; then
        echo "option $o (from --help) is not in $man"
        fail=1
    fi
done
# Short options ("-v, --verbose") likewise.
for o in $(grep -Eo -- '(^|[[:space:]])-[a-zA-Z],' "$tmp/help.txt" | tr -d ' ,' | sort -u); do
    if ! grep -Eq -- "(^|[^a-z-])$o([^a-z-]|\$)" "$tmp/man.txt"; then
        echo "option $o (from --help) is not in $man"
        fail=1
    fi
done

# Options the man page defines (the line after .TP), known to --help.
for o in $(awk 'prev == ".TP" { print } { prev = $0 }' "$tmp/man.txt" |
           grep -Eo -- '--[a-z][a-z-]*' | sort -u); do
    if ! grep -Eq -- "$o([^a-z-]|\$)" "$tmp/help.txt"; then
        echo "option $o is documented in $man but not in any --help"
        fail=1
    fi
done

# The page renders without warnings.
if command -v man >/dev/null 2>&1; then
    warnings=$(MANWIDTH=80 man --warnings -E UTF-8 -l "$man" 2>&1 >/dev/null || true)
    if [ -n "$warnings" ]; then
        echo "man --warnings -l $man:"
        echo "$warnings"
        fail=1
    fi
fi

[ $fail -eq 0 ] && echo "ok: $man documents every command and option of snapvol --help"
exit $fail
