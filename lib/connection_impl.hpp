// SPDX-License-Identifier: MIT
// The state behind a connection: its stream, its deadlines, its framing buffer, its counters.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/steady_timer.hpp>

#include <netloop/address.hpp>
#include <netloop/connection.hpp>
#include <netloop/error.hpp>
#include <netloop/loop.hpp>
#include <netloop/task.hpp>

#include "endpoint.hpp"
#include "stream.hpp"

namespace netloop::detail {

using clock = std::chrono::steady_clock;
inline constexpr clock::time_point never = clock::time_point::max();

// `now + timeout`, saturating; `never` for no_timeout.
[[nodiscard]] inline clock::time_point deadline_after(clock::time_point now,
                                                      duration timeout) noexcept {
    if (timeout == no_timeout || timeout > never - now) return never;
    return now + std::max(timeout, duration::zero());
}

// The connections open on all the loops of one server, and the most that were open at once: a
// true peak across the loops of a multi-core serve(), which a sum of each loop's peak is not.
// Written by every loop on open and close (locked instructions, once per connection, never per
// message).
struct server_totals {
    std::atomic<std::uint64_t> active{0};
    std::atomic<std::uint64_t> peak_active{0};
};

// What one server has done. One writer (the loop thread), readers on any thread: relaxed
// load+store, no locked instruction on the hot path.
struct server_counters {
    using counter = std::atomic<std::uint64_t>;
    counter accepted{0};
    counter rejected{0};
    counter active{0};
    counter bytes_read{0};
    counter bytes_written{0};
    counter accept_errors{0};
    counter handshake_failures{0};
    counter proxy_failures{0};
    // Set by serve() when it cuts its connections (a forced drain, or the drain's deadline):
    // they close at once, with no linger — they have no finished reply to protect.
    std::atomic<bool> cutting{false};
    // Set by serve() when its drain begins (connection::draining()), and once connections
    // waiting between messages are to be ended (after serve_options::drain_idle_grace): a read
    // that would wait at a message boundary then ends instead (connection_impl::drain_ends_read).
    std::atomic<bool> draining{false};
    std::atomic<bool> ending_idle{false};

    static std::uint64_t get(const counter& c) noexcept {
        return c.load(std::memory_order_relaxed);
    }
    static void set(counter& c, std::uint64_t v) noexcept { c.store(v, std::memory_order_relaxed); }
    static void add(counter& c, std::uint64_t n) noexcept { set(c, get(c) + n); }

    // Shared by every loop's counters of one server (server_state::add_counters links them).
    std::shared_ptr<server_totals> totals = std::make_shared<server_totals>();

    void opened() noexcept {
        add(active, 1);
        auto now = totals->active.fetch_add(1, std::memory_order_relaxed) + 1;
        auto peak = totals->peak_active.load(std::memory_order_relaxed);
        while (now > peak &&
               !totals->peak_active.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
        }
    }
    void closed() noexcept {
        set(active, get(active) - 1);
        totals->active.fetch_sub(1, std::memory_order_relaxed);
    }
};

// One direction (read or write): the deadline of its pending operation, and the signal that
// cancels that operation — for the timer and for a cancelled caller alike.
struct direction {
    asio::cancellation_signal signal;
    clock::time_point at = never;
    bool pending = false;  // an operation of this direction is in flight
    bool expired = false;  // its deadline passed and cancelled it
    bool drained = false;  // a drain ended it, at a message boundary
};

// Whole-connection bounds set by serve(): no byte either way for `idle`, or older than `until`.
struct connection_limits {
    duration idle = no_timeout;
    clock::time_point last_activity{};
    clock::time_point until = never;

    [[nodiscard]] clock::time_point due() const noexcept {
        auto idle_due = idle == no_timeout ? never : deadline_after(last_activity, idle);
        return std::min(idle_due, until);
    }
};

struct connection_impl : std::enable_shared_from_this<connection_impl> {
    // `remote`: what accept() or connect() already knows; the local address is asked of the
    // kernel only when someone wants it.
    connection_impl(loop& l, stream_socket s, address remote,
                    std::shared_ptr<server_counters> c = nullptr);
    ~connection_impl();
    connection_impl(const connection_impl&) = delete;
    connection_impl& operator=(const connection_impl&) = delete;

