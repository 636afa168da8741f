#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds netloop's Debian packages from a clean copy of the sources (debian/, without running
# the suite), checks them with lintian (no errors), unpacks them into a scratch root, and builds
# the app against the unpacked files: a plain compiler line with pkg-config, CMake's
# find_package(netloop), and Meson's dependency('netloop').
set -euo pipefail
src=$(cd "$1" && pwd)
if ! command -v dpkg-buildpackage >/dev/null; then
    echo "dpkg-buildpackage not found: not a Debian system" >&2
    exit 77
fi
for tool in dh lintian cmake; do
    command -v "$tool" >/dev/null || { echo "$tool not found (scripts/setup test installs it)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A clean copy of the sources: no build directories of the outer tree come along.
tree="$work/netloop"
mkdir -p "$tree"
if git -C "$src" rev-parse >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -C "$tree" -xf -
else
    tar -C "$src" --exclude='./build*' --exclude='./obj-*' -cf - . | tar -C "$tree" -xf -
fi

# noopt (-O0): this checks the packaging; the test command builds the same code optimised in
# its release stage, and a real package build (without noopt) is -O2 as usual.
(cd "$tree" && DEB_BUILD_OPTIONS="nocheck noopt parallel=2" nice -n 5 dpkg-buildpackage -b -us -uc) \
    >"$work/dpkg-buildpackage.log" 2>&1 || { tail -100 "$work/dpkg-buildpackage.log"; exit 1; }

changes=$(echo "$work"/netloop_*.changes)
lintian --fail-on error "$changes" >"$work/lintian.log" 2>&1 || { cat "$work/lintian.log"; exit 1; }
if grep -q '^E: ' "$work/lintian.log"; then
    cat "$work/lintian.log"
    exit 1
fi
echo "lintian (no errors):"
grep -v '^running with root privileges' "$work/lintian.log" || true

root="$work/root"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$root"
done
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir="$root/usr/lib/$multiarch"
for file in "$libdir/libnetloop.so.0" "$libdir/libnetloop.a" "$libdir/cmake/netloop/netloopConfig.cmake" \
    "$root/usr/bin/netloop-echo" "$root/usr/lib/systemd/system/netloop-daemon.socket"; do
    [ -e "$file" ] || { echo "missing from the packages: ${file#"$root"}" >&2; exit 1; }
done
# The pkg-config file names its install prefix (/usr): point it at the scratch root. The CMake
# configuration finds its prefix from where it lies.
sed -i "s|^prefix=/usr\$|prefix=$root/usr|" "$libdir/pkgconfig/netloop.pc"

"$src/test/consumer/consume.sh" "$src" "$work" "$root/usr" "$libdir" pkg-config find-package meson
