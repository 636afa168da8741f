#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Follows README "Install -> Meson" to the letter: a fresh project whose meson.build is exactly the
# README's block after the marker `<!-- consumer-test: meson-subproject -->`, netloop in
# subprojects/netloop, and test/consumer/app.cpp as app.cpp. It must build and run; netloop must be
# linked in statically, say so in its summary, and install nothing into the parent's install.
set -euo pipefail
src=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/consumer/subproject/subprojects"
cp "$src/test/consumer/app.cpp" "$work/consumer/subproject/app.cpp"
# The fenced block right after the marker, without its fences: the README and this test cannot
# drift apart.
awk '
    found == 0 && index($0, "<!-- consumer-test: meson-subproject -->") == 1 { found = 1; next }
    found == 1 && /^```/ { found = 2; next }
    found == 2 && /^```/ { found = 3; exit }
    found == 2 { print }
    END { if (found != 3) exit 1 }
' "$src/README.md" >"$work/consumer/subproject/meson.build" || {
    echo "README.md: no complete block after <!-- consumer-test: meson-subproject -->"
    exit 1
}
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
# The summary names the library kind netloop built: static as a subproject.
if ! grep -Eq '^ *library *: static' "$work/setup.log"; then
    echo "netloop's summary does not say it built a static library:"
    cat "$work/setup.log"
    exit 1
fi

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
