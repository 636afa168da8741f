#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds test/consumer/subproject with netloop as its subproject and runs the app.
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