    loop& owner;
    detail::stream stream;
    address remote;
    std::optional<address> proxy;  // the balancer's, when a PROXY header replaced `remote`
    std::shared_ptr<server_counters> counters;
    direction reader;
    direction writer;
    // One timer for every deadline of this connection, made when the first one is set and
    // armed for the earliest (deadline.cpp).
    std::unique_ptr<asio::steady_timer> timer;
    std::unique_ptr<connection_limits> limits;  // only under serve() with idle/deadline bounds
    duration linger_timeout = std::chrono::seconds(2);
    // The framing buffer (framing.cpp): bytes [read_begin, read_end) are read but not
    // consumed; `pending_consume` is the frame handed out last, consumed by the next read call.
    std::vector<std::byte> read_buffer;
    std::size_t read_begin = 0;
    std::size_t read_end = 0;
    std::size_t pending_consume = 0;
    bool closed = false;
    bool limit_expired = false;  // closed by idle_timeout or connection_deadline
    // A read saw the peer's EOF: no input can follow, so a close needs no linger (set by
    // failure(), the one place every failed read passes through).
    mutable bool peer_closed = false;
    bool timer_armed = false;  // a wait on `timer` is outstanding
    // Where the stream stands in the protocol's messages (drain.cpp): inside one the handler
    // opened (connection::begin_message), or inside a frame a framing call is reading (a
    // read_exactly past its first byte, a PROXY header or TLS handshake under way). Bytes in
    // the framing buffer count as a message begun too.
    bool message_open = false;
    bool frame_open = false;
    // The handler says where messages begin: it used a framing call or begin/end_message. Until
    // then (raw reads only) the boundaries are unknown and a drain goes by silence instead.
    bool marks_boundaries = false;
    // Under serve(): no byte of the stream has arrived yet, so the first message is under way
    // (a client that connected, or finished its handshake, just before a drain is served, as Go's
    // Server.Shutdown keeps its new connections). Cleared by the first byte read.
    bool fresh = false;
    // Reads begun so far, and the count a drain saw when it last looked: for a handler that marks
    // no boundaries, a read still pending under the same count has waited a whole interval.
    std::uint32_t reads_begun = 0;
    std::uint32_t drain_mark = 0;

    [[nodiscard]] const address& local() const;

    // Starts `d`'s clock for an operation that may take `timeout` (inline: without a timeout or
    // limits it reads no clock and calls nothing).
    void begin(direction& d, duration timeout) {
        d.pending = true;
        d.expired = false;
        d.drained = false;
        if (&d == &reader) ++reads_begun;
        if (timeout == no_timeout && !limits) {
            d.at = never;
            return;
        }
        start_clock(d, timeout);
    }
    // deadline.cpp: the timed part of begin(): one clock read, and arm() only if the wait
    // outstanding is due later than `d`'s new deadline.
    void start_clock(direction& d, duration timeout);
    // `d`'s operation ended (activity, for the idle bound). Inline: without limits or a drain,
    // two flag tests.
    void end(direction& d) noexcept {
        d.pending = false;
        if (limits) limits->last_activity = clock::now();
        // A full-duplex handler's read may wait at a boundary while a write runs: once the write
        // is done, a drain past its idle stage ends that read.
        if (&d == &writer && reader.pending && counters &&
            counters->ending_idle.load(std::memory_order_relaxed)) {
            end_if_idle();
        }
    }
    void set_limits(duration idle, duration whole);

    // framing.cpp
    [[nodiscard]] std::span<const std::byte> buffered() const noexcept;
    void consume(std::size_t n) noexcept;
    void settle() noexcept;  // consumes the frame handed out last, before a new read
    std::size_t take_buffered(std::span<std::byte> out) noexcept;

