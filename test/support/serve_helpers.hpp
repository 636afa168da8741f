// SPDX-License-Identifier: MIT
// Helpers for serve() tests: a serve() run in the background, bounded waits, raw Asio clients.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/write.hpp>

#include <netloop/netloop.hpp>

#include "loopback.hpp"

namespace netloop::test {

using namespace std::chrono_literals;

// How a serve() run in the background ended.
struct serve_outcome {
    bool done = false;
    std::exception_ptr failure;
    std::chrono::steady_clock::time_point ended{};
};

// Awaits `s.serve(handler, options)` and records how it ended in `out`.
inline task<> serve_into(server& s, connection_handler handler, serve_options options,
                         serve_outcome& out) {
    try {
        co_await s.serve(std::move(handler), options);
    } catch (...) {
        out.failure = std::current_exception();
    }
    out.ended = std::chrono::steady_clock::now();
    out.done = true;
}

// Awaits `op` and returns the errc of the netloop::error it throws (errc{} if none).
template <typename T>
task<errc> kind_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const error& e) {
        co_return e.kind();
    }
    co_return errc{};
}

// Awaits `op` and returns the netloop::error it throws as {kind, errno} ({errc{}, 0} if none).
template <typename T>
task<std::pair<errc, int>> failure_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const error& e) {
        co_return std::pair<errc, int>{e.kind(), e.sys_errno()};
    }
    co_return std::pair<errc, int>{errc{}, 0};
}

// Checks `done()` every 2 ms until it holds or `limit` passes; returns `done()`. A bounded wait
// for a condition other tasks bring about (the watchdog bounds it too).
template <typename Pred>
task<bool> eventually(Pred done, duration limit = 20s) {
    auto until = std::chrono::steady_clock::now() + limit;
    asio::steady_timer t(co_await asio::this_coro::executor);
    while (!done() && std::chrono::steady_clock::now() < until) {
        t.expires_after(2ms);
        asio::error_code ignored;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return done();
}

inline std::string text(std::span<const std::byte> b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Sends `msg` and returns what came back (each step bounded by 5 s).
inline task<std::string> echo_once(connection& c, std::string_view msg) {
    co_await c.write(msg, 5s);
    auto back = co_await read_n(c, msg.size(), 5s);
    co_return text(back);
}

// A raw Asio operation bounded by a timer that cancels the socket. The timer's handler only
// touches the socket while the operation is still pending (`pending` is shared with it).
class socket_bound {
public:
    socket_bound(asio::ip::tcp::socket& s, duration timeout)
        : pending_(std::make_shared<bool>(true)), timer_(s.get_executor(), timeout) {
        timer_.async_wait([pending = pending_, &s](const asio::error_code& ec) {
            if (!ec && *pending) {
                asio::error_code ignored;
                s.cancel(ignored);
            }
        });
    }
    ~socket_bound() {
        *pending_ = false;
        timer_.cancel();
    }
    socket_bound(const socket_bound&) = delete;
    socket_bound& operator=(const socket_bound&) = delete;

private:
    std::shared_ptr<bool> pending_;
    asio::steady_timer timer_;
};

// A client socket bound to `local_host` (port 0) and connected to `to`: a connection from
// 127.0.0.2, say, which netloop::connect cannot make yet. `receive_buffer` > 0 sets SO_RCVBUF
// before the connect. Throws std::system_error on failure or after `timeout`.
inline task<asio::ip::tcp::socket> raw_connect(const address& to, duration timeout,
                                               const std::string& local_host = {},
                                               int receive_buffer = 0) {
    asio::ip::tcp::socket s(co_await asio::this_coro::executor);
    s.open(to.endpoint().protocol());
    if (!local_host.empty()) {
        s.bind(asio::ip::tcp::endpoint(asio::ip::make_address(local_host), 0));
    }
    if (receive_buffer > 0) s.set_option(asio::socket_base::receive_buffer_size(receive_buffer));
    asio::error_code ec;
    {
        socket_bound bound(s, timeout);
        co_await s.async_connect(to.endpoint(), asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec) throw std::system_error(ec, "raw connect " + to.to_string());
    co_return std::move(s);
}

// Writes all of `bytes`; the error (operation_aborted after `timeout`), or none.
inline task<asio::error_code> raw_write(asio::ip::tcp::socket& s, std::span<const std::byte> bytes,
                                        duration timeout = 10s) {
    asio::error_code ec;
    socket_bound bound(s, timeout);
    co_await asio::async_write(s, asio::buffer(bytes.data(), bytes.size()),
                               asio::redirect_error(asio::use_awaitable, ec));
    co_return ec;
}

// Reads exactly `out.size()` bytes; the error (eof, operation_aborted after `timeout`), or none.
inline task<asio::error_code> raw_read(asio::ip::tcp::socket& s, std::span<std::byte> out,
                                       duration timeout = 10s) {
    asio::error_code ec;
    socket_bound bound(s, timeout);
    co_await asio::async_read(s, asio::buffer(out.data(), out.size()),
                              asio::redirect_error(asio::use_awaitable, ec));
    co_return ec;
}

// Reads until the peer closes or fails, appending to `out`; the error that ended it (eof after
// an orderly close, operation_aborted after `timeout`).
inline task<asio::error_code> raw_read_to_end(asio::ip::tcp::socket& s, std::vector<std::byte>& out,
                                              duration timeout = 10s) {
    socket_bound bound(s, timeout);
    std::array<std::byte, 65536> buf;
    for (;;) {
        asio::error_code ec;
        auto n = co_await s.async_read_some(asio::buffer(buf),
                                            asio::redirect_error(asio::use_awaitable, ec));
        out.insert(out.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
        if (ec) co_return ec;
    }
}

}  // namespace netloop::test
