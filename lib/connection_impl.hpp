// SPDX-License-Identifier: MIT
// The state behind a connection: socket, per-direction deadlines, traffic counters.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <netloop/address.hpp>
#include <netloop/connection.hpp>
#include <netloop/error.hpp>
#include <netloop/loop.hpp>
#include <netloop/task.hpp>

#include "endpoint.hpp"
#include "tls.hpp"

namespace netloop::detail {

// What one server has done. One writer (the loop thread), readers on any thread: relaxed
// load+store, no locked instruction on the hot path.
struct server_counters {
    using counter = std::atomic<std::uint64_t>;
    counter accepted{0};
    counter rejected{0};
    counter active{0};
    counter peak_active{0};
    counter bytes_read{0};
    counter bytes_written{0};
    counter accept_errors{0};
    counter handshake_failures{0};

    static std::uint64_t get(const counter& c) noexcept {
        return c.load(std::memory_order_relaxed);
    }
    static void set(counter& c, std::uint64_t v) noexcept { c.store(v, std::memory_order_relaxed); }
    static void add(counter& c, std::uint64_t n) noexcept { set(c, get(c) + n); }

    void opened() noexcept {
        add(active, 1);
        if (get(active) > get(peak_active)) set(peak_active, get(active));
    }
    void closed() noexcept { set(active, get(active) - 1); }
};

// The deadline of one direction (read or write). The timer is armed lazily: an operation that
// finishes before the deadline leaves it running, the next operation only moves `at`, and the
// timer re-arms itself when it fires early. A busy connection thus touches its timer about once
// per timeout period, not once per call.
struct deadline {
    explicit deadline(asio::io_context& context) : timer(context) {}

    asio::steady_timer timer;
    asio::cancellation_signal signal;  // cancels the pending operation of this direction
    std::chrono::steady_clock::time_point at{};
    bool pending = false;  // an operation of this direction is in flight
    bool armed = false;    // a wait on `timer` is outstanding
    bool expired = false;  // the pending operation was cancelled by the deadline
};

// Whole-connection bounds set by serve(): no byte in either direction for `idle`, or the
// connection older than `hard_deadline`. One lazily re-armed timer serves both.
struct connection_limits {
    explicit connection_limits(asio::io_context& context) : timer(context) {}

    asio::steady_timer timer;
    duration idle = no_timeout;
    std::chrono::steady_clock::time_point last_activity{};
    std::chrono::steady_clock::time_point hard_deadline =
        std::chrono::steady_clock::time_point::max();
    bool armed = false;

    [[nodiscard]] std::chrono::steady_clock::time_point due() const noexcept;
};

struct connection_impl : std::enable_shared_from_this<connection_impl> {
    connection_impl(loop& l, stream_socket s, std::shared_ptr<server_counters> c = nullptr);

    loop& owner;
    stream_socket socket;
#if NETLOOP_HAS_TLS
    // Over TLS: the stream on top of `socket` (destroyed first), and the context it needs.
    std::shared_ptr<tls_state> tls_settings;
    std::unique_ptr<tls_stream> tls;
#endif
    address remote;
    address local;
    deadline reader;
    deadline writer;
    std::shared_ptr<server_counters> counters;
    std::unique_ptr<connection_limits> limits;  // only under serve() with idle/deadline bounds
    duration linger_timeout = std::chrono::seconds(2);
    // The framing buffer (read_until, fill): bytes [read_begin, read_end) are read but not yet
    // consumed; `pending_consume` is the last frame handed out, consumed by the next read call.
    std::vector<std::byte> read_buffer;
    std::size_t read_begin = 0;
    std::size_t read_end = 0;
    std::size_t pending_consume = 0;
    bool closed = false;
    bool limit_expired = false;  // closed by idle_timeout or connection_deadline

    // Starts the clock of `d` for an operation that may take `timeout`.
    void begin(deadline& d, duration timeout);
    void end(deadline& d) noexcept {
        d.pending = false;
        touch();
    }

    [[nodiscard]] bool is_tls() const noexcept {
#if NETLOOP_HAS_TLS
        return tls != nullptr;
#else
        return false;
#endif
    }

    [[nodiscard]] std::span<const std::byte> buffered() const noexcept;
    void consume(std::size_t n) noexcept;
    void settle() noexcept;  // consumes the frame handed out last
    std::size_t take_buffered(std::span<std::byte> out) noexcept;

    // Records activity for the idle bound (no-op without limits).
    void touch() noexcept {
        if (limits) limits->last_activity = std::chrono::steady_clock::now();
    }
    void set_limits(duration idle, duration whole);

    // Graceful close: pending operations end, the write side is shut down, and input is
    // discarded until the peer closes (or `linger_timeout`), so unread input never turns the
    // close into a reset that destroys the tail of what was written.
    void close() noexcept;
    // Immediate close with a reset (SO_LINGER 0).
    void abort() noexcept;

    // The error for a failed operation: `operation` is "read" or "write".
    [[nodiscard]] error failure(const char* operation, const asio::error_code& ec,
                                const deadline& d, std::size_t bytes_written = 0) const;
    [[nodiscard]] std::string describe(const char* operation) const;

    void count_read(std::size_t n) noexcept {
        if (counters) server_counters::add(counters->bytes_read, n);
    }
    void count_written(std::size_t n) noexcept {
        if (counters) server_counters::add(counters->bytes_written, n);
    }

private:
    void arm(deadline& d);
    void on_timer(deadline& d);
    void arm_limits();
    void on_limits();
    // Marks the connection closed and ends its pending operations; false if it already was.
    bool mark_closed() noexcept;
};

// Makes `c` a TLS connection and performs the handshake, bounded by `timeout`: as the server
// (`settings` is a server context) or as a client that verifies `server_name` (a host name,
// also sent as SNI, or an IP address; empty: the chain only). Throws `error`: `tls_failed`
// with OpenSSL's reason, `timeout`, `cancelled`, `connection_closed`.
task<> tls_handshake(std::shared_ptr<connection_impl> c, std::shared_ptr<tls_state> settings,
                     std::string server_name, duration timeout);

struct connection_access {
    static connection_impl& impl(connection& c) noexcept { return *c.impl_; }
};

// async_write's completion condition: transfer everything, and count each partial write as
// activity, so a long write to a slow reader is not mistaken for an idle connection.
struct transfer_all_touching {
    connection_impl* c;
    std::size_t operator()(const asio::error_code& ec, std::size_t) const noexcept {
        c->touch();
        return ec ? 0 : 65536;
    }
};

// While an operation of one direction is in flight: its deadline runs, and cancelling the
// awaiting coroutine (its cancellation slot) cancels that operation through the direction's own
// signal, which the timer uses too.
class operation_scope {
public:
    operation_scope(connection_impl& c, deadline& d, duration timeout,
                    asio::cancellation_slot outer)
        : connection_(c), deadline_(d), outer_(outer) {
        c.begin(d, timeout);
        c.touch();
        if (outer_.is_connected()) {
            outer_.assign(
                [&signal = d.signal](asio::cancellation_type type) { signal.emit(type); });
        }
    }
    ~operation_scope() {
        if (outer_.is_connected()) outer_.clear();
        connection_.end(deadline_);
    }
    operation_scope(const operation_scope&) = delete;
    operation_scope& operator=(const operation_scope&) = delete;

private:
    connection_impl& connection_;
    deadline& deadline_;
    asio::cancellation_slot outer_;
};

}  // namespace netloop::detail
