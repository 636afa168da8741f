#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Compares the symbols a shared libnetloop exports with the list kept in the repository, so that
# an export added or removed by accident shows up as a failing test (and the list's diff in review).
# Usage: check-symbols.sh LIBRARY LIST [--update]   (--update rewrites LIST from LIBRARY)
#
# Listed: the library's own definitions in namespace netloop (nm types T, D, B, R), demangled.
# Not listed: weak symbols (inline functions and template instantiations from the headers, which
# every user compiles too and which compilers emit out of line as they see fit) and the Asio, std
# and spdlog code the library instantiates.
set -euo pipefail
lib=$1 list=$2 mode=${3:-check}

exported() {
    nm -D --defined-only -C "$lib" |
        awk '$2 ~ /^[TDBR]$/ { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
        grep -E '^((vtable|typeinfo|typeinfo name|VTT) for )?netloop::' |
        LC_ALL=C sort -u
}

header='# The symbols libnetloop.so exports (see test/abi/check-symbols.sh), one a line, sorted.
# A change here is a change of the ABI: an added line is a new export, a removed one breaks
# programs linked against an older build unless the SONAME changes (meson.build: version).
# Regenerate after an intended change: meson compile -C <builddir> abi-update'

if [ "$mode" = --update ]; then
    { echo "$header"; exported; } >"$list"
    echo "wrote $(grep -vc '^#' "$list") symbols to $list"
    exit 0
fi

if ! diff -u --label "$list (kept)" --label "$lib (built)" <(grep -v '^#' "$list") <(exported); then
    echo "the library's exports differ from $list (- kept, + built): if the change is meant," >&2
    echo "run 'meson compile -C <builddir> abi-update' and commit the list; if not, fix the" >&2
    echo "NETLOOP_API marks" >&2
    exit 1
fi
