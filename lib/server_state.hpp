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

    // Accept back-off after EMFILE and friends: the current delay (zero when healthy), and the
    // timers of next() calls waiting it out, so close() can wake them.
    std::chrono::milliseconds backoff{0};
    std::list<asio::steady_timer*> backoff_waits;

    // Closes on the calling thread if it runs the loop, else posts the close to the loop.
    void close() noexcept;

private:
    void close_here() noexcept;
};

}  // namespace netloop::detail
