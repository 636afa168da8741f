// SPDX-License-Identifier: MIT
// The Asio configuration netloop needs, and the Asio names that moved between versions.
#pragma once

#include <netloop/detail/config.hpp>

#include <asio/awaitable.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/version.hpp>

// ASIO_HAS_CO_AWAIT and ASIO_HAS_STD_COROUTINE are defined in one place, netloop's meson.build,
// which hands them to every user through its Meson dependency and pkg-config file: they change
// Asio's types, so every translation unit must see the same values before any Asio header.
// Asio 1.22 does not detect coroutines under clang 14 by itself.
#if !defined(ASIO_HAS_CO_AWAIT)
#error \
    "netloop needs Asio's C++20 coroutines: define ASIO_HAS_CO_AWAIT=1 and ASIO_HAS_STD_COROUTINE=1 (pkg-config --cflags netloop has them)"
#endif

#if ASIO_VERSION >= 102300
#include <asio/as_tuple.hpp>
#else
#include <asio/experimental/as_tuple.hpp>
#endif

namespace netloop::detail {

#if ASIO_VERSION >= 102300
using asio::as_tuple;
#else
using asio::experimental::as_tuple;
#endif

/// Completion token: await an Asio operation without throwing, as `auto [ec, ...] = co_await`.
inline constexpr auto use_tuple = as_tuple(asio::use_awaitable);

}  // namespace netloop::detail
