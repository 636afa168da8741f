// SPDX-License-Identifier: MIT
// The one accept path: accept with back-off, make the connection; next(), and under it the
// accept pump that prepares (PROXY header, TLS handshake) side by side, at most max_preparing.
#include <cerrno>
#include <deque>
#include <exception>
#include <list>
#include <new>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>

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

// Under next(), a listener whose connections need preparing (a PROXY header, a TLS handshake)
// has one accept pump: while some task waits in next() and fewer than max_preparing are in
// preparation, it accepts, and starts each connection's preparation in a task of its own. The
// prepared ones queue up in `ready`; each waiter waits on its own timer and takes from the queue
// (one shared timer, re-armed by every waiter, would cancel the others' waits, forever).
struct preparer {
    explicit preparer(asio::io_context& c) : resume(c) {}

    struct waiter {
        explicit waiter(asio::io_context& c) : timer(c, never) {}
        asio::steady_timer timer;
        bool woken = false;          // taken off `waiting` and its timer cancelled
        std::exception_ptr failure;  // the accept failure it is to throw
    };

    std::deque<connection> ready;
    std::list<waiter*> waiting;  // not yet woken, first come first
    bool pumping = false;        // the pump task runs
    // The pump's cancellation: emitted when nobody waits any more, so no accept stays pending.
    asio::cancellation_signal stop;
    asio::steady_timer resume;  // the pump waits here at max_preparing

    // Wakes the first waiter: a connection is ready for it (or the server closed).
    void wake_one() noexcept {
        if (waiting.empty()) return;
        wake(*waiting.front());
        waiting.pop_front();
        if (waiting.empty()) stop_pump();
    }

    static void wake(waiter& w) noexcept {
        w.woken = true;
        w.timer.cancel();
    }

    void stop_pump() noexcept {
        if (pumping) stop.emit(asio::cancellation_type::terminal);
    }
};

void close_prepared(server_state& state) noexcept {
    if (!state.prepared) return;
    auto& p = *state.prepared;
    for (auto* w : p.waiting) preparer::wake(*w);
    p.waiting.clear();
    p.stop_pump();
    p.resume.cancel();
    // Closed outside the deque: a closing connection must not find it half torn down.
    auto unclaimed = std::move(p.ready);
    p.ready.clear();
}

namespace {

task<> prepare_into(std::shared_ptr<server_state> state, std::shared_ptr<connection_impl> impl,
                    preparing_slot slot) {
    auto conn = connection_access::make(impl);
    auto tls = state->tls.load();  // once per handshake: server::set_tls may replace it
    bool ok = co_await prepare_or_count(impl, state->proxy, tls, state->handshake_timeout,
                                        *state->counters);
    slot.release();
    if (!ok || state->closed) co_return;  // conn closes
    auto& p = *state->prepared;
    p.ready.push_back(std::move(conn));
    p.wake_one();
}

// The accept pump of a TLS or PROXY listener under next() (see preparer). Runs until nobody
// waits, the server closes, or accept fails for good: then every waiter throws the failure.
task<> pump(std::shared_ptr<server_state> state) {
    auto p = state->prepared;
    co_await asio::this_coro::throw_if_cancelled(false);
    try {
        for (;;) {
            // A stop that came while a waiter arrived is spent: start afresh.
            co_await asio::this_coro::reset_cancellation_state();
            if (state->closed || p->waiting.empty()) break;
            if (at_preparing_bound(*state)) {
                listed_timer on_prepared(state->wake_on_prepared, p->resume);
                p->resume.expires_at(never);
                auto [ec] = co_await p->resume.async_wait(use_tuple);
                (void)ec;
                continue;
            }
            auto a = co_await accept_next(state, state->owner.context());
            if (!a) continue;  // stopped or closed: look again
            try {
                preparing_slot slot(state);
                auto impl = make_connection(state->owner, std::move(*a), state->counters);
                spawn(prepare_into(state, std::move(impl), std::move(slot)), state->owner);
            } catch (const std::bad_alloc& e) {
                log_dropped(*state, e);  // the socket closed with `a`; accept the next one
            }
        }
    } catch (...) {
        auto failure = std::current_exception();
        for (auto* w : p->waiting) {
            w->failure = failure;
            preparer::wake(*w);
        }
        p->waiting.clear();
    }
    p->pumping = false;
}

task<std::optional<connection>> next_prepared(std::shared_ptr<server_state> state) {
    if (!state->prepared) state->prepared = std::make_shared<preparer>(state->owner.context());
    auto p = state->prepared;
    auto take = [&p]() {
        auto conn = std::move(p->ready.front());
        p->ready.pop_front();
        return conn;
    };
    if (!p->ready.empty()) co_return take();
    if (state->closed) co_return std::nullopt;
    preparer::waiter w(state->owner.context());
    for (;;) {
        w.woken = false;
        auto entry = p->waiting.insert(p->waiting.end(), &w);
        if (!p->pumping) {
            // The pump starts at once (co_spawn dispatches), and looks for a waiter first.
            try {
                p->pumping = true;
                asio::co_spawn(
                    state->owner.context(), pump(state),
                    asio::bind_cancellation_slot(p->stop.slot(), [](std::exception_ptr) {}));
            } catch (...) {
                p->pumping = false;
                if (!w.woken) p->waiting.erase(entry);
                throw;
            }
        }
        if (!w.woken) {
            w.timer.expires_at(never);
            auto [ec] = co_await w.timer.async_wait(use_tuple);
            (void)ec;
        }
        if (!w.woken) {
            p->waiting.erase(entry);
            if (p->waiting.empty()) p->stop_pump();
        }
        auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none) {
            // Woken for a connection as well? It stays queued: pass it to the next waiter.
            if (w.woken && !p->ready.empty()) p->wake_one();
            co_return std::nullopt;
        }
        if (w.failure) std::rethrow_exception(w.failure);
        if (!p->ready.empty()) {
            auto conn = take();
            if (!p->ready.empty()) p->wake_one();
            co_return std::move(conn);
        }
        if (state->closed) co_return std::nullopt;
    }
}

}  // namespace
}  // namespace detail

connection_stream::connection_stream(std::shared_ptr<detail::server_state> state) noexcept
    : state_(std::move(state)) {}

task<std::optional<connection>> connection_stream::next() {
    auto state = state_;  // the frame keeps the server state alive
    if (state->needs_preparing()) {
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
