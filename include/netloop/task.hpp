// SPDX-License-Identifier: MIT
// task<T>, the coroutine type of netloop, and the duration type of its timeouts.
#pragma once

#include <netloop/detail/config.hpp>

#include <chrono>

#include <netloop/detail/asio.hpp>

namespace netloop {

/// A coroutine returning `T`: exactly `asio::awaitable<T>`, so a task can `co_await` any Asio
/// operation (timers, resolvers, Beast streams) next to netloop's own.
template <typename T = void>
using task = asio::awaitable<T>;

/// The type of every timeout: any `std::chrono` duration converts to it (`30s`, `250ms`).
using duration = std::chrono::steady_clock::duration;

/// A timeout that never expires: the call waits as long as it takes.
inline constexpr duration no_timeout = duration::max();

}  // namespace netloop
