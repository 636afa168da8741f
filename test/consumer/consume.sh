#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds consumer projects against an installed netloop and runs each (one echo over loopback).
# Usage: consume.sh SOURCE_DIR WORK_DIR PREFIX LIBDIR CONSUMER...
#   PREFIX, LIBDIR: where netloop is installed (LIBDIR holds libnetloop.so and pkgconfig/)
#   CONSUMER: pkg-config (a plain compiler line), cmake-pkg-config (pkg_check_modules),
#             find-package (CMake find_package(netloop)), meson (dependency('netloop'))
set -euo pipefail
src=$1 work=$2 prefix=$3 libdir=$4
shift 4
export PKG_CONFIG_PATH="$libdir/pkgconfig"
export CMAKE_PREFIX_PATH="$prefix"
export LD_LIBRARY_PATH="$libdir"
consumers="$work/consumers"
rm -rf "$consumers"
cp -r "$src/test/consumer" "$consumers"

quiet() {  # quiet LOG COMMAND...: runs COMMAND, shows its output only if it fails
    local log=$1
    shift
    "$@" >"$log" 2>&1 || { cat "$log"; echo "failed: $*" >&2; return 1; }
}

for consumer in "$@"; do
    case $consumer in
        pkg-config)
            # shellcheck disable=SC2046 # word splitting of pkg-config's flags is intended
            quiet "$work/pkg-config.log" c++ -std=c++20 -Wall -Wextra -Werror "$consumers/app.cpp" \
                -o "$work/app-pkg-config" $(pkg-config --cflags --libs netloop)
            app="$work/app-pkg-config"
            ;;
        cmake-pkg-config | find-package)
            dir=$([ "$consumer" = find-package ] && echo find_package || echo installed)
            quiet "$work/$consumer.log" cmake -S "$consumers/$dir" -B "$work/build-$consumer" \
                -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror"
            quiet "$work/$consumer-build.log" cmake --build "$work/build-$consumer"
            app="$work/build-$consumer/app"
            ;;
        meson)
            quiet "$work/meson.log" meson setup "$work/build-meson" "$consumers/meson" \
                --wrap-mode=nodownload -Dwerror=true
            quiet "$work/meson-build.log" ninja -C "$work/build-meson"
            app="$work/build-meson/app"
            ;;
        *)
            echo "unknown consumer $consumer" >&2
            exit 2
            ;;
    esac
    echo "$consumer:"
    timeout 30 "$app"
done
