#!/bin/sh
# SPDX-License-Identifier: MIT
# first-error.sh EXPECTED -- COMPILER [FLAGS...]: compiles a one-line file that includes
# <netloop/netloop.hpp> and passes if the compile fails and its first error line holds EXPECTED.
set -u
expected=$1
shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo '#include <netloop/netloop.hpp>' >"$work/app.cpp"
if "$@" -fsyntax-only "$work/app.cpp" >"$work/out" 2>&1; then
    echo "compiled without an error; expected: $expected"
    exit 1
fi
first=$(grep -m1 'error' "$work/out")
case "$first" in
*"$expected"*) exit 0 ;;
esac
echo "first error line: $first"
echo "expected it to hold: $expected"
head -20 "$work/out"
exit 1
