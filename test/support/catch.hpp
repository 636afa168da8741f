// SPDX-License-Identifier: MIT
// One include for Catch2 2.13 and 3.x: the tests use only what both share.
#pragma once

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#else
#include <catch2/catch.hpp>
#endif
