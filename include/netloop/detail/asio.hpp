// SPDX-License-Identifier: MIT
// The Asio configuration netloop needs, and the Asio names that moved between versions.
#pragma once

// clang 14 with Asio 1.22 does not detect C++20 coroutines on its own.
#if defined(__clang__) && defined(__cpp_impl_coroutine)
#ifndef ASIO_HAS_CO_AWAIT
#define ASIO_HAS_CO_AWAIT 1
#endif
#ifndef ASIO_HAS_STD_COROUTINE
#define ASIO_HAS_STD_COROUTINE 1
#endif
#endif

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

#if !defined(ASIO_HAS_CO_AWAIT)
#error \
    "netloop needs C++20 coroutines in Asio: compile with -std=c++20 (clang: include netloop first)"
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
