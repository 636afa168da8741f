#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds test/consumer/subproject with netloop as its subproject and runs the app; netloop must
# be linked in statically and install nothing into the parent's install.
set -euo pipefail
src=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/consumer/subproject/subprojects"
cp "$src/test/consumer/app.cpp" "$work/consumer/"
cp "$src/test/consumer/subproject/meson.build" "$work/consumer/subproject/"
# A clean copy of the sources: no build directories of the outer tree come along.
dest="$work/consumer/subproject/subprojects/netloop"
mkdir -p "$dest"
if git -C "$src" rev-parse >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -C "$dest" -xf -
else
    tar -C "$src" --exclude='./build*' -cf - . | tar -C "$dest" -xf -
fi
cd "$work/consumer/subproject"
meson setup build --wrap-mode=nodownload -Dwerror=true >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }
ninja -C build >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
timeout 30 ./build/app

# Nothing of netloop in the parent's install: not listed by a dry run, nothing under a DESTDIR.
meson install -C build --dry-run >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
if grep -i 'netloop' "$work/install.log" | grep -iv 'netloop-consumer' | grep -q .; then
    echo "meson install (dry run) lists netloop files:"
    cat "$work/install.log"
    exit 1
fi
meson install -C build --destdir "$work/dest" >>"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
if [ -d "$work/dest" ] && find "$work/dest" -ipath '*netloop*' | grep -q .; then
    echo "meson install put netloop files under DESTDIR:"
    find "$work/dest"
    exit 1
fi
# Built static: no shared libnetloop for the installed app to miss.
if find build/subprojects/netloop -name 'libnetloop.so*' | grep -q .; then
    echo "netloop was built as a shared library inside the parent"
    exit 1
fi
