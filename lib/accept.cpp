// SPDX-License-Identifier: MIT
// The one accept path: accept with back-off, make the connection, its preparation (PROXY
// header, TLS handshake) side by side; next().
#include <cerrno>
#include <deque>
#include <new>

#include <asio/experimental/awaitable_operators.hpp>

#include <netloop/error.hpp>
#include <netloop/server.hpp>

#include "logging.hpp"
#include "server_state.hpp"

namespace netloop {
namespace detail {
namespace {

// Errors that concern one connection attempt only: skip it and accept the next one.
bool skip_connection(const asio::error_code& ec) {
    switch (ec.value()) {
        case ECONNABORTED:
        case EPROTO:
        case EPERM:  // a firewall rule refused this peer
        case EINTR:
        case EAGAIN:
        case ENETDOWN:
        case ENETUNREACH:
        case EHOSTDOWN:
        case EHOSTUNREACH:
        case ENONET:
        case ENOPROTOOPT:
        case EOPNOTSUPP:
            return ec.category() == asio::system_category();
        default:
            return false;
    }
}

// Errors of resource exhaustion: accepting again at once would spin, so back off.
bool back_off(const asio::error_code& ec) {
    return ec.category() == asio::system_category() &&
           (ec.value() == EMFILE || ec.value() == ENFILE || ec.value() == ENOBUFS ||
            ec.value() == ENOMEM);
}

constexpr std::chrono::milliseconds first_backoff{5};
constexpr std::chrono::milliseconds max_backoff{1000};

}  // namespace

namespace {

// The back-off after `ec` (a resource error): logs, then waits out the next delay unless the
// server closes. False if the wait was cancelled. A frame of its own, and its helpers plain
// functions, so that accept_next's frame stays small: Asio's frame cache hands that block on to
// the frames each connection then keeps for its lifetime (bench/RESULTS.md, idle bytes).
task<bool> wait_backoff(server_state& s, asio::error_code ec) {
    if (s.backoff.count() == 0) {
        log(spdlog::level::warn, "accept on {}: {}; backing off", s.local.to_string(),
            ec.message());
        s.backoff = first_backoff;
    } else {
        s.backoff = std::min(s.backoff * 2, max_backoff);
    }
    asio::steady_timer timer(s.owner.context(), s.backoff);
    auto it = s.wake_on_close.insert(s.wake_on_close.end(), &timer);
    auto [wait_ec] = co_await timer.async_wait(use_tuple);
    s.wake_on_close.erase(it);
    co_return !wait_ec || s.closed.load();
}

[[noreturn]] void throw_accept_failed(const server_state& s, const asio::error_code& ec) {
    throw error(errc::accept_failed, "accept " + s.local.to_string(), ec.value());
}

void log_recovered(server_state& s) {
    log(spdlog::level::warn, "accept on {} recovered", s.local.to_string());
    s.backoff = std::chrono::milliseconds{0};
}

}  // namespace

void log_dropped(const server_state& s, const std::exception& e) noexcept {
    try {
        log(spdlog::level::err, "accept on {}: {}; connection dropped", s.local.to_string(),
            e.what());
    } catch (...) {
        // No memory for the message either.
    }
}

task<std::optional<accepted>> accept_next(std::shared_ptr<server_state> state,
                                          asio::io_context& into) {
    auto& s = *state;
    asio::generic::stream_protocol::endpoint peer;
    for (;;) {
        if (s.closed) co_return std::nullopt;
        auto [ec, socket] = co_await s.acceptor.async_accept(into, peer, use_tuple);
        if (!ec) {
            if (s.backoff.count() != 0) log_recovered(s);
            server_counters::add(s.counters->accepted, 1);
            co_return accepted{std::move(socket), from_generic(peer)};
        }
        // Closed (acceptor closed under us) or the awaiting task cancelled: the stream ends.
        if (s.closed || ec == asio::error::operation_aborted) co_return std::nullopt;
        server_counters::add(s.counters->accept_errors, 1);
        if (skip_connection(ec)) continue;
        if (!back_off(ec)) throw_accept_failed(s, ec);
        if (!co_await wait_backoff(s, ec)) co_return std::nullopt;  // cancelled
    }
}

std::shared_ptr<connection_impl> make_connection(loop& l, accepted a,
                                                 std::shared_ptr<server_counters> counters) {
    auto impl = std::make_shared<connection_impl>(l, std::move(a.socket), std::move(a.peer),
                                                  std::move(counters));
    if (log_enabled(spdlog::level::debug)) {
        log(spdlog::level::debug, "accepted {}", impl->remote.to_string());
    }
    return impl;
}

task<bool> handshake_or_count(std::shared_ptr<connection_impl> c,
                              std::shared_ptr<tls_state> settings, duration timeout,
                              server_counters& counters) {
    try {
        co_await tls_handshake(c, std::move(settings), {}, timeout);
        co_return true;
    } catch (const error& e) {
        if (e.kind() == errc::cancelled) throw;
        server_counters::add(counters.handshake_failures, 1);
        log(spdlog::level::info, "{}", e.what());
        co_return false;
    }
}

// Connections that need preparing (a PROXY header, a TLS handshake) are prepared side by side,
// each in a task of its own; next() hands out the ones that are ready, in the order they were.
struct handshake_queue {
    explicit handshake_queue(asio::io_context& c) : wake(c) {}
    std::deque<connection> ready;
    asio::steady_timer wake;  // cancelled when a connection is ready
};

namespace {

task<> prepare_into(std::shared_ptr<server_state> state, std::shared_ptr<connection_impl> impl) {
    auto conn = connection_access::make(impl);
    auto tls = state->tls.load();  // once per handshake: server::set_tls may replace it
    if (!co_await prepare_or_count(impl, state->proxy, tls, state->handshake_timeout,
                                   *state->counters)) {
        co_return;
    }
    auto& queue = *state->handshakes;
    queue.ready.push_back(std::move(conn));
    queue.wake.cancel();
}

// One accept; the connection's preparation starts in a task of its own. False once the stream
// ended (closed, or this branch was cancelled). Out of memory, the connection (if one was taken)
// is dropped and true returned: an exception here would leave next_prepared() waiting for the
// other branch, its wake timer, forever.
task<bool> accept_and_prepare(std::shared_ptr<server_state> state) {
    try {
        auto a = co_await accept_next(state, state->owner.context());
        if (!a) co_return false;
        auto impl = make_connection(state->owner, std::move(*a), state->counters);
        spawn(prepare_into(state, std::move(impl)), state->owner);
    } catch (const std::bad_alloc& e) {
        log_dropped(*state, e);
    }
    co_return true;
}

task<std::optional<connection>> next_prepared(std::shared_ptr<server_state> state) {
    if (!state->handshakes)
        state->handshakes = std::make_shared<handshake_queue>(state->owner.context());
    auto queue = state->handshakes;
    for (;;) {
        if (!queue->ready.empty()) {
            auto conn = std::move(queue->ready.front());
            queue->ready.pop_front();
            co_return std::move(conn);
        }
        if (state->closed) co_return std::nullopt;
        queue->wake.expires_at(never);
        using namespace asio::experimental::awaitable_operators;
        // Both branches are non-throwing but for a fatal accept error, and the accept branch
        // acts before it completes: whichever wins, no accepted connection is lost.
        auto first = co_await (accept_and_prepare(state) || queue->wake.async_wait(use_tuple));
        auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none) co_return std::nullopt;
        if (first.index() == 0 && !std::get<0>(first) && queue->ready.empty()) {
            co_return std::nullopt;
        }
    }
}

}  // namespace
}  // namespace detail

connection_stream::connection_stream(std::shared_ptr<detail::server_state> state) noexcept
    : state_(std::move(state)) {}

task<std::optional<connection>> connection_stream::next() {
    auto state = state_;  // the frame keeps the server state alive
    if (state->tls || state->proxy.mode != proxy_protocol::off) {
        co_return co_await detail::next_prepared(state);
    }
    for (;;) {
        auto a = co_await detail::accept_next(state, state->owner.context());
        if (!a) co_return std::nullopt;
        try {
            co_return detail::connection_access::make(
                detail::make_connection(state->owner, std::move(*a), state->counters));
        } catch (const std::bad_alloc& e) {
            detail::log_dropped(*state, e);  // the socket closed with `a`; accept the next one
        }
    }
}

}  // namespace netloop
