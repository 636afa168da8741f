#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs netloop into a temporary prefix with Meson, then builds the app against it: with a
# plain compiler command line (pkg-config), with CMake's pkg_check_modules, and with CMake's
# find_package(netloop).
# Only what is installed is built (the library), at -O0: this checks the installation, and the
# test command's other stages compile everything else, optimised too.
set -euo pipefail
src=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
meson setup "$work/build" "$src" --wrap-mode=nodownload --prefix="$prefix" --libdir=lib \
    -Dtests=disabled -Dbench=false -Doptimization=0 >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }
# -Dtests=disabled says so in the summary, and builds no test.
if ! grep -Eq '^ *tests *: *False$' "$work/setup.log"; then
    echo "meson's summary does not say 'tests : False' with -Dtests=disabled:"
    cat "$work/setup.log"
    exit 1
fi
{ meson compile -C "$work/build" netloop && meson install -C "$work/build" --no-rebuild; } \
    >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
if [ -e "$work/build/test" ]; then
    echo "-Dtests=disabled still built tests: $(ls "$work/build/test")"
    exit 1
fi
# version.hpp is generated from meson.build's version, the one pkg-config reports.
version=$(sed -n 's/^#define NETLOOP_VERSION_STRING "\(.*\)"$/\1/p' "$prefix/include/netloop/version.hpp")
if [ "$version" != "$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion netloop)" ]; then
    echo "installed version.hpp says '$version', pkg-config says something else"
    exit 1
fi
"$src/test/consumer/consume.sh" "$src" "$work" "$prefix" "$prefix/lib" \
    pkg-config cmake-pkg-config find-package