    // linger.cpp: the graceful close — pending operations end, the sending side shuts down
    // after what was written, input is discarded until the peer closes or `linger_timeout`.
    void close() noexcept;
    // linger.cpp: an immediate close with a reset (SO_LINGER 0).
    void abort() noexcept;
    // linger.cpp: a close with no linger, for a connection cut by a deadline or a forced drain:
    // what was written still goes out (input that has arrived is discarded first, so the close
    // is no reset), but nothing waits for the peer.
    void cut() noexcept;
    // drain.cpp: true if the connection stands between two messages it marks, with no input
    // waiting and no write pending: a drain may end it there.
    [[nodiscard]] bool idle_now() noexcept;
    // drain.cpp: during a drain, true if the connection waits in a read at a message boundary
    // (idle_now), and then ends that read: its caller sees connection_closed ("server draining").
    bool end_if_idle() noexcept;
    // drain.cpp: the drain's look, every drain_idle_grace: end_if_idle(), and for a handler that
    // marks no boundaries, ends a read that waited with no byte since the previous look.
    bool drain_look() noexcept;
    // drain.cpp: true if a read about to wait must end instead, the drain having begun with this
    // connection at a boundary it marks. One flag test unless a drain runs.
    [[nodiscard]] bool drain_ends_read() noexcept {
        return counters && counters->ending_idle.load(std::memory_order_relaxed) && idle_now();
    }
    [[nodiscard]] error drained_error(const char* operation) const;
    // linger.cpp: marks the connection closed and ends its pending operations; false if it
    // already was.
    bool mark_closed() noexcept;

    // error.cpp: the error of a failed `operation` ("read", "write", ...).
    [[nodiscard]] error failure(const char* operation, const asio::error_code& ec,
                                const direction& d, std::size_t bytes_written = 0) const;
    [[nodiscard]] std::string describe(const char* operation) const;

    void count_read(std::size_t n) noexcept {
        fresh = false;
        if (counters) server_counters::add(counters->bytes_read, n);
    }
    void count_written(std::size_t n) noexcept {
        if (counters) server_counters::add(counters->bytes_written, n);
    }

    // deadline.cpp
    void arm(clock::time_point at);
    void on_timer() noexcept;

private:
    mutable std::optional<address> local_;
};

// Makes `c` a TLS connection and performs the handshake, bounded by `timeout`: as the server
// (`settings` is a server context) or as a client that verifies `server_name` (a host name,
// also sent as SNI, or an IP address; empty: the chain only). Throws `error`: `tls_failed`
// with OpenSSL's reason, `timeout`, `cancelled`, `connection_closed`.
task<> tls_handshake(std::shared_ptr<connection_impl> c, std::shared_ptr<tls_state> settings,
                     std::string server_name, duration timeout);

struct connection_access {
    static connection make(std::shared_ptr<connection_impl> impl) noexcept {
        return connection(std::move(impl));
    }
    static connection_impl& impl(connection& c) noexcept { return *c.impl_; }
};

// async_write's completion condition: transfer everything; under an idle bound, count each
// partial write as activity, so a long write to a slow reader is not mistaken for idleness.
struct transfer_all_touching {
    connection_impl* c;
    std::size_t operator()(const asio::error_code& ec, std::size_t) const noexcept {
        if (c->limits) c->limits->last_activity = clock::now();
        return ec ? 0 : 65536;
    }
};

// One operation of one direction, while it is in flight: its deadline runs, and cancelling the
// awaiting coroutine (its cancellation slot) cancels the operation through the direction's own
// signal, which the timer uses too. Lives in the frame of the public call, so an operation
// costs no frame of its own.
class operation {
public:
    operation(connection_impl& c, direction& d, duration timeout, asio::cancellation_slot outer)
        : connection_(c), direction_(d), outer_(outer) {
        c.begin(d, timeout);
        if (outer_.is_connected()) {
            outer_.assign(
                [&signal = d.signal](asio::cancellation_type type) { signal.emit(type); });
        }
    }
    ~operation() {
        if (outer_.is_connected()) outer_.clear();
        connection_.end(direction_);
    }
    operation(const operation&) = delete;
    operation& operator=(const operation&) = delete;

    // The completion token for the Asio operation: non-throwing, cancelled by this direction.
    [[nodiscard]] auto token() noexcept {
        return asio::bind_cancellation_slot(direction_.signal.slot(), use_tuple);
    }

private:
    connection_impl& connection_;
    direction& direction_;
    asio::cancellation_slot outer_;
};

}  // namespace netloop::detail
