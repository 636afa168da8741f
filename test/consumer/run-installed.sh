#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs netloop into a temporary prefix with Meson, then builds the app against it: with a
# plain compiler command line (pkg-config), with CMake's pkg_check_modules, and with CMake's
# find_package(netloop).
set -euo pipefail
src=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
meson setup "$work/build" "$src" --wrap-mode=nodownload --prefix="$prefix" --libdir=lib \
    -Dtests=disabled -Dbench=false >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }
ninja -C "$work/build" install >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
"$src/test/consumer/consume.sh" "$src" "$work" "$prefix" "$prefix/lib" \
    pkg-config cmake-pkg-config find-package
