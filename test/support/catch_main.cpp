// SPDX-License-Identifier: MIT
// main() for Catch2 2.13 (Catch2 3 brings its own through catch2-with-main).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
