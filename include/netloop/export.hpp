// SPDX-License-Identifier: MIT
// NETLOOP_API: what the shared library exports (it is built with hidden visibility).
#pragma once

/// Marks a public class or function of netloop: the shared library is built with
/// `-fvisibility=hidden`, so only what carries this mark is exported. The exported set is
/// kept in test/abi/netloop.symbols and checked by the `abi` test.
#if defined(__GNUC__) || defined(__clang__)
#define NETLOOP_API __attribute__((visibility("default")))
#else
#define NETLOOP_API
#endif
