// SPDX-License-Identifier: MIT
// The state behind a server: the acceptor, its counters, and how it closes from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <list>
#include <memory>

#include <netloop/address.hpp>
#include <netloop/loop.hpp>

#include "connection_impl.hpp"

namespace netloop::detail {

struct server_state : std::enable_shared_from_this<server_state> {
    server_state(loop& l, asio::ip::tcp::acceptor a);

    loop& owner;
    asio::ip::tcp::acceptor acceptor;
    address local;
    std::atomic<bool> closed{false};
    std::shared_ptr<server_counters> counters = std::make_shared<server_counters>();

    // Accept back-off after EMFILE and friends: the current delay (zero when healthy).
    std::chrono::milliseconds backoff{0};
    // Timers that tasks wait on for this server (a next() backing off, a serve() paused at
    // its limit): close() cancels them, so the waiters see the close at once.
    std::list<asio::steady_timer*> wake_on_close;

    // Closes on the calling thread if it runs the loop, else posts the close to the loop.
    void close() noexcept;

private:
    void close_here() noexcept;
};

}  // namespace netloop::detail
